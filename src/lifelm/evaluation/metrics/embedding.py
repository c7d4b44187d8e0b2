"""Embedding quality against labels: silhouette and kNN label agreement (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors


def label_silhouette(
    emb: np.ndarray, labels: Sequence[str] | np.ndarray, *, seed: int = 0, max_cells: int = 5000
) -> float:
    """Cosine silhouette of the label groups, rescaled to [0, 1] as in scib ((s + 1) / 2)."""
    labels = np.asarray(labels, dtype=str)
    if len(np.unique(labels)) < 2:
        return float("nan")
    n = min(len(labels), max_cells)
    s = silhouette_score(emb, labels, metric="cosine", sample_size=n, random_state=seed)
    return float((s + 1) / 2)


def knn_label_agreement(
    emb: np.ndarray, labels: Sequence[str] | np.ndarray, *, k: int = 15
) -> float:
    """Mean fraction of each cell's ``k`` nearest neighbours (cosine, itself excluded) with its label."""
    labels = np.asarray(labels, dtype=str)
    k = min(k, len(labels) - 1)
    if k < 1:
        return float("nan")
    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(emb)
    idx = nn.kneighbors(emb, return_distance=False)[:, 1:]
    return float((labels[idx] == labels[:, None]).mean())


def embedding_scores(
    emb: np.ndarray, labels: Sequence[str] | np.ndarray, *, k: int = 15
) -> dict[str, float]:
    """Both scores at once; rows with NaN are left out."""
    ok = ~np.isnan(emb).any(1)
    labels = np.asarray(labels, dtype=str)[ok]
    return {
        "silhouette_label": label_silhouette(emb[ok], labels),
        "knn_label_agreement": knn_label_agreement(emb[ok], labels, k=k),
    }
