"""The bad-input catalogue: each case runs the real CLI on one bad input.

Every case must exit with status 2, print exactly one stderr line ``osrm: error: ...`` that names
the file or field at fault, show no traceback, and leave nothing new, changed or half-written where
the command writes (the shared workspace is never touched). ``docs/errors.md`` is generated from
the same table; when it is out of date, regenerate it with ``python tests/test_errors.py --write``.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path

import pytest

from error_setups import (
    TASKS,
    Case,
    Env,
    add_task,
    corrupt_interference,
    corrupt_recorded_config,
    corrupt_results,
    edit_adapter,
    edit_provenance,
    edit_stats,
    eval_adapter,
    existing,
    file_in_the_way,
    first_b,
    flip_last_byte,
    full_disk_on_safetensors,
    full_disk_on_write_text,
    linked_stats,
    merge,
    merged_head_truncated,
    merged_inf_weights,
    merged_without_base,
    nan_xtx,
    no_payload,
    pickle_adapter,
    pickle_only_model,
    predict,
    previous_output,
    rank_above_null_space,
    rank_zero,
    read_only,
    remote_code_model,
    rename_value_to_key,
    report_disk_full,
    reseal_stats,
    results_of_wrong_type,
    retrofit,
    run_cfg,
    shrink_dims,
    shrink_lora_a,
    tampered_merged,
    then,
    truncate,
    with_adapter,
    with_stats,
)
from osrm.cli import main
from tiny_workspace import leftovers, make_workspace, tree

DOC = Path(__file__).parents[1] / "docs" / "errors.md"
WRITE_ENV = "OSRM_WRITE_ERRORS_DOC"
MESSAGES: dict[str, str] = {}  # case id -> normalised stderr line, for the doc
COMMANDS: dict[str, str] = {}  # case id -> normalised command line, for the doc


CASES = [
    # --- config: keys, names, values
    Case("usage", "missing required options", lambda env: ["merge", env.adapter()],
         "the following arguments are required: --method, --out"),
    Case("config-missing", "config file does not exist",
         lambda env: ["run", str(env.case / "missing.yaml")], "missing.yaml"),
    Case("config-not-yaml", "config is not valid YAML",
         lambda env: ["run", env.file("bad.yaml", "tasks: [a, b\n")], "bad.yaml: not valid YAML"),
    Case("unknown-key", "unknown config key (typo)", run_cfg(None, None, "lora.rnak=4"),
         "unknown key 'lora.rnak'"),
    Case("unknown-task", "unknown registry task",
         run_cfg({"tasks": ["nosuch", "trec"]}), "unknown task 'nosuch'"),
    Case("exact-match-heads", "exact match asked of a run with task heads",
         run_cfg(None, None, "eval.exact_match=true"), "eval.exact_match scores generated answers"),
    Case("unknown-init", "unknown LoRA init", run_cfg(None, None, "lora.inits=[osrn]"),
         "field 'lora.inits.0'"),
    Case("unknown-method", "unknown merge method",
         run_cfg({"merge": {"methods": {"tie": None}}}), "merge.methods: unknown method 'tie'"),
    Case("unknown-metric", "unknown metric in a task block",
         run_cfg(None, {"metrics": ["acc"]}), "unknown metric 'acc'"),
    Case("unknown-hyperparameter", "unknown merge hyperparameter",
         merge("--method", "ties", "--hp", "densty=0.2"), "no hyperparameter 'densty'"),
    Case("negative-density", "negative density in the merge grid",
         run_cfg({"merge": {"methods": {"ties": {"density": -0.1}}}}),
         "merge.methods.ties: density must be a number in (0, 1]"),
    Case("density-above-one", "DARE keep rate above 1 (drop rate below 0)",
         merge("--method", "dare_ties", "--density", "1.5"), "density must be a number in (0, 1]"),
    Case("dropout-out-of-range", "LoRA dropout rate >= 1", run_cfg(None, None, "lora.dropout=1.5"),
         "field 'lora.dropout'"),
    Case("a-subspace-below-rank", "A's subspace smaller than the LoRA rank",
         run_cfg(None, None, "lora.a_subspace=1"), "field 'lora.a_subspace'"),
    Case("negative-penalty", "negative interference penalty",
         run_cfg(None, None, "train.interference_penalty=-1"),
         "field 'train.interference_penalty'"),
    Case("negative-lambda", "negative merge scale λ",
         merge("--method", "task_arithmetic", "--scale", "-1"), "scale must be a finite number"),
    Case("nan-lambda", "NaN merge scale λ", merge("--method", "task_arithmetic", "--scale", "nan"),
         "argument --scale: expected a finite number, got 'nan'"),
    Case("nan-weight", "NaN merge weight", merge("--method", "ties", "--weights", "1", "nan", "1"),
         "argument --weights: expected a finite number"),
    Case("merge-rank-zero", "merged LoRA rank 0", merge("--method", "ties", "--format", "lora",
         "--rank", "0"), "argument --rank: expected an integer at least 1"),
    Case("eval-batch-size-zero", "evaluation batch size 0",
         lambda env: ["eval", "--adapter", env.adapter(), "--task", "trec", "--batch-size", "0"],
         "argument --batch-size: expected an integer at least 1"),
    Case("eval-max-length-zero", "evaluation max length 0",
         lambda env: ["eval", "--adapter", env.adapter(), "--task", "trec", "--max-length", "0"],
         "argument --max-length: expected an integer at least 2"),
    Case("seed-too-large", "seed beyond 32 bits", run_cfg(None, None, f"seed={2**70}"),
         "field 'seed'"),
    Case("device-unknown", "model.device that is no device", run_cfg(None, None,
         "model.device=bogus"), "field 'model.device'"),
    Case("device-unavailable", "model.device this machine does not have",
         run_cfg(None, None, "model.device=cuda:99"), "model.device 'cuda:99'"),
    Case("task-field-type", "task block field of the wrong type",
         run_cfg(None, {"text_fields": 5}), "field 'tasks.0.text_fields'"),
    Case("task-file-not-a-path", "task block file that is not a path",
         run_cfg(None, {"files": {"train": 5}}), "field 'tasks.0.files.train'"),
    Case("task-fraction-not-a-number", "split fraction that is not a number",
         run_cfg(None, {"splits": {"test_fraction": "abc"}}),
         "field 'tasks.0.splits.test_fraction'"),
    Case("target-modules-missing", "lora.target_modules the model does not have",
         run_cfg(None, None, "lora.target_modules=[nosuch]"), "lora.target_modules"),
    Case("negative-lr", "negative learning rate", run_cfg(None, None, "train.lr=-0.001"),
         "field 'train.lr'"),
    Case("frozen-steps-with-epochs", "frozen-A step count together with epochs",
         run_cfg(None, None, "train.epochs=1", "train.frozen_a_steps=10"),
         "cannot be combined with epochs"),
    Case("budget-at-zero", "training budget at step 0",
         run_cfg(None, None, "train.checkpoints=[0]"), "field 'train.checkpoints.0'"),
    Case("budgets-not-increasing", "training budgets out of order",
         run_cfg(None, None, "train.checkpoints=[5,3]"), "expected strictly increasing steps"),
    Case("budget-beyond-steps", "training budget beyond the run's steps",
         run_cfg(None, None, "train.checkpoints=[1000000]"), "is beyond the run's"),
    Case("weights-count", "one merge weight for three adapters",
         merge("--method", "ties", "--weights", "1"), "--weights: expected 3 values"),
    Case("regmean-without-stats", "regmean without statistics", merge("--method", "regmean"),
         "--stats"),
    Case("auto-weights-without-stats", "auto merge weights without statistics",
         merge("--method", "task_arithmetic", "--weights", "auto"), "--weights auto"),
    Case("auto-weights-with-numbers", "auto merge weights mixed with numbers",
         merge("--method", "task_arithmetic", "--weights", "auto", "1", stats=True),
         "--weights auto: give it alone"),
    Case("grid-weights-unknown", "unknown weights mode in the merge grid",
         run_cfg({"merge": {"methods": {"task_arithmetic": {"weights": "best"}}}}),
         "merge.methods.task_arithmetic: weights: expected one of"),
    Case("add-task-existing", "add-task: a task already in the run", add_task("low"),
         "already a task"),
    Case("add-task-negative-mu", "add-task: negative retrofit μ",
         add_task("more", None, "--retrofit-mu", "-1"), "--retrofit-mu"),
    Case("add-task-stats-other-model", "add-task: the run's statistics of another base model",
         add_task("more", reseal_stats(edit_stats(meta=lambda m: m.update(fingerprint="0" * 16)))),
         "another base model"),
    Case("add-task-unfinished-retrofit", "add-task: an interrupted retrofitting addition rerun "
         "without --retrofit-mu",
         add_task("more", lambda run: (run / "history" / "1-more" / "adapters").mkdir(
             parents=True)), "run it again with its --retrofit-mu"),  # fmt: skip
    Case("add-task-no-stats", "add-task: a run without statistics",
         add_task("more", lambda run: (run / "stats" / "low.safetensors").unlink()),
         "needs every task's statistics"),
    Case("retrofit-negative-mu", "negative retrofit μ", retrofit(mu="-1"),
         "--mu: expected a number >= 0"),
    Case("retrofit-mu-config", "negative retrofit μ in the config",
         run_cfg({"merge": {"retrofit": {"mu": [-1]}}}), "merge.retrofit.mu.0"),
    Case("retrofit-adapter-twice", "retrofit: one adapter given twice",
         retrofit(adapters=lambda env: [env.adapter(), env.adapter(), env.adapter("high")]),
         "is given twice"),
    Case("retrofit-stats-other-weights", "retrofit: statistics of other base weights",
         with_stats(edit_stats(meta=lambda m: m.update(fingerprint="0" * 16)), "retrofit"),
         "low.safetensors: statistics of other base weights"),
    Case("retrofit-stats-task-missing", "retrofit: no statistics file for one adapter's task",
         with_stats(edit_stats(meta=lambda m: m.update(task="other")), "retrofit"),
         "no statistics for task 'low'"),
    Case("task-name-escapes", "task name that leaves the run directory",
         run_cfg(None, {"name": "../../x"}), "tasks: name '../../x'"),
    Case("changed-settings", "re-run of a run directory with other pinned settings",
         lambda env: ["stats", str(env.config), "lora.rank=2"], "different 'lora' section"),
    # --- models
    Case("hub-model-offline", "hub model that is not installed, offline",
         run_cfg({"model": {"name": "some-org/not-installed"}}), "HF_HUB_OFFLINE=1"),
    Case("remote-code-model", "model that needs its own code (trust_remote_code off)",
         remote_code_model, "model.trust_remote_code",
         check=no_payload),
    Case("pickle-only-model", "model directory with only pytorch_model.bin (pickle)",
         pickle_only_model, "model.name"),
    # --- data
    Case("data-file-missing", "task file does not exist",
         run_cfg(None, {"files": {"train": "nothere.csv"}}), "nothere.csv not found"),
    Case("empty-dataset", "task file with a header and no rows",
         lambda env: run_cfg(None, {"files": {"train": env.csv("text,label\n")}})(env),
         "bad.csv is empty"),
    Case("label-column-missing", "label column missing",
         run_cfg(None, {"label_field": "stars"}), "has no column 'stars'"),
    Case("unseen-label", "label value not among label_names",
         lambda env: run_cfg(None, {"files": {"train": env.csv("text,label\nw4 w5,7\n")}})(env),
         "column 'label' has value '7', expected one of ['0', '1']"),
    Case("empty-test-split", "split policy that leaves no test examples",
         run_cfg(None, {"splits": {"test_fraction": 0.0}}), "task 'low' has no test examples"),
    Case("text-column-missing", "text column missing",
         run_cfg(None, {"text_fields": ["review"]}), "has no column 'review'"),
    # --- ranks
    Case("rank-above-input-dim", "LoRA rank above the module's input dimension",
         run_cfg(None, None, "lora.rank=33"), "lora.rank 33 exceeds the input dimension 32"),
    Case("rank-above-null-space", "OSRM 'mean' rank above the other tasks' null space",
         rank_above_null_space, "lora.rank 31, subspace mode 'mean'"),
    # --- statistics files
    Case("stats-truncated", "truncated statistics file", with_stats(truncate),
         "low.safetensors: not a readable safetensors file"),
    Case("stats-inf", "Inf in a statistics file", with_stats(edit_stats(tensors=nan_xtx)),
         "holds NaN or Inf values"),
    Case("stats-other-model", "statistics of another base model",
         with_stats(edit_stats(meta=lambda m: m.update(base_model="other-org/other-model"))),
         "statistics of base model 'other-org/other-model'"),
    Case("stats-other-dims", "statistics with another input dimension",
         with_stats(edit_stats(tensors=shrink_dims)), "low.safetensors: module"),
    # --- adapters
    Case("adapter-truncated", "truncated adapter weights", with_adapter(truncate),
         "adapter_model.safetensors: not a readable safetensors file"),
    Case("adapter-tampered", "adapter changed after osrm wrote it (manifest mismatch)",
         with_adapter(lambda env, p: flip_last_byte(p / "adapter_model.safetensors")),
         "does not match the sha256 in osrm_manifest.json"),
    Case("adapter-nan", "NaN in adapter weights", with_adapter(edit_adapter(tensors=first_b)),
         "holds NaN or Inf values"),
    Case("adapter-other-model", "adapter of another base model",
         with_adapter(edit_adapter(config=lambda c: c.update(base_model_name_or_path="x/y"))),
         "adapter has 'x/y'; adapters must come from the same base model"),
    Case("adapter-rank-mismatch", "adapter whose config rank disagrees with its tensors",
         with_adapter(edit_adapter(config=lambda c: c.update(r=8))),
         "lora_A has rank 4 but adapter_config (r / rank_pattern) says 8"),
    Case("adapter-bad-alpha", "adapter with a non-numeric lora_alpha",
         with_adapter(edit_adapter(config=lambda c: c.update(lora_alpha="sixteen"))),
         "lora_alpha (or alpha_pattern) is 'sixteen'"),
    Case("adapter-dora", "DoRA adapter (not plain LoRA)",
         with_adapter(edit_adapter(config=lambda c: c.update(use_dora=True))),
         "'use_dora' is set"),
    Case("target-modules-without-stats", "regmean: adapter targets a module without statistics",
         with_adapter(edit_adapter(tensors=rename_value_to_key), stats=True),
         "no statistics for module"),
    Case("adapter-pickle-only", "adapter with only adapter_model.bin (a pickle with a payload)",
         pickle_adapter, "refusing adapter_model.bin", check=no_payload),
    Case("adapter-unknown-target", "adapter whose target modules the base model lacks",
         eval_adapter(edit_adapter(config=lambda c: c.update(target_modules=["nonexistent"]))),
         "/adapter: peft cannot load this adapter onto the base model"),
    Case("adapter-other-shapes", "adapter whose shapes do not fit the base model",
         eval_adapter(edit_adapter(tensors=shrink_lora_a)),
         "/adapter: peft cannot load this adapter onto the base model"),
    Case("merged-tampered", "merged model changed after osrm wrote it", tampered_merged,
         "does not match the sha256 in osrm_manifest.json"),
    Case("merge-scale-overflow", "merge scale λ so large the merged weights overflow (1e39)",
         merge("--method", "task_arithmetic", "--scale", "1e39"), "holds NaN or Inf values"),
    Case("adapter-alpha-overflow", "adapter with a finite but extreme lora_alpha (1e300)",
         with_adapter(edit_adapter(config=lambda c: c.update(lora_alpha=1e300))),
         "adapter_config.json: bert.encoder.layer.0.attention.self.query: lora_alpha 1e+300"),
    Case("adapter-rank-zero", "adapter of rank 0 (r = 0, empty lora_A)",
         with_adapter(edit_adapter(tensors=rank_zero, config=lambda c: c.update(r=0))),
         "lora_A has rank 0"),
    Case("adapter-task-nul", "adapter whose provenance task name holds a NUL byte",
         with_adapter(edit_provenance(task="lo\x00w")), "osrm_provenance.json: 'task'"),
    Case("adapter-task-long", "adapter whose provenance task name has 300 characters",
         with_adapter(edit_provenance(task="t" * 300)), "osrm_provenance.json: 'task'"),
    Case("stats-other-weights", "statistics of other base weights, base_model name edited to match",
         with_stats(edit_stats(meta=lambda m: m.update(fingerprint="0" * 16))),
         "low.safetensors: statistics of other base weights"),
    Case("stats-zero-tokens", "statistics of zero tokens",
         with_stats(edit_stats(meta=lambda m: m.update(n_tokens=0))),
         "low.safetensors: metadata 'n_tokens' is 0"),
    Case("stats-task-missing", "regmean: no statistics file for one adapter's task",
         with_stats(edit_stats(meta=lambda m: m.update(task="other"))),
         "no statistics for task 'low'"),
    Case("merged-no-base", "merged output whose osrm_merge.json names no base model",
         merged_without_base, "osrm_merge.json: names no base_model"),
    Case("merged-head-truncated", "merged output with a truncated head file",
         merged_head_truncated, "heads/trec.safetensors: not a readable safetensors file"),
    Case("merged-inf-weights", "merged output whose weights hold Inf (never scored)",
         merged_inf_weights, "model weights (not scored): bert.encoder.layer.0"),
    # --- osrm predict
    Case("predict-no-head", "predict for a task the merged model has no head for",
         predict(task="trec"), "no head for task 'trec'; tasks: ['low', 'high', 'reg']"),
    Case("predict-labels-unknown", "predict for a task that is not built in, without --labels",
         predict(), "task 'low': its head has 2 outputs but it is not a built-in task"),
    Case("predict-labels-count", "predict with label names that do not fit the head",
         predict("--labels", "a,b,c"), "its head has 2 outputs but 3 label names were given"),
    Case("predict-text-column-missing", "predict input without the text column",
         predict(rows="review\nw4 w5\n"), "in.csv: no 'text' column"),
    Case("predict-empty-text", "predict input with an empty text",
         predict(rows="text,id\nw4,1\n,2\n"), "in.csv: row 2: 'text' is missing"),
    Case("predict-out-exists", "predict --out exists (without --force)",
         lambda env: (env.case.joinpath("out.jsonl").write_text("mine\n"), predict()(env))[1],
         "out.jsonl: exists; pass --force"),
    # --- outputs
    Case("out-exists", "--out exists (without --force)",
         then(existing("out", {"notes.txt": "mine\n"}), merge("--method", "ties")),
         "--out"),
    Case("out-not-ours", "--force on a folder osrm did not write",
         then(existing("out", {"notes.txt": "mine\n"}), merge("--method", "ties", "--force")),
         "is not an osrm merge output"),
    Case("out-under-a-file", "--out below a regular file",
         lambda env: merge("--method", "ties", out=str(file_in_the_way(env) / "out"))(env),
         "file.txt is a file, not a directory"),
    Case("out-read-only", "--out in a folder without write permission",
         merge("--method", "ties"), "Permission denied", patch=read_only),
    Case("run-dir-not-ours", "run_dir is a non-empty folder that is not an osrm run",
         then(existing("run", {"thesis.tex": "\\begin{document}\n"}), run_cfg()),
         "holds no osrm run"),
    Case("disk-full-merge", "disk full while saving a merged adapter (the previous one stays)",
         previous_output, "No space left on device", patch=full_disk_on_safetensors),
    Case("disk-full-report", "disk full while writing results.md (the previous one stays)",
         report_disk_full, "results.md: No space left on device", allow=("run/*.png",),
         patch=full_disk_on_write_text),
    Case("results-corrupt", "results.jsonl with a corrupt line", corrupt_results,
         "results.jsonl:2: not a result line"),
    Case("results-wrong-type", "results.jsonl line with a score that is not a number",
         results_of_wrong_type, "results.jsonl:1: not a result line (score"),
    Case("recorded-config-corrupt", "run directory whose config.yaml is corrupt",
         corrupt_recorded_config, "config.yaml:2: the run's recorded config is not valid YAML"),
    Case("interference-corrupt", "run directory whose interference.json is corrupt",
         corrupt_interference, "interference.json:1: interference matrices is not valid JSON"),
    Case("run-dir-symlink", "a folder in the run directory is a link to elsewhere", linked_stats,
         "run/stats is a symbolic link"),
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Statistics and `osrm` adapters of the tiny tasks, and one merged LoRA output."""
    ws = tmp_path_factory.mktemp("errors")
    config = make_workspace(ws, inits=("osrm",))
    assert main(["-q", "train", str(config)]) == 0
    adapters = [str(ws / "run" / "adapters" / "osrm" / t) for t in TASKS]
    args = ["-q", "merge", *adapters, "--method", "task_arithmetic", "--format", "lora"]
    assert main([*args, "--out", str(ws / "merged")]) == 0
    return ws


def normalise(text: str, env: Env) -> str:
    return text.replace(str(env.case), "CASE").replace(str(env.ws), "WS")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, workspace: Path, tmp_path: Path, capsys, monkeypatch):
    env = Env(workspace, tmp_path)
    argv = case.argv(env)
    before_ws, before_case = tree(workspace), tree(tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch, env)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: usage errors
        code = e.code
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("osrm: error: "), err
    assert "Traceback" not in err
    assert case.names in lines[0], lines[0]
    assert tree(workspace) == before_ws, "the shared workspace changed"
    after = tree(tmp_path)
    changed = {p for p in after.keys() | before_case.keys() if after.get(p) != before_case.get(p)}
    unexpected = [p for p in changed if not any(fnmatch.fnmatch(p, a) for a in case.allow)]
    assert not unexpected, f"files created or changed: {sorted(unexpected)}"
    assert not leftovers(tmp_path) and not leftovers(workspace)
    if case.check is not None:
        case.check(env)
    MESSAGES[case.id] = normalise(lines[0], env)
    COMMANDS[case.id] = "osrm " + " ".join(normalise(a, env) for a in argv)


def test_debug_shows_the_traceback(workspace: Path, tmp_path: Path, capsys):
    env = Env(workspace, tmp_path)
    with pytest.raises(ValueError, match="unknown key 'lora.rnak'"):
        main(["--debug", *run_cfg(None, None, "lora.rnak=4")(env)])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def render() -> str:
    rows = [
        f"| {i} | {_cell(c.what)} | `{_cell(COMMANDS[c.id])}` | `{_cell(MESSAGES[c.id])}` |"
        for i, c in enumerate(CASES, 1)
    ]
    return "\n".join([
        "# Bad input: what osrm says",
        "",
        "Generated by `tests/test_errors.py`, which runs every case through the real command line",
        "and checks: exit status 2, exactly one line on stderr naming the file or field at fault,",
        "no traceback (`osrm --debug ...` shows it), and nothing created, changed or left",
        "half-written where the command writes. Regenerate after changing a message:",
        "`python tests/test_errors.py --write`.",
        "",
        "`CASE` is the folder holding the bad input, `WS` a workspace with a tiny trained run.",
        "",
        "| # | bad input | command | stderr |",
        "|---|---|---|---|",
        *rows,
        "",
    ])  # fmt: skip


def test_catalogue_doc_is_current():
    if len(MESSAGES) != len(CASES):
        pytest.skip("docs/errors.md is checked when the whole catalogue runs")
    assert len(CASES) >= 25
    text = render()
    if os.environ.get(WRITE_ENV):
        DOC.write_text(text)
    assert DOC.is_file() and DOC.read_text() == text, (
        "docs/errors.md is out of date: python tests/test_errors.py --write"
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_errors.py --write  (regenerates docs/errors.md)")
    os.environ[WRITE_ENV] = "1"
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
