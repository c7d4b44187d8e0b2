"""Unseen-lineage flagging: train on earlier genomes, flag later genomes of unseen clades as novel.

Genomes dated before ``cutoff`` are the training set; later ones are queries. A query whose label
(e.g. Nextstrain clade) never occurs in the training set is *truly novel*; a good method calls it
``novel`` instead of forcing a known label, and leaves queries of known clades alone. Methods:

``model``
    :func:`lifelm.tasks.genomes.lineages.lineages` on the codon-model embeddings: a query is novel
    when its distance to the nearest training genome of the predicted class is beyond that
    class's held-out quantile (its own abstention rule).
``hamming_class``
    the same rule with Hamming distances on the aligned genomes (``method="hamming_nn"``).
``nn_distance`` (baseline)
    Hamming distance to the nearest training genome, flagged above the ``quantile`` of the same
    distance for held-out *earlier* genomes (a random ``holdout_fraction`` of the training set,
    measured against the rest): no classifier, no labels.
``embedding_nn`` (baseline on the model's features)
    the same nearest-neighbour rule on standardised embeddings.

Genomes with no date, or with more than ``max_n_fraction`` N/ambiguous bases, are left out and
counted (an N-rich genome would look novel for the wrong reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.metrics import pairwise_distances
from sklearn.preprocessing import StandardScaler

from lifelm._core.errors import InputError
from lifelm.tasks.genomes.baselines import hamming_distances
from lifelm.tasks.genomes.lineages import LineageConfig, lineages

if TYPE_CHECKING:
    from lifelm.models.codon_transformer import CodonTransformer


@dataclass(frozen=True)
class NoveltyConfig:
    """Settings of :func:`unseen_lineage_flags`."""

    cutoff: str = "2021-01-01"  # genomes dated before it train; later ones are queries
    label_column: str = "nextstrainClade"
    holdout_fraction: float = 0.2  # earlier genomes held out to calibrate the thresholds
    quantile: float = 0.99  # held-out distance quantile above which a query is novel
    max_n_fraction: float = 0.05  # genomes with more N/ambiguous bases are left out
    seed: int = 0


def _n_fraction(seq: str) -> float:
    s = seq.upper()
    called = sum(s.count(b) for b in "ACGT")
    gaps = s.count("-")
    return 1.0 - called / max(len(s) - gaps, 1)


def _nn_rule(
    d_train: np.ndarray, d_query: np.ndarray, held: np.ndarray, fit: np.ndarray, q: float
) -> tuple[np.ndarray, float]:
    """Flag queries whose nearest fit-part distance exceeds the held-out earlier genomes' quantile."""
    ref = d_train[np.ix_(held, fit)].min(1)
    thr = float(np.quantile(ref, q, method="higher"))
    return d_query[:, fit].min(1) > thr, thr


def _metrics(flag: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    tp = int((flag & truth).sum())
    fp = int((flag & ~truth).sum())
    fn = int((~flag & truth).sum())
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    return {
        "n_flagged": int(flag.sum()),
        "true_positives": tp,
        "precision": prec,
        "recall": rec,
        "f1": 2 * prec * rec / (prec + rec) if tp else 0.0,
        "false_flag_rate_seen": fp / max(int((~truth).sum()), 1),
    }


def unseen_lineage_flags(
    embeddings: np.ndarray | None,
    metadata: pd.DataFrame,
    sequences: Sequence[str],
    *,
    date_column: str = "date",
    config: NoveltyConfig | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Flag later genomes of clades never seen in training, next to nearest-neighbour baselines.

    Parameters
    ----------
    embeddings
        ``(n, d)`` codon-model embeddings of the genomes (``None``: baselines only).
    metadata
        ``n`` rows with ``seqName``, ``date_column`` and the label column.
    sequences
        ``n`` reference-aligned genomes (equal length).
    date_column
        Collection date column (ISO dates).
    config
        Cutoff, calibration and QC settings.

    Returns
    -------
    table
        One row per query genome: ``seqName``, date, label, ``truly_novel``, and per method
        ``{method}_novel``.
    metrics
        One row per method: precision, recall, F1 of the novelty flag, flagged counts, and the
        share of queries of seen clades wrongly flagged.
    summary
        Counts (left out for no date / N-rich), the split and the thresholds.
    """
    cfg = config or NoveltyConfig()
    col = cfg.label_column
    n = len(metadata)
    if len(sequences) != n or (embeddings is not None and len(embeddings) != n):
        raise InputError(
            f"{n} metadata rows, {len(sequences)} sequences"
            + (f", {len(embeddings)} embeddings" if embeddings is not None else "")
            + "; they must match row by row."
        )
    for c in ("seqName", date_column, col):
        if c not in metadata.columns:
            raise InputError(
                f"metadata: no column {c!r}; columns are {list(metadata.columns)[:20]}."
            )
    dates = pd.to_datetime(metadata[date_column].replace("", np.nan), errors="coerce")
    nfrac = np.array([_n_fraction(s) for s in sequences])
    labels = metadata[col].fillna("").astype(str).to_numpy()
    keep = dates.notna().to_numpy() & (nfrac <= cfg.max_n_fraction) & (labels != "")
    idx = np.flatnonzero(keep)
    cut = pd.Timestamp(cfg.cutoff)
    train = (dates.to_numpy()[idx] < np.datetime64(cut)).astype(bool)
    if train.sum() < 10 or (~train).sum() == 0:
        raise InputError(
            f"cutoff {cfg.cutoff}: {int(train.sum())} usable genomes before it and "
            f"{int((~train).sum())} after; need at least 10 before and one after."
        )
    seqs = [sequences[i] for i in idx.tolist()]
    y = labels[idx]
    truth = ~np.isin(y[~train], np.unique(y[train]))
    rng = np.random.default_rng(cfg.seed)
    tr_idx = np.flatnonzero(train)
    held_pos = rng.choice(
        len(tr_idx), max(1, round(cfg.holdout_fraction * len(tr_idx))), replace=False
    )
    held = np.zeros(len(tr_idx), dtype=bool)
    held[held_pos] = True
    fit = ~held
    q_idx = np.flatnonzero(~train)
    flags: dict[str, np.ndarray] = {}
    thresholds: dict[str, float] = {}
    # baseline: Hamming nearest neighbour, no labels
    d = hamming_distances([seqs[i] for i in tr_idx.tolist()], seqs)  # (n_keep, n_train)
    flags["nn_distance"], thresholds["nn_distance"] = _nn_rule(
        d[tr_idx], d[q_idx], held, fit, cfg.quantile
    )
    tab = pd.DataFrame({"seqName": metadata["seqName"].to_numpy()[idx], col: y})
    lcfg = LineageConfig(
        holdout_fraction=cfg.holdout_fraction, novelty_quantile=cfg.quantile, seed=cfg.seed
    )
    out, _ = lineages(
        None, tab, train=train, columns=[col], sequences=seqs, method="hamming_nn", config=lcfg
    )
    flags["hamming_class"] = out[f"{col}_status"].to_numpy()[q_idx] == "novel"
    if embeddings is not None:
        X = np.asarray(embeddings, dtype=np.float64)[idx]
        if not np.isfinite(X).all():
            raise InputError("embeddings contain NaN or infinite values; re-run the embedding.")
        out, _ = lineages(X, tab, train=train, columns=[col], method="model", config=lcfg)
        flags["model"] = out[f"{col}_status"].to_numpy()[q_idx] == "novel"
        Z = StandardScaler().fit(X[tr_idx][fit]).transform(X)
        de = pairwise_distances(Z, Z[tr_idx])
        flags["embedding_nn"], thresholds["embedding_nn"] = _nn_rule(
            de[tr_idx], de[q_idx], held, fit, cfg.quantile
        )
    table = pd.DataFrame(
        {
            "seqName": tab["seqName"].to_numpy()[q_idx],
            date_column: dates.to_numpy()[idx][q_idx],
            col: y[q_idx],
            "truly_novel": truth,
            **{f"{m}_novel": f for m, f in flags.items()},
        }
    )
    order = [m for m in ("model", "embedding_nn", "hamming_class", "nn_distance") if m in flags]
    metrics = pd.DataFrame([{"method": m, **_metrics(flags[m], truth)} for m in order])
    metrics.insert(1, "n_query", len(q_idx))
    metrics.insert(2, "n_truly_novel", int(truth.sum()))
    summary = {
        "settings": asdict(cfg),
        "n_genomes": n,
        "n_left_out_no_date": int(dates.isna().sum()),
        "n_left_out_n_rich": int((nfrac > cfg.max_n_fraction).sum()),
        "n_left_out_no_label": int((labels == "").sum()),
        "n_train": int(train.sum()),
        "n_query": len(q_idx),
        "train_clades": sorted(set(y[train].tolist())),
        "novel_clades": sorted(set(y[~train][truth].tolist())),
        "thresholds": thresholds,
        "calibration": f"{cfg.quantile:.0%} quantile of the nearest-neighbour distance of "
        f"{int(held.sum())} held-out earlier genomes to the other {int(fit.sum())}",
    }
    return table, metrics, summary


def run_genbank_novelty(
    data_root: str | Path,
    model: CodonTransformer | None,
    *,
    orfs: Sequence[str] = ("S",),
    context: int = 256,
    config: NoveltyConfig | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """:func:`unseen_lineage_flags` on the shared GenBank 1,000 (``data_root`` = ``genomes/``).

    The embeddings are the mean codon-model hidden state over ``orfs`` (``model=None``:
    baselines only).
    """
    from lifelm.io.fasta import read_fasta
    from lifelm.tasks.genomes.warning import model_features, select_orfs

    folder = Path(data_root) / "sarscov2/genbank_1000_lapis_silo"
    meta_path, fasta = folder / "metadata.tsv", folder / "aligned.fasta.xz"
    for p in (meta_path, fasta):
        if not p.is_file():
            raise InputError(f"{p}: not found; --data must be the genomes/ data folder.")
    meta = pd.read_csv(meta_path, sep="\t", dtype=str, keep_default_na=False)
    seqs = read_fasta(fasta)
    meta = meta[meta["genbankAccession"].isin(seqs)].reset_index(drop=True)
    meta["seqName"] = meta["genbankAccession"]
    genomes = {n: seqs[n] for n in meta["seqName"]}
    emb = None
    if model is not None:
        emb = model_features(model, genomes, orfs=select_orfs(orfs), context=context).embeddings
    table, metrics, summary = unseen_lineage_flags(emb, meta, list(genomes.values()), config=config)
    summary["embedding_orfs"] = list(orfs) if model is not None else None
    return table, metrics, summary
