"""Task vectors of fully fine-tuned checkpoints: dtype handling, heads, lazy files, merging."""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification

from conftest import make_tiny_bert, synthetic_batches
from osrm.merging import (
    apply_deltas,
    full_deltas,
    gram_lookup,
    merge_deltas,
    read_manifest,
    save_merged_model,
)
from osrm.stats import collect_stats

QUERY = "bert.encoder.layer.0.attention.self.query.weight"


def fine_tune(seed: int, dtype=torch.float32, num_labels: int = 3):
    """A 'fine-tuned' copy of the tiny BERT: two parameters and the head changed."""
    model = make_tiny_bert(num_labels=num_labels).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        params = dict(model.named_parameters())
        params[QUERY].add_(torch.randn(params[QUERY].shape, generator=g).to(dtype) * 0.1)
        params["bert.embeddings.LayerNorm.bias"].add_(0.25)
        params["classifier.weight"].normal_(generator=g)
    return model


def test_bf16_checkpoint_from_fp32_base_invents_no_deltas():
    base, ft = make_tiny_bert(), fine_tune(1, torch.bfloat16)
    naive = {n: p.float() - base.get_parameter(n) for n, p in ft.named_parameters()}
    assert (
        sum(bool(d.any()) for d in naive.values()) > 10
    )  # the pitfall: rounding in every random weight
    deltas = full_deltas(ft, base)
    changed = sorted(n for n in deltas if deltas[n].any())
    assert changed == ["bert.embeddings.LayerNorm.bias", QUERY]
    assert deltas[QUERY].dtype == torch.float32
    assert deltas.excluded["classifier.weight"] == "task head"
    assert "classifier.weight" not in deltas and set(deltas.heads()) == {
        "classifier.weight",
        "classifier.bias",
    }


def test_shape_mismatch_is_excluded_and_directories_are_read_lazily(tmp_path):
    base, ft = make_tiny_bert(), fine_tune(2, num_labels=5)
    deltas = full_deltas(ft, base, heads=())
    assert deltas.excluded["classifier.weight"].startswith("shape (5, 32)")
    base.save_pretrained(tmp_path / "base")
    ft.save_pretrained(tmp_path / "ft")
    from_files = full_deltas(tmp_path / "ft", tmp_path / "base")
    assert sorted(from_files) == sorted(full_deltas(ft, base))
    torch.testing.assert_close(from_files[QUERY], deltas[QUERY])


def test_merge_full_fine_tunes_into_a_dense_backbone(tmp_path):
    base = make_tiny_bert()
    sources = [full_deltas(fine_tune(s), base, task=t) for s, t in ((1, "a"), (2, "b"))]
    merged = merge_deltas(sources, "task_arithmetic", [0.5, 0.5])
    expected = (sources[0][QUERY] + sources[1][QUERY]) / 2
    torch.testing.assert_close(merged[QUERY], expected)
    out = save_merged_model(make_tiny_bert(), sources, tmp_path / "m", "ties", density=0.5)
    assert sorted(p.name for p in (out / "heads").iterdir()) == ["a.safetensors", "b.safetensors"]
    model = AutoModelForSequenceClassification.from_pretrained(out)
    reference = make_tiny_bert()
    apply_deltas(reference, merge_deltas(sources, "ties", density=0.5))
    head = sources[0].heads()  # the dense output carries the first task's trained head
    assert head and read_manifest(out)["model_head"] == "a"
    for name, param in reference.named_parameters():
        assert torch.equal(model.get_parameter(name), head.get(name, param)), name


def test_regmean_on_full_fine_tunes_averages_parameters_without_statistics():
    base = make_tiny_bert()
    sources = [full_deltas(fine_tune(s), base) for s in (1, 2)]
    stats = collect_stats(base, synthetic_batches(3, 8, 4), ["query"], progress=False)
    merged = merge_deltas(sources, "regmean", [1.0, 3.0], grams=gram_lookup([stats, stats]))
    average = merge_deltas(sources, "weight_average", [1.0, 3.0])
    bias = "bert.embeddings.LayerNorm.bias"
    torch.testing.assert_close(merged[bias], average[bias])
    # equal Gram matrices: RegMean is the weighted average for the query weights too
    torch.testing.assert_close(merged[QUERY], average[QUERY], rtol=1e-4, atol=1e-6)
    assert not torch.equal(merged[QUERY], torch.zeros_like(merged[QUERY]))
