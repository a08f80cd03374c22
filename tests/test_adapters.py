"""OSRM adapters on peft: identity at init, A equals the basis, vanilla-peft round trip."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel

from conftest import make_tiny_bert, make_tiny_llama, make_tiny_roberta, synthetic_batches
from osrm.adapters import (
    PROVENANCE_FILE,
    Provenance,
    attach_lora,
    load_provenance,
    lora_layers,
    save_adapter,
)
from osrm.errors import OsrmError
from osrm.models import load_model
from osrm.stats import collect_stats, stats_digest, weight_fingerprint
from osrm.subspace import osrm_bases

MODELS = {
    "bert": (make_tiny_bert, ["query", "value"]),
    "llama": (make_tiny_llama, ["q_proj", "v_proj"]),
    "roberta": (make_tiny_roberta, ["query", "value"]),
}


def task_stats(model, targets):
    """Two synthetic 'tasks' using disjoint halves of the vocabulary."""
    return {
        "low": collect_stats(
            model, synthetic_batches(0, 8, 4, lo=1, hi=32), targets, progress=False
        ),
        "high": collect_stats(
            model, synthetic_batches(1, 8, 4, lo=32, hi=64), targets, progress=False
        ),
    }


def logits(model, batches):
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in batches])


def lora_config(targets, r=4):
    return LoraConfig(
        r=r, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type="SEQ_CLS"
    )


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_identity_at_init_and_a_equals_basis(arch):
    make, targets = MODELS[arch]
    base = make()
    batches = synthetic_batches(5, 6, 3)
    expected = logits(base, batches)
    bases = osrm_bases(task_stats(base, targets), "low", 4)
    model = attach_lora(make(), lora_config(targets), bases=bases).eval()
    torch.testing.assert_close(logits(model, batches), expected, rtol=0, atol=0)
    layers = lora_layers(model)
    assert sorted(layers) == sorted(bases)
    for name, layer in layers.items():
        assert torch.equal(layer.lora_A["default"].weight, bases[name].float())
        assert not layer.lora_B["default"].weight.any()
        assert layer.lora_A["default"].weight.requires_grad


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_round_trip_through_vanilla_peft(arch, tmp_path):
    make, targets = MODELS[arch]
    base = make()
    base.save_pretrained(tmp_path / "base")
    stats = task_stats(base, targets)
    bases = osrm_bases(stats, "high", 4, mode="contrast")
    model = attach_lora(make(), lora_config(targets), bases=bases).eval()
    with torch.no_grad():  # make the adapter and head non-trivial before saving
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.normal_(0, 0.5)
        for p in model.base_model.model.get_submodule(
            "score" if arch == "llama" else "classifier"
        ).parameters():
            p.add_(0.3)
    batches = synthetic_batches(6, 6, 3)
    trained = logits(model, batches)
    assert not torch.allclose(trained, logits(make(), batches), atol=1e-3)
    prov = Provenance(
        task="high",
        init="osrm",
        rank=4,
        mode="contrast",
        stats_digests={t: stats_digest(s) for t, s in stats.items()},
        base_fingerprint=weight_fingerprint(base, bases),
    )
    save_adapter(model, tmp_path / "adapter", prov)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4
    reloaded = PeftModel.from_pretrained(
        type(base).from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    ).eval()
    torch.testing.assert_close(logits(reloaded, batches), trained, rtol=1e-6, atol=1e-6)
    assert load_provenance(tmp_path / "adapter") == prov
    assert load_provenance(tmp_path / "base") is None


def test_freeze_a_stops_gradients_into_a():
    base = make_tiny_bert()
    bases = osrm_bases(task_stats(base, ["query", "value"]), "low", 4)
    model = attach_lora(
        make_tiny_bert(), lora_config(["query", "value"]), bases=bases, freeze_a=True
    )
    out = model(**synthetic_batches(7, 4, 4)[0], labels=torch.tensor([0, 1, 2, 0]))
    out.loss.backward()
    for layer in lora_layers(model).values():
        assert not layer.lora_A["default"].weight.requires_grad
        assert layer.lora_A["default"].weight.grad is None
        assert layer.lora_B["default"].weight.grad is not None
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any("lora_A" in n for n in trainable)
    assert any("classifier" in n for n in trainable)


def test_bad_bases_rejected():
    targets = ["query", "value"]
    bases = osrm_bases(task_stats(make_tiny_bert(), targets), "low", 4)
    name = next(iter(bases))
    with pytest.raises(OsrmError, match="missing"):
        attach_lora(
            make_tiny_bert(),
            lora_config(targets),
            bases={k: v for k, v in bases.items() if k != name},
        )
    with pytest.raises(OsrmError, match=r"expected \(r, d_in\) = \(8, 32\)"):
        attach_lora(make_tiny_bert(), lora_config(targets, r=8), bases=bases)
    cfg = LoraConfig(r=4, target_modules=targets, init_lora_weights="pissa")
    with pytest.raises(OsrmError, match="pissa"):
        attach_lora(make_tiny_bert(), cfg, bases=bases)
    plain = attach_lora(make_tiny_bert(), lora_config(targets))  # peft's default init
    assert all(
        layer.lora_A["default"].weight.abs().sum() > 0 for layer in lora_layers(plain).values()
    )


@pytest.mark.slow
def test_real_minilm_identity_and_round_trip(minilm_dir, tmp_path):
    """all-MiniLM-L6-v2 real weights: OSRM init leaves outputs unchanged and round-trips."""
    texts = {
        "reviews": [
            "A gorgeous, witty film.",
            "The plot drags and the acting is flat.",
            "I loved every minute of it.",
            "Two hours I will never get back.",
        ],
        "questions": [
            "What is the capital of France?",
            "Who wrote Hamlet?",
            "How many feet are in a mile?",
            "When did the war end?",
        ],
    }
    model, tok = load_model(str(minilm_dir), num_labels=2)
    targets = ["query", "value"]
    enc = {t: tok(x, padding=True, return_tensors="pt") for t, x in texts.items()}
    stats = {t: collect_stats(model, [dict(e)], targets, progress=False) for t, e in enc.items()}
    assert stats["reviews"]["bert.encoder.layer.5.attention.self.query"].d_in == 384
    bases = osrm_bases(stats, "reviews", 2)  # few tokens: a small rank keeps C_{-i} meaningful
    torch.manual_seed(0)
    head = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    expected = model(**enc["reviews"]).logits.detach()
    peft_model = attach_lora(model, lora_config(targets, r=2), bases=bases).eval()
    torch.testing.assert_close(peft_model(**enc["reviews"]).logits, expected, rtol=0, atol=0)
    save_adapter(peft_model, tmp_path / "a")
    fresh, _ = load_model(str(minilm_dir), num_labels=2)
    fresh.classifier.load_state_dict(head)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "a").eval()
    torch.testing.assert_close(
        reloaded(**enc["questions"]).logits, peft_model(**enc["questions"]).logits
    )
    layer = lora_layers(reloaded)["bert.encoder.layer.0.attention.self.value"]
    assert torch.equal(
        layer.lora_A["default"].weight, bases["bert.encoder.layer.0.attention.self.value"].float()
    )
    assert not (tmp_path / "a" / PROVENANCE_FILE).exists()
