"""Evaluation metrics: thin, explicit wrappers over scikit-learn and scipy.

Every function takes ``(predictions, labels)`` (note: scikit-learn's order is ``(y_true, y_pred)``)
and returns a Python float. The GLUE composites follow the paper's protocol (method.md §5):
MRPC/QQP report mean(accuracy, F1), STS-B mean(Pearson, Spearman), CoLA Matthews correlation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn import metrics as skm

from osrm.errors import OsrmError

Metric = Callable[[ArrayLike, ArrayLike], float]


def accuracy(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of predictions equal to the labels."""
    return float(skm.accuracy_score(labels, predictions))


def f1(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Binary F1 of the positive class (label id 1), as GLUE's MRPC/QQP F1.

    Raises ``ValueError`` for more than two classes: use :func:`f1_macro` there.
    """
    return float(skm.f1_score(labels, predictions, average="binary", pos_label=1))


def f1_macro(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Unweighted mean of the per-class F1 scores (classes seen in labels or predictions)."""
    return float(skm.f1_score(labels, predictions, average="macro"))


def matthews_corrcoef(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Matthews correlation coefficient (GLUE's CoLA metric); 0 when undefined."""
    return float(skm.matthews_corrcoef(labels, predictions))


def pearson(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Pearson correlation; NaN when either input is constant."""
    return float(stats.pearsonr(np.asarray(predictions, float), np.asarray(labels, float))[0])


def spearman(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Spearman rank correlation; NaN when either input is constant."""
    return float(stats.spearmanr(predictions, labels)[0])


def acc_f1(predictions: ArrayLike, labels: ArrayLike) -> float:
    """GLUE MRPC/QQP composite: mean of accuracy and binary F1."""
    return (accuracy(predictions, labels) + f1(predictions, labels)) / 2


def pearson_spearman(predictions: ArrayLike, labels: ArrayLike) -> float:
    """GLUE STS-B composite: mean of Pearson and Spearman correlations."""
    return (pearson(predictions, labels) + spearman(predictions, labels)) / 2


METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "f1": f1,
    "f1_macro": f1_macro,
    "matthews_corrcoef": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
    "acc_f1": acc_f1,
    "pearson_spearman": pearson_spearman,
}


def compute_metrics(
    names: Sequence[str], predictions: ArrayLike, labels: ArrayLike
) -> dict[str, float]:
    """``{name: value}`` of each named metric (e.g. ``TaskSpec.metrics``), in that order, for
    (n,) predictions (class ids, or floats for regression) and (n,) labels."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise OsrmError(f"unknown metric '{unknown[0]}'; valid metrics: {', '.join(METRICS)}")
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1 or len(labels) == 0:
        shapes = f"predictions {predictions.shape} and labels {labels.shape}"
        raise ValueError(f"{shapes} must be 1-D, non-empty and of equal length")
    return {name: METRICS[name](predictions, labels) for name in names}
