"""Classification metrics over predicted and true labels (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score


def classification_scores(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes present in ``y_true`` (predictions of other classes count as errors)."""
    y_true = np.asarray(y_true, dtype=str)
    y_pred = np.asarray(y_pred, dtype=str)
    labels = np.unique(y_true)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "n": len(y_true),
    }


def per_class_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """F1 per true class."""
    y_true = np.asarray(y_true, dtype=str)
    labels = np.unique(y_true)
    scores = f1_score(
        y_true, np.asarray(y_pred, dtype=str), labels=labels, average=None, zero_division=0
    )
    return {str(k): float(v) for k, v in zip(labels, scores, strict=True)}
