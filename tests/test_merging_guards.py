"""Classes of merge defects, one mechanism each: members enumerated, numbers checked.

- non-finite tensors are never written or scored (``osrm.guards.check_finite``);
- statistics are matched to adapters by task and base weights (``match_stats``);
- adapters of one base are compared module by module (``base_difference``);
- names that become file names follow one rule (``osrm.safety.check_name``);
- TIES ``normalize`` and RegMean ``gram`` semantics, in closed form.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_bert, synthetic_batches
from osrm.errors import OsrmError
from osrm.evaluate import predict
from osrm.guards import check_finite, first_non_finite
from osrm.merging import (
    METHODS,
    load_adapters,
    lora_deltas,
    merge_adapters,
    save_merged_adapter,
    save_merged_model,
)
from osrm.merging.loading import base_difference
from osrm.safety import MAX_NAME, check_name
from osrm.stats import StatsMeta, collect_stats, load_stats, module_fingerprints, save_stats
from test_merging_adapters import TARGETS, make_adapter

# ---------------------------------------------------------------- non-finite tensors


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_check_finite_names_the_first_bad_tensor(bad):
    tensors = {"a": torch.ones(3), "b": torch.tensor([1.0, bad]), "c": torch.tensor([bad])}
    assert first_non_finite(tensors) == "b"
    with pytest.raises(OsrmError, match="merged weights: b holds NaN or Inf"):
        check_finite(tensors, "merged weights")
    check_finite({"ids": torch.arange(3), "x": torch.zeros(2, dtype=torch.float16)}, "ok")


# every writer of weights refuses an overflow before writing (nothing at the output path)
# lora_alpha 1e38 passes the config check (s = 2.5e37 fits float32), a merge scale of 1e3
# then overflows: every path meets the same check before anything is written
OVERFLOWS = {
    "dense-scale": ("dense", "task_arithmetic", {"scale": 1e39}, {}),
    "lora-scale": ("lora", "task_arithmetic", {"scale": 1e39}, {}),
    "dense-alpha": ("dense", "ties", {"scale": 1e3}, {"lora_alpha": 1e38}),
    "lora-svd-alpha": ("lora", "ties", {"scale": 1e3}, {"lora_alpha": 1e38}),
    "lora-exact-alpha": ("lora", "task_arithmetic", {"scale": 1e3}, {"lora_alpha": 1e38}),
}


@pytest.mark.parametrize("case", sorted(OVERFLOWS))
def test_overflowing_merges_write_nothing(case, tmp_path):
    fmt, method, hp, config = OVERFLOWS[case]
    paths = [make_adapter(tmp_path / t, s)[0] for t, s in (("a", 1), ("b", 2))]
    if config:
        cfg = json.loads((paths[0] / "adapter_config.json").read_text())
        (paths[0] / "adapter_config.json").write_text(json.dumps({**cfg, **config}))
    out = tmp_path / "out"
    with pytest.raises(OsrmError, match="holds NaN or Inf values"):
        if fmt == "dense":
            save_merged_model(make_tiny_bert(), paths, out, method, **hp)
        else:
            save_merged_adapter(paths, out, method, **hp)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_scoring_refuses_non_finite_weights_and_logits():
    from osrm.evaluate import evaluate

    model = make_tiny_bert(num_labels=2)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight[0, 0] = float("nan")
    with pytest.raises(OsrmError, match="model weights .*query.weight holds NaN or Inf"):
        evaluate(model, "sst2", tokenizer=None)
    model = make_tiny_bert(num_labels=2)  # finite weights whose outputs overflow
    with torch.no_grad():
        model.bert.pooler.dense.weight.zero_()
        model.bert.pooler.dense.bias.fill_(100.0)  # pooled features tanh(100) = 1
        model.classifier.weight.fill_(3e38)  # 32 × 3e38 > float32 max
    batches = [
        {**b, "labels": torch.zeros(len(b["input_ids"]))} for b in synthetic_batches(0, 4, 4)
    ]
    with pytest.raises(OsrmError, match="logits"):
        predict(model, batches, regression=False)


# ---------------------------------------------------------------- statistics by identity


def stats_at(path: Path, task: str, seed: int, n: int = 8, **meta) -> Path:
    stats = collect_stats(make_tiny_bert(), synthetic_batches(seed, n, 4), TARGETS, progress=False)
    count = next(iter(stats.values())).count
    fields = {"base_model": "tiny-bert", "fingerprint": "f" * 16, "task": task,
              "n_examples": n, "n_tokens": count, **meta}  # fmt: skip
    save_stats(path / f"{task}.st.safetensors", stats, StatsMeta(**fields))
    return path / f"{task}.st.safetensors"


def with_provenance(path: Path, **fields) -> Path:
    (path / "osrm_provenance.json").write_text(json.dumps({"task": path.name, **fields}))
    return path


def test_statistics_are_matched_by_task_in_any_order(tmp_path):
    paths = [make_adapter(tmp_path / t, s)[0] for t, s in (("a", 1), ("b", 2), ("c", 3))]
    stats = [stats_at(tmp_path, t, s, n=4 * s) for t, s in (("a", 10), ("b", 11), ("c", 12))]
    ordered = merge_adapters(paths, "regmean", [1.0, 2.0, 0.5], stats=stats)
    for order in ([2, 0, 1], [1, 2, 0], [2, 1, 0]):
        shuffled = merge_adapters(
            paths, "regmean", [1.0, 2.0, 0.5], stats=[stats[i] for i in order]
        )
        assert all(torch.equal(ordered[k], shuffled[k]) for k in ordered)
    positional = merge_adapters(paths, "regmean", [1.0, 2.0, 0.5],
                                stats=[load_stats(stats[i])[0] for i in (2, 0, 1)])  # fmt: skip
    assert not all(torch.equal(ordered[k], positional[k]) for k in ordered)  # order mattered


def bad_stats(tmp_path: Path, kind: str) -> list[Path]:
    if kind == "other-weights":
        return [stats_at(tmp_path, "a", 10, fingerprint="0" * 16), stats_at(tmp_path, "b", 11)]
    if kind == "no-statistics-for-a-task":
        return [stats_at(tmp_path, "b", 10), stats_at(tmp_path, "z", 11)]
    if kind == "one-task-twice":
        return [stats_at(tmp_path, "b", 10), stats_at(tmp_path, "b", 10)]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("other-weights", "a.st.safetensors: statistics of other base weights"),
        ("no-statistics-for-a-task", "no statistics for task 'a'"),
        ("one-task-twice", "statistics of task 'b' are given twice"),
    ],
)
def test_statistics_that_do_not_belong_are_refused(kind, message, tmp_path):
    paths = [make_adapter(tmp_path / t, s)[0] for t, s in (("a", 1), ("b", 2))]
    for p in paths:  # the statistics' fingerprint "ffff..." is the adapters' recorded one
        with_provenance(p, base_fingerprint="f" * 16)
    with pytest.raises(OsrmError, match=message):
        merge_adapters(paths, "regmean", stats=bad_stats(tmp_path, kind))


def test_empty_statistics_are_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with pytest.raises(OsrmError, match="'n_tokens' is 0, expected a positive integer"):
        stats_at(tmp_path, "a", 10, n_tokens=0)  # never written...
    assert not list(tmp_path.iterdir())
    path = stats_at(tmp_path, "a", 10)  # ...nor read when written elsewhere
    with safe_open(str(path), framework="pt") as f:
        metadata, data = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(metadata["meta"])
    metadata["meta"] = json.dumps({**meta, "n_tokens": 0})
    data = {k: torch.zeros_like(v) if k.endswith((".count", ".xtx", ".xsum")) else v
            for k, v in data.items()}  # fmt: skip
    save_file(data, str(path), metadata=metadata)
    with pytest.raises(OsrmError, match="'n_tokens' is 0, expected a positive integer"):
        load_stats(path)


def test_regmean_gram_sum_is_the_paper_solve_on_raw_sums(tmp_path):
    paths = [make_adapter(tmp_path / t, s)[0] for t, s in (("a", 1), ("b", 2))]
    # enough tokens (> d_in = 32) for well-conditioned Grams; other sizes: sum != mean
    stats = [stats_at(tmp_path, "a", 10, n=24), stats_at(tmp_path, "b", 11, n=64)]
    raw = [load_stats(p)[0] for p in stats]
    counts = [next(iter(s.values())).count for s in raw]
    assert counts[0] != counts[1]  # otherwise mean and sum would coincide
    # α < 1: LayerNorm outputs span d_in − 1 dimensions, so Σ G_i alone is singular
    alpha = 0.5
    summed = merge_adapters(paths, "regmean", stats=stats, alpha=alpha, gram="sum")
    mean = merge_adapters(paths, "regmean", stats=stats, alpha=alpha)
    sources = [lora_deltas(p) for p in paths]
    for key, delta in summed.items():
        module = key.removesuffix(".weight")
        g = [s[module].xtx.double() for s in raw]  # G_i = X_iᵀX_i, the paper's raw sums
        g = [alpha * x + (1 - alpha) * torch.diag(x.diagonal()) for x in g]
        d = [s[key].double() for s in sources]
        direct = torch.linalg.solve(g[0] + g[1], (d[0] @ g[0] + d[1] @ g[1]).T).T
        torch.testing.assert_close(delta.double(), direct, rtol=1e-4, atol=1e-6)
        assert not torch.allclose(mean[key], delta, rtol=1e-3, atol=1e-6)
    with pytest.raises(OsrmError, match="gram 'total' is not valid"):
        merge_adapters(paths, "regmean", stats=stats, gram="total")


# ---------------------------------------------------------------- one base model


def fingerprints_of(model, modules: list[str]) -> dict[str, str]:
    return module_fingerprints(model, modules)


def layer_modules(kind: str) -> list[str]:
    return [f"bert.encoder.layer.{i}.attention.self.{kind}" for i in (0, 1)]


def test_adapters_of_other_targets_are_compared_on_shared_modules(tmp_path):
    base = make_tiny_bert()
    q = with_provenance(
        make_adapter(tmp_path / "q", 1, targets=["query"])[0],
        base_fingerprints=fingerprints_of(base, layer_modules("query")),
    )
    qv = with_provenance(
        make_adapter(tmp_path / "qv", 2)[0],
        base_fingerprints=fingerprints_of(base, layer_modules("query") + layer_modules("value")),
    )
    assert len(load_adapters([q, qv])) == 2  # same base, other targets: accepted
    other = make_tiny_bert(seed=7)  # another base: its query weights differ
    bad = with_provenance(
        make_adapter(tmp_path / "bad", 3)[0],
        base_fingerprints=fingerprints_of(other, layer_modules("query") + layer_modules("value")),
    )
    a, b = lora_deltas(q), lora_deltas(bad)
    assert "module 'bert.encoder.layer.0.attention.self.query' has different base" in (
        base_difference(a, b) or ""
    )
    with pytest.raises(OsrmError, match="bad: module .*query' has different base weights"):
        load_adapters([q, bad])


def test_single_hash_provenance_is_compared_only_for_equal_targets(tmp_path):
    q = with_provenance(make_adapter(tmp_path / "q", 1, targets=["query"])[0],
                        base_fingerprint="1" * 16)  # fmt: skip
    qv = with_provenance(make_adapter(tmp_path / "qv", 2)[0], base_fingerprint="2" * 16)
    qv2 = with_provenance(make_adapter(tmp_path / "qv2", 3)[0], base_fingerprint="3" * 16)
    assert len(load_adapters([q, qv])) == 2  # other target sets: other hashes of one base
    with pytest.raises(OsrmError, match="qv2: the target modules have different base weights"):
        load_adapters([qv, qv2])


# ---------------------------------------------------------------- adapters and names


@pytest.mark.parametrize("alpha", [1e300, 3.5e39])
def test_lora_alpha_beyond_float32_is_refused(alpha, tmp_path):
    path, _ = make_adapter(tmp_path / "a", 1)  # r = 4: s = alpha / 4 > float32 max
    cfg = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": alpha}))
    with pytest.raises(OsrmError, match="adapter_config.json: .*query: lora_alpha .* float32"):
        lora_deltas(path)


def test_rank_zero_adapter_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = make_adapter(tmp_path / "a", 1)
    weights = load_file(str(path / "adapter_model.safetensors"))
    for key in list(weights):
        if "lora_A" in key:
            weights[key] = weights[key][:0].contiguous()
        elif "lora_B" in key:
            weights[key] = weights[key][:, :0].contiguous()
    save_file(weights, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**cfg, "r": 0}))
    with pytest.raises(OsrmError, match="lora_A has rank 0"):
        lora_deltas(path)


@pytest.mark.parametrize(
    "name", ["lo\x00w", "t" * (MAX_NAME + 1), "a/b", "..", "", "with space", "tab\there"]
)
def test_one_rule_for_names_that_become_file_names(name, tmp_path):
    with pytest.raises(OsrmError):
        check_name(name, "task")
    path = with_provenance(make_adapter(tmp_path / "a", 1)[0])
    (path / "osrm_provenance.json").write_text(json.dumps({"task": name}))
    with pytest.raises(OsrmError, match="osrm_provenance.json: 'task'"):
        save_merged_adapter([path], tmp_path / "out", "task_arithmetic")
    assert not (tmp_path / "out").exists()


def test_longest_allowed_name_passes():
    assert check_name("t" * MAX_NAME, "task") == "t" * MAX_NAME


# ---------------------------------------------------------------- TIES with task weights


def test_ties_normalize_closed_form():
    # 3 tasks, 4 entries, density 1 (no trim): sign elected on the weighted values
    deltas = torch.tensor([[1.0, -2.0, 3.0, 0.0], [2.0, 1.0, -1.0, 0.0], [-4.0, 1.0, 2.0, 0.0]])
    w = torch.tensor([1.0, 2.0, 0.5])
    weighted = deltas * w[:, None]  # [[1,-2,3,0],[4,2,-2,0],[-2,0.5,1,0]]
    # entry 0: Σ = 3 > 0, agreeing tasks 0, 1 -> (1 + 4) / 2, normalize: (1 + 4) / (1 + 2)
    # entry 1: Σ = 0.5 > 0, agreeing 1, 2 -> (2 + 0.5) / 2, normalize: 2.5 / 2.5
    # entry 2: Σ = 2 > 0, agreeing 0, 2 -> (3 + 1) / 2, normalize: 4 / 1.5
    # entry 3: no task -> 0
    assert weighted.sum(0).tolist() == [3.0, 0.5, 2.0, 0.0]
    count = torch.tensor([2.5, 1.25, 2.0, 0.0])
    weight = torch.tensor([5 / 3, 1.0, 4 / 1.5, 0.0])
    for method, extra in (("ties", {}), ("dare_ties", {"seed": 0})):
        fn = METHODS[method]
        out = fn(deltas, w, density=1.0, scale=2.0, **extra)
        torch.testing.assert_close(out, 2.0 * count)
        out = fn(deltas, w, density=1.0, scale=2.0, normalize=True, **extra)
        torch.testing.assert_close(out, 2.0 * weight)
        # normalize: a common factor on the weights cancels; without it, it multiplies
        torch.testing.assert_close(fn(deltas, 3 * w, density=1.0, normalize=True, **extra), weight)
        torch.testing.assert_close(fn(deltas, 3 * w, density=1.0, **extra), 3 * count)
    with pytest.raises(OsrmError, match="normalize must be true or false"):
        METHODS["ties"](deltas, w, normalize="yes")


def test_trained_adapters_and_statistics_with_inf_are_not_written(tmp_path):
    from peft import LoraConfig, get_peft_model

    from osrm.adapters import save_adapter
    from osrm.stats import LayerStats

    cfg = LoraConfig(r=2, target_modules=TARGETS, task_type="SEQ_CLS")
    model = get_peft_model(make_tiny_bert(), cfg)
    name, param = next((n, p) for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        param[0, 0] = float("inf")
    with pytest.raises(OsrmError, match=f"trained adapter .*{name} holds NaN or Inf"):
        save_adapter(model, tmp_path / "adapter")
    xtx = torch.eye(4, dtype=torch.float64)
    xtx[1, 1] = float("nan")
    meta = StatsMeta(base_model="m", fingerprint="f", task="t", n_examples=1, n_tokens=3)
    with pytest.raises(OsrmError, match="q.xtx holds NaN or Inf"):
        save_stats(tmp_path / "t.safetensors", {"q": LayerStats(xtx, torch.zeros(4), 3)}, meta)
    assert sorted(tmp_path.iterdir()) == []
