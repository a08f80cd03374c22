"""OSRM subspaces on hand-made covariances with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from osrm.diagnostics import energy, subspace_report, summarise_report
from osrm.errors import OsrmError
from osrm.stats import LayerStats, StatsMeta
from osrm.subspace import osrm_bases, random_orthonormal, seeded_generator

D, R = 12, 3


def rotation(seed: int, d: int = D) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q


def stats_from(c: torch.Tensor, count: int = 100, mean: torch.Tensor | None = None) -> LayerStats:
    """LayerStats whose second moment is exactly ``c`` (and mean ``mean``)."""
    mean = torch.zeros(c.shape[0], dtype=torch.float64) if mean is None else mean
    return LayerStats(c * count, mean * count, count)


def spd(seed: int, eig: torch.Tensor) -> torch.Tensor:
    q = rotation(seed, len(eig))
    return q @ torch.diag(eig) @ q.T


def same_span(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference between the projectors onto two row spaces (0 = same span)."""
    pa = a.T @ torch.linalg.pinv(a.T)
    pb = b.T @ torch.linalg.pinv(b.T)
    return float((pa - pb).abs().max())


LAM = torch.tensor([0.01, 0.02, 0.05, 0.1, 0.3, 0.5, 1, 2, 3, 5, 8, 13], dtype=torch.float64)


def test_cov_mode_returns_smallest_eigenvectors():
    q = rotation(0)
    c = q @ torch.diag(LAM) @ q.T
    stats = {
        "a": {"m": stats_from(spd(1, LAM + 1))},
        "b": {"m": stats_from(c, 50)},
        "c": {"m": stats_from(c, 500)},
    }
    a = osrm_bases(stats, "a", R)["m"]
    assert a.shape == (R, D) and a.dtype == torch.float64
    torch.testing.assert_close(a @ a.T, torch.eye(R, dtype=torch.float64), atol=1e-12, rtol=0)
    for i in range(R):  # row i is ± the eigenvector of the i-th smallest eigenvalue
        assert abs(float(a[i] @ q[:, i])) == pytest.approx(1.0, abs=1e-10)
        assert a[i, a[i].abs().argmax()] > 0  # deterministic sign
    assert energy(a, c) * float(torch.trace(c)) == pytest.approx(float(LAM[:R].sum()), rel=1e-10)
    rand = random_orthonormal(R, D, torch.Generator().manual_seed(0))
    assert energy(a, c) < energy(rand, c)
    assert torch.equal(a, osrm_bases(stats, "a", R)["m"])


def test_cov_weighting_and_centering():
    c1, c2 = spd(2, LAM), spd(3, LAM.flip(0))
    mu = torch.linspace(-1, 1, D, dtype=torch.float64)
    stats = {
        "a": {"m": stats_from(spd(4, LAM))},
        "b": {"m": stats_from(c1, 10, mu)},
        "c": {"m": stats_from(c2, 990)},
    }
    cases = {
        ("equal", False): (c1 + c2) / 2,  # equal weight per task whatever the token counts
        ("tokens", False): (10 * c1 + 990 * c2) / 1000,
        ("equal", True): (c1 - torch.outer(mu, mu) + c2) / 2,
    }
    for (weighting, center), expected in cases.items():
        got = osrm_bases(stats, "a", R, weighting=weighting, center=center)["m"]
        _, vecs = torch.linalg.eigh(expected)
        assert same_span(got, vecs[:, :R].T) < 1e-8, (weighting, center)


def mean_stats(seed: int, n_tasks: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        f"t{i}": {
            "m": stats_from(spd(10 + i, LAM), 100, torch.randn(D, generator=g, dtype=torch.float64))
        }
        for i in range(n_tasks)
    }


def test_mean_mode_svd_matches_direct_svd_and_is_orthogonal_to_means():
    stats = mean_stats(0)
    a = osrm_bases(stats, "t0", R, mode="mean")["m"]
    means = torch.stack([stats[t]["m"].mean() for t in ("t1", "t2", "t3")])
    # the reference code: full SVD of the stacked means, last r right-singular vectors
    _, _, vh = torch.linalg.svd(means, full_matrices=True)
    for i in range(R):  # same vectors up to sign
        assert abs(float(a[i] @ vh[D - R + i])) == pytest.approx(1.0, abs=1e-12)
    assert float((a @ means.T).abs().max()) < 1e-10
    torch.testing.assert_close(a @ a.T, torch.eye(R, dtype=torch.float64), atol=1e-12, rtol=0)


def test_mean_mode_random_basis_in_null_space_and_seeded():
    stats = mean_stats(1)
    means = torch.stack([stats[t]["m"].mean() for t in ("t1", "t2", "t3")])
    a = osrm_bases(stats, "t0", R, mode="mean", basis="random", seed=5)["m"]
    assert float((a @ means.T).abs().max()) < 1e-10
    torch.testing.assert_close(a @ a.T, torch.eye(R, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.equal(a, osrm_bases(stats, "t0", R, mode="mean", basis="random", seed=5)["m"])
    assert not torch.allclose(
        a, osrm_bases(stats, "t0", R, mode="mean", basis="random", seed=6)["m"]
    )
    svd = osrm_bases(stats, "t0", R, mode="mean")["m"]
    assert same_span(a, svd) > 0.1  # a different subspace inside the same null space
    with pytest.raises(OsrmError, match="null space"):
        osrm_bases(stats, "t0", D - 2, mode="mean")  # null space has dimension D - 3


def contrast_case():
    c_other = spd(20, LAM)
    own_eig = torch.tensor(
        [9, 7, 5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64
    )
    c_own = spd(21, own_eig)
    stats = {
        "own": {"m": stats_from(c_own)},
        "x": {"m": stats_from(c_other)},
        "y": {"m": stats_from(c_other)},
    }
    return stats, c_own, c_other


def test_contrast_mode_spans_top_generalised_eigenvectors():
    stats, c_own, c_other = contrast_case()
    ridge = 0.05
    a = osrm_bases(stats, "own", R, mode="contrast", ridge=ridge)["m"]
    delta = ridge * float(torch.trace(c_other)) / D
    _, v = scipy.linalg.eigh(c_own.numpy(), c_other.numpy() + delta * np.eye(D))
    top = torch.from_numpy(v[:, -R:].T.copy())
    assert same_span(a, top) < 1e-8
    torch.testing.assert_close(a @ a.T, torch.eye(R, dtype=torch.float64), atol=1e-12, rtol=0)


def test_contrast_ratio_beats_cov_and_random():
    # method.md §7: the lowest-energy directions are shared by all tasks (dead for task i too),
    # so cov mode lands where task i has no energy either; contrast finds i's own directions.
    q = rotation(40)
    dead = q[:, :R] @ q[:, :R].T * 1e-3
    live = q[:, R:]  # (D, D - R)
    rest = lambda seed, eig: live @ spd(seed, eig) @ live.T  # noqa: E731
    k = D - R
    c_other = dead + rest(41, torch.linspace(1, 10, k, dtype=torch.float64))
    c_own = dead + rest(42, torch.linspace(1, 10, k, dtype=torch.float64))
    stats = {
        "own": {"m": stats_from(c_own)},
        "x": {"m": stats_from(c_other)},
        "y": {"m": stats_from(c_other)},
    }
    ratio = lambda a: energy(a, c_own) / energy(a, c_other)  # noqa: E731
    contrast = ratio(osrm_bases(stats, "own", R, mode="contrast")["m"])
    cov = ratio(osrm_bases(stats, "own", R, mode="cov")["m"])
    rand = ratio(random_orthonormal(R, D, seeded_generator(0, "own")))
    assert contrast > cov and contrast > rand
    assert contrast > 3 * rand


def test_shared_modules_get_the_same_basis():
    s = {t: stats_from(spd(30 + i, LAM)) for i, t in enumerate("abc")}
    stats = {t: {"l0.q": s[t], "l0.v": s[t]} for t in "abc"}
    bases = osrm_bases(stats, "a", R)
    assert bases["l0.q"] is bases["l0.v"]


def test_errors():
    stats = mean_stats(2, 3)
    with pytest.raises(OsrmError, match="unknown task 'zz'"):
        osrm_bases(stats, "zz", R)
    with pytest.raises(OsrmError, match="at least 2 tasks"):
        osrm_bases({"t0": stats["t0"]}, "t0", R)
    with pytest.raises(OsrmError, match="exceeds d_in 12"):
        osrm_bases(stats, "t0", D + 1)
    for bad in (0, 2.0, True):
        with pytest.raises(OsrmError, match="positive integer"):
            osrm_bases(stats, "t0", bad)
    with pytest.raises(OsrmError, match="mode 'eig'"):
        osrm_bases(stats, "t0", R, mode="eig")
    with pytest.raises(OsrmError, match="different modules"):
        osrm_bases({**stats, "t1": {"other": stats["t1"]["m"]}}, "t0", R)
    small = LayerStats(torch.eye(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 1)
    with pytest.raises(OsrmError, match="input dimensions differ"):
        osrm_bases({**stats, "t2": {"m": small}}, "t0", R)
    metas = {
        t: StatsMeta("m", fp, t, 1, 100) for t, fp in zip(stats, ["aa", "aa", "bb"], strict=True)
    }
    with pytest.raises(OsrmError, match="different base weights"):
        osrm_bases(stats, "t0", R, metas=metas)


def test_report_energies_and_overlaps():
    stats = mean_stats(3, 3)
    bases = {t: osrm_bases(stats, t, R) for t in stats}
    energies, overlaps = subspace_report(stats, bases)
    assert len(energies) == 3 and len(overlaps) == 3
    row = energies[0]
    c_other = (stats["t1"]["m"].second_moment() + stats["t2"]["m"].second_moment()) / 2
    a = bases["t0"]["m"]
    expected = float(torch.trace(a @ c_other @ a.T) / torch.trace(c_other))
    assert row.other == pytest.approx(expected, rel=1e-12)
    assert row.other < row.other_random
    assert 0 < row.other_random < 1 and 0 < row.own_random < 1
    # identical subspaces overlap 1, complementary ones 0
    q = rotation(5)
    same = {"a": {"m": q[:R].T.T}, "b": {"m": q[:R]}, "c": {"m": q[R : 2 * R]}}
    _, ov = subspace_report(stats | {"a": stats["t0"], "b": stats["t1"], "c": stats["t2"]}, same)
    values = {(o.task_a, o.task_b): o.overlap for o in ov}
    assert values[("a", "b")] == pytest.approx(1.0) and values[("a", "c")] == pytest.approx(
        0.0, abs=1e-12
    )
    summary = summarise_report(energies, overlaps)
    assert [s["task"] for s in summary] == ["t0", "t1", "t2"]
    assert summary[0]["other"] == pytest.approx(row.other)
