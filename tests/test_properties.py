"""Property-based tests (hypothesis): config parsing and overrides, statistics arithmetic and
files, and the merge methods' contract on random shapes (with tests/test_merging_methods.py)."""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osrm.config import apply_overrides, parse_config
from osrm.errors import OsrmError
from osrm.linalg import moment
from osrm.merging import METHODS
from osrm.stats import LayerStats, StatsMeta, load_stats, save_stats, stats_digest

BASE = {"run_dir": "runs/x", "tasks": ["trec", "sms_spam"]}
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ config and overrides

# dotted key -> strategy of valid values, and how to read the value back from the config
VALID = {
    "seed": st.integers(0, 2**31),
    "lora.rank": st.integers(1, 512),
    "lora.alpha": st.floats(1e-3, 1e3, allow_nan=False),
    "lora.dropout": st.floats(0, 0.99),
    "lora.inits": st.lists(
        st.sampled_from(["lora", "osrm", "osrm_mean", "contrast"]), min_size=1, max_size=4
    ),  # fmt: skip
    "stats.examples": st.integers(1, 10_000),
    "stats.mask": st.sampled_from(["attention", "none"]),
    "subspace.center": st.booleans(),
    "subspace.ridge": st.floats(1e-6, 10),
    "train.lr": st.floats(1e-6, 1.0),
    "train.steps": st.integers(1, 100_000),
    "train.warmup_ratio": st.floats(0, 0.99),
    "eval.split": st.sampled_from(["train", "validation", "test"]),
}
INVALID = {
    "lora.rank": st.integers(-100, 0),
    "lora.dropout": st.floats(1, 100),
    "train.lr": st.one_of(st.floats(-10, 0), st.floats(1.0001, 100)),
    "train.steps": st.integers(-100, 0),
    "stats.mask": st.text(string.ascii_letters, min_size=1).filter(
        lambda s: s not in ("attention", "none")
    ),
}


def lookup(cfg: object, key: str) -> object:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def override(key: str, value: object) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: the CLI's value syntax


@FAST
@given(st.dictionaries(st.sampled_from(sorted(VALID)), st.none(), min_size=1).flatmap(
    lambda keys: st.fixed_dictionaries({k: VALID[k] for k in keys})
))  # fmt: skip
def test_valid_overrides_land_where_they_say(values):
    data = apply_overrides(BASE, [override(k, v) for k, v in values.items()])
    cfg = parse_config(data)
    for key, value in values.items():
        assert lookup(cfg, key) == value
    assert BASE == {"run_dir": "runs/x", "tasks": ["trec", "sms_spam"]}  # never mutated


@FAST
@given(st.sampled_from(sorted(VALID)), st.data())
def test_the_last_override_wins(key, data):
    first, last = data.draw(VALID[key]), data.draw(VALID[key])
    cfg = parse_config(apply_overrides(BASE, [override(key, first), override(key, last)]))
    assert lookup(cfg, key) == last


@FAST
@given(st.sampled_from(sorted(INVALID)), st.data())
def test_invalid_values_name_the_field_on_one_line(key, data):
    value = data.draw(INVALID[key])
    try:
        parse_config(apply_overrides(BASE, [override(key, value)]), "cfg.yaml")
    except OsrmError as e:
        assert str(e).startswith(f"cfg.yaml: field '{key}'") and "\n" not in str(e)
    else:
        raise AssertionError(f"{key}={value!r} was accepted")


KEYS = st.text(string.ascii_lowercase + "._", min_size=1, max_size=12)
YAML_TEXT = st.text(string.printable, max_size=20)


@FAST
@given(st.lists(st.tuples(KEYS, YAML_TEXT), max_size=4))
def test_any_override_is_accepted_or_one_line_error(pairs):
    """Garbage in: an ExperimentConfig or an OsrmError, never another exception."""
    try:
        parse_config(apply_overrides(BASE, [f"{k}={v}" for k, v in pairs]))
    except OsrmError as e:
        assert str(e) and "\n" not in str(e)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=10,
)  # fmt: skip


@FAST
@given(st.dictionaries(st.sampled_from(["lora", "train", "merge", "stats", "model", "x"]), JSONISH))
def test_any_mapping_parses_or_fails_with_osrm_error(sections):
    try:
        parse_config({**BASE, **sections})
    except OsrmError as e:
        assert str(e).startswith("config: ")


# ------------------------------------------------------------------ statistics


@st.composite
def row_blocks(draw, n_blocks: int = 3):
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    sizes = [draw(st.integers(0, 7)) for _ in range(n_blocks)]
    return [torch.randn(n, d, generator=g, dtype=torch.float64) for n in sizes]


def stats_of(rows: torch.Tensor) -> LayerStats:
    return LayerStats(rows.T @ rows, rows.sum(0), rows.shape[0])


def close(a: LayerStats, b: LayerStats) -> bool:
    return (
        a.count == b.count
        and torch.allclose(a.xtx, b.xtx, atol=1e-10)
        and torch.allclose(a.xsum, b.xsum, atol=1e-10)
    )


@FAST
@given(row_blocks())
def test_statistics_are_additive_over_any_split(blocks):
    """Stats of all rows = sum of the stats of the parts, in any order and grouping."""
    whole = stats_of(torch.cat(blocks))
    a, b, c = (stats_of(x) for x in blocks)
    assert close(a + b + c, whole)
    assert close(a + (b + c), (a + b) + c)
    assert close(c + a + b, whole)
    assert close(sum([a, b, c]), whole)  # sum() starts from 0


@FAST
@given(row_blocks(2))
def test_pooled_moment_weights_tasks_by_tokens(blocks):
    """``tokens`` weighting is the moment of the merged statistics; ``equal`` the mean."""
    parts = [stats_of(x) for x in blocks]
    if any(p.count == 0 for p in parts):
        return
    pooled = torch.cat(blocks)
    torch.testing.assert_close(moment(parts, "tokens"), pooled.T @ pooled / pooled.shape[0])
    mean = (parts[0].second_moment() + parts[1].second_moment()) / 2
    torch.testing.assert_close(moment(parts, "equal"), mean)


@settings(max_examples=15, deadline=None)
@given(row_blocks(1), st.lists(st.sampled_from(["q", "k", "v", "o"]), min_size=1, unique=True))
def test_statistics_files_round_trip_exactly(blocks, modules):
    stats = {f"layer.{m}": stats_of(blocks[0]) for m in modules}  # one object: saved once
    if blocks[0].shape[0] == 0:  # statistics of no token are refused (tests/test_merging_guards)
        return
    meta = StatsMeta("m", "f" * 16, "task", 3, stats[f"layer.{modules[0]}"].count)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.safetensors"
        save_stats(path, stats, meta)
        first = path.read_bytes()
        loaded, meta2 = load_stats(path)
        save_stats(path, loaded, meta2)
        assert path.read_bytes() == first  # same content, same bytes
    assert meta2 == meta and sorted(loaded) == sorted(stats)
    for name, s in stats.items():
        assert torch.equal(loaded[name].xtx, s.xtx) and loaded[name].count == s.count
    assert stats_digest(loaded) == stats_digest(stats)


# ------------------------------------------------------------------ merge methods


@st.composite
def deltas(draw):
    k, d_out, d_in = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))  # tiny and large task vectors
    x = torch.randn(k, d_out, d_in, generator=g) * scale
    w = torch.rand(k, generator=g) + 0.1
    grams = torch.randn(k, 3 * d_in, d_in, generator=g, dtype=torch.float64)
    return x, w, grams.transpose(1, 2) @ grams


@settings(max_examples=30, deadline=None)
@given(deltas(), st.sampled_from(sorted(METHODS)))
def test_every_method_is_finite_shaped_seeded_and_zero_at_scale_zero(stack, name):
    """All ten methods (random ones included) on random shapes and magnitudes."""
    x, w, grams = stack
    extra = {"grams": grams} if METHODS[name].needs_stats else {}
    out = METHODS[name](x, w, **extra)
    assert out.shape == x.shape[1:] and out.dtype == x.dtype and torch.isfinite(out).all()
    again = METHODS[name](x, w, **extra)
    assert torch.equal(out, again)  # random methods draw from a fixed default seed
    zero = METHODS[name](x, w, scale=0.0, **extra)
    assert torch.equal(zero, torch.zeros_like(zero))
