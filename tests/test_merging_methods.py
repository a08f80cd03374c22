"""Merge methods on hand-made tensors: closed forms, the registry contract, peft cross-checks."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft.utils import merge_utils

from osrm.errors import OsrmError
from osrm.merging import (
    METHODS,
    check_hyperparameters,
    disjoint_mean,
    drop_random,
    elect_sign,
    get_method,
    hyperparameters,
    trim_magnitude,
    validate_hyperparameters,
)
from osrm.merging.primitives import top_mask
from osrm.merging.spectral import block_svd, factored_truncate, thin_svd, truncate

D1 = torch.tensor([[1.0, -2.0, 3.0], [0.0, 4.0, -0.5]])
D2 = torch.tensor([[-1.0, 2.0, 1.5], [2.0, -3.0, 0.5]])
PAIR = torch.stack([D1, D2])  # (k=2, d_out=2, d_in=3), no magnitude ties within a task
ONES = torch.ones(2)


def spd(k: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, 3 * d, d, generator=g, dtype=torch.float64)
    return x.transpose(1, 2) @ x / (3 * d)  # (k, d, d) well-conditioned Gram matrices


def extra_inputs(name: str, deltas: torch.Tensor) -> dict:
    """Inputs a method needs beyond the deltas: Gram matrices for statistics-based methods."""
    k, d_in = deltas.shape[0], deltas.shape[-1]
    return {"grams": spd(k, d_in)} if METHODS[name].needs_stats else {}


# hyperparameters that make each method return a single task's delta unchanged
IDENTITY_HP = {
    "weight_average": {},
    "task_arithmetic": {},
    "ties": {"density": 1.0},
    "dare_linear": {"density": 1.0},
    "dare_ties": {"density": 1.0},
    "magnitude_prune": {"density": 1.0},
    "breadcrumbs": {"density": 1.0, "gamma": 0.0},
    "knots": {"density": 1.0},
    "tsv": {},
    "regmean": {},
}
ELEMENTWISE = (
    "weight_average",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "breadcrumbs",
)


def test_every_method_is_covered_and_documented():
    assert set(IDENTITY_HP) == set(METHODS)
    for name, method in METHODS.items():
        doc = method.fn.__doc__ or ""
        assert any(str(year) in doc for year in range(2020, 2027)), f"{name} cites no paper"
        hp = hyperparameters(name)
        assert "scale" in hp and hp["scale"] == 1.0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_registry_matches_the_function_signature(name):
    """Each record's hyperparameters (defaults, order) are its function's defaulted keywords (and
    ``seed`` last for a random method); its inputs are the keywords without a default."""
    method = METHODS[name]
    params = inspect.signature(method.fn).parameters.values()
    keywords = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    declared = {p.name: p.default for p in keywords if p.default is not inspect.Parameter.empty}
    expected = {**declared, **({"seed": None} if method.random else {})}
    assert hyperparameters(name) == expected and list(hyperparameters(name)) == list(expected)
    assert {p.name for p in keywords} - set(declared) == set(method.inputs)
    for key, hyper in method.hyperparameters.items():
        hyper.check(key, hyper.default)  # every default passes its own check


# ---------------------------------------------------------------- registry contract


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 3])
def test_contract_shape_dtype_finite(name, dtype, k):
    deltas = torch.randn(k, 6, 5, generator=torch.Generator().manual_seed(k)).to(dtype)
    weights = torch.linspace(0.5, 1.5, k)
    out = METHODS[name](deltas, weights, **extra_inputs(name, deltas))
    assert out.shape == (6, 5) and out.dtype == dtype
    assert torch.isfinite(out.float()).all()
    assert deltas.dtype == dtype  # inputs untouched


@pytest.mark.parametrize("name", sorted(METHODS))
def test_identity_single_task(name):
    delta = torch.randn(1, 7, 9, generator=torch.Generator().manual_seed(3))
    out = METHODS[name](delta, torch.ones(1), **IDENTITY_HP[name], **extra_inputs(name, delta))
    if name in ELEMENTWISE:
        assert torch.equal(out, delta[0])
    else:  # SVD or linear solves: exact up to float32 round-off
        torch.testing.assert_close(out, delta[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_zero_deltas_merge_to_zero(name):
    deltas = torch.zeros(2, 4, 3)
    out = METHODS[name](deltas, ONES, **extra_inputs(name, deltas))
    assert torch.equal(out, torch.zeros(4, 3))


# ---------------------------------------------------------------- closed forms


def test_task_arithmetic_and_weight_average_closed_form():
    ta = METHODS["task_arithmetic"](PAIR, torch.tensor([0.5, 2.0]), scale=2.0)
    assert torch.equal(ta, torch.tensor([[-3.0, 6.0, 9.0], [8.0, -8.0, 1.5]]))
    wa = METHODS["weight_average"](PAIR, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(wa, (D1 + 3 * D2) / 4)


def test_trim_keeps_exactly_floor_density_n():
    trimmed = trim_magnitude(PAIR, 0.5)
    assert torch.equal(trimmed[0], torch.tensor([[0.0, -2.0, 3.0], [0.0, 4.0, 0.0]]))
    assert torch.equal(trimmed[1], torch.tensor([[0.0, 2.0, 0.0], [2.0, -3.0, 0.0]]))
    x = torch.randn(3, 10, 10)
    for density in (0.05, 0.33, 0.9, 1.0):
        assert ((trim_magnitude(x, density) != 0).sum((1, 2)) == int(density * 100)).all()


def test_ties_closed_form():
    out = METHODS["ties"](PAIR, ONES, density=0.5)
    # trimmed sum [[0,0,3],[2,1,0]] elects + everywhere; agreeing entries are averaged
    assert torch.equal(out, torch.tensor([[0.0, 2.0, 3.0], [2.0, 4.0, 0.0]]))
    half = METHODS["ties"](PAIR, ONES, density=0.5, scale=0.5)
    assert torch.equal(half, out / 2)


def test_sign_election_and_disjoint_mean():
    x = torch.tensor([[1.0, -3.0, 0.0, 2.0], [2.0, 1.0, 0.0, -2.0], [-1.0, 1.0, 0.0, 0.0]])
    assert torch.equal(elect_sign(x), torch.tensor([1.0, -1.0, 1.0, 1.0]))
    assert torch.equal(elect_sign(x, "frequency"), torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert torch.equal(disjoint_mean(x, elect_sign(x)), torch.tensor([1.5, -3.0, 0.0, 2.0]))


def test_ties_negated_task_votes_with_its_effective_sign():
    x = torch.tensor([[[1.0]], [[1.0]], [[1.0]]])
    out = METHODS["ties"](x, torch.tensor([-1.0, -1.0, 0.5]), density=1.0)
    assert torch.equal(out, torch.tensor([[-1.0]]))  # two negated tasks outvote one


def test_magnitude_prune_closed_form():
    out = METHODS["magnitude_prune"](PAIR, torch.tensor([1.0, 2.0]), density=0.5)
    trimmed = trim_magnitude(PAIR, 0.5)
    assert torch.equal(out, trimmed[0] + 2 * trimmed[1])


def test_breadcrumbs_closed_form():
    # per task: drop the top int(0.2*6)=1 entry, keep the next int(0.5*6)=3
    out = METHODS["breadcrumbs"](PAIR, ONES, density=0.5, gamma=0.2)
    assert torch.equal(out, torch.tensor([[1.0, 0.0, 4.5], [2.0, 0.0, 0.0]]))


def test_dare_density_one_is_task_arithmetic_and_seeded():
    x = torch.randn(3, 20, 10)
    w = torch.tensor([0.3, 1.0, -0.4])
    ta = METHODS["task_arithmetic"](x, w, scale=0.7)
    assert torch.equal(METHODS["dare_linear"](x, w, density=1.0, scale=0.7), ta)
    ties1 = METHODS["ties"](x, w, density=1.0, scale=0.7)
    assert torch.equal(METHODS["dare_ties"](x, w, density=1.0, scale=0.7), ties1)
    for name in ("dare_linear", "dare_ties"):
        a = METHODS[name](x, w, density=0.3, seed=5)
        assert torch.equal(a, METHODS[name](x, w, density=0.3, seed=5))
        assert not torch.equal(a, METHODS[name](x, w, density=0.3, seed=6))
        g = torch.Generator().manual_seed(5)
        assert torch.equal(a, METHODS[name](x, w, density=0.3, generator=g))


def test_drop_random_rescales_survivors():
    x = torch.full((2, 100, 100), 2.0)
    dropped = drop_random(x, 0.25, torch.Generator().manual_seed(0))
    kept = dropped != 0
    assert torch.equal(dropped[kept], torch.full((int(kept.sum()),), 8.0))
    assert abs(kept.float().mean().item() - 0.25) < 0.02


def test_regmean_closed_forms():
    grams = torch.tensor([[[2.0, 1.0], [1.0, 2.0]], [[1.0, 0.0], [0.0, 1.0]]])
    deltas = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    out = METHODS["regmean"](deltas, ONES, grams=grams, alpha=0.5)
    # num = [2, 1.5], den = [[3, .5], [.5, 3]]: num · den⁻¹ = [0.6, 0.4]
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.4]]))
    x = torch.randn(3, 4, 6)
    same = spd(1, 6).expand(3, 6, 6)
    w = torch.tensor([1.0, 2.0, 0.5])
    for alpha in (0.0, 0.7, 1.0):
        out = METHODS["regmean"](x, w, grams=same, alpha=alpha)
        torch.testing.assert_close(out, METHODS["weight_average"](x, w), rtol=1e-5, atol=1e-6)


def test_regmean_singular_gram_uses_minimum_norm_solution():
    x = torch.randn(2, 3, 4)
    grams = torch.zeros(2, 4, 4)
    grams[:, 0, 0] = 1.0  # only input 0 ever fires
    out = METHODS["regmean"](x, ONES, grams=grams, alpha=1.0)
    torch.testing.assert_close(out[:, 0], x[:, :, 0].mean(0))
    assert torch.equal(out[:, 1:], torch.zeros(3, 3))


def test_knots_task_arithmetic_inner_equals_ta_and_ties_matches_reference():
    g = torch.Generator().manual_seed(1)
    x = torch.stack(
        [torch.randn(12, 2, generator=g) @ torch.randn(2, 9, generator=g) for _ in range(3)]
    )
    w = torch.tensor([1.0, 0.5, 2.0])
    ta = METHODS["task_arithmetic"](x, w, scale=0.8)
    out = METHODS["knots"](x, w, inner="task_arithmetic", scale=0.8)
    torch.testing.assert_close(out, ta, rtol=1e-5, atol=1e-5)
    # reference: dense SVD of the concatenation, TIES on the coordinates S Vᵢᵀ
    u, s, vh = torch.linalg.svd(torch.cat(list(x.double()), dim=1), full_matrices=False)
    r = int((s > 1e-6 * s[0]).sum())
    coords = torch.stack([s[:r, None] * b for b in vh[:r].split(9, dim=1)])
    ref = u[:, :r] @ METHODS["ties"](coords, w.double(), density=0.3)
    torch.testing.assert_close(
        METHODS["knots"](x, w, density=0.3), ref.float(), atol=1e-5, rtol=1e-4
    )


def test_tsv_closed_forms():
    e = torch.eye(4)
    f = torch.eye(5)
    ortho = torch.stack([3 * torch.outer(e[0], f[1]), 2 * torch.outer(e[2], f[3])])
    torch.testing.assert_close(METHODS["tsv"](ortho, ONES), ortho.sum(0))
    # a shared left singular vector: decorrelation turns [u, u] into [u, u] / √2
    shared = torch.stack([torch.outer(e[0], f[0]), torch.outer(e[0], f[1])])
    torch.testing.assert_close(METHODS["tsv"](shared, ONES), shared.sum(0) / 2**0.5)


# ---------------------------------------------------------------- cross-check with peft


def _peft_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 12, generator=g) for _ in range(3)]


def test_matches_peft_merge_utils_deterministic():
    tensors = _peft_inputs()
    x = torch.stack(tensors)
    w = torch.tensor([0.7, 1.3, -0.4])
    torch.testing.assert_close(
        METHODS["task_arithmetic"](x, w), merge_utils.task_arithmetic(tensors, w)
    )
    torch.testing.assert_close(
        METHODS["magnitude_prune"](x, w, density=0.3),
        merge_utils.magnitude_prune(tensors, w, 0.3),
    )
    equal = torch.full((3,), 0.8)  # peft elects on unweighted deltas: same for equal weights
    for sign in ("total", "frequency"):
        torch.testing.assert_close(
            METHODS["ties"](x, equal, density=0.4, majority_sign=sign),
            merge_utils.ties(tensors, equal, 0.4, sign),
        )


def test_matches_peft_merge_utils_dare_with_same_seed():
    tensors = _peft_inputs(1)
    x = torch.stack(tensors)
    w, equal = torch.tensor([0.7, 1.3, 0.4]), torch.full((3,), 1.1)
    torch.manual_seed(11)
    expected = merge_utils.dare_linear(tensors, w, 0.6)
    torch.testing.assert_close(METHODS["dare_linear"](x, w, density=0.6, seed=11), expected)
    torch.manual_seed(11)
    expected = merge_utils.dare_ties(tensors, equal, 0.6)
    torch.testing.assert_close(METHODS["dare_ties"](x, equal, density=0.6, seed=11), expected)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: get_method("tie"), "expected one of"),
        (lambda: check_hyperparameters("ties", {"densty": 0.2}), "valid: ['density'"),
        (lambda: METHODS["ties"](PAIR, ONES, density=0.0), "density must be"),
        (lambda: METHODS["dare_linear"](PAIR, ONES, density=1.5), "density must be"),
        (lambda: METHODS["task_arithmetic"](PAIR, ONES, scale=-1.0), "scale must be"),
        (lambda: METHODS["task_arithmetic"](PAIR[:0], ONES[:0]), "at least one task"),
        (lambda: METHODS["task_arithmetic"](PAIR, torch.ones(3)), "weights: expected 2"),
        (lambda: METHODS["weight_average"](PAIR, torch.tensor([1.0, -1.0])), "sum to 0"),
        (lambda: METHODS["ties"](PAIR, ONES, majority_sign="max"), "majority_sign"),
        (lambda: METHODS["breadcrumbs"](PAIR, ONES, density=0.9, gamma=0.2), "gamma + density"),
        (lambda: METHODS["knots"](PAIR, ONES, inner="dare"), "inner 'dare'"),
        (lambda: METHODS["tsv"](PAIR, ONES, fraction=0), "fraction must be"),
        (
            lambda: METHODS["dare_ties"](PAIR, ONES, seed=1, generator=torch.Generator()),
            "either seed or generator",
        ),
        (lambda: METHODS["regmean"](PAIR, ONES, grams=spd(2, 2)), "grams: expected shape"),
        (lambda: METHODS["regmean"](PAIR, -ONES, grams=spd(2, 3)), "must be positive"),
        (lambda: METHODS["regmean"](PAIR, ONES, grams=spd(2, 3), alpha=2), "alpha must be"),
    ],
)
def test_bad_input_is_one_line_osrm_error(call, message):
    with pytest.raises(OsrmError, match=re.escape(message)) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, hp, weights",
    [
        ("ties", {"density": 0.0}, None),
        ("ties", {"normalize": "yes"}, None),
        ("dare_ties", {"majority_sign": "max"}, None),
        ("dare_linear", {"seed": 2**70}, None),
        ("breadcrumbs", {"density": 0.9, "gamma": 0.2}, None),
        ("breadcrumbs", {"gamma": 1}, None),
        ("weight_average", {}, [1.0, -1.0]),
        ("task_arithmetic", {"scale": -1.0}, [1.0, 2.0]),
        ("knots", {"inner": "dare"}, None),
        ("tsv", {"fraction": 0}, None),
        ("regmean", {"alpha": 2}, None),
        ("regmean", {"gram": "total"}, None),
        ("regmean", {}, [1.0, -1.0]),
    ],
)
def test_registry_checks_are_the_methods_own(name, hp, weights):
    """validate_hyperparameters fails exactly as the method itself would on that input."""
    zeros = torch.zeros(2, 2, 2)
    with pytest.raises(OsrmError) as by_method:
        METHODS[name](zeros, torch.tensor(weights or [1.0, 1.0]), **hp, **extra_inputs(name, zeros))
    with pytest.raises(OsrmError) as by_registry:
        validate_hyperparameters(name, hp, weights)
    assert str(by_registry.value) == str(by_method.value)


# ---------------------------------------------------------------- properties


@st.composite
def stacks(draw):
    k, d_out, d_in = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(k, d_out, d_in, generator=torch.Generator().manual_seed(seed))
    w = torch.rand(k, generator=torch.Generator().manual_seed(seed + 1)) + 0.1
    return x, w


SYMMETRIC = [n for n in sorted(METHODS) if n not in ("dare_linear", "dare_ties")]


@settings(max_examples=25, deadline=None)
@given(stacks(), st.sampled_from(SYMMETRIC), st.randoms(use_true_random=False))
def test_permutation_invariance_and_finiteness(stack, name, rnd):
    x, w = stack
    perm = list(range(x.shape[0]))
    rnd.shuffle(perm)
    kw = extra_inputs(name, x)
    out = METHODS[name](x, w, **kw)
    kw_perm = {k: v[perm] for k, v in kw.items()}
    out_perm = METHODS[name](x[perm], w[perm], **kw_perm)
    assert out.shape == x.shape[1:] and torch.isfinite(out).all()
    torch.testing.assert_close(out, out_perm, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(stacks(), st.sampled_from(sorted(METHODS)))
def test_identity_property(stack, name):
    x = stack[0][:1]
    out = METHODS[name](x, torch.ones(1), **IDENTITY_HP[name], **extra_inputs(name, x))
    torch.testing.assert_close(out, x[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- spectral helpers


def test_thin_svd_is_exact_for_low_rank_blocks_and_uses_the_sketch():
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(200, 3, generator=g) @ torch.randn(3, 150, generator=g) for _ in range(4)]
    u, s, vhs = thin_svd(blocks)
    assert s.numel() == 12
    for block, vh in zip(blocks, vhs, strict=True):
        torch.testing.assert_close((u * s) @ vh, block.double(), atol=1e-5, rtol=1e-5)
    vh = torch.cat(vhs, dim=1)
    torch.testing.assert_close(vh @ vh.T, torch.eye(12, dtype=torch.float64))
    assert block_svd(torch.randn(200, 150), max_rank=20)[0] is None  # full rank: give up


def test_truncate_and_factored_truncate_report_exact_errors():
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(80, 10, generator=g), torch.randn(10, 70, generator=g)
    fb, fa, err = factored_truncate(b, a, 4)
    db, da, derr = truncate(b @ a, 4, exact=True)
    rb, ra, rerr = truncate(b @ a, 4)
    torch.testing.assert_close(fb @ fa, db @ da, rtol=1e-4, atol=1e-4)
    assert abs(err - derr) < 1e-6 and abs(rerr - derr) < 1e-3
    true = float(torch.linalg.matrix_norm(b @ a - rb @ ra) / torch.linalg.matrix_norm(b @ a))
    assert abs(true - rerr) < 1e-5
    assert factored_truncate(b, a, 10)[2] < 1e-6


@pytest.mark.parametrize("density", [0.01, 0.2, 0.5, 0.97])
def test_top_mask_bracketing_equals_topk(density):
    g = torch.Generator().manual_seed(2)
    b = torch.randn(512, 4, generator=g)
    a = torch.randn(4, 300, generator=g) * torch.linspace(0.01, 3, 300)  # LoRA-like structure
    for values in (torch.randn(1 << 17, generator=g).abs(), (b @ a).abs().flatten()):
        keep = int(density * values.numel())
        expected = torch.zeros(values.numel(), dtype=torch.bool)
        expected[values.topk(keep).indices] = True
        assert torch.equal(top_mask(values, keep), expected)


def test_top_mask_counts_exactly_with_ties_and_zeros():
    values = torch.zeros(1 << 17)
    values[:100] = 1.0
    values[100:300] = 0.5
    for keep in (50, 100, 250, 5000):
        mask = top_mask(values, keep)
        kth = values.topk(keep).values[-1]
        assert int(mask.sum()) == keep and bool((values[mask] >= kth).all())
    assert not top_mask(values, 0).any() and top_mask(values, 1 << 17).all()
