"""The streamed dense merge (osrm.merging.checkpoint): base checkpoint files + merged ΔW, tensor by
tensor, equal to merging into the loaded model; sharded in and out; the base dtype kept; bad
inputs refused before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from osrm.errors import OsrmError
from osrm.merging import merge_adapters, save_merged_model
from osrm.merging.checkpoint import (
    INDEX_FILE,
    _header_bytes,
    base_entries,
    plan_shards,
    save_merged_checkpoint,
)


def tiny_lm(seed: int = 0, hidden: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=64,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def make_adapters(root, model, k: int = 3) -> list[str]:
    """k random rank-2 CAUSAL_LM adapters on q/v/down (no head), ranks and alphas differing."""
    dirs = []
    for i in range(k):
        cfg = LoraConfig(r=2 + i, lora_alpha=4, task_type="CAUSAL_LM",
                         target_modules=["q_proj", "v_proj", "down_proj"])  # fmt: skip
        peft_model = get_peft_model(tiny_lm(0), cfg)
        g = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        path = root / f"task{i}"
        peft_model.save_pretrained(path)
        dirs.append(str(path))
    return dirs


@pytest.fixture
def setup(tmp_path):
    base = tmp_path / "base"
    tiny_lm(0).save_pretrained(base, max_shard_size="20KB")  # several input shards + index
    return base, make_adapters(tmp_path, tiny_lm(0))


def test_streamed_merge_equals_merging_into_the_loaded_model(setup, tmp_path):
    base, dirs = setup
    assert (base / INDEX_FILE).is_file()
    out = save_merged_checkpoint(base, dirs, tmp_path / "m", "ties", [0.5, 1.0, 0.7],
                                 density=0.3, shard_bytes=30_000)  # fmt: skip
    assert (out / INDEX_FILE).is_file() and len(list(out.glob("model-*.safetensors"))) > 2
    assert (out / "config.json").read_text() == (base / "config.json").read_text()
    streamed = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    # the reference: the in-memory merge of the same adapters, written by save_pretrained
    save_merged_model(tiny_lm(0), dirs, tmp_path / "ref", "ties", [0.5, 1.0, 0.7], density=0.3)
    ref = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "ref").named_parameters())
    assert streamed.keys() == ref.keys()
    assert all(torch.equal(streamed[n], ref[n]) for n in ref)
    deltas = merge_adapters(dirs, "ties", [0.5, 1.0, 0.7], density=0.3)
    original = dict(tiny_lm(0).named_parameters())
    assert len(deltas) == 9 and all(
        torch.equal(streamed[n], original[n] + deltas[n]) for n in deltas
    )
    manifest = json.loads((out / "osrm_merge.json").read_text())
    assert manifest["output"] == "dense" and manifest["modules"] == 9
    assert manifest["files"] == sorted(p.name for p in out.glob("model-*.safetensors"))


def test_one_file_output_is_what_safetensors_itself_writes(tmp_path):
    """Header planned before the tensors exist, data streamed: the same bytes as save_file."""
    tensors = {"b.weight": torch.randn(3, 5), "a.bias": torch.randn(7), "c": torch.randn(2, 2)}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    entries = base_entries(tmp_path)
    assert {n: (e.dtype, e.shape, e.nbytes) for n, e in entries.items()} == {
        n: ("F32", tuple(t.shape), t.numel() * 4) for n, t in tensors.items()
    }
    names = plan_shards(entries)[0]
    ours = _header_bytes(names, entries) + b"".join(tensors[n].numpy().tobytes() for n in names)
    assert ours == (tmp_path / "model.safetensors").read_bytes()
    assert plan_shards(entries, shard_bytes=60) == [["a.bias"], ["b.weight"], ["c"]]


def test_a_bf16_base_stays_bf16_and_the_sum_is_formed_in_float32(tmp_path):
    base = tmp_path / "base"
    tiny_lm(0).to(torch.bfloat16).save_pretrained(base)
    dirs = make_adapters(tmp_path, tiny_lm(0), k=2)
    out = save_merged_checkpoint(base, dirs, tmp_path / "m", "task_arithmetic")
    merged = load_file(out / "model.safetensors")
    original = load_file(base / "model.safetensors")
    deltas = merge_adapters(dirs, "task_arithmetic")
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    for name, delta in deltas.items():
        want = (original[name].float() + delta).to(torch.bfloat16)
        assert torch.equal(merged[name], want), name
    untouched = set(original) - set(deltas)
    assert untouched and all(torch.equal(merged[n], original[n]) for n in untouched)


def test_bad_inputs_write_nothing(setup, tmp_path):
    base, dirs = setup
    other = tmp_path / "other"
    tiny_lm(0, hidden=16).save_pretrained(other)  # same names, other shapes
    with pytest.raises(OsrmError, match=r"shape .* is this the adapters' base model"):
        save_merged_checkpoint(other, dirs, tmp_path / "o1", "task_arithmetic")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OsrmError, match="no safetensors weights"):
        save_merged_checkpoint(empty, dirs, tmp_path / "o2", "task_arithmetic")
    with pytest.raises(OsrmError, match="neither a local directory"):  # HF_HUB_OFFLINE=1
        save_merged_checkpoint("no-org/no-model", dirs, tmp_path / "o4", "task_arithmetic")
    with pytest.raises(OsrmError, match="NaN or Inf"):  # found mid-stream: the folder discarded
        save_merged_checkpoint(base, dirs, tmp_path / "o3", "task_arithmetic", scale=1e39)
    assert not any(p.name.startswith(("o1", "o2", "o3", "o4", ".o")) for p in tmp_path.iterdir())


def test_osrm_merge_cli_streams_headless_adapters(setup, tmp_path):
    from osrm.cli import main

    base, dirs = setup
    out = tmp_path / "cli"
    args = ["-q", "merge", *dirs, "--method", "task_arithmetic", "--base", str(base)]
    assert main([*args, "--out", str(out)]) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:  # one file below 5 GiB
        assert f.metadata() == {"format": "pt"}
    assert json.loads((out / "osrm_merge.json").read_text())["streamed_from"] == str(base)
