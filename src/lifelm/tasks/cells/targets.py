"""Goal-state target search: which genes, perturbed in silico, move start cells toward a goal state.

Given two label values of an ``.obs`` column (e.g. ``disease`` -> ``healthy``, or ``ctrl`` ->
``stim``), every candidate gene is perturbed in a sample of start cells (exact batched scan,
:mod:`lifelm.tasks.cells.perturb`) and scored by how far it moves each cell along the axis from
the start centroid to the goal centroid in embedding space::

    score(cell, gene) = (E_perturbed - E_cell) . (mu_goal - mu_start) / |mu_goal - mu_start|^2

i.e. the fraction of the way from start to goal the perturbation travels (1 = all the way).

Statistics, per gene:

- **matched null**: perturbing *any* gene moves a cell somewhat, and highly ranked genes move it
  more. Each gene is compared, cell by cell, with up to ``n_null`` random other genes of matched
  expression (same quantile bin of detection rate and mean rank in the start cells), perturbed
  in the same cells: ``effect = score(gene) - mean score(null genes)``;
- **p-value**: one-sample t-test of the per-cell effects (or of the per-donor mean effects when a
  donor column has >= 3 donors: cells of one donor are not independent), two-sided;
- **FDR**: Benjamini-Hochberg over all candidate genes (``scipy.stats.false_discovery_control``);
- **effect sizes** with 95 % t confidence intervals across cells and across donors.

Optionally, pairs from the top of the ranking are scored as combinations and compared with the
sum of their single effects (interaction = combination - additive expectation).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import stats

from lifelm._core.runtime import get_logger
from lifelm.data.cells.perturb_ops import Kind
from lifelm.data.cells.tokenizer import TokenizedCells
from lifelm.tasks.cells.embed import as_cell_model, embed_tokens
from lifelm.tasks.cells.model_io import CellModel
from lifelm.tasks.cells.perturb import (
    ScanConfig,
    ScanResult,
    gene_names,
    resolve_genes,
    scan_cells,
    single_targets,
)

log = get_logger("lifelm.targets")


def _labels(adata: ad.AnnData, key: str, value: str) -> np.ndarray:
    if key not in adata.obs:
        raise KeyError(f".obs has no column {key!r}; columns: {list(adata.obs.columns)}")
    col = adata.obs[key].astype(str).to_numpy()
    mask = col == str(value)
    if not mask.any():
        raise ValueError(
            f".obs[{key!r}] has no cells labelled {value!r}; values: {sorted(set(col))[:20]}"
        )
    return mask


def _expression_stats(cells: TokenizedCells, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per token: detection rate and mean relative rank (0 = top) among cells that express it."""
    tok = cells.tokens.astype(np.int64)
    lens = cells.lengths()
    rel = np.concatenate([np.arange(n) / max(n - 1, 1) for n in lens]) if len(tok) else tok
    det = np.bincount(tok, minlength=vocab_size) / max(len(cells), 1)
    rank_sum = np.bincount(tok, weights=rel, minlength=vocab_size)
    mean_rank = np.divide(rank_sum, det * len(cells), out=np.ones(vocab_size), where=det > 0)
    return det, mean_rank


def _bins(det: np.ndarray, rank: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile bins over (detection, mean rank): genes in one bin are 'matched expression'."""
    if len(det) == 0:
        return np.zeros(0, dtype=np.int64)
    q = max(1, int(np.sqrt(n_bins)))
    bd = pd.qcut(pd.Series(det).rank(method="first"), q, labels=False).to_numpy()
    br = pd.qcut(pd.Series(rank).rank(method="first"), q, labels=False).to_numpy()
    return (bd * q + br).astype(np.int64)


def _t_summary(x: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, 95 % CI low/high and two-sided one-sample t-test p-value (NaN below 2 values)."""
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return (float(x.mean()) if len(x) else np.nan), np.nan, np.nan, np.nan
    m, se = x.mean(), stats.sem(x)
    if se == 0:
        return float(m), float(m), float(m), (0.0 if m != 0 else 1.0)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=m, scale=se)
    return float(m), float(lo), float(hi), float(stats.ttest_1samp(x, 0.0).pvalue)


def score_rows(res: ScanResult, axis: np.ndarray) -> np.ndarray:
    """Fraction of the start->goal axis each perturbed row travels: (E' - E) . a / |a|^2."""
    if res.perturbed is None:
        raise ValueError("the scan must keep embeddings (ScanConfig(keep_embeddings=True))")
    delta = res.perturbed - res.original[res.cell]  # (R, D)
    return (delta @ axis) / float(axis @ axis)


def rank_targets(
    adata: ad.AnnData,
    model: CellModel | str | Path,
    *,
    label_key: str,
    start: str,
    goal: str,
    kind: Kind = "overexpress",
    fraction: float = 1.0,
    genes: list[str] | None = None,
    donor_key: str | None = None,
    n_cells: int = 200,
    min_detection: float = 0.05,
    max_candidates: int = 2000,
    n_null: int = 20,
    n_bins: int = 16,
    pairs_top: int = 0,
    layer: str | None = None,
    max_tokens: int = 32_768,
    out_dir: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    key_added: str = "lifelm_targets",
    copy: bool = False,
    progress: bool = True,
) -> ad.AnnData | None:
    """Rank genes by how far their perturbation moves ``start`` cells toward the ``goal`` state.

    Parameters
    ----------
    adata
        Cells with raw counts and ``.obs[label_key]``.
    model
        A cell model or its checkpoint folder.
    label_key, start, goal
        ``.obs`` column and its two values (e.g. ``"condition"``, ``"ctrl"``, ``"stim"``).
    kind
        ``overexpress`` (move to rank 1), ``delete`` or ``knockdown``.
    fraction
        Knock-down strength.
    genes
        Candidate genes (symbols or Ensembl IDs). ``None``: genes detected in at least
        ``min_detection`` of the start cells (and, for overexpression, of the goal cells).
    donor_key
        ``.obs`` column with donors: adds per-donor effects and, with >= 3 donors, donor-level
        p-values (the primary ones).
    n_cells
        Start cells sampled for the scan (seeded).
    min_detection, max_candidates
        Candidate filter and cap (most detected first).
    n_null
        Matched random genes per gene in the null.
    n_bins
        Expression bins for matching (detection rate x mean rank).
    pairs_top
        Score all pairs of the top ``pairs_top`` genes as combinations (0 = none).
    layer, max_tokens, device
        Counts location, batch budget, device.
    out_dir
        Scan folder (resumable); the ranked table is also written there as ``targets.tsv``.
    seed
        Cell sampling and null-gene choice.
    key_added, copy
        Output key; return a copy instead of writing in place.

    Returns
    -------
    The AnnData when ``copy=True``, else ``None``. Writes ``.uns[key_added]`` with ``"genes"``
    (ranked DataFrame: gene, n_cells, score, null_score, effect with CI, p, q, per-donor
    columns), ``"per_cell"`` (per-cell scores of the top 20 genes and their nulls, for plots),
    ``"pairs"`` (when ``pairs_top``) and ``"params"``; ``.obs[key_added + "_scanned"]`` marks
    the sampled start cells.
    """
    cm = as_cell_model(model, device)
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    start_mask = _labels(adata, label_key, start)
    goal_mask = _labels(adata, label_key, goal)
    rng = np.random.default_rng(seed)
    start_idx = np.flatnonzero(start_mask)
    if len(start_idx) > n_cells:
        start_idx = np.sort(rng.choice(start_idx, n_cells, replace=False))
    goal_idx = np.flatnonzero(goal_mask)
    all_cells = cm.tokenizer.encode(adata, layer=layer)
    start_cells = all_cells.subset(start_idx)
    goal_cells = all_cells.subset(goal_idx)
    emb_goal = embed_tokens(cm, goal_cells, progress=False)
    emb_start_all = embed_tokens(cm, all_cells.subset(np.flatnonzero(start_mask)), progress=False)
    axis = np.nanmean(emb_goal, 0) - np.nanmean(emb_start_all, 0)  # (D,) start -> goal
    v = cm.tokenizer.vocab_size
    det_s, rank_s = _expression_stats(start_cells, v)
    det_g, _ = _expression_stats(goal_cells, v)
    if genes is not None:
        cand = np.array([t[0] for t in resolve_genes(cm, genes)], dtype=np.int64)
    else:
        ok = det_s >= min_detection
        if kind == "overexpress":
            ok |= det_g >= min_detection
        cand = np.flatnonzero(ok)
        cand = cand[cand >= 3]
    if len(cand) > max_candidates:
        cand = cand[
            np.argsort(-np.maximum(det_s[cand], det_g[cand]), kind="stable")[:max_candidates]
        ]
    cand = np.sort(cand)
    if len(cand) < 3:
        raise ValueError(f"only {len(cand)} candidate genes; lower min_detection or pass genes=")
    cfg = ScanConfig(kind=kind, fraction=fraction, max_tokens=max_tokens, keep_embeddings=True)
    res = scan_cells(
        cm, start_cells, single_targets(cand), config=cfg, out_dir=out_dir, progress=progress
    )
    scores = score_rows(res, axis)  # (R,)
    tok = res.target_tokens()
    # (cells, candidates) matrix of scores, NaN where the gene did not apply to the cell
    col = {int(t): j for j, t in enumerate(cand)}
    mat = np.full((len(start_cells), len(cand)), np.nan, dtype=np.float64)
    mat[res.cell, [col[int(t)] for t in tok]] = scores
    bins = _bins(det_s[cand], rank_s[cand], n_bins)
    if donor_key and donor_key not in adata.obs:
        raise KeyError(f".obs has no donor column {donor_key!r}")
    donors = None
    if donor_key:  # cells without a donor ("") count for cell-level statistics only
        donors = adata.obs[donor_key].astype("string").fillna("").to_numpy()[start_idx]
    table, per_cell = _gene_stats(mat, cand, bins, n_null, donors, rng)
    ids, sym = gene_names(cm, cand[table["_j"].to_numpy()])
    table.insert(0, "gene", sym)
    table.insert(1, "gene_id", ids)
    table["detection_start"] = det_s[cand[table["_j"]]]
    table["detection_goal"] = det_g[cand[table["_j"]]]
    top_j = table["_j"].to_numpy()[:20]
    pc = per_cell[per_cell["_j"].isin(top_j)].copy()
    pc["gene"] = gene_names(cm, cand[pc["_j"].to_numpy()])[1]
    table = table.drop(columns="_j")
    uns: dict = {
        "genes": table,
        "per_cell": pc.drop(columns="_j").reset_index(drop=True),
        "params": {
            "label_key": label_key,
            "start": start,
            "goal": goal,
            "kind": kind,
            "fraction": fraction,
            "n_cells": len(start_idx),
            "n_candidates": len(cand),
            "n_null": n_null,
            "seed": seed,
            "axis_norm": float(np.linalg.norm(axis)),
            "perturbed_cells_per_s": float(res.info.get("perturbed_cells_per_s", 0.0)),
        },
    }
    if pairs_top > 1:
        uns["pairs"] = _pairs(cm, start_cells, table, axis, cfg, pairs_top, progress)
    scanned = np.zeros(adata.n_obs, dtype=bool)
    scanned[start_idx] = True
    adata.obs[f"{key_added}_scanned"] = scanned
    adata.uns[key_added] = uns
    if out_dir is not None:
        table.to_csv(Path(out_dir) / "targets.tsv", sep="\t", index=False)
    return adata if copy else None


def _gene_stats(
    mat: np.ndarray,
    cand: np.ndarray,
    bins: np.ndarray,
    n_null: int,
    donors: np.ndarray | None,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-gene effect vs matched null, t-tests across cells (and donors), BH q-values."""
    rows, pcs = [], []
    for j in range(len(cand)):
        peers = np.flatnonzero((bins == bins[j]) & (np.arange(len(cand)) != j))
        if len(peers) == 0:  # a bin of one: fall back to every other gene
            peers = np.flatnonzero(np.arange(len(cand)) != j)
        peers = rng.choice(peers, min(n_null, len(peers)), replace=False)
        s = mat[:, j]
        null = np.nanmean(mat[:, peers], axis=1) if len(peers) else np.zeros(len(s))
        eff = s - null  # (cells,) NaN where the gene or all its null genes did not apply
        ok = np.isfinite(eff)
        m, lo, hi, p_cell = _t_summary(eff[ok])
        row = {
            "_j": j,
            "n_cells": int(ok.sum()),
            "score": float(np.nanmean(s)) if np.isfinite(s).any() else np.nan,
            "null_score": float(np.nanmean(null[ok])) if ok.any() else np.nan,
            "effect": m,
            "effect_ci_low": lo,
            "effect_ci_high": hi,
            "cohens_d": float(m / np.std(eff[ok], ddof=1))
            if ok.sum() > 2 and np.std(eff[ok]) > 0
            else np.nan,
            "p_cells": p_cell,
        }
        if donors is not None:
            has = ok & (donors != "")
            dm = pd.Series(eff[has]).groupby(donors[has]).mean()
            dmean, dlo, dhi, p_don = _t_summary(dm.to_numpy())
            row.update(
                n_donors=len(dm),
                effect_donors=dmean,
                effect_donors_ci_low=dlo,
                effect_donors_ci_high=dhi,
                p_donors=p_don,
                donors_positive=int((dm > 0).sum()),
            )
        rows.append(row)
        pcs.append(
            pd.DataFrame({"_j": j, "cell": np.flatnonzero(ok), "score": s[ok], "null": null[ok]})
        )
    df = pd.DataFrame(rows)
    use_donors = donors is not None and df["n_donors"].max() >= 3
    df["p"] = df["p_donors"] if use_donors else df["p_cells"]
    df["p_source"] = "donors" if use_donors else "cells"
    p = df["p"].to_numpy()
    q = np.full(len(p), np.nan)
    fin = np.isfinite(p)
    if fin.any():
        q[fin] = stats.false_discovery_control(p[fin], method="bh")
    df["q"] = q
    df = df.sort_values(["effect"], ascending=False, ignore_index=True)
    df.insert(1, "rank", np.arange(1, len(df) + 1))
    per_cell = pd.concat(pcs, ignore_index=True) if pcs else pd.DataFrame()
    return df, per_cell


def _pairs(
    cm: CellModel,
    cells: TokenizedCells,
    table: pd.DataFrame,
    axis: np.ndarray,
    cfg: ScanConfig,
    top: int,
    progress: bool,
) -> pd.DataFrame:
    """Score all pairs of the top genes as combinations; interaction = pair - (a + b)."""
    top_ids = table["gene_id"].to_numpy()[:top].tolist()
    singles = resolve_genes(cm, top_ids)
    pairs = [a + b for a, b in itertools.combinations(singles, 2)]
    res = scan_cells(cm, cells, singles + pairs, config=cfg, progress=progress)
    scores = score_rows(res, axis)
    mat = np.full((len(cells), len(singles) + len(pairs)), np.nan)
    mat[res.cell, res.target] = scores
    out = []
    for k, (a, b) in enumerate(itertools.combinations(range(len(singles)), 2)):
        pair = mat[:, len(singles) + k]
        additive = mat[:, a] + mat[:, b]
        inter = pair - additive
        m, lo, hi, p = _t_summary(inter[np.isfinite(inter)])
        out.append(
            {
                "pair": f"{table['gene'].iloc[a]}+{table['gene'].iloc[b]}",
                "score": float(np.nanmean(pair)),
                "additive": float(np.nanmean(additive)),
                "interaction": m,
                "interaction_ci_low": lo,
                "interaction_ci_high": hi,
                "p": p,
            }
        )
    df = pd.DataFrame(out)
    if len(df):
        fin = np.isfinite(df["p"].to_numpy())
        df["q"] = np.nan
        df.loc[fin, "q"] = stats.false_discovery_control(df.loc[fin, "p"].to_numpy(), method="bh")
    return df.sort_values("score", ascending=False, ignore_index=True)


def write_targets(adata: ad.AnnData, path: str | Path, *, key: str = "lifelm_targets") -> Path:
    """Write the ranked table in ``.uns[key]["genes"]`` as TSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.uns[key]["genes"].to_csv(path, sep="\t", index=False)
    return path
