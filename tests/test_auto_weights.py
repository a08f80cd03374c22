"""Merge weights from statistics (osrm.merging.auto_weights): closed forms and a direct solve."""

from __future__ import annotations

import pytest
import torch

from osrm.errors import OsrmError
from osrm.merging.auto_weights import auto_weights, normal_equations, solve_weights


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_adapters_on_orthogonal_inputs_get_weight_one():
    """ΔW_j reads only coordinates S_j and task t's inputs live on S_t: nothing leaks, λ = 1."""
    k, d, d_out = 3, 9, 5
    deltas = torch.zeros(k, d_out, d, dtype=torch.float64)
    grams = torch.zeros(k, d, d, dtype=torch.float64)
    for j in range(k):
        cols = slice(3 * j, 3 * j + 3)
        deltas[j, :, cols] = torch.randn(d_out, 3, generator=gen(j), dtype=torch.float64)
        x = torch.randn(20, 3, generator=gen(10 + j), dtype=torch.float64)
        grams[j, cols, cols] = x.T @ x / 20
    exact = auto_weights([("m.weight", deltas)], lambda _: grams, ridge=0.0)["m.weight"]
    torch.testing.assert_close(exact, torch.ones(k, dtype=torch.float64))
    ridged = auto_weights([("m.weight", deltas)], lambda _: grams)["m.weight"]
    torch.testing.assert_close(ridged, torch.ones(k, dtype=torch.float64), rtol=0, atol=1e-3)


@pytest.mark.parametrize("ridge", [0.0, 1e-4])
def test_identical_adapters_get_one_over_k(ridge):
    k, d = 4, 6
    one = torch.randn(5, d, generator=gen(1), dtype=torch.float64)
    deltas = one.expand(k, 5, d).clone()
    x = torch.randn(k, 30, d, generator=gen(2), dtype=torch.float64)
    grams = x.transpose(1, 2) @ x / 30
    lam = auto_weights([("m.weight", deltas)], lambda _: grams, ridge=ridge)["m.weight"]
    torch.testing.assert_close(lam, torch.full((k,), 1 / k, dtype=torch.float64))


def test_equals_a_direct_least_squares_solve_over_modules():
    """λ from the normal equations = lstsq on the stacked outputs ΔW_j X_tᵀ / √n_t."""
    k, modules = 3, {"a.weight": (4, 7), "b.weight": (6, 5)}
    deltas, xs = {}, {}
    for i, (name, (d_out, d)) in enumerate(modules.items()):
        deltas[name] = torch.randn(k, d_out, d, generator=gen(i), dtype=torch.float64)
        xs[name] = [torch.randn(10 + t, d, generator=gen(50 + 10 * i + t), dtype=torch.float64)
                    for t in range(k)]  # fmt: skip
    grams = {n: torch.stack([x.T @ x / x.shape[0] for x in xs[n]]) for n in modules}
    columns, target = [], []
    for name in modules:
        for t, x in enumerate(xs[name]):
            outs = [(deltas[name][j] @ x.T / x.shape[0] ** 0.5).flatten() for j in range(k)]
            columns.append(torch.stack(outs, 1))
            target.append(outs[t])
    direct = torch.linalg.lstsq(torch.cat(columns), torch.cat(target).unsqueeze(1)).solution
    lam = auto_weights(deltas.items(), grams.__getitem__, ridge=0.0)
    for name in modules:
        torch.testing.assert_close(lam[name], direct.squeeze(1))
    per_module = auto_weights(deltas.items(), grams.__getitem__, per_module=True, ridge=0.0)
    assert not torch.allclose(per_module["a.weight"], per_module["b.weight"])
    g, b = normal_equations(deltas["a.weight"], grams["a.weight"])
    torch.testing.assert_close(per_module["a.weight"], torch.linalg.solve(g, b))


def test_silent_adapters_and_missing_statistics():
    zeros = torch.zeros(2, 3, 4, dtype=torch.float64)
    lam = solve_weights(*normal_equations(zeros, torch.eye(4, dtype=torch.float64).expand(2, 4, 4)))
    torch.testing.assert_close(lam, torch.full((2,), 0.5, dtype=torch.float64))
    with pytest.raises(OsrmError, match="no module has input statistics"):
        auto_weights([("x.weight", zeros)], lambda _: None)


def test_auto_weights_on_real_adapters_every_output(tmp_path):
    """``weights="auto"``: the λ of the closed form on the adapters' ΔW and Grams, used by TA
    (dense and exact LoRA output) and TIES; per module in the manifest when it varies."""
    from osrm.merging import lora_deltas, merge_adapters, read_manifest, save_merged_adapter
    from osrm.stats import load_stats
    from test_merging_adapters import make_adapter, stats_file

    paths = [make_adapter(tmp_path / t, s)[0] for t, s in (("a", 1), ("b", 2), ("c", 3))]
    stats = [stats_file(tmp_path, t, 10 + i) for i, t in enumerate("abc")]
    sources = [lora_deltas(p) for p in paths]
    loaded = [load_stats(p)[0] for p in stats]
    names = sorted(sources[0])

    def grams(name):
        module = name.removesuffix(".weight")
        return torch.stack([s[module].xtx.double() / s[module].count for s in loaded])

    stacked = [(n, torch.stack([s[n] for s in sources])) for n in names]
    shared = auto_weights(stacked, grams)[names[0]]
    per_module = auto_weights(stacked, grams, per_module=True)
    merged = merge_adapters(paths, "task_arithmetic", "auto", stats=stats, scale=1.0)
    for name in names:
        expected = sum(float(shared[j]) * sources[j][name] for j in range(3))
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)
    ties = merge_adapters(paths, "ties", "auto-per-module", stats=stats, density=0.5)
    plain = merge_adapters(paths, "ties", [1.0, 1.0, 1.0], density=0.5)
    assert any(not torch.allclose(ties[n], plain[n]) for n in names)
    out = save_merged_adapter(paths, tmp_path / "lora", "task_arithmetic", "auto-per-module",
                              stats=stats)  # fmt: skip
    result = lora_deltas(out.path)
    for name in names:
        expected = sum(float(per_module[name][j]) * sources[j][name] for j in range(3))
        torch.testing.assert_close(result[name], expected, rtol=1e-5, atol=1e-6)
    recorded = read_manifest(out.path)["weights"]
    assert sorted(recorded) == names  # per module: the λ differ (from the factors, exactly)
    for n in names:
        assert recorded[n] == pytest.approx([float(x) for x in per_module[n]], rel=1e-6)
    with pytest.raises(OsrmError, match="weights auto: needs statistics"):
        merge_adapters(paths, "task_arithmetic", "auto")
    with pytest.raises(OsrmError, match="weights: expected numbers or one of"):
        merge_adapters(paths, "task_arithmetic", "best", stats=stats)


def test_factored_system_equals_the_dense_one():
    """LoRA factors (ranks 2, 3, absent) give the G and b of their products."""
    from osrm.merging.auto_weights import normal_equations_lora

    d_out, d = 5, 7
    f64 = {"dtype": torch.float64}
    factors = [(torch.randn(d_out, 2, generator=gen(1), **f64),
                torch.randn(2, d, generator=gen(2), **f64)),
               (torch.randn(d_out, 3, generator=gen(3), **f64),
                torch.randn(3, d, generator=gen(4), **f64)),
               None]  # fmt: skip
    dense = torch.stack([f[0] @ f[1] if f else torch.zeros(d_out, d, **f64) for f in factors])
    x = torch.randn(3, 12, d, generator=gen(5), dtype=torch.float64)
    grams = x.transpose(1, 2) @ x / 12
    g_dense, b_dense = normal_equations(dense, grams)
    g_lora, b_lora = normal_equations_lora(factors, grams)
    torch.testing.assert_close(g_lora, g_dense, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(b_lora, b_dense, rtol=1e-9, atol=1e-9)
