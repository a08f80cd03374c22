"""Activation statistics: hook values against direct computation, padding, sharing, files."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_tiny_bert, make_tiny_llama, make_tiny_roberta, synthetic_batches
from osrm.errors import OsrmError
from osrm.stats import (
    LayerStats,
    StatsMeta,
    collect_stats,
    find_target_modules,
    load_stats,
    save_stats,
    stats_digest,
    weight_fingerprint,
)

QV = ["query", "value"]
Q0 = "bert.encoder.layer.0.attention.self.query"


def direct_inputs(model, batches, layer_input):
    """Masked rows of each layer's q-projection input, from output_hidden_states. (n, d)"""
    rows = {}
    with torch.no_grad():
        for b in batches:
            out = model(**b, output_hidden_states=True)
            keep = b["attention_mask"].bool()
            for i, h in enumerate(out.hidden_states[:-1]):
                rows.setdefault(i, []).append(layer_input(model, i, h)[keep].double())
    return {i: torch.cat(r) for i, r in rows.items()}


def test_bert_hooks_equal_direct_xtx():
    model = make_tiny_bert()
    batches = synthetic_batches(0, 10, 4)
    stats = collect_stats(model, batches, QV, progress=False)
    direct = direct_inputs(model, batches, lambda m, i, h: h)
    for i, x in direct.items():
        s = stats[f"bert.encoder.layer.{i}.attention.self.query"]
        torch.testing.assert_close(s.xtx, x.T @ x, rtol=1e-10, atol=1e-9)
        torch.testing.assert_close(s.xsum, x.sum(0), rtol=1e-10, atol=1e-9)
        assert s.count == x.shape[0] == sum(int(b["attention_mask"].sum()) for b in batches)
        assert s.xtx.dtype == torch.float64


def test_roberta_hooks_equal_direct_xtx_and_padding_ignored():
    model = make_tiny_roberta()
    padded, single = synthetic_batches(10, 6, 3), synthetic_batches(10, 6, 1)
    stats = collect_stats(model, padded, QV, progress=False)
    for i, x in direct_inputs(model, padded, lambda m, i, h: h).items():
        s = stats[f"roberta.encoder.layer.{i}.attention.self.value"]
        torch.testing.assert_close(s.xtx, x.T @ x, rtol=1e-10, atol=1e-9)
    ref = collect_stats(model, single, QV, progress=False)
    for name in ref:
        torch.testing.assert_close(stats[name].xtx, ref[name].xtx, rtol=1e-5, atol=1e-5)


def test_llama_hooks_equal_direct_xtx_after_norm():
    model = make_tiny_llama()
    batches = synthetic_batches(1, 6, 3)
    stats = collect_stats(model, batches, ["q_proj", "v_proj"], progress=False)
    norm = lambda m, i, h: m.model.layers[i].input_layernorm(h)  # noqa: E731
    for i, x in direct_inputs(model, batches, norm).items():
        s = stats[f"model.layers.{i}.self_attn.v_proj"]
        torch.testing.assert_close(s.xtx, x.T @ x, rtol=1e-6, atol=1e-6)
        assert s.count == x.shape[0]


def test_padding_contributes_nothing_and_batch_size_does_not_matter():
    model = make_tiny_bert()
    one_by_one = synthetic_batches(2, 8, 1)  # batch size 1: no padding at all
    by_eight = synthetic_batches(2, 8, 8)  # same sequences, padded to the longest
    extra = [dict(b) for b in by_eight]  # and padded 5 more positions with non-zero ids
    extra[0]["input_ids"] = torch.cat([extra[0]["input_ids"], torch.full((8, 5), 7)], 1)
    extra[0]["attention_mask"] = torch.cat(
        [extra[0]["attention_mask"], torch.zeros(8, 5, dtype=torch.long)], 1
    )
    ref = collect_stats(model, one_by_one, QV, progress=False)
    for other in (by_eight, extra):
        got = collect_stats(model, other, QV, progress=False)
        for name in ref:
            torch.testing.assert_close(got[name].xtx, ref[name].xtx, rtol=1e-5, atol=1e-5)
            assert got[name].count == ref[name].count
    everything = collect_stats(model, extra, QV, mask="none", progress=False)
    assert everything[Q0].count == 8 * extra[0]["input_ids"].shape[1] > ref[Q0].count


def test_shared_input_detection_bert():
    model = make_tiny_bert()
    targets = r".*encoder.*\.(query|key|value|dense)"  # a regex, as peft accepts; skips the pooler
    stats = collect_stats(model, synthetic_batches(3, 4, 2), targets, progress=False)
    for i in range(2):
        p = f"bert.encoder.layer.{i}."
        q, k, v = (stats[p + f"attention.self.{n}"] for n in ("query", "key", "value"))
        assert q is k is v
        dense = [
            stats[p + n] for n in ("attention.output.dense", "intermediate.dense", "output.dense")
        ]
        assert len({id(s) for s in [q, *dense]}) == 4  # every other linear has its own input
    assert (
        stats["bert.encoder.layer.0.attention.self.query"]
        is not stats["bert.encoder.layer.1.attention.self.query"]
    )


def test_shared_input_detection_llama():
    model = make_tiny_llama()
    names = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    stats = collect_stats(model, synthetic_batches(4, 4, 2), names, progress=False)
    p = "model.layers.0."
    s = {n: stats[p + ("self_attn." if n[0] in "qkvo" else "mlp.") + n] for n in names}
    assert s["q_proj"] is s["k_proj"] is s["v_proj"]
    assert s["gate_proj"] is s["up_proj"]
    groups = {id(v) for v in s.values()}
    assert len(groups) == 4  # qkv, o, gate/up, down
    assert s["down_proj"].d_in == 64 and s["q_proj"].d_in == 32


def test_hooks_removed_when_forward_raises():
    model = make_tiny_bert()
    bad = [
        {
            "input_ids": torch.full((1, 4), 10_000),
            "attention_mask": torch.ones(1, 4, dtype=torch.long),
        }
    ]
    with pytest.raises(IndexError):
        collect_stats(model, bad, QV, progress=False)
    assert all(not m._forward_pre_hooks for m in model.modules()) and not model.training
    model.train()
    collect_stats(model, synthetic_batches(0, 2, 2), QV, progress=False)
    assert model.training and all(not m._forward_pre_hooks for m in model.modules())


def test_additivity_exact_over_disjoint_batches():
    model = make_tiny_bert()
    batches = synthetic_batches(5, 12, 4)
    whole = collect_stats(model, batches, QV, progress=False)
    a = collect_stats(model, batches[:1], QV, progress=False)
    b = collect_stats(model, batches[1:], QV, progress=False)
    for name in whole:
        summed = a[name] + b[name]
        torch.testing.assert_close(summed.xtx, whole[name].xtx, rtol=1e-12, atol=1e-12)
        assert summed.count == whole[name].count
    assert sum([a[Q0], b[Q0]]).count == whole[Q0].count
    s = whole[Q0]
    torch.testing.assert_close(s.covariance(), s.second_moment() - torch.outer(s.mean(), s.mean()))


def test_adding_different_dims_fails():
    a = LayerStats(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 1)
    b = LayerStats(torch.eye(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 1)
    with pytest.raises(OsrmError, match="d_in"):
        a + b


def _meta(stats, **kw):
    n = next(iter(stats.values())).count
    base = dict(
        base_model="tiny-bert",
        fingerprint="f" * 16,
        task="t",
        n_examples=6,
        n_tokens=n,
        max_length=12,
    )
    return StatsMeta(**{**base, **kw})


def test_save_load_round_trip(tmp_path):
    model = make_tiny_bert()
    stats = collect_stats(model, synthetic_batches(6, 6, 3), QV, progress=False)
    meta = _meta(stats, fingerprint=weight_fingerprint(model, stats))
    path = tmp_path / "s.safetensors"
    save_stats(path, stats, meta)
    loaded, meta2 = load_stats(path)
    assert meta2 == meta and sorted(loaded) == sorted(stats)
    for name in stats:
        assert (
            torch.equal(loaded[name].xtx, stats[name].xtx)
            and loaded[name].count == stats[name].count
        )
    assert loaded[Q0] is loaded[Q0.replace("query", "value")]  # sharing survives the round trip
    assert len(load_file(path)) == 3 * 2  # one accumulation per layer stored, not per module
    assert stats_digest(loaded) == stats_digest(stats)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left


def test_digest_and_fingerprint_change_with_content():
    model = make_tiny_bert()
    stats = collect_stats(model, synthetic_batches(7, 4, 2), QV, progress=False)
    other = collect_stats(model, synthetic_batches(8, 4, 2), QV, progress=False)
    assert stats_digest(stats) != stats_digest(other)
    names = list(find_target_modules(model, QV))
    fp = weight_fingerprint(model, names)
    assert fp == weight_fingerprint(make_tiny_bert(), names)
    with torch.no_grad():
        model.get_submodule(Q0).weight[0, 0] += 1e-3
    assert weight_fingerprint(model, names) != fp


@pytest.fixture
def saved(tmp_path):
    model = make_tiny_bert()
    stats = collect_stats(model, synthetic_batches(9, 4, 2), QV, progress=False)
    path = tmp_path / "s.safetensors"
    save_stats(path, stats, _meta(stats))
    return path


def _rewrite(path, mutate_tensors=None, mutate_meta=None):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    tensors = load_file(path)
    if mutate_tensors:
        mutate_tensors(tensors)
    if mutate_meta:
        mutate_meta(metadata)
    save_file(tensors, str(path), metadata=metadata)


def _set_nan(t):
    t[Q0 + ".xtx"][0, 0] = float("nan")


def _bad_shape(t):
    t[Q0 + ".xsum"] = torch.zeros(5, dtype=torch.float64)


def _drop_count(t):
    del t[Q0 + ".count"]


def _asym(t):
    t[Q0 + ".xtx"][0, 1] += 1.0


def _wrong_format(m):
    m["format"] = "something-else"


def _bad_meta(m):
    m["meta"] = json.dumps({"task": "t"})


def _bad_alias(m):
    m["aliases"] = json.dumps({"x.value": "missing.query"})


def _wrong_tokens(m):
    meta = json.loads(m["meta"])
    meta["n_tokens"] += 1
    m["meta"] = json.dumps(meta)


@pytest.mark.parametrize(
    ("tensors", "meta", "message"),
    [
        (_set_nan, None, "NaN or Inf"),
        (_bad_shape, None, "shapes"),
        (_drop_count, None, "lacks tensor"),
        (_asym, None, "not symmetric"),
        (None, _wrong_format, "'format'"),
        (None, _bad_meta, "lacks fields"),
        (None, _bad_alias, "missing module"),
        (None, _wrong_tokens, "n_tokens"),
    ],
)
def test_inconsistent_files_rejected(saved, tensors, meta, message):
    _rewrite(saved, tensors, meta)
    with pytest.raises(OsrmError, match=message) as info:
        load_stats(saved)
    assert str(saved) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_and_missing_files_rejected(saved, tmp_path):
    data = saved.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    for name in ("trunc.safetensors", "junk.safetensors", "absent.safetensors"):
        with pytest.raises(OsrmError, match=name):
            load_stats(tmp_path / name)


def test_target_module_errors():
    model = make_tiny_bert()
    with pytest.raises(OsrmError, match="matches no linear layer.*query"):
        collect_stats(model, [], ["q_proj"], progress=False)
    with pytest.raises(OsrmError, match="expected only linear layers"):
        find_target_modules(model, ["attention"])
    with pytest.raises(OsrmError, match="mask"):
        collect_stats(model, [], QV, mask="some", progress=False)
    batches = synthetic_batches(0, 2, 2)
    with pytest.raises(
        OsrmError, match="pooler.dense: input shape .* does not match attention_mask"
    ):
        collect_stats(model, batches, ["pooler.dense"], progress=False)
    pooled = collect_stats(model, batches, ["pooler.dense"], mask="none", progress=False)
    assert pooled["bert.pooler.dense"].count == 2  # one pooled vector per sequence
    assert replace(_meta({"a": LayerStats(torch.eye(2), torch.zeros(2), 3)}), task="x").task == "x"
