"""Lineage classification from genome embeddings: a linear probe or k nearest neighbours.

A probe is fitted on the embeddings of labelled training genomes and predicts, for every other
genome, each label column asked for (e.g. Nextstrain clade and WHO variant). Splits that hold out
whole lineage families (:func:`lineage_family_split`) or later dates (:func:`date_split`) keep
near-identical sequences from sitting on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


def make_probe(
    method: Literal["logreg", "knn"] = "logreg", *, k: int = 5, seed: int = 0
) -> Pipeline:
    """A standardise-then-classify pipeline: multinomial logistic regression or cosine kNN."""
    if method == "logreg":
        clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    elif method == "knn":
        clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
    else:
        raise ValueError(f"method must be 'logreg' or 'knn', got {method!r}")
    return make_pipeline(StandardScaler(), clf)


def lineages(
    embeddings: np.ndarray,
    labels: pd.DataFrame,
    *,
    train: np.ndarray,
    columns: Sequence[str] = ("clade",),
    method: Literal["logreg", "knn"] = "logreg",
    k: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Fit a probe per label column on the training genomes and predict every genome.

    Parameters
    ----------
    embeddings
        ``(n, d)`` genome embeddings (from :func:`lifelm.tasks.genomes.embed.embed_genomes`).
    labels
        ``n`` rows with ``seqName`` and the label ``columns``; empty labels are not trained on.
    train
        Boolean ``(n,)``: rows whose labels the probe may see.
    columns
        Label columns to predict.
    method
        ``"logreg"`` (linear probe) or ``"knn"``.
    k
        Neighbours for ``knn``.
    seed
        Seeds the solver.

    Returns
    -------
    DataFrame
        ``seqName``, ``split`` (train/test), and per column ``{col}`` (truth),
        ``{col}_pred`` and ``{col}_prob`` (probability of the predicted label).
    """
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} label rows")
    train = np.asarray(train, dtype=bool)
    out = pd.DataFrame({"seqName": labels["seqName"].to_numpy()})
    out["split"] = np.where(train, "train", "test")
    for col in columns:
        y = labels[col].fillna("").astype(str).to_numpy()
        fit_rows = train & (y != "")
        if len(set(y[fit_rows])) < 2:
            raise ValueError(f"label column {col!r} has fewer than two classes among training rows")
        probe = make_probe(method, k=k, seed=seed).fit(embeddings[fit_rows], y[fit_rows])
        prob = probe.predict_proba(embeddings)
        out[col] = y
        out[f"{col}_pred"] = probe.classes_[prob.argmax(1)]
        out[f"{col}_prob"] = prob.max(1)
    return out


def lineage_family_split(
    lineage_names: Sequence[str], *, test_fraction: float = 0.2, depth: int = 6, seed: int = 0
) -> np.ndarray:
    """Boolean train mask that holds out whole lineage families.

    A family is the unaliased Pango name cut to its first ``depth`` components (at depth 6,
    ``B.1.1.529.2.86.1`` (JN.1) falls in family ``B.1.1.529.2.86`` (BA.2.86)); every lineage of a
    held-out family is in the test set, so no test genome has a close sibling in training.
    ``test_fraction`` is a fraction of families, not of genomes.
    """
    groups = [".".join(str(n).split(".")[:depth]) for n in lineage_names]
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    train_idx, _ = next(splitter.split(np.zeros(len(groups)), groups=groups))
    mask = np.zeros(len(groups), dtype=bool)
    mask[train_idx] = True
    return mask


def date_split(dates: Sequence[str], cutoff: str) -> np.ndarray:
    """Boolean train mask: genomes dated before ``cutoff`` (ISO date) train; later or undated test."""
    d = pd.to_datetime(pd.Series(list(dates)), errors="coerce")
    return (d < pd.Timestamp(cutoff)).to_numpy()
