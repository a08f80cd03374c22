"""Set-ups of the bad-input catalogue (tests/test_errors.py): each builds one bad input.

``Env`` is the shared, read-only workspace (a tiny trained run) plus the case's own folder; the
builders return the CLI arguments that feed the bad input to osrm.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import save_tiny_bert
from osrm.artifacts import MANIFEST_FILE, seal_dir
from osrm.cli import main

TASKS = ("low", "high", "reg")


@dataclass
class Env:
    """The shared workspace (trained once, read-only) and one case's own folder."""

    ws: Path
    case: Path

    @property
    def config(self) -> Path:
        return self.ws / "tiny.yaml"

    def adapter(self, task: str = "low") -> str:
        return str(self.ws / "run" / "adapters" / "osrm" / task)

    def adapters(self) -> list[str]:
        return [self.adapter(t) for t in TASKS]

    def stats(self, task: str = "low") -> str:
        return str(self.ws / "run" / "stats" / f"{task}.safetensors")

    def copy(self, source: str | Path, name: str, *, foreign: bool = False) -> Path:
        """A copy in the case folder; ``foreign``: without osrm's manifest (someone else's)."""
        out = self.case / name
        if Path(source).is_dir():
            shutil.copytree(source, out)
            if foreign:
                (out / MANIFEST_FILE).unlink()
        else:
            shutil.copy(source, out)
        return out

    def write_config(self, overrides: dict | None = None, task: dict | None = None) -> Path:
        """The workspace config with run_dir in the case folder, sections and task 0 updated."""
        data = yaml.safe_load(self.config.read_text())
        data["run_dir"] = str(self.case / "run")
        for key, value in (overrides or {}).items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        if task:
            data["tasks"][0].update(task)
        path = self.case / "bad.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def file(self, name: str, text: str) -> str:
        path = self.case / name
        path.write_text(text)
        return str(path)

    def csv(self, text: str) -> str:
        return self.file("bad.csv", text)


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv(env)`` builds it and returns the CLI arguments.

    Attributes:
        id: short name (test id, doc anchor).
        what: the bad input, for the doc.
        argv: builds the bad input in ``env.case`` and returns the command's arguments.
        names: text the error line must contain: the file or field at fault.
        allow: case-folder files that may appear (complete artifacts of earlier stages).
        patch: installs a simulated failure (disk full, permissions) for the command.
        check: extra assertion after the command (e.g. a payload never ran).
    """

    id: str
    what: str
    argv: Callable[[Env], list[str]]
    names: str
    allow: tuple[str, ...] = ()
    patch: Callable[[pytest.MonkeyPatch, Env], None] | None = None
    check: Callable[[Env], None] | None = None


def run_cfg(overrides: dict | None = None, task: dict | None = None, *extra: str):
    return lambda env: ["run", str(env.write_config(overrides, task)), *extra]


def merge(*extra: str, out: str = "out", stats: bool = False):
    def argv(env: Env) -> list[str]:
        more = ["--stats", *[env.stats(t) for t in TASKS]] if stats else []
        return ["merge", *env.adapters(), *more, *extra, "--out", str(env.case / out)]

    return argv


def retrofit(*extra: str, mu: str = "0.5", adapters: Callable[[Env], list[str]] | None = None):
    """``osrm retrofit`` of the three adapters (or ``adapters(env)``) with their statistics."""

    def argv(env: Env) -> list[str]:
        dirs = adapters(env) if adapters else env.adapters()
        stats = [env.stats(t) for t in TASKS]
        return ["retrofit", *dirs, "--stats", *stats, "--mu", mu, *extra,
                "--out", str(env.case / "out")]  # fmt: skip

    return argv


def with_adapter(prepare: Callable[[Env, Path], None], *extra: str, stats: bool = False):
    """Merge three adapters, the first replaced by a prepared copy."""

    def argv(env: Env) -> list[str]:
        bad = env.copy(env.adapter(), "adapter")
        prepare(env, bad)
        more = ["--stats", *[env.stats(t) for t in TASKS]] if stats else []
        method = ["--method", "regmean"] if stats else ["--method", "ties"]
        rest = [env.adapter(t) for t in TASKS[1:]]
        return ["merge", str(bad), *rest, *method, *more, *extra, "--out", str(env.case / "out")]

    return argv


def with_stats(prepare: Callable[[Env, Path], None], command: str = "merge"):
    """A regmean merge (or a ``retrofit``) whose first statistics file is a prepared copy."""

    def argv(env: Env) -> list[str]:
        bad = env.copy(env.stats(), "low.safetensors")
        prepare(env, bad)
        stats = [str(bad), *[env.stats(t) for t in TASKS[1:]]]
        how = ["--method", "regmean"] if command == "merge" else ["--mu", "0.5"]
        return [command, *env.adapters(), *how, "--stats", *stats,
                "--out", str(env.case / "out")]  # fmt: skip

    return argv


def add_task(task: str = "more", prepare: Callable[[Path], None] | None = None, *extra: str):
    """``osrm add-task`` on a copy of the workspace's run (``prepare`` edits the copy); the new
    task is low's data under another name."""

    def argv(env: Env) -> list[str]:
        run = env.copy(env.ws / "run", "run")
        if prepare is not None:
            prepare(run)
        fields = [f"files={{train: {env.ws / 'data' / 'low.csv'}}}", "text_fields=text",
                  "label_field=label", "label_names=['0', '1']"]  # fmt: skip
        return ["add-task", str(run), task, *fields, *extra]

    return argv


def reseal_stats(edit: Callable[[Env, Path], None]) -> Callable[[Path], None]:
    """Edit a run's ``stats/low.safetensors`` and seal it again, as if osrm had written it."""

    def prepare(run: Path) -> None:
        from osrm.artifacts import seal_files

        path = run / "stats" / "low.safetensors"
        edit(None, path)  # type: ignore[arg-type]
        seal_files([path])

    return prepare


# ------------------------------------------------------------- ways to break an artifact


def truncate(_: Env, path: Path) -> None:
    target = path / "adapter_model.safetensors" if path.is_dir() else path
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    if path.is_dir():  # someone else's adapter: no osrm manifest to catch it first
        (path / MANIFEST_FILE).unlink(missing_ok=True)


def edit_adapter(tensors=None, config=None) -> Callable[[Env, Path], None]:
    """Change an adapter's tensors or config and re-seal it (an adapter made elsewhere)."""

    def prepare(_: Env, path: Path) -> None:
        if tensors is not None:
            weights = load_file(str(path / "adapter_model.safetensors"))
            tensors(weights)
            save_file(weights, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
        if config is not None:
            cfg = json.loads((path / "adapter_config.json").read_text())
            config(cfg)
            (path / "adapter_config.json").write_text(json.dumps(cfg))
        seal_dir(path)

    return prepare


def first_b(weights: dict) -> None:
    key = next(k for k in sorted(weights) if "lora_B" in k)
    weights[key][0, 0] = float("nan")


def rename_value_to_key(weights: dict) -> None:
    for k in [k for k in weights if ".value." in k]:
        weights[k.replace(".value.", ".key.")] = weights.pop(k)


def edit_stats(tensors=None, meta=None) -> Callable[[Env, Path], None]:
    def prepare(_: Env, path: Path) -> None:
        with safe_open(str(path), framework="pt") as f:
            metadata, data = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        if tensors is not None:
            tensors(data)
        if meta is not None:
            record = json.loads(metadata["meta"])
            meta(record)
            metadata["meta"] = json.dumps(record)
        save_file(data, str(path), metadata=metadata)

    return prepare


def nan_xtx(data: dict) -> None:
    key = next(k for k in sorted(data) if k.endswith(".xtx"))
    data[key][0, 0] = float("inf")


def shrink_dims(data: dict) -> None:
    for key in list(data):
        if key.endswith(".xtx"):
            data[key] = torch.eye(16, dtype=torch.float64) * float(data[key].diagonal().mean())
        elif key.endswith(".xsum"):
            data[key] = data[key][:16].clone()


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------- other set-ups


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: the file appears if the pickle is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def pickle_adapter(env: Env) -> list[str]:
    bad = env.case / "pickled"
    bad.mkdir()
    shutil.copy(Path(env.adapter()) / "adapter_config.json", bad)
    (bad / "adapter_model.bin").write_bytes(pickle.dumps({"w": Payload(env.case / "PWNED")}))
    return ["eval", "--adapter", str(bad), "--task", "trec"]


def no_payload(env: Env) -> None:
    assert not (env.case / "PWNED").exists(), "the pickle payload ran"


def remote_code_model(env: Env) -> list[str]:
    model = save_tiny_bert(env.case / "custom-model")
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="osrm-test-custom", auto_map={"AutoConfig": "custom.Config"})
    (model / "config.json").write_text(json.dumps(cfg))
    (model / "custom.py").write_text(f"open({str(env.case / 'PWNED')!r}, 'w')\n")
    return ["run", str(env.write_config({"model": {"name": str(model)}}))]


def pickle_only_model(env: Env) -> list[str]:
    model = save_tiny_bert(env.case / "bin-model")
    weights = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    torch.save(weights, model / "pytorch_model.bin")
    return ["run", str(env.write_config({"model": {"name": str(model)}}))]


def rank_above_null_space(env: Env) -> list[str]:
    # statistics already collected (copied): the failure is in the OSRM subspace, not a rerun
    from osrm.config import dump_config, load_config

    config = env.write_config({"lora": {"rank": 31, "inits": ["osrm_mean"]},
                               "subspace": {"modes": ["mean"]}})  # fmt: skip
    shutil.copytree(env.ws / "run" / "stats", env.case / "run" / "stats")
    (env.case / "run" / "config.yaml").write_text(dump_config(load_config(config)))
    return ["stats", str(config)]


def run_dir_with_results(env: Env, lines: list[str]) -> Path:
    run = env.case / "run"
    run.mkdir()
    shutil.copy(env.ws / "run" / "config.yaml", run)
    (run / "results.jsonl").write_text("".join(line + "\n" for line in lines))
    return run


def result_line(task: str, kind: str) -> str:
    return json.dumps({"init": "osrm", "kind": kind, "task": task, "metric": "accuracy",
                       "score": 0.5, "scores": {"accuracy": 0.5}})  # fmt: skip


def corrupt_results(env: Env) -> list[str]:
    lines = [result_line("low", "base"), "{not json", result_line("high", "base")]
    return ["report", str(run_dir_with_results(env, lines))]


def report_disk_full(env: Env) -> list[str]:
    lines = [result_line(t, k) for k in ("base", "individual") for t in TASKS]
    run = run_dir_with_results(env, lines)
    assert main(["-q", "report", str(run)]) == 0  # the previous report, which must survive
    return ["report", str(run)]


def full_disk_on_write_text(monkeypatch: pytest.MonkeyPatch, env: Env) -> None:
    real = Path.write_text

    def write_text(self: Path, data: str, *args, **kwargs):
        if self.name.startswith(".results.md."):
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def full_disk_on_safetensors(monkeypatch: pytest.MonkeyPatch, env: Env) -> None:
    import osrm.merging.lora_files as lora_files  # the LoRA output's writer

    def save_file_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lora_files, "save_file", save_file_full)


def previous_output(env: Env) -> list[str]:
    shutil.copytree(env.ws / "merged", env.case / "out")
    return merge("--method", "ties", "--format", "lora", "--force")(env)


def read_only(monkeypatch: pytest.MonkeyPatch, env: Env) -> None:
    # root ignores chmod, so the refusal is simulated where the temporary folder is created
    import osrm.artifacts

    def denied(**kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))

    monkeypatch.setattr(osrm.artifacts.tempfile, "mkdtemp", denied)


def existing(name: str, files: dict[str, str]) -> Callable[[Env], None]:
    def make(env: Env) -> None:
        (env.case / name).mkdir()
        for rel, text in files.items():
            (env.case / name / rel).write_text(text)

    return make


def then(setup: Callable[[Env], None], argv: Callable[[Env], list[str]]):
    def both(env: Env) -> list[str]:
        setup(env)
        return argv(env)

    return both


def eval_adapter(prepare: Callable[[Env, Path], None]):
    """Evaluate a prepared copy of an adapter (a 2-class task: the head fits)."""

    def argv(env: Env) -> list[str]:
        bad = env.copy(env.adapter(), "adapter")
        prepare(env, bad)
        return ["eval", "--adapter", str(bad), "--task", "sms_spam"]

    return argv


def shrink_lora_a(weights: dict) -> None:
    key = next(k for k in sorted(weights) if "lora_A" in k)
    weights[key] = weights[key][:, :16].contiguous()


def tampered_merged(env: Env) -> list[str]:
    out = env.copy(env.ws / "merged", "merged")
    flip_last_byte(next((out / "heads").iterdir()))
    return ["eval", "--merged", str(out), "--task", "trec"]


def file_in_the_way(env: Env) -> Path:
    (env.case / "file.txt").write_text("a file, not a folder\n")
    return env.case / "file.txt"


# ------------------------------------------------------------- merging side (issue 13)


def rank_zero(weights: dict) -> None:
    """Every LoRA factor with rank 0 (empty lora_A rows / lora_B columns)."""
    for key in list(weights):
        if "lora_A" in key:
            weights[key] = weights[key][:0].contiguous()
        elif "lora_B" in key:
            weights[key] = weights[key][:, :0].contiguous()


def edit_provenance(**fields) -> Callable[[Env, Path], None]:
    """Change fields of an adapter's osrm_provenance.json and re-seal it."""

    def prepare(_: Env, path: Path) -> None:
        prov = json.loads((path / "osrm_provenance.json").read_text())
        prov.update(fields)
        (path / "osrm_provenance.json").write_text(json.dumps(prov))
        seal_dir(path)

    return prepare


def merged_for_trec(env: Env, edit: Callable[[Path], None]) -> list[str]:
    """The workspace's merged LoRA output with task low's head renamed to the registry task
    'trec' (so `osrm eval --task trec` reaches the head), then edited and re-sealed."""
    out = env.copy(env.ws / "merged", "merged")
    (out / "heads" / "low.safetensors").rename(out / "heads" / "trec.safetensors")
    manifest = json.loads((out / "osrm_merge.json").read_text())
    manifest["heads"] = {"trec": "heads/trec.safetensors"}
    manifest["adapter_head"] = "trec"
    (out / "osrm_merge.json").write_text(json.dumps(manifest))
    edit(out)
    seal_dir(out)
    return ["eval", "--merged", str(out), "--task", "trec"]


def merged_without_base(env: Env) -> list[str]:
    def drop_base(out: Path) -> None:
        manifest = json.loads((out / "osrm_merge.json").read_text())
        manifest["base_model"] = None
        (out / "osrm_merge.json").write_text(json.dumps(manifest))

    return merged_for_trec(env, drop_base)


def merged_head_truncated(env: Env) -> list[str]:
    def cut(out: Path) -> None:
        head = out / "heads" / "trec.safetensors"
        head.write_bytes(head.read_bytes()[:40])

    return merged_for_trec(env, cut)


# ------------------------------------------------ run-directory artifacts and containment


def corrupt_recorded_config(env: Env) -> list[str]:
    """A run directory whose recorded config.yaml is no longer YAML."""
    config = env.write_config()
    (env.case / "run").mkdir()
    (env.case / "run" / "config.yaml").write_text("seed: [1,\n")
    return ["stats", str(config)]


def corrupt_interference(env: Env) -> list[str]:
    lines = [result_line(t, "base") for t in TASKS]
    run = run_dir_with_results(env, lines)
    (run / "interference.json").write_text('{"osrm": {"low": ')
    return ["report", str(run)]


def results_of_wrong_type(env: Env) -> list[str]:
    line = json.dumps({"init": "osrm", "kind": "base", "task": "low", "metric": "accuracy",
                       "score": "high"})  # fmt: skip
    return ["report", str(run_dir_with_results(env, [line]))]


def linked_stats(env: Env) -> list[str]:
    """A run directory whose stats/ is a symbolic link to a folder outside it."""
    from osrm.config import dump_config, load_config

    config = env.write_config()
    (env.case / "run").mkdir()
    (env.case / "run" / "config.yaml").write_text(dump_config(load_config(config)))
    (env.case / "elsewhere").mkdir()
    (env.case / "run" / "stats").symlink_to(env.case / "elsewhere")
    return ["stats", str(config)]


def merged_inf_weights(env: Env) -> list[str]:
    """A merged LoRA output whose factors hold an Inf (re-sealed): scoring must refuse it."""

    def poison(out: Path) -> None:
        weights = load_file(str(out / "adapter_model.safetensors"))
        key = next(k for k in sorted(weights) if "lora_B" in k)
        weights[key][0, 0] = float("inf")
        save_file(weights, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})

    return merged_for_trec(env, poison)


# ------------------------------------------------------------- osrm predict (issue 17)


def predict(*extra: str, task: str = "low", rows: str = "text\nw4 w5 w6\n"):
    """``osrm predict`` of the workspace's merged output on a CSV of ``rows``."""

    def argv(env: Env) -> list[str]:
        inputs = env.case / "in.csv"
        inputs.write_text(rows)
        return ["predict", str(env.ws / "merged"), "--task", task, "--input", str(inputs),
                *extra, "--out", str(env.case / "out.jsonl")]  # fmt: skip

    return argv
