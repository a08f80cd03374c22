"""Retrofit (osrm.retrofit): closed forms on hand-made moments, real peft adapters round trip."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from conftest import make_tiny_bert, synthetic_batches
from osrm.diagnostics import response_energy
from osrm.errors import OsrmError
from osrm.merging import lora_deltas
from osrm.retrofit import RETROFIT_FILE, module_effect, retrofit_a, retrofit_adapters
from osrm.stats import StatsMeta, collect_stats, load_stats, save_stats
from test_merging_adapters import make_adapter, stats_file


def projector(d: int, dims: list[int]) -> torch.Tensor:
    p = torch.zeros(d, d, dtype=torch.float64)
    p[dims, dims] = 1.0
    return p


def random_psd(d: int, seed: int) -> torch.Tensor:
    x = torch.randn(3 * d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.T @ x / (3 * d)


def test_mu_zero_returns_the_adapter_unchanged():
    a = torch.randn(4, 10)
    assert torch.equal(retrofit_a(a, random_psd(10, 1), random_psd(10, 2), 0.0), a)


def test_disjoint_subspaces_remove_the_other_output_and_keep_the_own():
    """Own inputs on coordinates 0-4, the others' on 5-9: A' keeps A on 0-4 and is 0 on 5-9."""
    d = 10
    c_own = projector(d, [0, 1, 2, 3, 4]) * torch.linspace(1, 2, d, dtype=torch.float64)
    c_other = projector(d, [5, 6, 7, 8, 9]) * 3.0
    a = torch.randn(4, d, dtype=torch.float64)
    new = retrofit_a(a, c_own, c_other, mu=0.5)
    assert new[:, 5:].abs().max() == 0  # the other tasks' directions: removed exactly
    torch.testing.assert_close(new[:, :5], a[:, :5], rtol=1e-5, atol=1e-6)  # ridge ~1e-6
    b = torch.randn(6, 4, dtype=torch.float64)
    effect = module_effect("m", b @ a, b @ new, c_own, c_other)
    assert effect.removed == 1.0 and effect.kept == pytest.approx(1.0, abs=1e-9)


def test_closed_form_is_the_minimiser():
    """The objective's gradient vanishes at A' (any full-rank B), and moving A' increases it."""
    d, r, mu = 8, 3, 0.7
    c_own, c_other = random_psd(d, 3), random_psd(d, 4)
    a = torch.randn(r, d, dtype=torch.float64)
    b = torch.randn(5, r, dtype=torch.float64)
    new = retrofit_a(a, c_own, c_other, mu, ridge=0.0)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return response_energy(b @ (x - a), c_own) + mu * response_energy(b @ x, c_other)

    x = new.clone().requires_grad_(True)
    own = ((b @ (x - a)) @ c_own * (b @ (x - a))).sum()
    other = ((b @ x) @ c_other * (b @ x)).sum()
    (own + mu * other).backward()
    assert x.grad.abs().max() < 1e-9
    step = torch.randn(r, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert objective(new + 1e-3 * step) > objective(new)


def test_larger_mu_removes_more():
    d = 12
    c_own, c_other = random_psd(d, 5), random_psd(d, 6)
    a, b = torch.randn(4, d, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    removed = [
        module_effect("m", b @ a, b @ retrofit_a(a, c_own, c_other, mu), c_own, c_other).removed
        for mu in (0.1, 1.0, 10.0)
    ]
    assert 0 < removed[0] < removed[1] < removed[2] < 1


@pytest.fixture
def pair(tmp_path):
    adapters = [make_adapter(tmp_path / t, s)[0] for t, s in (("a", 1), ("b", 2))]
    stats = [stats_file(tmp_path, "a", 10), stats_file(tmp_path, "b", 11)]
    return adapters, stats


def test_retrofitted_adapters_load_in_peft_and_match_the_closed_form(pair, tmp_path):
    adapters, stats = pair
    out = tmp_path / "out"
    retrofit_adapters(adapters, list(reversed(stats)), 0.5, out)  # matched by task
    loaded = {t: load_stats(p)[0] for t, p in zip("ab", stats, strict=True)}
    for i, task in enumerate("ab"):
        other = "ba"[i]
        source, result = lora_deltas(adapters[i]), lora_deltas(out / task)
        for name in source:
            module = name.removesuffix(".weight")
            c_own = loaded[task][module].second_moment()
            c_other = loaded[other][module].second_moment()
            s_b, a = source.factors(name)
            r_b, r_a = result.factors(name)
            assert torch.equal(r_b, s_b)  # B (and scale) unchanged
            expected = s_b.double() @ retrofit_a(a.double(), c_own, c_other, 0.5)
            torch.testing.assert_close(result[name].double(), expected, rtol=1e-5, atol=1e-6)
        record = json.loads((out / task / RETROFIT_FILE).read_text())
        assert record["mu"] == 0.5 and 0 < record["overall"]["removed"] <= 1
        assert record["overall"]["kept"] <= 1
        heads = {k: v for k, v in load_file(str(adapters[i] / "adapter_model.safetensors")).items()
                 if "lora_" not in k}  # fmt: skip
        new = load_file(str(out / task / "adapter_model.safetensors"))
        assert all(torch.equal(new[k], v) for k, v in heads.items())  # the head is unchanged
        model = PeftModel.from_pretrained(make_tiny_bert(), str(out / task))
        assert isinstance(model, PeftModel)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mu": -1.0}, "mu: expected a finite number >= 0"),
        ({"mu": float("nan")}, "mu: expected a finite number >= 0"),
        ({"same_adapter": True}, "given twice"),
        ({"other_task": True}, "no statistics for task 'b'"),
        ({"fewer_modules": True}, "no statistics for module '.*value'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(pair, tmp_path, change, message):
    adapters, stats = pair
    mu = change.get("mu", 0.5)
    if change.get("same_adapter"):
        adapters = [adapters[0], adapters[0]]
    if change.get("other_task"):
        stats = [stats[0], stats_file(tmp_path, "c", 12)]
    if change.get("fewer_modules"):
        only_query = collect_stats(make_tiny_bert(), synthetic_batches(12, 8, 4), ["query"],
                                   progress=False)  # fmt: skip
        meta = StatsMeta(base_model="tiny-bert", fingerprint="x", task="b", n_examples=8,
                         n_tokens=next(iter(only_query.values())).count)  # fmt: skip
        save_stats(tmp_path / "b.stats.safetensors", only_query, meta)
    out = tmp_path / "out"
    with pytest.raises(OsrmError, match=message) as err:
        retrofit_adapters(adapters, stats, mu, out)
    assert "\n" not in str(err.value)
    assert not out.exists()
