"""The training loop: learns, resumes exactly, accumulates exactly, honours freeze_a."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel

from conftest import make_tiny_bert, make_tiny_llama, make_tiny_roberta, synthetic_batches
from osrm.adapters import RECORD_FILE, attach_lora, lora_layers
from osrm.config import TrainSection, load_config
from osrm.errors import OsrmError
from osrm.evaluate import evaluate
from osrm.models import load_model
from osrm.pipeline import DEMO_CONFIG
from osrm.stages.evaluation import eval_task, load_adapter_model
from osrm.stages.training import train_task
from osrm.stats import collect_stats
from osrm.subspace import osrm_bases
from osrm.tasks.registry import get_task, load_task
from osrm.train import train, use_bf16
from osrm.train_state import FILE as CKPT_FILE

ARCHS = {
    "bert": (make_tiny_bert, ["query", "value"]),
    "roberta": (make_tiny_roberta, ["query", "value"]),
    "llama": (make_tiny_llama, ["q_proj", "v_proj"]),
}


def learnable(epoch: int, n: int = 48, batch_size: int = 8, regression: bool = False):
    """Label = whether the sequence's tokens are mostly from the upper half of the vocabulary."""
    out = []
    coin = torch.rand(n, generator=torch.Generator().manual_seed(epoch)) < 0.5  # per example
    for i, b in enumerate(synthetic_batches(1000 + epoch, n, batch_size)):
        ids = b["input_ids"].clone()
        high = coin[i * batch_size : i * batch_size + ids.shape[0]]
        ids[high] = torch.where(b["attention_mask"][high] > 0, ids[high] % 32 + 32, ids[high])
        ids[~high] = torch.where(b["attention_mask"][~high] > 0, ids[~high] % 31 + 1, ids[~high])
        b["input_ids"] = ids
        b["labels"] = high.float() * 2 - 1 if regression else high.long()
        out.append(b)
    return out


def peft(make, targets, num_labels=2, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="SEQ_CLS")
    return attach_lora(make(num_labels=num_labels), cfg, **kw)


CFG = TrainSection(steps=30, lr=1e-2, batch_size=8, checkpoint_every=5, warmup_ratio=0.1)
LEARN = CFG.model_copy(update={"steps": 60, "lr": 3e-2})


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_few_steps_lower_the_loss(arch):
    make, targets = ARCHS[arch]
    model = peft(make, targets)
    result = train(model, learnable, LEARN, progress=False)
    assert result.steps == 60 and len(result.losses) == 60 and result.tokens > 0
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_regression_head_path():
    model = peft(make_tiny_bert, ["query", "value"], num_labels=1)
    assert model.config.problem_type in (None, "regression")
    data = lambda e: learnable(e, regression=True)  # noqa: E731
    result = train(model, data, LEARN, progress=False)
    assert model.config.problem_type == "regression"  # MSE on float targets
    assert sum(result.losses[-5:]) < 0.5 * sum(result.losses[:5])


def test_resume_gives_the_same_final_weights(tmp_path):
    straight = peft(make_tiny_bert, ["query", "value"])
    ref = train(straight, learnable, CFG, progress=False)

    def stop_at(step, loss):
        if step == 17:
            raise KeyboardInterrupt

    interrupted = peft(make_tiny_bert, ["query", "value"])
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, learnable, CFG, checkpoint_dir=tmp_path, on_step=stop_at, progress=False)
    assert (tmp_path / CKPT_FILE).is_file()  # last checkpoint: step 15
    resumed = peft(make_tiny_bert, ["query", "value"], seed=123)  # different starting weights
    result = train(resumed, learnable, CFG, checkpoint_dir=tmp_path, progress=False)
    assert result.resumed_from == 15 and result.losses == ref.losses
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    other = peft(make_tiny_bert, ["query", "value"])
    fresh = train(
        other, learnable, CFG, checkpoint_dir=tmp_path, fingerprint="another", progress=False
    )
    assert fresh.resumed_from == 0  # a checkpoint of another run is not resumed


def test_gradient_accumulation_matches_one_big_batch():
    full = peft(make_tiny_bert, ["query", "value"])
    split = peft(make_tiny_bert, ["query", "value"])
    cfg = TrainSection(steps=6, lr=1e-2, batch_size=8, warmup_ratio=0.0)
    train(full, lambda e: learnable(e, 48, 8), cfg, progress=False)
    # the same examples in micro-batches of 4 (padding differs, so up to float rounding)
    train(
        split,
        lambda e: learnable(e, 48, 4),
        cfg.model_copy(update={"grad_accum": 2}),
        progress=False,
    )
    for (name, a), b in zip(full.state_dict().items(), split.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("freeze", [True, False])
def test_osrm_training_keeps_a_only_when_frozen(freeze):
    base = make_tiny_bert()
    stats = {
        t: collect_stats(
            base, synthetic_batches(s, 8, 4, lo=lo, hi=hi), ["query", "value"], progress=False
        )
        for t, s, lo, hi in (("low", 0, 1, 32), ("high", 1, 32, 64))
    }
    bases = osrm_bases(stats, "low", 4)
    model = peft(make_tiny_bert, ["query", "value"], bases=bases, freeze_a=freeze)
    train(model, learnable, CFG.model_copy(update={"steps": 5}), progress=False)
    for name, layer in lora_layers(model).items():
        same = torch.equal(layer.lora_A["default"].weight, bases[name].float())
        assert same is freeze, name
        assert layer.lora_B["default"].weight.abs().sum() > 0  # B always trains


def test_empty_data_and_bad_config():
    model = peft(make_tiny_bert, ["query", "value"])
    with pytest.raises(OsrmError, match="training data is empty"):
        train(model, lambda e: [], CFG, progress=False)
    with pytest.raises(ValueError, match="not a multiple of grad_accum"):
        TrainSection(batch_size=8, grad_accum=3)
    assert not use_bf16(CFG, torch.device("cpu"))


def test_evaluate_uses_sklearn_metrics_on_a_fixed_model(minilm_dir):
    """Metrics of a model whose predictions we know: a head that always says class 1."""
    cfg = load_config(DEMO_CONFIG, [f"model.name={minilm_dir}", "eval.max_eval_examples=40"])
    model, tok = load_model(str(minilm_dir), num_labels=2)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 1.0]))
    scores = eval_task(cfg, model, tok, get_task("sms_spam"))
    labels = list(load_task("sms_spam", "test", max_examples=40)["label"])
    share = sum(labels) / len(labels)
    assert scores["accuracy"] == pytest.approx(share)
    assert scores["f1"] == pytest.approx(2 * share / (1 + share))  # precision share, recall 1
    direct = evaluate(model, "sms_spam", "test", tokenizer=tok, max_examples=40, max_length=128)
    assert direct == scores


@pytest.mark.slow
def test_real_minilm_50_steps_beat_the_majority_class(tmp_path):
    cfg = load_config(
        DEMO_CONFIG,
        ["train.steps=50", "train.lr=1e-2", "train.max_length=64", "eval.max_eval_examples=300"],
    )
    record = train_task(cfg, get_task("trec"), tmp_path / "trec", progress=False)
    saved = json.loads((tmp_path / "trec" / RECORD_FILE).read_text())
    assert saved["steps"] == 50 and saved["losses"] == record["losses"]
    assert not any(p.name.endswith(".ckpt") for p in tmp_path.iterdir())  # cleaned up
    model, tok = load_adapter_model(cfg, tmp_path / "trec", get_task("trec"))
    assert isinstance(model, PeftModel)
    accuracy = eval_task(cfg, model, tok, get_task("trec"))["accuracy"]
    labels = list(load_task("trec", "test", max_examples=300)["label"])
    majority = max(labels.count(c) for c in set(labels)) / len(labels)
    assert accuracy > majority + 0.3, (accuracy, majority)
