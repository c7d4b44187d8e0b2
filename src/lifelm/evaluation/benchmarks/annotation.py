"""Cell-type annotation benchmark: the model next to simple baselines on held-out cells.

Split: either a stratified random split of one labelled dataset (``test_fraction``, seeded), or
a reference dataset for training and a query dataset from another study for testing. Test cells
whose label never occurs in training are left out of the scores and counted.

Rows of the table (same train and test cells for all):

- ``majority``: most frequent training label;
- ``logreg_pca``: logistic regression on 50 PCs of log1p-normalised HVGs;
- ``lifelm_knn``: cosine kNN (k=15) on frozen LifeLM embeddings;
- ``lifelm_linear``: logistic regression on frozen LifeLM embeddings (a linear probe);
- ``lifelm_finetune``: classification head + trunk fine-tuned end to end (optional, slower).

Embedding quality on the test cells (label silhouette, kNN label agreement) is reported for the
LifeLM embedding next to the PCA embedding of the baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lifelm.evaluation.baselines.annotation import PcaLogReg, majority_baseline
from lifelm.evaluation.metrics.classification import classification_scores
from lifelm.evaluation.metrics.embedding import embedding_scores
from lifelm.tasks.cells.annotate import fit_knn, predict_proba, train_annotator
from lifelm.tasks.cells.embed import as_cell_model, embed_tokens
from lifelm.tasks.cells.model_io import CellModel
from lifelm.training.loop import TrainConfig


@dataclass
class AnnotationBenchmark:
    """Scores table plus what it was computed on."""

    table: pd.DataFrame  # one row per method: accuracy, macro_f1, n, seconds
    embedding: pd.DataFrame  # one row per embedding: silhouette_label, knn_label_agreement
    split: str  # plain-language description of train and test cells
    info: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self) -> str:
        lines = [f"Split: {self.split}", "", _md(self.table), "", _md(self.embedding)]
        return "\n".join(lines)


def _md(df: pd.DataFrame) -> str:
    cols = [df.index.name or "method", *df.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, *row in df.itertuples():
        vals = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        out.append("| " + " | ".join([str(idx), *vals]) + " |")
    return "\n".join(out)


def _split(
    adata: ad.AnnData, label_key: str, test_fraction: float, seed: int
) -> tuple[ad.AnnData, ad.AnnData]:
    labels = adata.obs[label_key].astype(str).to_numpy()
    values, counts = np.unique(labels, return_counts=True)
    strat = np.where(np.isin(labels, values[counts >= 2]), labels, "__rare__")
    idx = np.arange(adata.n_obs)
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=strat)
    return adata[np.sort(tr)].to_memory() if adata.isbacked else adata[np.sort(tr)].copy(), (
        adata[np.sort(te)].to_memory() if adata.isbacked else adata[np.sort(te)].copy()
    )


def run_annotation_benchmark(
    adata: ad.AnnData,
    model: CellModel | str | Path,
    *,
    label_key: str = "cell_type",
    query: ad.AnnData | None = None,
    query_label_key: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    finetune: TrainConfig | None = None,
    layer: str | None = None,
    device: str = "auto",
) -> AnnotationBenchmark:
    """Score LifeLM annotation and the baselines on the same held-out cells.

    Parameters
    ----------
    adata
        Labelled cells with raw counts (the reference when ``query`` is given).
    model
        Pretrained cell model or its folder.
    label_key
        Label column of ``adata.obs``.
    query
        Optional held-out dataset from another study; else a stratified split of ``adata``.
    query_label_key
        Label column of ``query.obs`` (defaults to ``label_key``).
    test_fraction
        Fraction of cells held out when splitting ``adata``.
    seed
        Seeds the split and the baselines.
    finetune
        Fine-tune a classification head with these settings (skipped when ``None``).
    layer
        Where the counts are, if not found automatically.
    device
        ``auto``, ``cpu`` or ``cuda``.
    """
    cm = as_cell_model(model, device)
    adata = adata[adata.obs[label_key].notna()]
    if query is None:
        train_ad, test_ad = _split(adata, label_key, test_fraction, seed)
        split = (
            f"stratified random split of {adata.n_obs} labelled cells: {train_ad.n_obs} train, "
            f"{test_ad.n_obs} test ({test_fraction:.0%}, seed {seed})"
        )
        qkey = label_key
    else:
        qkey = query_label_key or label_key
        train_ad = adata.to_memory() if adata.isbacked else adata
        test_ad = query[query.obs[qkey].notna()]
        test_ad = test_ad.to_memory() if test_ad.isbacked else test_ad.copy()
        split = (
            f"train on all {train_ad.n_obs} reference cells, test on {test_ad.n_obs} query cells"
        )
    y_tr = train_ad.obs[label_key].astype(str).to_numpy()
    y_te_all = test_ad.obs[qkey].astype(str).to_numpy()
    seen = np.isin(y_te_all, np.unique(y_tr))
    if not seen.all():
        split += f"; {int((~seen).sum())} test cells with labels unseen in training left out"
    test_ad = test_ad[seen].copy()
    y_te = y_te_all[seen]

    rows: dict[str, dict[str, float]] = {}

    def score(name: str, pred: np.ndarray, t0: float) -> None:
        rows[name] = {**classification_scores(y_te, pred), "seconds": time.perf_counter() - t0}

    t0 = time.perf_counter()
    score("majority", majority_baseline(y_tr, len(y_te)), t0)
    t0 = time.perf_counter()
    pca = PcaLogReg.fit(train_ad, y_tr, seed=seed, layer=layer)
    score("logreg_pca", pca.predict(test_ad, layer), t0)

    t0 = time.perf_counter()
    cells_tr = cm.tokenizer.encode(train_ad, layer=layer)
    cells_te = cm.tokenizer.encode(test_ad, layer=layer)
    emb_tr = embed_tokens(cm, cells_tr, progress=False)
    emb_te = embed_tokens(cm, cells_te, progress=False)
    t_embed = time.perf_counter() - t0
    ok_tr = ~np.isnan(emb_tr).any(1)
    ok_te = ~np.isnan(emb_te).any(1)

    t0 = time.perf_counter()
    classes = sorted(np.unique(y_tr))
    y_idx = np.searchsorted(classes, y_tr)
    knn = fit_knn(cm, emb_tr, y_idx, classes)
    proba = knn.classifier.predict_proba(np.nan_to_num(emb_te))
    pred = np.array(classes, dtype=object)[knn.classifier.classes_[proba.argmax(1)]]
    score("lifelm_knn", np.where(ok_te, pred, "unassigned").astype(str), t0)
    rows["lifelm_knn"]["seconds"] += t_embed

    t0 = time.perf_counter()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(emb_tr[ok_tr], y_tr[ok_tr])
    pred = np.full(len(y_te), "unassigned", dtype=object)
    pred[ok_te] = probe.predict(emb_te[ok_te])
    score("lifelm_linear", pred.astype(str), t0)
    rows["lifelm_linear"]["seconds"] += t_embed

    if finetune is not None:
        t0 = time.perf_counter()
        clf = train_annotator(
            train_ad, cm, label_key=label_key, mode="finetune", train_config=finetune, layer=layer
        )
        proba = predict_proba(clf, cells_te)
        pred = np.array(clf.classes, dtype=object)[np.nan_to_num(proba).argmax(1)]
        score("lifelm_finetune", np.where(ok_te, pred, "unassigned").astype(str), t0)

    table = pd.DataFrame(rows).T
    table.index.name = "method"
    table["n"] = table["n"].astype(int)
    emb_rows = {
        "lifelm": embedding_scores(emb_te, y_te),
        "pca_hvg": embedding_scores(pca.transform(test_ad, layer), y_te),
    }
    embedding = pd.DataFrame(emb_rows).T
    embedding.index.name = "embedding (test cells)"
    return AnnotationBenchmark(
        table=table,
        embedding=embedding,
        split=split,
        info={"model": str(cm.folder), "label_key": label_key, "n_classes": len(np.unique(y_tr))},
    )
