"""Metrics against values computed by hand on small arrays."""

from __future__ import annotations

import math

import pytest

from osrm.errors import OsrmError
from osrm.metrics import METRICS, compute_metrics

# preds vs labels: TP 2 (i=0,4), FP 1 (i=1), FN 1 (i=3), TN 1 (i=2)
PRED = [1, 1, 0, 0, 1]
GOLD = [1, 0, 0, 1, 1]


def test_binary_classification_metrics_by_hand():
    out = compute_metrics(["accuracy", "f1", "matthews_corrcoef", "acc_f1"], PRED, GOLD)
    assert list(out) == ["accuracy", "f1", "matthews_corrcoef", "acc_f1"]
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["f1"] == pytest.approx(2 / 3)  # precision 2/3, recall 2/3
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 − 1) / sqrt(3·3·2·2)
    assert out["matthews_corrcoef"] == pytest.approx(1 / 6)
    assert out["acc_f1"] == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert all(isinstance(v, float) for v in out.values())


def test_f1_is_binary_on_the_positive_class():
    # class 1 scored: P = 1, R = 1/2; with the two classes swapped: P = 2/3, R = 1
    assert compute_metrics(["f1"], [0, 0, 1, 0], [0, 1, 1, 0])["f1"] == pytest.approx(2 / 3)
    assert compute_metrics(["f1"], [1, 1, 0, 1], [1, 0, 0, 1])["f1"] == pytest.approx(0.8)


def test_f1_macro_three_classes_and_binary_f1_refuses_them():
    gold, pred = [0, 1, 2, 0, 1, 2], [0, 2, 2, 0, 1, 1]
    # per class F1: 1 (class 0), 1/2 (class 1), 1/2 (class 2)
    out = compute_metrics(["f1_macro", "accuracy"], pred, gold)
    assert out["f1_macro"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        compute_metrics(["f1"], pred, gold)


def test_correlations_by_hand():
    # x − x̄ = (−1.5, −.5, .5, 1.5), y − ȳ = (−3, −1, 0, 4): r = 11 / sqrt(5 · 26)
    out = compute_metrics(["pearson", "spearman", "pearson_spearman"], [1, 2, 3, 4], [2, 4, 5, 9])
    assert out["pearson"] == pytest.approx(11 / math.sqrt(130))
    assert out["spearman"] == pytest.approx(1.0)  # monotone
    assert out["pearson_spearman"] == pytest.approx((11 / math.sqrt(130) + 1) / 2)


def test_spearman_with_ties_by_hand():
    # ranks of y: (1, 2, 3.5, 5, 3.5); centred: (−2, −1, .5, 2, .5) vs (−2, −1, 0, 1, 2)
    rho = compute_metrics(["spearman"], [1.0, 2, 3, 4, 5], [5.0, 6, 7, 8, 7])["spearman"]
    assert rho == pytest.approx(8 / math.sqrt(10 * 9.5))


def test_matthews_perfect_and_inverted():
    assert compute_metrics(["matthews_corrcoef"], [0, 1, 1, 0], [0, 1, 1, 0])[
        "matthews_corrcoef"
    ] == pytest.approx(1.0)
    assert compute_metrics(["matthews_corrcoef"], [1, 0, 0, 1], [0, 1, 1, 0])[
        "matthews_corrcoef"
    ] == pytest.approx(-1.0)


def test_registry_names_and_errors():
    assert set(METRICS) == {
        "accuracy", "f1", "f1_macro", "matthews_corrcoef",
        "pearson", "spearman", "acc_f1", "pearson_spearman",
    }  # fmt: skip
    with pytest.raises(OsrmError, match="unknown metric 'auc'; valid metrics: accuracy"):
        compute_metrics(["auc"], [1], [1])
    with pytest.raises(ValueError, match="equal length"):
        compute_metrics(["accuracy"], [1, 0], [1])
    with pytest.raises(ValueError, match="non-empty"):
        compute_metrics(["accuracy"], [], [])
