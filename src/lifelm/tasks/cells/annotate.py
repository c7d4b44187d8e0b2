"""Cell-type annotation: fine-tune a classification head, or kNN on embeddings for few labels."""

from __future__ import annotations

import copy as copylib
import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from sklearn.neighbors import KNeighborsClassifier

from lifelm._core.runtime import get_logger, seed_everything
from lifelm.data.cells.datasets import CellTokens, LabelCollator, length_batches, pad_cells
from lifelm.data.cells.tokenizer import PAD, TokenizedCells
from lifelm.models.cell_transformer import CellClassifier, CellClassifierConfig
from lifelm.tasks.cells.embed import as_cell_model, embed_tokens
from lifelm.tasks.cells.model_io import CellModel, load_cell_model, sidecar
from lifelm.training.loop import TrainConfig, train

log = get_logger("lifelm.annotate")
Mode = Literal["finetune", "knn"]


@dataclass
class KnnAnnotator:
    """Labels by majority vote of the nearest reference cells in embedding space (cosine)."""

    model: CellModel
    classifier: KNeighborsClassifier
    classes: list[str]


def fit_knn(
    model: CellModel,
    embeddings: np.ndarray,
    y: np.ndarray,
    classes: list[str],
    *,
    n_neighbors: int = 15,
) -> KnnAnnotator:
    """A cosine kNN annotator on reference embeddings already computed (rows with NaN skipped)."""
    ok = ~np.isnan(embeddings).any(1)
    knn = KNeighborsClassifier(
        n_neighbors=min(n_neighbors, int(ok.sum())), metric="cosine", weights="distance"
    )
    knn.fit(embeddings[ok], y[ok])
    return KnnAnnotator(model, knn, classes)


def _labels(reference: ad.AnnData, label_key: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    if label_key not in reference.obs:
        raise KeyError(
            f"reference.obs has no column {label_key!r}; columns: {list(reference.obs.columns)}"
        )
    raw = reference.obs[label_key]
    known = raw.notna().to_numpy()
    classes = sorted(pd.unique(raw[known].astype(str)))
    if len(classes) < 2:
        raise ValueError(f"{label_key!r} has {len(classes)} class(es); annotation needs at least 2")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index.get(str(v), -1) if k else -1 for v, k in zip(raw, known, strict=True)])
    return y, classes, known


def train_annotator(
    reference: ad.AnnData,
    model: CellModel | str | Path,
    *,
    label_key: str,
    mode: Mode = "finetune",
    out_dir: str | Path | None = None,
    layer: str | None = None,
    epochs: float = 3.0,
    train_config: TrainConfig | None = None,
    n_neighbors: int = 15,
    device: str = "auto",
) -> CellModel | KnnAnnotator:
    """Learn cell-type labels from a labelled reference.

    Parameters
    ----------
    reference
        Labelled cells with raw counts.
    model
        Pretrained cell model (or its folder).
    label_key
        ``reference.obs`` column with the labels (NaN = unlabelled, skipped).
    mode
        ``"finetune"``: train a classification head and the trunk end to end (saved to
        ``out_dir/model``); ``"knn"``: cosine kNN on frozen embeddings (for few labels).
    out_dir
        Run folder for fine-tuning (a temporary folder when ``None``).
    layer
        Where the counts are, if not found automatically.
    epochs
        Passes over the reference when ``train_config`` does not fix ``max_steps``.
    train_config
        Optimisation settings for fine-tuning.
    n_neighbors
        ``k`` for kNN mode.
    device
        ``auto``, ``cpu`` or ``cuda``.
    """
    cm = as_cell_model(model, device)
    y, classes, known = _labels(reference, label_key)
    cells = cm.tokenizer.encode(reference, layer=layer)
    keep = np.flatnonzero(known & (cells.n_genes > 0))
    cells, y = cells.subset(keep), y[keep]
    if mode == "knn":
        return fit_knn(cm, embed_tokens(cm, cells), y, classes, n_neighbors=n_neighbors)
    cfg = train_config or TrainConfig(lr=1e-4, warmup_steps=20, checkpoint_every=0, log_every=10)
    if train_config is None:
        steps = max(10, math.ceil(epochs * len(y) / cfg.batch_size))
        cfg = replace(cfg, max_steps=steps, warmup_steps=min(cfg.warmup_steps, steps // 10))
    counts = np.bincount(y, minlength=len(classes)).astype(np.float64)
    head_cfg = CellClassifierConfig(n_classes=len(classes))
    seed_everything(cfg.seed)
    clf = CellClassifier(copylib.deepcopy(cm.trunk), head_cfg)
    # inverse-frequency weights, normalised to mean 1 over the classes present
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(classes), 0.0)
    clf.class_weight.copy_(torch.as_tensor(w / w[counts > 0].mean(), dtype=torch.float32))
    side = sidecar(
        cm.trunk.config,
        cm.tokenizer,
        head=head_cfg,
        classes=classes,
        provenance={
            "reference_cells": len(y),
            "label_key": label_key,
            "base_model": str(cm.folder),
        },
    )
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="lifelm-annotate-"))
    result = train(
        clf,
        CellTokens(cells, y),
        config=cfg,
        out_dir=folder,
        collate_fn=LabelCollator(cm.trunk.config.max_length),
        sidecar=side,
        unit="cells",
    )
    return load_cell_model(result.model_dir, device=str(next(cm.trunk.parameters()).device))


@torch.inference_mode()
def predict_proba(
    annotator: CellModel | KnnAnnotator, cells: TokenizedCells, *, batch_size: int = 64
) -> np.ndarray:
    """Class probabilities (n_cells, n_classes); rows of NaN for cells with no vocabulary gene."""
    if isinstance(annotator, KnnAnnotator):
        emb = embed_tokens(annotator.model, cells, batch_size=batch_size, progress=False)
        proba = np.full((len(cells), len(annotator.classes)), np.nan)
        ok = ~np.isnan(emb).any(1)
        if ok.any():
            p = annotator.classifier.predict_proba(emb[ok])
            full = np.zeros((ok.sum(), len(annotator.classes)))
            full[:, annotator.classifier.classes_] = p
            proba[ok] = full
        return proba
    net = annotator.network
    if not isinstance(net, CellClassifier):
        raise TypeError("this model has no classification head; train one with train_annotator")
    net.eval()
    device = next(net.parameters()).device
    lengths = cells.lengths()
    proba = np.full((len(cells), net.config.n_classes), np.nan)
    todo = np.flatnonzero(lengths > 0)
    for batch in length_batches(lengths[todo], batch_size):
        idx = todo[batch]
        ids = pad_cells([cells[i] for i in idx], net.trunk.config.max_length).to(device)
        proba[idx] = torch.softmax(net.logits(ids, ids.ne(PAD)).float(), -1).cpu().numpy()
    return proba


def annotate(
    adata: ad.AnnData,
    model: CellModel | KnnAnnotator | str | Path,
    *,
    reference: ad.AnnData | None = None,
    label_key: str | None = None,
    mode: Mode = "finetune",
    layer: str | None = None,
    key_added: str = "lifelm_cell_type",
    train_config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    device: str = "auto",
    copy: bool = False,
) -> ad.AnnData | None:
    """Predict cell types for ``adata``.

    ``model`` is either an annotator (a fine-tuned classifier folder or object, or a
    :class:`KnnAnnotator`), or a pretrained cell model together with ``reference`` and
    ``label_key``, in which case an annotator is trained first (see :func:`train_annotator`).
    The query may come from another study than the reference: only the gene vocabulary must
    be shared.

    Returns
    -------
    The AnnData when ``copy=True``, else ``None``. Writes:

    - ``.obs[key_added]``: predicted label (categorical; NaN for cells with no vocabulary gene);
    - ``.obs[key_added + "_probability"]``: probability of the predicted label;
    - ``.uns["lifelm"]["annotate"]``: classes, mode and the source model.
    """
    if isinstance(model, str | Path):
        model = load_cell_model(model, device=device)
    if isinstance(model, CellModel) and not model.is_classifier:
        if reference is None or label_key is None:
            raise ValueError(
                "a pretrained model without a classification head needs reference= and "
                "label_key= (or pass an annotator trained with train_annotator)"
            )
        model = train_annotator(
            reference,
            model,
            label_key=label_key,
            mode=mode,
            layer=layer,
            train_config=train_config,
            out_dir=out_dir,
            device=device,
        )
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    tok = model.model.tokenizer if isinstance(model, KnnAnnotator) else model.tokenizer
    classes = model.classes
    cells = tok.encode(adata, layer=layer)
    proba = predict_proba(model, cells)
    ok = ~np.isnan(proba).any(1)
    best = np.where(ok, np.nan_to_num(proba).argmax(1), -1)
    labels = pd.Categorical.from_codes(best, categories=classes)
    adata.obs[key_added] = pd.Series(labels, index=adata.obs_names)
    adata.obs[f"{key_added}_probability"] = np.where(ok, np.nan_to_num(proba).max(1), np.nan)
    adata.uns.setdefault("lifelm", {})["annotate"] = {
        "mode": "knn" if isinstance(model, KnnAnnotator) else "finetune",
        "classes": classes,
        "key_added": key_added,
        "unassigned_cells": int((~ok).sum()),
    }
    return adata if copy else None
