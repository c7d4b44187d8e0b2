"""Classification metrics over predicted and true labels (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score


def classification_scores(
    y_true: Sequence[str] | np.ndarray, y_pred: Sequence[str] | np.ndarray
) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes present in ``y_true`` (predictions of other classes count as errors)."""
    true = np.asarray(y_true, dtype=str)
    pred = np.asarray(y_pred, dtype=str)
    labels = np.unique(true)
    return {
        "accuracy": float(accuracy_score(true, pred)),
        "macro_f1": float(f1_score(true, pred, labels=labels, average="macro", zero_division=0)),
        "n": len(true),
    }


def per_class_f1(
    y_true: Sequence[str] | np.ndarray, y_pred: Sequence[str] | np.ndarray
) -> dict[str, float]:
    """F1 per true class."""
    true = np.asarray(y_true, dtype=str)
    labels = np.unique(true)
    scores = f1_score(
        true, np.asarray(y_pred, dtype=str), labels=labels, average=None, zero_division=0
    )
    return {str(k): float(v) for k, v in zip(labels, scores, strict=True)}


def reliability(
    confidence: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    *,
    n_bins: int = 10,
) -> dict[str, list[float]]:
    """Reliability-diagram data: per equal-width confidence bin, mean confidence, accuracy, count.

    ``confidence`` is the probability of the predicted class, ``correct`` whether that class was
    right. Empty bins have NaN confidence and accuracy and count 0. Rows with NaN confidence are
    skipped.
    """
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=float)
    ok = np.isfinite(conf)
    conf, hit = conf[ok], hit[ok]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(which, conf, minlength=n_bins) / count
        acc = np.bincount(which, hit, minlength=n_bins) / count
    return {
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "confidence": [float(v) for v in mean_conf],
        "accuracy": [float(v) for v in acc],
        "count": [int(v) for v in count],
    }


def expected_calibration_error(
    confidence: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    *,
    n_bins: int = 10,
) -> float:
    """ECE: sum over equal-width confidence bins of (cells in bin / all) x |accuracy - confidence|.

    0 is perfectly calibrated; NaN when no cell has a finite confidence.
    """
    r = reliability(confidence, correct, n_bins=n_bins)
    count = np.asarray(r["count"], dtype=float)
    if count.sum() == 0:
        return float("nan")
    gap = np.abs(np.asarray(r["accuracy"]) - np.asarray(r["confidence"]))
    return float(np.nansum(count / count.sum() * gap))


def confusion(
    y_true: Sequence[str] | np.ndarray,
    y_pred: Sequence[str] | np.ndarray,
    *,
    labels: Sequence[str] | None = None,
) -> dict[str, object]:
    """Confusion matrix (rows: true, columns: predicted) over the union of labels seen."""
    y_true = np.asarray(y_true, dtype=str)
    y_pred = np.asarray(y_pred, dtype=str)
    rows = list(labels) if labels is not None else sorted(set(y_true))
    cols = rows + sorted(set(y_pred) - set(rows))
    ri = {c: i for i, c in enumerate(rows)}
    ci = {c: i for i, c in enumerate(cols)}
    m = np.zeros((len(rows), len(cols)), dtype=int)
    for t, p in zip(y_true, y_pred, strict=True):
        if t in ri:
            m[ri[t], ci[p]] += 1
    return {"true": rows, "predicted": cols, "counts": m.tolist()}
