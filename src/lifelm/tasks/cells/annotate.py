"""Cell-type annotation with the model: fine-tune a classification head, or kNN on embeddings.

The pieces a trustworthy annotation is built from (composed in :func:`lifelm.cells.annotate`,
which also fits the simple baseline, since tasks must not import evaluation):

- :func:`train_annotator`: fine-tuning (head warm-started from a linear probe on the frozen
  embeddings, then trunk + head end to end; steps from the reference size) or cosine kNN; a
  fine-tuned model whose training accuracy does not beat the majority class is refused;
- :func:`predict_proba`: class probabilities for tokenised cells;
- :func:`fit_temperature` / :func:`apply_temperature`: temperature scaling of probabilities,
  fitted on held-out reference cells (Guo et al. 2017);
- :func:`call_labels`: the label with the highest calibrated probability, or ``Unassigned``
  below a confidence threshold;
- :class:`NoveltyFlagger`: cells farther from the reference than the reference's own held-out
  cells (a quantile of their nearest-neighbour distance) are flagged as possibly novel.
"""

from __future__ import annotations

import copy as copylib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from lifelm._core.errors import InputError, LifeLMError
from lifelm._core.runtime import get_logger, seed_everything
from lifelm.data.cells.datasets import CellTokens, LabelCollator, length_batches, pad_cells
from lifelm.data.cells.tokenizer import PAD, TokenizedCells
from lifelm.models.cell_transformer import CellClassifier, CellClassifierConfig
from lifelm.tasks.cells.embed import as_cell_model, embed_tokens
from lifelm.tasks.cells.model_io import CellModel, load_cell_model, sidecar
from lifelm.training.loop import TrainConfig, train

log = get_logger("lifelm.annotate")
Mode = Literal["finetune", "knn"]
UNASSIGNED = "Unassigned"

# fine-tuning defaults (measured on the shared PBMC data with the tiny preset, see BENCHMARKS.md):
# the head starts from a linear probe, so a moderate learning rate refines rather than destroys it
FINETUNE_LR = 5e-4
FINETUNE_BATCH = 32
FINETUNE_EPOCHS = 2.0
MIN_STEPS, MAX_STEPS = 30, 2000


class TrainingFailedError(LifeLMError):
    """Fine-tuning did not learn (training accuracy at or below the majority class)."""


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


def encode_labels(
    reference: ad.AnnData, label_key: str, classes: list[str] | None = None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Integer labels (-1 = unlabelled), the sorted class names and the labelled-cell mask."""
    if label_key not in reference.obs:
        raise InputError(
            f"reference.obs has no column {label_key!r}; columns: {list(reference.obs.columns)}. "
            "Pass the label column with --label-key / label_key=."
        )
    raw = reference.obs[label_key]
    known = (raw.notna() & (raw.astype(str) != "")).to_numpy()
    if classes is None:
        classes = sorted(pd.unique(raw[known].astype(str)))
    if len(classes) < 2:
        raise InputError(
            f"reference column {label_key!r} has {len(classes)} class(es); annotation needs at "
            "least 2 labelled classes"
        )
    index = {c: i for i, c in enumerate(classes)}
    y = np.array(
        [index.get(str(v), -1) if k else -1 for v, k in zip(raw, known, strict=True)], dtype=int
    )
    return y, list(classes), known & (y >= 0)


def finetune_config(
    n_cells: int,
    *,
    lr: float | None = None,
    batch_size: int | None = None,
    epochs: float = FINETUNE_EPOCHS,
    seed: int = 0,
) -> TrainConfig:
    """Fine-tuning settings from the reference size: ``epochs`` passes, warm-up over 10 % of steps."""
    bs = batch_size or FINETUNE_BATCH
    steps = int(np.clip(math.ceil(epochs * n_cells / bs), MIN_STEPS, MAX_STEPS))
    return TrainConfig(
        max_steps=steps,
        batch_size=bs,
        lr=lr or FINETUNE_LR,
        warmup_steps=max(1, steps // 10),
        checkpoint_every=0,
        log_every=max(1, steps // 10),
        seed=seed,
        progress=False,
    )


def _probe_head(clf: CellClassifier, emb: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Warm-start a linear head from a logistic-regression probe on frozen embeddings.

    Returns the probe's training accuracy. Classes absent from ``y`` get a very low bias.
    """
    lin = clf.head[-1]
    if not isinstance(lin, torch.nn.Linear):
        return float("nan")
    ok = ~np.isnan(emb).any(1)
    mu, sd = emb[ok].mean(0), emb[ok].std(0) + 1e-6
    probe = LogisticRegression(max_iter=1000, class_weight="balanced")
    probe.fit((emb[ok] - mu) / sd, y[ok])
    coef, bias = probe.coef_ / sd, probe.intercept_ - (probe.coef_ / sd) @ mu
    if coef.shape[0] == 1:  # binary: sklearn keeps one row (logit of class 1)
        coef, bias = np.vstack([-coef / 2, coef / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    w = np.zeros((n_classes, emb.shape[1]))
    b = np.full(n_classes, -10.0)
    w[probe.classes_], b[probe.classes_] = coef, bias
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(w, dtype=lin.weight.dtype))
        lin.bias.copy_(torch.as_tensor(b, dtype=lin.bias.dtype))
    return float(probe.score((emb[ok] - mu) / sd, y[ok]))


# Long because of its docstring; the body sets up, probes, fine-tunes and checks in order.
def train_annotator(
    reference: ad.AnnData,
    model: CellModel | str | Path,
    *,
    label_key: str,
    mode: Mode = "finetune",
    out_dir: str | Path | None = None,
    layer: str | None = None,
    epochs: float = FINETUNE_EPOCHS,
    lr: float | None = None,
    batch_size: int | None = None,
    train_config: TrainConfig | None = None,
    n_neighbors: int = 15,
    classes: list[str] | None = None,
    seed: int = 0,
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
        ``reference.obs`` column with the labels (NaN or empty = unlabelled, skipped).
    mode
        ``"finetune"``: a linear head warm-started from a logistic-regression probe on the frozen
        embeddings, then trunk and head trained end to end (saved to ``out_dir/model``);
        ``"knn"``: cosine kNN on frozen embeddings.
    out_dir
        Run folder for fine-tuning; when ``None``, a temporary folder removed once the weights
        are loaded.
    layer
        Where the counts are, if not found automatically.
    epochs
        Passes over the reference (sets the number of steps unless ``train_config`` is given).
    lr, batch_size
        Fine-tuning learning rate and cells per step (defaults: ``FINETUNE_LR``, ``FINETUNE_BATCH``).
    train_config
        Full optimisation settings for fine-tuning (overrides ``epochs``, ``lr``, ``batch_size``).
    n_neighbors
        ``k`` for kNN mode.
    classes
        The class list (default: sorted labels of the reference).
    seed
        Seeds initialisation and data order.
    device
        ``auto``, ``cpu`` or ``cuda``.

    Raises
    ------
    TrainingFailedError
        When fine-tuning ends with a training accuracy at or below the majority class.
    """
    cm = as_cell_model(model, device)
    if cm.is_classifier:
        raise InputError(
            f"{cm.folder} is already a fine-tuned classifier; pass the pretrained model folder "
            "(…/model of `lifelm cells pretrain`) to learn from a reference"
        )
    y, classes, known = encode_labels(reference, label_key, classes)
    cells = cm.tokenizer.encode(reference, layer=layer)
    keep = np.flatnonzero(known & (cells.n_genes > 0))
    cells, y = cells.subset(keep), y[keep]
    if len(np.unique(y)) < 2:
        raise InputError(
            f"the reference has labelled cells of {len(np.unique(y))} class in {label_key!r} "
            "with vocabulary genes; annotation needs at least 2 classes"
        )
    emb = embed_tokens(cm, cells, progress=False)
    if mode == "knn":
        return fit_knn(cm, emb, y, classes, n_neighbors=n_neighbors)
    if mode != "finetune":
        raise InputError(f"mode must be 'finetune' or 'knn', not {mode!r}")
    cfg = train_config or finetune_config(
        len(y), lr=lr, batch_size=batch_size, epochs=epochs, seed=seed
    )
    counts = np.bincount(y, minlength=len(classes)).astype(np.float64)
    head_cfg = CellClassifierConfig(n_classes=len(classes))
    seed_everything(cfg.seed)
    clf = CellClassifier(copylib.deepcopy(cm.trunk), head_cfg)
    probe_acc = _probe_head(clf, emb, y, len(classes))
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
            "head_init": "logistic-regression probe on frozen embeddings",
            "finetune": {"lr": cfg.lr, "batch_size": cfg.batch_size, "steps": cfg.max_steps},
        },
    )
    scratch: tempfile.TemporaryDirectory[str] | None = None
    if out_dir:
        folder = Path(out_dir)
    else:
        scratch = tempfile.TemporaryDirectory(prefix="lifelm-annotate-")
        folder = Path(scratch.name)
    log.info(
        "fine-tuning on %d cells: %d steps of %d, lr %.1e (head from a probe, train acc %.3f)",
        len(y),
        cfg.max_steps,
        cfg.batch_size,
        cfg.lr,
        probe_acc,
    )
    result = train(
        clf,
        CellTokens(cells, y),
        config=cfg,
        out_dir=folder,
        collate_fn=LabelCollator(cm.trunk.config.max_length),
        sidecar=side,
        unit="cells",
    )
    tuned = load_cell_model(result.model_dir, device=str(next(cm.trunk.parameters()).device))
    if scratch is not None:  # weights are in memory; leave no temporary run folder behind
        scratch.cleanup()
        tuned.folder = None
    proba = predict_proba(tuned, cells)
    train_acc = float((np.nan_to_num(proba).argmax(1) == y).mean())
    majority = float(counts.max() / counts.sum())
    tuned.config.setdefault("data", {})["training_accuracy"] = train_acc
    if not train_acc > majority:
        raise TrainingFailedError(
            f"fine-tuning did not learn: training accuracy {train_acc:.3f} does not beat the "
            f"majority class ({majority:.3f}) after {cfg.max_steps} steps at lr {cfg.lr:g}. "
            "Try another --lr (e.g. 10x lower or higher), more --epochs, --mode knn, or "
            "--method baseline (logistic regression on PCA)"
        )
    log.info("fine-tuned: training accuracy %.3f (majority %.3f)", train_acc, majority)
    return tuned


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
        raise InputError(
            "this model has no classification head; give a labelled reference to learn from"
        )
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


def _log(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(proba, 1e-7, 1.0))


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row (NaN rows stay NaN); T > 1 softens, T < 1 sharpens."""
    z = _log(proba) / temperature
    z -= np.nanmax(z, axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of held-out labels ``y``.

    ``proba`` are uncalibrated probabilities of held-out cells (rows with NaN are skipped);
    ``y`` their integer labels. Searched over T in [0.05, 20] (log scale); 1.0 when fewer than
    two usable cells.
    """
    ok = ~np.isnan(proba).any(1) & (y >= 0)
    if ok.sum() < 2:
        return 1.0
    logp, yy = _log(proba[ok]), y[ok]

    def nll(log_t: float) -> float:
        z = logp / math.exp(log_t)
        z = z - z.max(1, keepdims=True)
        lse = np.log(np.exp(z).sum(1))
        return float((lse - z[np.arange(len(yy)), yy]).mean())

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


def call_labels(
    proba: np.ndarray, classes: list[str], *, min_confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Best label per cell, or ``Unassigned`` when its probability is below ``min_confidence``.

    Returns labels (object array; NaN rows → ``Unassigned``) and the probability of the best
    class (NaN for cells that could not be scored).
    """
    ok = ~np.isnan(proba).any(1)
    best = np.nan_to_num(proba).argmax(1)
    conf = np.where(ok, np.nan_to_num(proba).max(1), np.nan)
    labels = np.array(classes, dtype=object)[best]
    labels[~ok | ~(np.nan_to_num(conf) >= min_confidence)] = UNASSIGNED
    return labels, conf


@dataclass
class NoveltyFlagger:
    """Flags cells whose mean distance to their ``k`` nearest reference cells is unusually large.

    The threshold is the ``quantile`` of the same distance for held-out reference cells, so about
    ``1 - quantile`` of cells like the reference are flagged by chance.
    """

    neighbors: NearestNeighbors
    threshold: float
    quantile: float
    k: int

    @classmethod
    def fit(
        cls, train: np.ndarray, holdout: np.ndarray, *, quantile: float = 0.99, k: int = 10
    ) -> NoveltyFlagger:
        ok = ~np.isnan(train).any(1)
        k = max(1, min(k, int(ok.sum())))
        nn = NearestNeighbors(n_neighbors=k).fit(train[ok])
        tmp = cls(nn, float("inf"), quantile, k)
        d = tmp.distance(holdout)
        d = d[np.isfinite(d)]
        tmp.threshold = float(np.quantile(d, quantile)) if len(d) else float("inf")
        return tmp

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Mean distance to the ``k`` nearest reference cells (NaN for rows with NaN)."""
        out = np.full(len(x), np.nan)
        ok = ~np.isnan(x).any(1)
        if ok.any():
            out[ok] = self.neighbors.kneighbors(x[ok])[0].mean(1)
        return out

    def flag(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance, is_novel) per row."""
        d = self.distance(x)
        return d, np.nan_to_num(d, nan=0.0) > self.threshold
