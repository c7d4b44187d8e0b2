"""Single-cell models: the public Python API.

>>> import lifelm.cells as lc
>>> adata = lc.synthetic_cells(n_cells=200, n_genes=300)
>>> adata.n_obs
200

Typical use::

    model_dir = lc.pretrain("cells.h5ad", "runs/pbmc", preset="small").model_dir
    lc.embed(adata, model_dir)                                 # .obsm["X_lifelm"]
    lc.annotate(query, model_dir, reference=adata, label_key="cell_type")  # .obs["lifelm_cell_type"]

:func:`annotate` lives here rather than in ``tasks/cells/annotate.py`` because it composes the
model (a task) with the simple baseline and the calibration metrics, which are in ``evaluation``;
tasks must not import evaluation, and this module already sits above it (it re-exports
``evaluate``). The model-side pieces (training, probabilities, temperature scaling, the
``Unassigned`` call, novelty distances) stay in ``tasks/cells/annotate.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from lifelm._core.errors import InputError
from lifelm._core.runtime import get_logger
from lifelm.data.cells.tokenizer import RankValueTokenizer
from lifelm.evaluation.baselines.annotation import PcaLogReg
from lifelm.evaluation.benchmarks.annotation import (
    harmonise_labels,
    read_label_map,
    unmapped_counts,
)
from lifelm.evaluation.benchmarks.annotation import run_annotation_benchmark as evaluate
from lifelm.evaluation.metrics.classification import (
    classification_scores,
    confusion,
    expected_calibration_error,
    reliability,
)
from lifelm.io.h5ad import read_h5ad as read
from lifelm.tasks.cells.annotate import (
    UNASSIGNED,
    KnnAnnotator,
    Mode,
    NoveltyFlagger,
    apply_temperature,
    call_labels,
    fit_temperature,
    predict_proba,
    train_annotator,
)
from lifelm.tasks.cells.embed import as_cell_model, embed
from lifelm.tasks.cells.model_io import CellModel
from lifelm.tasks.cells.model_io import load_cell_model as load_model
from lifelm.tasks.cells.perturb import perturb
from lifelm.tasks.cells.pretrain import pretrain
from lifelm.tasks.cells.targets import rank_targets
from lifelm.testing.synthetic import synthetic_cells
from lifelm.training.loop import TrainConfig

__all__ = [
    "UNASSIGNED",
    "RankValueTokenizer",
    "TrainConfig",
    "annotate",
    "annotation_summary",
    "as_dict",
    "embed",
    "evaluate",
    "load_model",
    "perturb",
    "pretrain",
    "rank_targets",
    "read",
    "read_label_map",
    "synthetic_cells",
    "train_annotator",
]

log = get_logger("lifelm.annotate")
Method = Literal["auto", "model", "baseline"]
BASELINE = "logreg_pca"
_LABEL = "_lifelm_label"


def _holdout_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of reference cells; classes with fewer than 2 cells stay in training."""
    values, counts = np.unique(y, return_counts=True)
    rare = np.isin(y, values[counts < 2])
    idx = np.flatnonzero(~rare)
    tr, ho = train_test_split(idx, test_size=fraction, random_state=seed, stratify=y[idx])
    return np.sort(np.concatenate([tr, np.flatnonzero(rare)])), np.sort(ho)


def _calibration(proba: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    """Held-out accuracy and macro-F1; temperature; ECE and reliability before and after scaling.

    The temperature used on the query is fitted on all held-out cells. The "after" ECE is
    cross-fitted so that it is not measured on the cells it was fitted to: the held-out cells are
    split in two halves, each half is scaled with the temperature fitted on the other half.
    When scaling does not lower that ECE, the temperature is not applied (T = 1) and ``ece`` is
    the unscaled one; ``ece_scaled`` and ``temperature_fitted`` keep what was tried.
    """
    ok = ~np.isnan(proba).any(1)
    pred = np.nan_to_num(proba).argmax(1)
    correct = (pred == y) & ok
    temperature = fit_temperature(proba, y)
    order = np.random.default_rng(seed).permutation(len(y))
    halves = [np.sort(order[: len(y) // 2]), np.sort(order[len(y) // 2 :])]
    cal = np.full_like(proba, np.nan, dtype=float)
    for a, b in (halves, halves[::-1]):
        cal[a] = apply_temperature(proba[a], fit_temperature(proba[b], y[b]))
    conf_raw = np.where(ok, np.nan_to_num(proba).max(1), np.nan)
    conf_cal = np.where(ok, np.nan_to_num(cal).max(1), np.nan)
    scores = classification_scores(y.astype(str), np.where(ok, pred, -1).astype(str))
    ece_before = expected_calibration_error(conf_raw, correct)
    ece_scaled = expected_calibration_error(conf_cal, correct)
    # scaling that does not lower the cross-fitted ECE (e.g. kNN vote fractions) is not used
    applied = bool(ece_scaled < ece_before)
    return {
        "accuracy": scores["accuracy"],
        "macro_f1": scores["macro_f1"],
        "n": len(y),
        "temperature": float(temperature) if applied else 1.0,
        "temperature_fitted": float(temperature),
        "temperature_applied": applied,
        "ece_before": ece_before,
        "ece_scaled": ece_scaled,
        "ece": ece_scaled if applied else ece_before,
        "reliability_before": reliability(conf_raw, correct),
        "reliability_scaled": reliability(conf_cal, correct),
        "reliability": reliability(conf_cal if applied else conf_raw, correct),
    }


def _pairs(mapping: dict[Any, Any], key: str, value: str) -> dict[str, list[Any]]:
    """A label-keyed dict as two parallel lists: labels such as 'CD4+/CD25 T Reg' hold a '/',
    which h5ad stores cannot have in a key."""
    return {
        key: [str(k) for k in mapping],
        value: [v if isinstance(v, str) else int(v) for v in mapping.values()],
    }


def as_dict(pairs: dict[str, list[Any]]) -> dict[str, Any]:
    """The inverse of the two-list form in ``.uns``.

    h5ad cannot store keys like ``"CD4+/CD25 T Reg"``, so label-keyed records are saved as two
    lists; this turns them back into a dict.

    >>> as_dict({"label": ["B", "NK"], "cells": [3, 5]})
    {'B': 3, 'NK': 5}
    """
    a, b = list(pairs.values())
    return dict(zip(a, b, strict=True))


def _reorder(proba: np.ndarray, have: list[str], want: list[str]) -> np.ndarray:
    """Columns of ``proba`` (named ``have``) in the order ``want`` (absent classes get 0)."""
    out = np.zeros((len(proba), len(want)))
    pos = {c: i for i, c in enumerate(want)}
    for j, c in enumerate(have):
        out[:, pos[c]] = proba[:, j]
    return out


def _query_scores(
    truth_raw: np.ndarray,
    label_map: dict[str, str],
    classes: list[str],
    predictions: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Accuracy on a labelled query: over all cells, over mapped cells, and over assigned cells."""
    truth = harmonise_labels(truth_raw, label_map)
    mapped = np.isin(truth, classes)
    out: dict[str, Any] = {
        "n": len(truth),
        "n_mapped": int(mapped.sum()),
        "unmapped": _pairs(unmapped_counts(truth_raw[~mapped]), "label", "cells"),
    }
    for name, pred in predictions.items():
        pred = np.asarray(pred, dtype=str)
        assigned = pred != UNASSIGNED
        out[name] = {
            "accuracy": float((pred == truth).mean()) if len(truth) else float("nan"),
            "accuracy_mapped": float((pred[mapped] == truth[mapped]).mean())
            if mapped.any()
            else float("nan"),
            "accuracy_assigned_mapped": float(
                (pred[mapped & assigned] == truth[mapped & assigned]).mean()
            )
            if (mapped & assigned).any()
            else float("nan"),
            "unassigned_fraction": float((~assigned).mean()) if len(pred) else float("nan"),
        }
    return out


# Long because it is the one place where the model, the baseline, calibration and abstention meet, in the order a reader checks them; each step is a named helper call below (split candidates: the held-out comparison and the query scoring).
def annotate(
    adata: ad.AnnData,
    model: CellModel | KnnAnnotator | str | Path | None = None,
    *,
    reference: ad.AnnData | str | Path | None = None,
    label_key: str = "cell_type",
    method: Method = "auto",
    mode: Mode = "finetune",
    min_confidence: float = 0.5,
    novelty_quantile: float = 0.99,
    holdout_fraction: float = 0.2,
    label_map: dict[str, str] | None = None,
    query_label_key: str | None = None,
    epochs: float = 2.0,
    lr: float | None = None,
    batch_size: int | None = None,
    train_config: TrainConfig | None = None,
    layer: str | None = None,
    key_added: str = "lifelm_cell_type",
    out_dir: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    copy: bool = False,
) -> ad.AnnData | None:
    """Predict cell types for ``adata`` with calibrated confidence, the right to abstain, and the
    simple baseline fitted on the same reference beside the model.

    With a ``reference``, its labelled cells are split (stratified, ``holdout_fraction``,
    ``seed``): the model (fine-tuned or kNN on a pretrained ``model``) and the baseline (logistic
    regression on 50 PCs of log-normalised HVGs) are both fitted on the training part; on the
    held-out part each gets a temperature (fitted to the held-out labels), an accuracy and an
    expected calibration error. ``method="auto"`` then labels the query with whichever was more
    accurate on the held-out part (the baseline on a tie). A query cell whose calibrated
    probability is below ``min_confidence`` is ``Unassigned``; one farther from the reference (in
    the baseline's PCA space) than ``novelty_quantile`` of held-out reference cells is flagged
    novel.

    Parameters
    ----------
    adata
        Query cells with raw counts (any study; only the genes are matched).
    model
        A pretrained cell model or its folder (learns from ``reference``), a fine-tuned classifier
        or kNN annotator (used as is; without a reference no calibration or baseline check is
        possible, which is recorded), or ``None`` with ``method="baseline"``.
    reference
        Labelled reference cells, as AnnData or an ``.h5ad`` path (the path is recorded).
    label_key
        Label column of ``reference.obs``.
    method
        ``auto``, ``model`` or ``baseline``: which labels are written to ``.obs[key_added]``.
    mode
        How the model learns: ``finetune`` (head from a linear probe, then end to end) or ``knn``.
    min_confidence
        Calibrated probability below which a cell is ``Unassigned`` (0 disables abstention).
    novelty_quantile
        Quantile of held-out reference cells' neighbour distance above which a cell is novel.
    holdout_fraction
        Fraction of labelled reference cells held out for calibration and the comparison.
    label_map
        Harmonises labels across studies (applied to reference and query labels that are keys).
    query_label_key
        Label column of ``adata.obs`` for scoring the query (optional); its classes unknown to
        the reference are counted, never dropped.
    epochs, lr, batch_size, train_config
        Fine-tuning settings (``train_config`` overrides the other three).
    layer
        Where the counts are, if not found automatically.
    key_added
        Name of the ``.obs`` columns and of nothing else.
    out_dir
        Keep the fine-tuned classifier in ``out_dir/model`` (a temporary folder when ``None``).
    seed
        Seeds the hold-out split, the baseline and fine-tuning.
    device
        ``auto``, ``cpu`` or ``cuda``.
    copy
        Return an annotated copy instead of writing into ``adata``.

    Returns
    -------
    The AnnData when ``copy=True``, else ``None``. Writes ``.obs[key_added]`` (label or
    ``Unassigned``), ``.obs[key_added + "_probability"]`` (calibrated probability of the best
    class), ``.obs[key_added + "_novel"]`` (bool), ``.obs[key_added + "_model"]`` and
    ``.obs[key_added + "_baseline"]`` (each method's own calls) and ``.uns["lifelm"]["annotate"]``
    (see docs/cells-annotate.md).
    """
    t_start = time.perf_counter()
    _check_annotate_settings(method, min_confidence, holdout_fraction)
    label_map = dict(label_map or {})
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    ref_path = str(reference) if isinstance(reference, str | Path) else ""
    ref_adata = read(reference) if isinstance(reference, str | Path) else reference
    if isinstance(model, str | Path):
        model = load_model(model, device="cpu")
    if model is None and method == "model":
        raise InputError("method='model' needs a model (--model)")
    trained = isinstance(model, KnnAnnotator) or (
        isinstance(model, CellModel) and model.is_classifier
    )
    if ref_adata is None:
        if model is None or not trained:
            raise InputError(
                "a pretrained model without a classification head needs reference= and "
                "label_key= (--reference REF.h5ad --label-key COLUMN); --method baseline needs "
                "a reference too"
            )
        return _annotate_with_trained(
            adata, model, min_confidence, key_added, layer, query_label_key, label_map, copy
        )
    if isinstance(model, KnnAnnotator) or (isinstance(model, CellModel) and model.is_classifier):
        raise InputError(
            "give a pretrained model together with reference=: a fine-tuned classifier cannot be "
            "checked on held-out reference cells it may have been trained on"
        )

    split = _split_reference(ref_adata, label_key, label_map, holdout_fraction, seed)
    held: dict[str, Any] = {
        "majority": {
            "accuracy": float((split.y_ho == split.majority).mean()),
            "label": split.majority,
        }
    }
    base = _fit_baseline(split, novelty_quantile, layer, seed, held)
    fitted = None
    if model is not None:
        fitted = _fit_model(
            split,
            as_cell_model(model, device),
            held,
            mode=mode,
            out_dir=out_dir,
            layer=layer,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            train_config=train_config,
            seed=seed,
            device=device,
        )
    model_better = "model" in held and held["model"]["accuracy"] > held[BASELINE]["accuracy"]
    used = ("model" if model_better else "baseline") if method == "auto" else method

    # -- the query
    classes = split.classes
    pb_raw, pcs_q = base.pca.predict_proba(adata, layer)
    pb = apply_temperature(_reorder(pb_raw, base.pca.classes, classes), base.temperature)
    labels_b, conf_b = call_labels(pb, classes, min_confidence=min_confidence)
    per_method: dict[str, np.ndarray] = {"baseline": labels_b}
    labels, conf = labels_b, conf_b
    if fitted is not None:
        pm = apply_temperature(
            predict_proba(fitted.annotator, fitted.cm.tokenizer.encode(adata, layer=layer)),
            fitted.temperature,
        )
        labels_m, conf_m = call_labels(pm, classes, min_confidence=min_confidence)
        per_method["model"] = labels_m
        if used == "model":
            labels, conf = labels_m, conf_m
    distance, novel = base.novelty.flag(pcs_q)

    cats = [*classes, UNASSIGNED]
    adata.obs[key_added] = pd.Categorical(labels, categories=cats)
    adata.obs[f"{key_added}_probability"] = conf
    adata.obs[f"{key_added}_novel"] = novel
    adata.obs[f"{key_added}_novelty_distance"] = distance
    adata.obs[f"{key_added}_baseline"] = pd.Categorical(labels_b, categories=cats)
    if "model" in per_method:
        adata.obs[f"{key_added}_model"] = pd.Categorical(per_method["model"], categories=cats)

    n = adata.n_obs
    n_unassigned = int((labels == UNASSIGNED).sum())
    cm = fitted.cm if fitted is not None else None
    info: dict[str, Any] = {
        "method": used,
        "method_requested": method,
        "mode": fitted.mode if fitted is not None else "",
        "classes": classes,
        "key_added": key_added,
        "model": str(cm.folder) if cm is not None and cm.folder else "",
        "tokenizer_sha256": cm.tokenizer.hash() if cm is not None else "",
        "reference": {
            "path": ref_path or str(getattr(ref_adata, "filename", "") or ""),
            "n_obs": int(ref_adata.n_obs),
            "n_vars": int(ref_adata.n_vars),
            "label_key": label_key,
            "labelled_cells": split.n_labelled,
        },
        "settings": {
            "min_confidence": float(min_confidence),
            "novelty_quantile": float(novelty_quantile),
            "holdout_fraction": float(holdout_fraction),
            "seed": int(seed),
            "epochs": float(epochs),
            "lr": float(lr) if lr else float("nan"),
            "batch_size": int(batch_size or 0),
            "label_map": _pairs(label_map, "from", "to"),
        },
        "split": (
            f"stratified hold-out of the {len(split.y_tr) + len(split.y_ho)} labelled reference "
            f"cells: {len(split.y_tr)} train (model and baseline fitted), {len(split.y_ho)} held "
            f"out (temperature, accuracy, ECE; {holdout_fraction:.0%}, seed {seed})"
        ),
        "holdout": held,
        "better_method": "model" if model_better else BASELINE,
        "n_cells": n,
        "unassigned_cells": n_unassigned,
        "unassigned_fraction": n_unassigned / n if n else float("nan"),
        "novel_cells": int(novel.sum()),
        "novel_fraction": float(novel.mean()) if n else float("nan"),
        "novelty_threshold": base.novelty.threshold,
        "novelty_expected_fraction": 1.0 - novelty_quantile,
        "label_counts": _pairs(pd.Series(labels).value_counts().to_dict(), "label", "cells"),
        "seconds": time.perf_counter() - t_start,
    }
    if query_label_key is not None:
        info["query"] = _score_query(
            adata, query_label_key, label_map, classes, per_method, labels, split.majority
        )
    adata.uns.setdefault("lifelm", {})["annotate"] = info
    return adata if copy else None


def _check_annotate_settings(method: str, min_confidence: float, holdout_fraction: float) -> None:
    if method not in ("auto", "model", "baseline"):
        raise InputError(f"method must be auto, model or baseline, not {method!r}")
    if not 0.0 <= min_confidence <= 1.0:
        raise InputError(f"min_confidence must be within [0, 1], not {min_confidence}")
    if not 0.0 < holdout_fraction < 1.0:
        raise InputError(f"holdout_fraction must be within (0, 1), not {holdout_fraction}")


@dataclass(frozen=True)
class _ReferenceSplit:
    """Labelled reference cells, harmonised, split into training and held-out parts."""

    ref_tr: ad.AnnData
    ref_ho: ad.AnnData
    y_tr: np.ndarray
    y_ho: np.ndarray
    yi_ho: np.ndarray
    classes: list[str]
    majority: str
    n_labelled: int


def _split_reference(
    ref_adata: ad.AnnData,
    label_key: str,
    label_map: dict[str, str],
    holdout_fraction: float,
    seed: int,
) -> _ReferenceSplit:
    if label_key not in ref_adata.obs:
        raise InputError(
            f"reference has no label column {label_key!r} (columns: "
            f"{list(ref_adata.obs.columns)}); pass --label-key"
        )
    raw = ref_adata.obs[label_key]
    labelled = (raw.notna() & (raw.astype(str) != "")).to_numpy()
    ref = ref_adata[labelled]
    ref = ref.to_memory() if ref.isbacked else ref.copy()
    y_all = harmonise_labels(ref.obs[label_key], label_map)
    ref.obs[_LABEL] = y_all
    classes = sorted(np.unique(y_all).tolist())
    if len(classes) < 2:
        raise InputError(
            f"reference column {label_key!r} has {len(classes)} labelled class(es); need 2 or more"
        )
    tr, ho = _holdout_split(y_all, holdout_fraction, seed)
    y_tr, y_ho = y_all[tr], y_all[ho]
    return _ReferenceSplit(
        ref_tr=ref[tr].copy(),
        ref_ho=ref[ho].copy(),
        y_tr=y_tr,
        y_ho=y_ho,
        yi_ho=np.searchsorted(classes, y_ho),
        classes=classes,
        majority=str(pd.Series(y_tr).value_counts().index[0]),
        n_labelled=int(labelled.sum()),
    )


@dataclass(frozen=True)
class _FittedBaseline:
    pca: PcaLogReg
    temperature: float
    novelty: NoveltyFlagger


def _fit_baseline(
    split: _ReferenceSplit,
    novelty_quantile: float,
    layer: str | None,
    seed: int,
    held: dict[str, Any],
) -> _FittedBaseline:
    """Logistic regression on PCA of log-normalised HVGs (always; it is cheap), calibrated on the
    held-out cells; its PCA space also defines novelty. Records held-out scores in ``held``."""
    t0 = time.perf_counter()
    pca = PcaLogReg.fit(split.ref_tr, split.y_tr, seed=seed, layer=layer)
    p_ho_raw, pcs_ho = pca.predict_proba(split.ref_ho, layer)
    p_ho = _reorder(p_ho_raw, pca.classes, split.classes)
    held[BASELINE] = _calibration(p_ho, split.yi_ho, seed)
    held[BASELINE]["seconds"] = time.perf_counter() - t0
    _, pcs_tr = pca.predict_proba(split.ref_tr, layer)
    novelty = NoveltyFlagger.fit(pcs_tr, pcs_ho, quantile=novelty_quantile)
    return _FittedBaseline(pca, held[BASELINE]["temperature"], novelty)


@dataclass(frozen=True)
class _FittedModel:
    cm: CellModel
    annotator: CellModel | KnnAnnotator
    temperature: float
    mode: str


def _fit_model(
    split: _ReferenceSplit,
    cm: CellModel,
    held: dict[str, Any],
    *,
    mode: Mode,
    out_dir: str | Path | None,
    layer: str | None,
    epochs: float,
    lr: float | None,
    batch_size: int | None,
    train_config: TrainConfig | None,
    seed: int,
    device: str,
) -> _FittedModel:
    """Train the model's annotator on the same training cells as the baseline and calibrate it on
    the held-out cells. Records held-out scores in ``held``."""
    t0 = time.perf_counter()
    annotator = train_annotator(
        split.ref_tr,
        cm,
        label_key=_LABEL,
        mode=mode,
        out_dir=out_dir,
        layer=layer,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        train_config=train_config,
        classes=split.classes,
        seed=seed,
        device=device,
    )
    p_ho_model = predict_proba(annotator, cm.tokenizer.encode(split.ref_ho, layer=layer))
    held["model"] = _calibration(p_ho_model, split.yi_ho, seed)
    held["model"]["seconds"] = time.perf_counter() - t0
    if isinstance(annotator, CellModel):
        held["model"]["training_accuracy"] = annotator.config.get("data", {}).get(
            "training_accuracy", float("nan")
        )
    used_mode = "knn" if isinstance(annotator, KnnAnnotator) else "finetune"
    return _FittedModel(cm, annotator, held["model"]["temperature"], used_mode)


def _score_query(
    adata: ad.AnnData,
    qkey: str,
    label_map: dict[str, str],
    classes: list[str],
    per_method: dict[str, np.ndarray],
    labels: np.ndarray,
    majority: str,
) -> dict[str, Any]:
    if qkey not in adata.obs:
        raise InputError(f"query has no label column {qkey!r} (columns: {list(adata.obs.columns)})")
    truth = adata.obs[qkey]
    has = truth.notna().to_numpy()
    truth_raw = truth.astype(str).to_numpy()[has]
    preds = {name: p[has] for name, p in per_method.items()}
    preds["majority"] = np.full(int(has.sum()), majority)
    preds["used"] = labels[has]
    return {
        "label_key": qkey,
        **_query_scores(truth_raw, label_map, classes, preds),
        "confusion": confusion(harmonise_labels(truth_raw, label_map), labels[has].astype(str)),
    }


def _annotate_with_trained(
    adata: ad.AnnData,
    model: CellModel | KnnAnnotator,
    min_confidence: float,
    key_added: str,
    layer: str | None,
    query_label_key: str | None,
    label_map: dict[str, str],
    copy: bool,
) -> ad.AnnData | None:
    """Label with an annotator trained earlier: no reference, so no calibration or baseline."""
    cm = model.model if isinstance(model, KnnAnnotator) else model
    classes = model.classes
    proba = predict_proba(model, cm.tokenizer.encode(adata, layer=layer))
    labels, conf = call_labels(proba, classes, min_confidence=min_confidence)
    adata.obs[key_added] = pd.Categorical(labels, categories=[*classes, UNASSIGNED])
    adata.obs[f"{key_added}_probability"] = conf
    n_un = int((labels == UNASSIGNED).sum())
    info: dict[str, Any] = {
        "method": "model",
        "method_requested": "model",
        "mode": "knn" if isinstance(model, KnnAnnotator) else "finetune",
        "classes": classes,
        "key_added": key_added,
        "model": str(cm.folder or ""),
        "tokenizer_sha256": cm.tokenizer.hash(),
        "calibration": "not checked: no reference was given, probabilities are uncalibrated",
        "baseline": "not run: no reference was given",
        "settings": {
            "min_confidence": float(min_confidence),
            "label_map": _pairs(label_map, "from", "to"),
        },
        "n_cells": adata.n_obs,
        "unassigned_cells": n_un,
        "unassigned_fraction": n_un / adata.n_obs if adata.n_obs else float("nan"),
        "label_counts": _pairs(pd.Series(labels).value_counts().to_dict(), "label", "cells"),
    }
    if query_label_key is not None:
        truth = adata.obs[query_label_key]
        has = truth.notna().to_numpy()
        info["query"] = {
            "label_key": query_label_key,
            **_query_scores(
                truth.astype(str).to_numpy()[has], label_map, classes, {"used": labels[has]}
            ),
        }
    log.warning(
        "annotating with a trained classifier and no reference: no held-out calibration and no "
        "baseline comparison; give --reference to get both"
    )
    adata.uns.setdefault("lifelm", {})["annotate"] = info
    return adata if copy else None


def annotation_summary(info: dict[str, Any]) -> list[str]:
    """Plain-language lines about an annotation run, as the CLI prints them.

    Parameters
    ----------
    info
        ``adata.uns["lifelm"]["annotate"]`` of an annotated AnnData.

    Returns
    -------
    One line each: what labelled the cells and how many abstained, the held-out comparison of
    the model with the baselines (and which one loses), warnings, and query accuracy when the
    query has labels.
    """
    lines = []
    n = info["n_cells"]
    lines.append(
        f"{n} cells labelled by {info['method']}"
        f"{' (auto)' if info['method_requested'] == 'auto' else ''}; "
        f"Unassigned (calibrated probability < {info['settings']['min_confidence']:g}): "
        f"{info['unassigned_cells']} ({info['unassigned_fraction']:.1%})"
        + (
            f"; far from every reference class (novel): {info['novel_cells']} "
            f"({info['novel_fraction']:.1%}, ~{info['novelty_expected_fraction']:.0%} expected by chance)"
            if "novel_cells" in info
            else ""
        )
    )
    held = info.get("holdout")
    if held:
        parts = [f"majority {held['majority']['accuracy']:.3f}"]
        for key, name in ((BASELINE, "PCA+logreg"), ("model", "model")):
            if key in held:
                h = held[key]
                parts.append(
                    f"{name} {h['accuracy']:.3f} (ECE {h['ece_before']:.3f}, "
                    f"temperature-scaled {h.get('ece_scaled', h['ece']):.3f}"
                    f"{'' if h.get('temperature_applied', True) else ' so not applied'})"
                )
        lines.append("held-out reference accuracy: " + ", ".join(parts))
        if "model" in held and info["better_method"] == BASELINE:
            lines.append(
                "the model loses to logistic regression on PCA (--method baseline) on held-out "
                f"reference cells: {held['model']['accuracy']:.3f} vs "
                f"{held[BASELINE]['accuracy']:.3f}"
                + (" (auto used the baseline)" if info["method_requested"] == "auto" else "")
            )
        if held[BASELINE]["accuracy"] <= held["majority"]["accuracy"] and (
            "model" not in held or held["model"]["accuracy"] <= held["majority"]["accuracy"]
        ):
            lines.append(
                "warning: no method beats the majority class on held-out reference cells; "
                "do not trust these labels"
            )
    else:
        lines.append(f"warning: {info.get('calibration', '')}; {info.get('baseline', '')}")
    if "novel_fraction" in info and info["novel_fraction"] > 5 * max(
        info["novelty_expected_fraction"], 0.01
    ):
        lines.append(
            f"warning: {info['novel_fraction']:.0%} of query cells lie farther from the reference "
            "than held-out reference cells do: a batch effect or cell types the reference lacks"
        )
    q = info.get("query")
    if q:
        used = q["used"]
        lines.append(
            f"query labels ({q['label_key']}): accuracy {used['accuracy']:.3f} over all {q['n']} "
            f"cells, {used['accuracy_mapped']:.3f} over the {q['n_mapped']} with a reference class, "
            f"{used['accuracy_assigned_mapped']:.3f} over those assigned; majority class "
            f"{q['majority']['accuracy']:.3f}"
        )
        if q["unmapped"]["label"]:
            lines.append(
                "query classes the reference lacks (counted as errors): "
                + ", ".join(f"{k}: {v}" for k, v in as_dict(q["unmapped"]).items())
            )
    return lines


def write_json(record: dict[str, Any], path: str | Path) -> Path:
    """Write a run record (e.g. ``.uns["lifelm"]["annotate"]``) as JSON, atomically.

    NumPy scalars and arrays become plain numbers and lists.
    """
    import json

    from lifelm._core.runfolder import atomic_output

    def plain(value: object) -> object:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, pd.DataFrame):
            return value.to_dict("records")
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=plain))
    return path
