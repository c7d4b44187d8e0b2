"""Cell-type annotation benchmark: the model next to simple baselines on held-out cells.

Split: either a stratified random split of one labelled dataset (``test_fraction``, seeded), or
a reference dataset for training and a query dataset from another study for testing. Labels of
two studies are harmonised with ``label_map``. Test cells whose label never occurs in training
stay in the denominator: ``accuracy`` is over all labelled test cells (they count as errors) and
``accuracy_mapped`` over those with a label the reference has; the left-out labels are counted.

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

import csv
import io
import json
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

from lifelm._core.errors import InputError
from lifelm.evaluation.baselines.annotation import PcaLogReg, majority_baseline
from lifelm.evaluation.metrics.classification import classification_scores
from lifelm.evaluation.metrics.embedding import embedding_scores
from lifelm.tasks.cells.annotate import (
    TrainingFailedError,
    fit_knn,
    predict_proba,
    train_annotator,
)
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the split, both tables as records and the run information."""
        return {
            "split": self.split,
            "table": self.table.reset_index().to_dict("records"),
            "embedding": self.embedding.reset_index().to_dict("records"),
            **self.info,
        }

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


def read_label_map(path: str | Path) -> dict[str, str]:
    """Read a label map: JSON object, or a two-column TSV/CSV (query label, reference label).

    A header row is allowed when its first cell is ``query``, ``from`` or ``source``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"label map {path} is not a file; give a .json, .tsv or .csv file")
    text = path.read_text()
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"label map {path} is not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise InputError(
                f"label map {path} must be a JSON object {{query label: reference label}}"
            )
        return {str(k): str(v) for k, v in data.items()}
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    out: dict[str, str] = {}
    for n, row in enumerate(csv.reader(io.StringIO(text), delimiter=sep), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise InputError(
                f"label map {path}, line {n}: expected 2 columns (query label, reference label) "
                f"separated by {'a comma' if sep == ',' else 'a tab'}, found {len(row)}"
            )
        if n == 1 and row[0].strip().lower() in {"query", "from", "source"}:
            continue
        out[row[0].strip()] = row[1].strip()
    if not out:
        raise InputError(f"label map {path} has no entries")
    return out


def harmonise_labels(labels: Any, label_map: dict[str, str] | None) -> np.ndarray:
    """Labels as strings, each replaced by ``label_map[label]`` when it is a key."""
    arr = np.asarray(pd.Series(labels).astype(str), dtype=object)
    if label_map:
        arr = np.array([label_map.get(v, v) for v in arr], dtype=object)
    return arr.astype(str)


def unmapped_counts(labels: np.ndarray) -> dict[str, int]:
    """Cells per label, most frequent first."""
    values, counts = np.unique(np.asarray(labels, dtype=str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return {str(values[i]): int(counts[i]) for i in order}


def _fmt_counts(counts: dict[str, int], top: int = 8) -> str:
    items = [f"{k}: {v}" for k, v in list(counts.items())[:top]]
    return ", ".join(items) + (", …" if len(counts) > top else "")


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


# Long because every method is scored on the same split in one place, so the table cannot compare methods on different cells.
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
    label_map: dict[str, str] | None = None,
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
    label_map
        Harmonises labels across studies: every label (of the reference or the query) that is a
        key is replaced by its value. Test cells whose label the reference does not have after
        the map are reported per label in ``info["unmapped"]``, count as errors in ``accuracy``
        and are left out of ``accuracy_mapped``; they are never dropped silently.
    device
        ``auto``, ``cpu`` or ``cuda``.
    """
    cm = as_cell_model(model, device)
    label_map = dict(label_map or {})
    adata = adata[adata.obs[label_key].notna()]
    if label_map:
        adata = adata.copy()
        adata.obs[label_key] = harmonise_labels(adata.obs[label_key], label_map)
    if query is None:
        train_ad, test_ad = _split(adata, label_key, test_fraction, seed)
        split = (
            f"stratified random split of {adata.n_obs} labelled cells: {train_ad.n_obs} train, "
            f"{test_ad.n_obs} test ({test_fraction:.0%}, seed {seed})"
        )
        qkey = label_key
        raw_te = test_ad.obs[qkey].astype(str).to_numpy()
    else:
        qkey = query_label_key or label_key
        if qkey not in query.obs:
            raise InputError(
                f"the query has no label column {qkey!r} (columns: {list(query.obs.columns)}); "
                "pass --query-label-key"
            )
        train_ad = adata.to_memory() if adata.isbacked else adata
        test_ad = query[query.obs[qkey].notna()]
        test_ad = test_ad.to_memory() if test_ad.isbacked else test_ad.copy()
        raw_te = test_ad.obs[qkey].astype(str).to_numpy()
        split = (
            f"train on all {train_ad.n_obs} reference cells, test on {test_ad.n_obs} query cells"
        )
    y_tr = train_ad.obs[label_key].astype(str).to_numpy()
    y_te = harmonise_labels(raw_te, label_map)
    mapped = np.isin(y_te, np.unique(y_tr))
    unmapped = unmapped_counts(raw_te[~mapped])
    if not mapped.all():
        split += (
            f"; {int((~mapped).sum())} test cells have labels the reference does not have"
            f"{' after the label map' if label_map else ''} ({_fmt_counts(unmapped)}): they count "
            f"as errors in accuracy (all {len(y_te)} cells) and are left out of accuracy_mapped "
            f"({int(mapped.sum())} cells)"
        )
    if not mapped.any():
        raise InputError(
            f"no test cell has a label the reference has (test labels: {_fmt_counts(unmapped)}; "
            f"reference labels: {sorted(np.unique(y_tr))[:20]}). Harmonise them with --label-map "
            "FILE (query label -> reference label) or label_map= in Python"
        )

    rows: dict[str, dict[str, float]] = {}

    def score(name: str, pred: np.ndarray, t0: float) -> None:
        pred = np.asarray(pred, dtype=str)
        mapped_scores = classification_scores(y_te[mapped], pred[mapped])
        rows[name] = {
            "accuracy": float((pred == y_te).mean()),
            "accuracy_mapped": mapped_scores["accuracy"],
            "macro_f1": mapped_scores["macro_f1"],
            "n": len(y_te),
            "n_mapped": int(mapped.sum()),
            "seconds": time.perf_counter() - t0,
        }

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
        try:
            clf = train_annotator(
                train_ad,
                cm,
                label_key=label_key,
                mode="finetune",
                train_config=finetune,
                layer=layer,
                classes=classes,
            )
        except TrainingFailedError as e:  # stated in the split line, not hidden
            split += f"; lifelm_finetune left out: {e}"
        else:
            proba = predict_proba(clf, cells_te)
            pred = np.array(clf.classes, dtype=object)[np.nan_to_num(proba).argmax(1)]
            score("lifelm_finetune", np.where(ok_te, pred, "unassigned").astype(str), t0)

    table = pd.DataFrame(rows).T
    table.index.name = "method"
    table["n"] = table["n"].astype(int)
    table["n_mapped"] = table["n_mapped"].astype(int)
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
        info={
            "model": str(cm.folder),
            "label_key": label_key,
            "n_classes": len(np.unique(y_tr)),
            "n_test": len(y_te),
            "n_mapped": int(mapped.sum()),
            "unmapped": unmapped,
            "label_map": label_map,
        },
    )
