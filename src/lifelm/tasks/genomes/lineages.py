"""Lineage classification that abstains rather than guesses, next to simple baselines.

For each label column (e.g. Nextstrain clade, WHO variant):

1. **Labels.** Empty labels are kept as their own class ``(none)`` (for ``whoClade`` an empty cell
   means "no WHO variant", a real answer) or refused with a message (``empty_labels="refuse"``).
2. **Held-out part.** The labelled training rows are split, per class, into a fit part and a
   held-out part (``holdout_fraction``; classes with one genome stay in the fit part). Every
   number printed is measured on the held-out part, and the split is stated.
3. **Methods**, each fitted on the fit part: ``model`` (a linear probe, or kNN, on the genome
   embeddings), ``hamming_nn`` (nearest reference-aligned genome by Hamming distance) and
   ``kmer_logreg`` (6-mer profiles + logistic regression); the last two need the sequences.
4. **Calibration.** Each method's scores are turned into probabilities by temperature scaling,
   with the temperature fitted on one half of the held-out part; the expected calibration error
   (ECE, 10 bins) is measured on the other half.
5. **Abstention.** A genome whose calibrated probability is below ``min_confidence`` is
   ``unassigned``; one whose distance to the nearest fit genome of the predicted class is beyond
   that class's held-out ``novelty_quantile`` (pooled over classes when a class has fewer than 5
   held-out genomes) is ``novel``: it resembles none of the known classes well enough.
6. **Choice.** ``method="auto"`` uses the method with the best held-out accuracy (on a tie the
   simpler one); the summary says when the model loses to a baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import pairwise_distances
from sklearn.model_selection import GroupShuffleSplit
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from lifelm._core.errors import InputError
from lifelm.tasks.genomes.baselines import hamming_distances, kmer_profiles

EMPTY_CLASS = "(none)"
UNASSIGNED = "unassigned"
NOVEL = "novel"
#: Methods in order of simplicity (a tie on held-out accuracy goes to the simpler one).
METHODS = ("hamming_nn", "kmer_logreg", "model")


def make_probe(
    method: Literal["logreg", "knn"] = "logreg", *, k: int = 5, seed: int = 0
) -> Pipeline:
    """A standardise-then-classify pipeline: multinomial logistic regression or cosine kNN."""
    if method == "logreg":
        clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    elif method == "knn":
        clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
    else:
        raise InputError(f"probe must be 'logreg' or 'knn', got {method!r}")
    return make_pipeline(StandardScaler(), clf)


@dataclass(frozen=True)
class LineageConfig:
    """Settings of :func:`lineages`."""

    holdout_fraction: float = 0.2  # share of each class's labelled training genomes held out
    min_confidence: float = 0.5  # calibrated probability below this: unassigned
    novelty_quantile: float = 0.99  # held-out distance quantile beyond which a genome is novel
    empty_labels: Literal["class", "refuse"] = "class"  # empty label: class "(none)" or an error
    probe: Literal["logreg", "knn"] = "logreg"  # the model's classifier on embeddings
    k: int = 5  # neighbours for probe="knn"
    seed: int = 0


@dataclass
class _Scored:
    logits: np.ndarray  # (n, K)
    dist: np.ndarray  # (n, K): distance to the nearest fit genome of each class


def _class_min(d: np.ndarray, y_fit: np.ndarray, classes: np.ndarray) -> np.ndarray:
    out = np.empty((d.shape[0], len(classes)), dtype=np.float64)
    for j, c in enumerate(classes):
        out[:, j] = d[:, y_fit == c].min(1)
    return out


def _log_proba(proba: np.ndarray, clf_classes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    out = np.full((proba.shape[0], len(classes)), np.log(1e-9))
    idx = {c: i for i, c in enumerate(classes)}
    for j, c in enumerate(clf_classes):
        out[:, idx[c]] = np.log(np.clip(proba[:, j], 1e-9, 1.0))
    return out


def _score_features(
    X: np.ndarray, fit: np.ndarray, y_fit: np.ndarray, classes: np.ndarray, clf: Pipeline
) -> _Scored:
    clf.fit(X[fit], y_fit)
    logits = _log_proba(clf.predict_proba(X), clf.classes_, classes)
    scaler: StandardScaler = clf.steps[0][1]
    Z = scaler.transform(X)
    d = pairwise_distances(Z, Z[fit]) / np.sqrt(X.shape[1])
    return _Scored(logits, _class_min(d, y_fit, classes))


def _score_hamming(
    seqs: Sequence[str], fit: np.ndarray, y_fit: np.ndarray, classes: np.ndarray
) -> _Scored:
    fit_seqs = [seqs[i] for i in np.flatnonzero(fit).tolist()]
    d = hamming_distances(fit_seqs, list(seqs))
    dist = _class_min(d, y_fit, classes)
    pos = d[d > 0]
    scale = float(np.median(pos)) if pos.size else 1e-4
    return _Scored(-dist / max(scale, 1e-9), dist)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _fit_temperature(logits: np.ndarray, y_idx: np.ndarray) -> float:
    if len(y_idx) == 0:
        return 1.0
    best, best_t = np.inf, 1.0
    for t in np.logspace(-2, 2, 81):
        p = _softmax(logits / t)[np.arange(len(y_idx)), y_idx]
        nll = -np.log(np.clip(p, 1e-12, 1)).mean()
        if nll < best - 1e-12:
            best, best_t = nll, float(t)
    return best_t


def expected_calibration_error(prob: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE: mean |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    if len(prob) == 0:
        return float("nan")
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - prob[m].mean())
    return float(ece)


def _split(y: np.ndarray, rows: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Boolean held-out mask over ``rows``' labels, stratified; singleton classes stay in fit."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(y), dtype=bool)
    for c in np.unique(y[rows]):
        members = np.flatnonzero(rows & (y == c))
        if len(members) < 2:
            continue
        n_hold = min(len(members) - 1, max(1, round(frac * len(members))))
        held[rng.choice(members, n_hold, replace=False)] = True
    return held


def _labels(labels: pd.DataFrame, col: str, train: np.ndarray, how: str) -> np.ndarray:
    if col not in labels.columns:
        raise InputError(
            f"label column {col!r} not found; the labels table has {list(labels.columns)[:20]}. "
            "Pass one of them with --column."
        )
    y = labels[col].fillna("").astype(str).str.strip().to_numpy(dtype=object)
    n_empty = int((train & (y == "")).sum())
    if n_empty and how == "refuse":
        raise InputError(
            f"label column {col!r}: {n_empty} of {int(train.sum())} training genomes have an empty "
            f"label. Fill them, drop those genomes, or keep them as their own class "
            f"{EMPTY_CLASS!r} with --empty-labels class."
        )
    y[y == ""] = EMPTY_CLASS
    return y.astype(str)


# Long because the model and every baseline are fitted and scored on the same split in one place (split candidate: the abstention step).
def lineages(
    embeddings: np.ndarray | None,
    labels: pd.DataFrame,
    *,
    train: np.ndarray | None = None,
    columns: Sequence[str] = ("clade",),
    sequences: Sequence[str] | None = None,
    method: str = "auto",
    config: LineageConfig | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Predict lineage labels with calibrated probabilities, abstention and baselines.

    Parameters
    ----------
    embeddings
        ``(n, d)`` genome embeddings (``lifelm genomes embed``), or ``None`` to run the baselines only.
    labels
        ``n`` rows with ``seqName`` and the label ``columns``.
    train
        Boolean ``(n,)``: rows whose labels may be used (the reference); ``None``: every row.
        Other rows are queries and only predicted.
    columns
        Label columns to predict.
    sequences
        ``n`` reference-aligned genomes (equal length) for the Hamming-NN and 6-mer baselines;
        ``None``: no baseline can be fitted (the summary says so).
    method
        ``"auto"`` (best held-out accuracy), ``"model"``, ``"hamming_nn"`` or ``"kmer_logreg"``.
    config
        Split, abstention and probe settings.

    Returns
    -------
    table
        ``seqName``, ``split`` (``fit``, ``held_out`` or ``query``; a later column whose split
        differs gets its own ``{col}_split``), and per column ``{col}``
        (given label, ``(none)`` for empty), ``{col}_pred`` (most probable class),
        ``{col}_prob`` (its calibrated probability), ``{col}_call`` (the class, ``unassigned`` or
        ``novel``), ``{col}_status`` (``assigned``, ``low_confidence`` or ``novel``),
        ``{col}_novelty`` (distance to the predicted class / that class's threshold; above 1:
        novel) and ``{col}_method``.
    summary
        Per column: the split, held-out accuracy, ECE and abstention of every method, the
        majority-class accuracy, the method used and, when the model loses, the better method.
    """
    cfg = config or LineageConfig()
    n = len(labels)
    if embeddings is not None and len(embeddings) != n:
        raise InputError(
            f"{len(embeddings)} embeddings but {n} label rows; they must match by seqName."
        )
    if sequences is not None and len(sequences) != n:
        raise InputError(f"{len(sequences)} sequences but {n} label rows.")
    train = np.ones(n, dtype=bool) if train is None else np.asarray(train, dtype=bool)
    available = [
        m
        for m in METHODS
        if (m == "model" and embeddings is not None) or (m != "model" and sequences is not None)
    ]
    if method != "auto" and method not in METHODS:
        raise InputError(f"--method must be auto, {', '.join(METHODS)}; got {method!r}.")
    if method != "auto" and method not in available:
        need = "--genomes (the sequences)" if method != "model" else "embeddings"
        raise InputError(f"--method {method} needs {need}.")
    if not available:
        raise InputError("lineages needs embeddings or sequences (or both).")
    out = pd.DataFrame({"seqName": labels["seqName"].to_numpy()})
    summary: dict = {"settings": asdict(cfg), "columns": {}}
    for col in columns:
        y = _labels(labels, col, train, cfg.empty_labels)
        classes = np.unique(y[train])
        if len(classes) < 2:
            raise InputError(
                f"label column {col!r} has {len(classes)} class among the {int(train.sum())} "
                "training genomes; a classifier needs at least two."
            )
        held = _split(y, train, cfg.holdout_fraction, cfg.seed)
        fit = train & ~held
        if not held.any():
            raise InputError(
                f"label column {col!r}: no class has two training genomes, so nothing can be held "
                "out to measure accuracy; give more labelled genomes."
            )
        y_fit = y[fit]
        classes = np.unique(y_fit)
        cls_idx = {c: i for i, c in enumerate(classes)}
        held_idx = np.flatnonzero(held)
        calib, evalh = held_idx[0::2], held_idx[1::2]
        scored: dict[str, _Scored] = {}
        for m in available:
            if m == "model":
                assert embeddings is not None
                probe = make_probe(cfg.probe, k=cfg.k, seed=cfg.seed)
                scored[m] = _score_features(
                    np.asarray(embeddings, dtype=np.float64), fit, y_fit, classes, probe
                )
            elif m == "hamming_nn":
                assert sequences is not None
                scored[m] = _score_hamming(sequences, fit, y_fit, classes)
            else:
                assert sequences is not None
                K = kmer_profiles(sequences, 6).astype(np.float64)
                clf = make_pipeline(
                    StandardScaler(), LogisticRegression(max_iter=2000, random_state=cfg.seed)
                )
                scored[m] = _score_features(K, fit, y_fit, classes, clf)
        methods: dict[str, dict] = {}
        results: dict[str, dict] = {}
        for m, s in scored.items():
            t = _fit_temperature(s.logits[calib], np.array([cls_idx[c] for c in y[calib]]))
            prob = _softmax(s.logits / t)
            pred_i = prob.argmax(1)
            pred = classes[pred_i]
            p = prob[np.arange(n), pred_i]
            d_pred = s.dist[np.arange(n), pred_i]
            d_true_held = s.dist[held_idx, [cls_idx[c] for c in y[held_idx]]]
            pooled = float(np.quantile(d_true_held, cfg.novelty_quantile, method="higher"))
            floor = float(np.quantile(d_true_held, 0.5))
            thr = np.empty(len(classes))
            for j, c in enumerate(classes):
                own = d_true_held[y[held_idx] == c]
                q = (
                    float(np.quantile(own, cfg.novelty_quantile, method="higher"))
                    if len(own) >= 5
                    else pooled
                )
                thr[j] = max(q, floor, 1e-9)
            novelty = d_pred / thr[pred_i]
            status = np.where(
                novelty > 1, "novel", np.where(p < cfg.min_confidence, "low_confidence", "assigned")
            )
            call = np.where(
                status == "novel", NOVEL, np.where(status == "low_confidence", UNASSIGNED, pred)
            )
            correct = pred[held_idx] == y[held_idx]
            assigned = status[held_idx] == "assigned"
            methods[m] = {
                "accuracy": round(float(correct.mean()), 4),
                "ece": round(expected_calibration_error(p[evalh], pred[evalh] == y[evalh]), 4),
                "temperature": round(t, 4),
                "assigned_fraction": round(float(assigned.mean()), 4),
                "accuracy_assigned": round(float(correct[assigned].mean()), 4)
                if assigned.any()
                else None,
                "novel_fraction": round(float((status[held_idx] == "novel").mean()), 4),
            }
            results[m] = {
                "pred": pred,
                "prob": p,
                "call": call,
                "status": status,
                "novelty": novelty,
            }
        majority = pd.Series(y_fit).value_counts().index[0]
        best = max(available, key=lambda m: (methods[m]["accuracy"], -METHODS.index(m)))
        chosen = best if method == "auto" else method
        loses_to = None
        if "model" in methods:
            better = [
                m
                for m in methods
                if m != "model" and methods[m]["accuracy"] > methods["model"]["accuracy"]
            ]
            if better:
                loses_to = max(better, key=lambda m: methods[m]["accuracy"])
        r = results[chosen]
        out[col] = y
        out[f"{col}_pred"] = r["pred"]
        out[f"{col}_prob"] = np.round(r["prob"], 6)
        out[f"{col}_call"] = r["call"]
        out[f"{col}_status"] = r["status"]
        out[f"{col}_novelty"] = np.round(r["novelty"], 4)
        out[f"{col}_method"] = chosen
        summary["columns"][col] = {
            "split": (
                f"stratified random {cfg.holdout_fraction:.0%} of each class's labelled reference "
                f"genomes held out (seed {cfg.seed}; classes with one genome only in the fit part): "
                f"{int(fit.sum())} fit, {int(held.sum())} held out, {int((~train).sum())} queries"
            ),
            "n_fit": int(fit.sum()),
            "n_held_out": int(held.sum()),
            "n_query": int((~train).sum()),
            "n_classes": len(classes),
            "n_empty_labels": int((train & (y == EMPTY_CLASS)).sum()),
            "empty_labels": f"kept as class {EMPTY_CLASS!r}"
            if cfg.empty_labels == "class"
            else "refused",
            "majority_class": str(majority),
            "majority_accuracy": round(float((y[held_idx] == majority).mean()), 4),
            "methods": methods,
            "unavailable": [m for m in METHODS if m not in available],
            "best": best,
            "method": chosen,
            "model_loses_to": loses_to,
        }
        split = np.where(held, "held_out", np.where(train, "fit", "query"))
        if "split" not in out.columns:
            out.insert(1, "split", split)
        elif not (out["split"].to_numpy() == split).all():
            out[f"{col}_split"] = split
    return out, summary


def summary_lines(summary: dict) -> list[str]:
    """Plain-text lines of a :func:`lineages` summary (TSV header comments and the terminal)."""
    lines = []
    for col, s in summary["columns"].items():
        lines.append(
            f"{col}: {s['split']}; {s['n_classes']} classes, {s['n_empty_labels']} empty labels {s['empty_labels']}"
        )
        parts = [f"majority class {s['majority_accuracy']:.3f}"]
        for m, r in s["methods"].items():
            parts.append(
                f"{m} {r['accuracy']:.3f} (ECE {r['ece']:.3f}, assigned {r['assigned_fraction']:.0%})"
            )
        lines.append(f"{col}: held-out accuracy: " + ", ".join(parts))
        if s["unavailable"]:
            lines.append(f"{col}: not fitted (no input for them): {', '.join(s['unavailable'])}")
        lines.append(
            f"{col}: predictions use {s['method']} (best on the held-out part: {s['best']})"
        )
        if s["model_loses_to"]:
            m = s["model_loses_to"]
            lines.append(
                f"{col}: the model loses to the simpler {m} on the held-out part "
                f"({s['methods'][m]['accuracy']:.3f} vs {s['methods']['model']['accuracy']:.3f}); "
                f"use --method {m} (or --method auto)."
            )
    return lines


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


def lineages_from_files(
    embeddings: str | Path | None,
    labels: str | Path,
    *,
    columns: Sequence[str] = ("clade",),
    id_column: str = "seqName",
    genomes: str | Path | None = None,
    train_list: str | Path | None = None,
    method: str = "auto",
    config: LineageConfig | None = None,
) -> tuple[pd.DataFrame, dict]:
    """:func:`lineages` on files: an embeddings TSV, a labels TSV and optionally the genomes FASTA.

    Genomes in the embeddings (or, without embeddings, in the FASTA) that are in the labels table
    (and in ``train_list`` when given) are the reference; the others are queries.
    """
    labels = Path(labels)
    lab = pd.read_csv(labels, sep="\t", dtype=str, keep_default_na=False, comment=None)
    if id_column not in lab.columns:
        raise InputError(
            f"{labels}: no column {id_column!r} with the sequence names; columns are "
            f"{list(lab.columns)[:20]}. Name the right one with --id-column."
        )
    lab = lab.rename(columns={id_column: "seqName"})
    dup = lab["seqName"][lab["seqName"].duplicated()]
    if len(dup):
        raise InputError(
            f"{labels}: {len(dup)} duplicated names in column {id_column!r} (e.g. {dup.iloc[0]!r}); "
            "keep one row per genome."
        )
    X = None
    if embeddings is not None:
        embeddings = Path(embeddings)
        emb = pd.read_csv(embeddings, sep="\t", comment="#")
        feats = [c for c in emb.columns if str(c).startswith("emb_")]
        if "seqName" not in emb.columns or not feats:
            raise InputError(
                f"{embeddings}: expected a seqName column and emb_0..emb_D columns (the TSV of "
                "`lifelm genomes embed`)."
            )
        names = emb["seqName"].astype(str).tolist()
        X = emb[feats].to_numpy(dtype=np.float64)
        if not np.isfinite(X).all():
            raise InputError(f"{embeddings}: NaN or infinite embedding values; re-run embed.")
    seqs = None
    if genomes is not None:
        from lifelm.tasks.genomes.codon_lm import read_genomes

        if X is None:
            from lifelm.io.fasta import read_fasta

            names = list(read_fasta(genomes))
        try:
            aligned, failed = read_genomes(genomes, names=names)
        except KeyError as err:
            raise InputError(
                f"{genomes}: {err.args[0]}; --genomes must hold every genome of the embeddings."
            ) from err
        if failed:
            raise InputError(
                f"{genomes}: {len(failed)} genomes could not be aligned to the reference (e.g. "
                f"{next(iter(failed))!r}); run `lifelm genomes qc` and drop them."
            )
        seqs = [aligned[nm] for nm in names]
    elif X is None:
        raise InputError("lineages needs the embeddings TSV, --genomes FASTA, or both.")
    table = pd.DataFrame({"seqName": names}).merge(lab, on="seqName", how="left")
    train = table["seqName"].isin(set(lab["seqName"])).to_numpy()
    if train_list is not None:
        keep = {x.strip() for x in Path(train_list).read_text().split("\n") if x.strip()}
        train &= table["seqName"].isin(keep).to_numpy()
    if not train.any():
        raise InputError(
            f"{labels}: none of its names match the genomes (e.g. {names[0]!r}); check --id-column."
        )
    return lineages(
        X, table, train=train, columns=columns, sequences=seqs, method=method, config=config
    )
