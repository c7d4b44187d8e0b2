"""Goal-state target search: which genes, perturbed in silico, move start cells toward a goal state.

Given two label values of an ``.obs`` column (e.g. ``disease`` -> ``healthy``, or ``ctrl`` ->
``stim``), every candidate gene is perturbed in a sample of cells (exact batched scan,
:mod:`lifelm.tasks.cells.perturb`) and scored by how far it moves each cell along the axis from
the start centroid to the goal centroid in embedding space::

    score(cell, gene) = (E_perturbed - E_cell) . a / |a|^2,   a = mu_goal - mu_start

i.e. the fraction of the way from start to goal the perturbation travels (1 = all the way).

Statistics, per gene
--------------------
- **matched null**: perturbing *any* gene moves a cell somewhat, and highly ranked genes move it
  more. Each gene is compared, cell by cell, with up to ``n_null`` random other genes of matched
  expression (same quantile bin of detection rate and mean rank in the start cells) perturbed in
  the same cell: ``d(cell, gene) = shift(gene) - mean shift(null genes)`` (a vector);
- **unit of the test**: cells of one donor are not independent, and the quantity that is random
  under the null is the *state labelling*, which sets both the axis and which cells count as
  start cells. Cells are grouped into units (:func:`lifelm.tasks.cells.de.make_design`): donor x
  state when ``donor_key`` is given (paired or unpaired donors), else random pseudo-replicates of
  cells (anti-conservative when cells come from few unrecorded donors: a warning says so);
- **statistic**: ``T(gene) = mean over start units of mean_cells d . a`` (the un-normalised
  projection, so a labelling that mixes the states, whose axis is short, gives a small T);
- **p-value**: a label-permutation test. Cells of *both* states are scanned, so T can be
  recomputed for every relabelling of the units (swaps within donors when paired, permutations
  among donors or pseudo-replicates otherwise; exhaustive when there are few, else
  ``n_permutations`` seeded ones); two-sided p = share of labellings with ``|T| >= |T_obs|``.
  It holds under the null "the states are exchangeable between units" by construction (the old
  cell-level t-test of ``d`` against 0 called 126 of 200 genes on Kang 2018 with shuffled labels:
  any gene's fixed shift projects onto any axis, random or not);
- **FDR**: Benjamini-Hochberg over all candidate genes (and groups);
- **effect**: ``T_obs / |a|^2`` (fraction of the way, mean over start units) with a 95 % t
  interval across start units.

Baseline and method choice
--------------------------
A differential-expression ranking of the same candidates is always computed next to the model's
(:func:`lifelm.tasks.cells.de.de_ranking`: pseudobulk log2 CPM per unit, goal - start, the same
permutation test). For overexpression the genes higher in the goal state rank first, for deletion
and knock-down the genes higher in the start state. On the user's data the units are split into
two halves; each ranking is computed on one half and compared (Spearman) with the observed
expression shift (signed log2 fold change) of the other half, both ways. ``method="auto"`` ranks
by whichever agreed better (``"insilico"``/``"de"`` force one). This comparison measures
agreement with the *observed* shift, which the DE ranking estimates directly, so the model has
to beat a strong baseline to win.

Cell-type composition: a change of cell-type mix between the states moves the centroids too.
``groupby`` runs the search per cell type (q-values over all groups jointly); without it, a
cell-type column is looked for and a warning is given when the states' compositions differ
(total variation distance > 0.2).

Optionally, pairs from the top of the ranking are scored as combinations and compared with the
sum of their single effects (interaction = combination - additive expectation; cell-level
t-test, labelled ``p_cells``: descriptive, anti-conservative).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from lifelm._core.errors import InputError
from lifelm._core.runtime import get_logger
from lifelm.data.cells.perturb_ops import Kind
from lifelm.data.cells.tokenizer import N_SPECIAL, TokenizedCells
from lifelm.tasks.cells.cpu_techniques import CpuTechniques
from lifelm.tasks.cells.de import (
    Design,
    TooFewReplicatesError,
    bh,
    de_ranking,
    log_cpm,
    make_design,
    mean_difference,
    permutation_pvalues,
    pseudobulk,
)
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

__all__ = ["StateLabelError", "TooFewReplicatesError", "rank_targets", "write_targets"]

CELL_TYPE_COLUMNS = (
    "cell_type", "celltype", "cell_types", "cell_type_geo", "cell_label", "celltype_major",
    "seurat_annotations", "annotation", "cell_ontology_class", "leiden", "louvain",
)  # fmt: skip
METHODS = ("auto", "insilico", "de")


class StateLabelError(InputError):
    """The state column or its start/goal values are missing or unusable."""


def _state_masks(
    adata: ad.AnnData, key: str, start: str, goal: str
) -> tuple[np.ndarray, np.ndarray]:
    if key not in adata.obs:
        raise StateLabelError(
            f".obs has no column {key!r} (--label-key/label_key=); columns: "
            f"{list(adata.obs.columns)[:30]}"
        )
    col = adata.obs[key].astype(str).to_numpy()
    values = sorted(set(col))
    if str(start) == str(goal):
        raise StateLabelError(
            f"--start and --goal (start=, goal=) are both {start!r}: the search needs two "
            f"different states of .obs[{key!r}]; choose another --goal, one of "
            f"{[v for v in values if v != str(start)][:20]}"
        )
    masks = []
    for opt, value in (("--start/start=", start), ("--goal/goal=", goal)):
        mask = col == str(value)
        if not mask.any():
            raise StateLabelError(
                f".obs[{key!r}] has no cells labelled {value!r} ({opt}); values: {values[:20]}"
            )
        masks.append(mask)
    return masks[0], masks[1]


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


def _unit_ci(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of (units, G): mean and 95 % t interval over finite units."""
    ok = np.isfinite(x)
    n = ok.sum(0)
    mean = np.where(n > 0, np.nansum(x, 0) / np.maximum(n, 1), np.nan)
    dev = np.where(ok, x - mean, 0.0)
    sd = np.sqrt((dev**2).sum(0) / np.maximum(n - 1, 1))
    half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * sd / np.sqrt(np.maximum(n, 1))
    half = np.where(n >= 2, half, np.nan)
    return mean, mean - half, mean + half


class _InSilicoStat:
    """T(gene | labelling) from per-unit sums, so every relabelling costs a small matmul.

    ``K[u, g, v] = mean over scanned cells c of unit u of d(c, g) . E_v`` (E_v = summed
    embeddings of unit v), so for unit weights w (the axis a = sum_v w_v E_v) the projection
    of unit u's mean null-corrected shift on a is ``K[u, g] @ w``.
    """

    def __init__(self, K: np.ndarray, n_rows: np.ndarray, E: np.ndarray, n_u: np.ndarray):
        self.valid = n_rows > 0  # (U, G)
        self.Kn = np.where(self.valid[:, :, None], K / np.maximum(n_rows, 1)[:, :, None], 0.0)
        self.E, self.n_u = E, n_u.astype(float)

    def weights(self, lab: np.ndarray, inc: np.ndarray) -> np.ndarray:
        s, g = lab & inc, ~lab & inc
        ns = s.astype(float) @ self.n_u
        ng = g.astype(float) @ self.n_u
        return np.where(g, 1.0 / ng[:, None], 0.0) - np.where(s, 1.0 / ns[:, None], 0.0)

    def axis(self, lab: np.ndarray, inc: np.ndarray | None = None) -> np.ndarray:
        inc = np.ones(lab.shape[-1], dtype=bool) if inc is None else inc
        return (self.weights(lab[None], inc) @ self.E)[0]

    def unit_proj(self, lab: np.ndarray, inc: np.ndarray | None = None) -> np.ndarray:
        """(b, U, G) projection of each unit's mean shift on each labelling's axis."""
        inc = np.ones(lab.shape[-1], dtype=bool) if inc is None else inc
        w = self.weights(lab, inc)  # (b, U)
        return np.einsum("ugv,bv->bug", self.Kn, w, optimize=True)

    def __call__(self, lab: np.ndarray, inc: np.ndarray | None = None) -> np.ndarray:
        inc = np.ones(lab.shape[-1], dtype=bool) if inc is None else inc
        s = (lab & inc).astype(float)  # (b, U)
        proj = self.unit_proj(lab, inc) * self.valid[None]
        num = np.einsum("bu,bug->bg", s, proj)
        den = s @ self.valid.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)


def _sample_scan(design: Design, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n_cells`` cells per state, spread evenly over the state's units."""
    out = []
    for s in (True, False):
        units = np.flatnonzero(design.unit_start == s)
        per = max(1, math.ceil(n_cells / max(len(units), 1)))
        for u in units:
            idx = np.flatnonzero(design.unit == u)
            out.append(idx if len(idx) <= per else rng.choice(idx, per, replace=False))
    return np.sort(np.concatenate(out))


def _matched_peers(bins: np.ndarray, n_null: int, rng: np.random.Generator) -> sp.csr_matrix:
    """(G, G) 0/1 matrix: row j marks the matched null genes of gene j."""
    g = len(bins)
    rows, cols = [], []
    for j in range(g):
        peers = np.flatnonzero((bins == bins[j]) & (np.arange(g) != j))
        if len(peers) == 0:  # a bin of one: fall back to every other gene
            peers = np.flatnonzero(np.arange(g) != j)
        peers = rng.choice(peers, min(n_null, len(peers)), replace=False)
        rows.append(np.full(len(peers), j))
        cols.append(peers)
    r = np.concatenate(rows) if rows else np.zeros(0, int)
    c = np.concatenate(cols) if cols else np.zeros(0, int)
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(g, g))


def _col_mean(x: np.ndarray) -> np.ndarray:
    n = np.isfinite(x).sum(0)
    return np.where(n > 0, np.nansum(x, 0) / np.maximum(n, 1), np.nan)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


# Long because the scan, the permutation test and the DE baseline must share one set of units and one relabelling loop (split candidate: the held-out comparison).
def _search(
    adata: ad.AnnData,
    cm: CellModel,
    start_mask: np.ndarray,
    goal_mask: np.ndarray,
    *,
    donors: np.ndarray | None,
    donor_key: str | None,
    kind: Kind,
    fraction: float,
    genes: list[str] | None,
    n_cells: int,
    min_detection: float,
    max_candidates: int,
    n_null: int,
    n_bins: int,
    n_permutations: int,
    n_pseudo: int,
    min_unit_cells: int,
    layer: str | None,
    max_tokens: int,
    out_dir: str | Path | None,
    seed: int,
    progress: bool,
    techniques: CpuTechniques | None = None,
) -> dict:
    """The search on one set of cells (all cells, or one group of ``groupby``)."""
    rng = np.random.default_rng(seed)
    sel = np.flatnonzero(start_mask | goal_mask)
    sub = adata[sel].to_memory() if adata.isbacked else adata[sel].copy()
    state = np.where(start_mask[sel], 1, 0)
    cells = cm.tokenizer.encode(sub, layer=layer)
    emb = embed_tokens(cm, cells, progress=False).astype(np.float64)
    state[~np.isfinite(emb).all(1)] = -1  # no vocabulary gene: no embedding, no unit
    for s, name in ((1, "start"), (0, "goal")):
        if not (state == s).any():
            raise StateLabelError(f"no {name} cell has a gene of the model vocabulary")
    design = make_design(
        state, None if donors is None else donors[sel], n_pseudo=n_pseudo,
        min_unit_cells=min_unit_cells, n_permutations=n_permutations, seed=seed,
        donor_key=donor_key or "donor",
    )  # fmt: skip
    U = design.n_units
    ind = sp.csr_matrix(
        (np.ones(int((design.unit >= 0).sum())),
         (design.unit[design.unit >= 0], np.flatnonzero(design.unit >= 0))),
        shape=(U, len(sel)),
    )  # fmt: skip
    emb0 = np.nan_to_num(emb)
    E = np.asarray(ind @ emb0)  # (U, D) summed embeddings per unit
    n_u = np.asarray(ind.sum(1)).ravel()
    in_start = design.unit_start[np.maximum(design.unit, 0)] & (design.unit >= 0)
    in_goal = ~design.unit_start[np.maximum(design.unit, 0)] & (design.unit >= 0)
    v = cm.tokenizer.vocab_size
    det_s, rank_s = _expression_stats(cells.subset(np.flatnonzero(in_start)), v)
    det_g, _ = _expression_stats(cells.subset(np.flatnonzero(in_goal)), v)
    if genes is not None:
        cand = np.unique(np.array([t[0] for t in resolve_genes(cm, genes)], dtype=np.int64))
    else:
        ok = det_s >= min_detection
        if kind == "overexpress":
            ok |= det_g >= min_detection
        cand = np.flatnonzero(ok)
        cand = cand[cand >= N_SPECIAL]
    if len(cand) > max_candidates:
        cand = cand[
            np.argsort(-np.maximum(det_s[cand], det_g[cand]), kind="stable")[:max_candidates]
        ]
    cand = np.sort(cand)
    if len(cand) < 3:
        raise InputError(
            f"only {len(cand)} candidate genes; lower --min-detection/min_detection= or pass "
            "--genes/genes="
        )
    G = len(cand)
    scan_idx = _sample_scan(design, n_cells, rng)
    scan_cells_ = cells.subset(scan_idx)
    cfg = ScanConfig(
        kind=kind,
        fraction=fraction,
        max_tokens=max_tokens,
        keep_embeddings=True,
        techniques=techniques or CpuTechniques(),
    )
    res = scan_cells(
        cm, scan_cells_, single_targets(cand), config=cfg, out_dir=out_dir, progress=progress
    )
    if res.perturbed is None:
        raise RuntimeError("the scan kept no embeddings")
    peers = _matched_peers(_bins(det_s[cand], rank_s[cand], n_bins), n_null, rng)
    col = np.full(v, -1, dtype=np.int64)
    col[cand] = np.arange(G)
    rows_j = col[res.target_tokens()]
    lab0 = design.unit_start
    stat = _InSilicoStat(np.zeros((U, G, U)), np.zeros((U, G)), E, n_u)  # axis helper
    a0 = stat.axis(lab0)
    a2 = float(a0 @ a0)
    if not np.isfinite(a2) or a2 == 0:
        raise InputError("the start and goal centroids coincide in embedding space")
    K = np.zeros((U, G, U))
    n_rows = np.zeros((U, G))
    start_scanned = [i for i in range(len(scan_idx)) if in_start[scan_idx[i]]]
    pos = {c: k for k, c in enumerate(start_scanned)}
    cell_score = np.full((len(start_scanned), G), np.nan)
    cell_null = np.full((len(start_scanned), G), np.nan)
    order = np.argsort(res.cell, kind="stable")
    bounds = np.searchsorted(res.cell[order], np.arange(len(scan_idx) + 1))
    D = E.shape[1]
    for c in range(len(scan_idx)):
        rows = order[bounds[c] : bounds[c + 1]]
        rows = rows[rows_j[rows] >= 0]
        if len(rows) == 0:
            continue
        u = int(design.unit[scan_idx[c]])
        j = rows_j[rows]
        dc = np.zeros((G, D))
        dc[j] = res.perturbed[rows].astype(np.float64) - res.original[c].astype(np.float64)
        m = np.zeros(G)
        m[j] = 1.0
        cnt = peers @ m
        null = (peers @ dc) / np.maximum(cnt, 1)[:, None]
        valid = (m > 0) & (cnt > 0)
        d = np.where(valid[:, None], dc - null, 0.0)
        K[u] += d @ E.T
        n_rows[u] += valid
        if c in pos:
            cell_score[pos[c], valid] = (dc[valid] @ a0) / a2
            cell_null[pos[c], valid] = (null[valid] @ a0) / a2
    stat = _InSilicoStat(K, n_rows, E, n_u)
    t_obs, p = permutation_pvalues(stat, design.labellings)
    unit_eff = stat.unit_proj(lab0[None])[0] / a2  # (U, G)
    unit_eff = np.where(stat.valid & lab0[:, None], unit_eff, np.nan)[lab0]
    _, lo, hi = _unit_ci(unit_eff)
    # differential expression baseline on the same units
    mapping = cm.tokenizer.map_dataset(sub)
    col_to_vocab = np.array([cm.tokenizer.vocab.get(g, -1) for g in mapping.ids], dtype=np.int32)
    counts, lib = pseudobulk(
        sub, design.unit, U, col_to_vocab, n_vocab=len(cm.tokenizer.genes), layer=layer
    )
    x = log_cpm(counts, lib)[:, cand - N_SPECIAL]
    sign = 1.0 if kind == "overexpress" else -1.0
    de = de_ranking(x, design, sign=sign)
    # held-out agreement with the observed shift: rank on one half of the units, check on the other
    comp = []
    for f in (0, 1):
        train = design.folds == f
        test = ~train
        if not all((lab0 & m).any() and (~lab0 & m).any() for m in (train, test)):
            continue
        truth = sign * mean_difference(x, test)(lab0[None])[0]
        ins = stat(lab0[None], train)[0]
        de_tr = sign * mean_difference(x, train)(lab0[None])[0]
        comp.append({"fold": f, "insilico": _spearman(ins, truth), "de": _spearman(de_tr, truth)})
    ids, sym = gene_names(cm, cand)
    table = pd.DataFrame(
        {
            "gene": sym,
            "gene_id": ids,
            "effect": t_obs / a2,
            "effect_ci_low": lo,
            "effect_ci_high": hi,
            "p": p,
            "score": _col_mean(cell_score),
            "null_score": _col_mean(cell_null),
            "n_cells": np.isfinite(cell_score).sum(0),
            "n_units": stat.valid[lab0].sum(0),
            "p_source": design.kind,
            **{c: de[c].to_numpy() for c in ("de_log2fc", "de_score", "de_p")},
            "detection_start": det_s[cand],
            "detection_goal": det_g[cand],
        }
    )
    top = np.argsort(-np.nan_to_num(table["effect"].to_numpy(), nan=-np.inf))[:20]
    pcs = []
    for j in top:
        ok = np.isfinite(cell_score[:, j])
        pcs.append(
            pd.DataFrame(
                {
                    "gene": sym[j],
                    "cell": np.flatnonzero(ok),
                    "score": cell_score[ok, j],
                    "null": cell_null[ok, j],
                }
            )
        )
    scanned = np.zeros(adata.n_obs, dtype=bool)
    scanned[sel[scan_idx]] = True
    return {
        "table": table,
        "per_cell": pd.concat(pcs, ignore_index=True) if pcs else pd.DataFrame(),
        "comparison": comp,
        "design": design,
        "scanned": scanned,
        "start_cells": scan_cells_.subset(np.array(start_scanned, dtype=np.int64)),
        "axis": a0,
        "cfg": cfg,
        "info": res.info,
        "n_start": int(in_start.sum()),
        "n_goal": int(in_goal.sum()),
    }


def composition_shift(
    adata: ad.AnnData, start_mask: np.ndarray, goal_mask: np.ndarray, key: str
) -> float:
    """Total variation distance between the start and goal cells' distributions of ``.obs[key]``
    (0 = same mix, 1 = no type in common); NaN when either state has no label."""
    col = adata.obs[key].astype("string")
    a = col[start_mask].dropna().value_counts(normalize=True)
    b = col[goal_mask].dropna().value_counts(normalize=True)
    if a.empty or b.empty:
        return float("nan")
    idx = a.index.union(b.index)
    return float(0.5 * (a.reindex(idx, fill_value=0) - b.reindex(idx, fill_value=0)).abs().sum())


# Long because of its docstring (every output column) and the per-group loop with one joint BH correction.
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
    groupby: str | None = None,
    method: str = "auto",
    n_cells: int = 100,
    min_detection: float = 0.05,
    max_candidates: int = 2000,
    n_null: int = 20,
    n_bins: int = 16,
    n_permutations: int = 2000,
    n_pseudo: int = 6,
    min_unit_cells: int = 3,
    pairs_top: int = 0,
    layer: str | None = None,
    max_tokens: int = 32_768,
    out_dir: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    techniques: CpuTechniques | None = None,
    key_added: str = "lifelm_targets",
    copy: bool = False,
    progress: bool = True,
) -> ad.AnnData | None:
    """Rank genes by how far their perturbation moves ``start`` cells toward the ``goal`` state.

    The statistics, the test unit and the DE baseline are described in the module docstring.

    Parameters
    ----------
    adata
        Cells with raw counts and ``.obs[label_key]``.
    model
        A cell model or its checkpoint folder.
    label_key, start, goal
        ``.obs`` column and its two (different) values (e.g. ``"condition"``, ``"ctrl"``,
        ``"stim"``).
    kind
        ``overexpress`` (move to rank 1), ``delete`` or ``knockdown``.
    fraction
        Knock-down strength.
    genes
        Candidate genes (symbols or Ensembl IDs). ``None``: genes detected in at least
        ``min_detection`` of the start cells (and, for overexpression, of the goal cells).
    donor_key
        ``.obs`` column with donors (or samples): the test unit. Paired donors (cells in both
        states) are compared within donors, unpaired donors among donors. Without it, random
        pseudo-replicates of cells are the units and a warning says the test is
        anti-conservative when cells come from few donors.
    groupby
        ``.obs`` column (e.g. cell type): run the search in each group (q-values over all
        groups); groups with too few cells or donors are skipped with a warning.
    method
        ``auto`` ranks by whichever of the in-silico and the DE ranking agreed better with the
        held-out expression shift; ``insilico`` or ``de`` force one. Both are always reported.
    n_cells
        Cells scanned per state (seeded, spread evenly over the units).
    min_detection, max_candidates
        Candidate filter and cap (most detected first).
    n_null, n_bins
        Matched random genes per gene in the null; expression bins for matching.
    n_permutations
        Label permutations when there are more possible labellings (else all are used).
    n_pseudo, min_unit_cells
        Pseudo-replicates per state without donors; fewest cells of a unit.
    pairs_top
        Score all pairs of the top ``pairs_top`` genes as combinations (0 = none).
    layer, max_tokens, device
        Counts location, batch budget, device.
    techniques
        CPU techniques of the in-silico scan (int8, bf16, compile, pinned worker processes; see
        :mod:`lifelm.tasks.cells.cpu_techniques`), as for embedding. The state embeddings that
        set the start -> goal axis stay fp32; each shift is taken against the original cell
        embedded with the same techniques.
    out_dir
        Scan folder (resumable; one sub-folder per group with ``groupby``).
    seed
        Units, cell sampling, null genes and permutations.
    key_added, copy
        Output key; return a copy instead of writing in place.

    Returns
    -------
    The AnnData when ``copy=True``, else ``None``. Writes ``.uns[key_added]`` (and the same
    dict as ``.uns["lifelm"]["targets"]``) with ``"genes"``
    (ranked DataFrame; columns in ``docs/cells-targets.md``), ``"comparison"`` (held-out
    agreement of both rankings), ``"method"`` (the ranking used), ``"verdict"`` (one line),
    ``"design"`` (the test), ``"warnings"``, ``"per_cell"`` (per-cell scores of the top 20 genes
    and their nulls), ``"pairs"`` (when ``pairs_top``) and ``"params"``;
    ``.obs[key_added + "_scanned"]`` marks the scanned cells.
    """
    if method not in METHODS:
        raise InputError(f"--method/method= must be one of {METHODS}, got {method!r}")
    if kind not in ("overexpress", "delete", "knockdown"):
        raise InputError(f"--kind/kind= must be overexpress, delete or knockdown, got {kind!r}")
    start_mask, goal_mask = _state_masks(adata, label_key, start, goal)
    for opt, key in (("--donor-key/donor_key=", donor_key), ("--groupby/groupby=", groupby)):
        if key is not None and key not in adata.obs:
            raise InputError(
                f".obs has no column {key!r} ({opt}); columns: {list(adata.obs.columns)[:30]}"
            )
    cm = as_cell_model(model, device)
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    donors = None
    if donor_key:
        donors = adata.obs[donor_key].astype("string").fillna("").to_numpy().astype(str)
    warnings: list[str] = []
    groups: list[tuple[str | None, np.ndarray, np.ndarray]] = []
    if groupby:
        gcol = adata.obs[groupby].astype("string").fillna("").to_numpy().astype(str)
        for g in sorted(set(gcol[start_mask | goal_mask]) - {""}):
            groups.append((g, start_mask & (gcol == g), goal_mask & (gcol == g)))
    else:
        groups.append((None, start_mask, goal_mask))
        for key in CELL_TYPE_COLUMNS:
            if key in adata.obs and key not in (label_key, donor_key):
                tvd = composition_shift(adata, start_mask, goal_mask, key)
                if np.isfinite(tvd) and tvd > 0.2:
                    warnings.append(
                        f"the cell-type mix (.obs[{key!r}]) differs between {start} and {goal} "
                        f"cells (total variation distance {tvd:.2f}): the start->goal axis "
                        f"mixes the state change with the change of mix; run per cell type with "
                        f"--groupby {key}"
                    )
                elif not np.isfinite(tvd):
                    warnings.append(
                        f".obs[{key!r}] is empty for the {start} or {goal} cells, so their "
                        "cell-type mix cannot be compared; a change of mix would move the axis"
                    )
                break
    results: list[tuple[str | None, dict]] = []
    skipped: list[str] = []
    for g, sm, gm in groups:
        try:
            sub_out = None
            if out_dir is not None:
                safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(g))
                sub_out = Path(out_dir) / f"group-{safe}" if g is not None else Path(out_dir)
            r = _search(
                adata, cm, sm, gm, donors=donors, donor_key=donor_key, kind=kind,
                fraction=fraction, genes=genes, n_cells=n_cells, min_detection=min_detection,
                max_candidates=max_candidates, n_null=n_null, n_bins=n_bins,
                n_permutations=n_permutations, n_pseudo=n_pseudo,
                min_unit_cells=min_unit_cells, layer=layer, max_tokens=max_tokens,
                out_dir=sub_out, seed=seed, progress=progress, techniques=techniques,
            )  # fmt: skip
        except (TooFewReplicatesError, StateLabelError) as e:
            if g is None:
                raise
            skipped.append(f"{g}: {e}")
            continue
        results.append((g, r))
    if not results:
        raise TooFewReplicatesError(
            f"no group of .obs[{groupby!r}] has enough {start} and {goal} cells/donors:\n  "
            + "\n  ".join(skipped)
        )
    if skipped:
        warnings.append(f"groups skipped (too few cells or donors): {'; '.join(skipped)}")
    tables, comps, pcs, designs = [], [], [], {}
    for g, r in results:
        t = r["table"]
        if groupby:
            t.insert(0, "group", g)
        tables.append(t)
        for row in r["comparison"]:
            comps.append({"group": g, **row} if groupby else row)
        pc = r["per_cell"]
        if groupby and len(pc):
            pc.insert(0, "group", g)
        pcs.append(pc)
        d: Design = r["design"]
        designs["all cells" if g is None else str(g)] = {
            "kind": d.kind,
            "n_units": d.n_units,
            "n_labellings": len(d.labellings),
            "exhaustive": d.exhaustive,
            "min_p": d.min_p,
            "description": d.describe(),
            "dropped": list(d.dropped),
            "n_start_cells": r["n_start"],
            "n_goal_cells": r["n_goal"],
        }
        for drop in d.dropped:
            warnings.append(f"{'' if g is None else f'[{g}] '}left out of the test: {drop}")
        if d.kind == "pseudo-replicates":
            note = (
                "p-values compare random pseudo-replicates of cells (no --donor-key/donor_key=): "
                "exact only if cells are independent; cells from few donors or samples make "
                "this cell-level test anti-conservative. Give --donor-key when donors are "
                "recorded."
            )
            if note not in warnings:
                warnings.append(note)
    table = pd.concat(tables, ignore_index=True)
    table.insert(table.columns.get_loc("p") + 1, "q", bh(table["p"].to_numpy()))
    table.insert(table.columns.get_loc("de_p") + 1, "de_q", bh(table["de_p"].to_numpy()))
    comparison = pd.DataFrame(comps)
    mean_ins = float(comparison["insilico"].mean()) if len(comparison) else float("nan")
    mean_de = float(comparison["de"].mean()) if len(comparison) else float("nan")
    if not (np.isfinite(mean_ins) and np.isfinite(mean_de)):
        winner = "not measured"
    else:
        winner = "insilico" if mean_ins > mean_de else "de"  # ties go to the simpler method
    chosen = method if method != "auto" else ("de" if winner == "not measured" else winner)
    de_name = "pseudobulk differential expression (log2 CPM per unit, permutation test)"
    if winner == "de":
        verdict = (
            f"The model's ranking agrees less with the held-out expression shift than {de_name} "
            f"(Spearman {mean_ins:.2f} vs {mean_de:.2f}); "
            + ("ranked by DE (--method auto)." if method == "auto" else "use --method de.")
        )
    elif winner == "insilico":
        verdict = (
            f"The model's ranking agrees better with the held-out expression shift than "
            f"{de_name} (Spearman {mean_ins:.2f} vs {mean_de:.2f})."
        )
    else:
        verdict = "Held-out agreement not measured (too few units); DE is the safer ranking."
    by = "group" if groupby else None
    for col_name, score in (("rank_insilico", "effect"), ("rank_de", "de_score")):
        s = table[score].fillna(-np.inf)
        table[col_name] = (
            s.groupby(table[by]).rank(ascending=False, method="first")
            if by
            else s.rank(ascending=False, method="first")
        ).astype(int)
    table.insert(
        1 if groupby else 0, "rank", table["rank_insilico" if chosen == "insilico" else "rank_de"]
    )
    table = table.sort_values([by, "rank"] if by else ["rank"], ignore_index=True)
    front = [c for c in ("group", "gene", "gene_id", "rank", "rank_insilico", "rank_de")
             if c in table]  # fmt: skip
    table = table[front + [c for c in table.columns if c not in front]]
    uns: dict = {
        "genes": table,
        "per_cell": pd.concat(pcs, ignore_index=True) if pcs else pd.DataFrame(),
        "comparison": comparison,
        "method": chosen,
        "winner": winner,
        "verdict": verdict,
        "agreement_insilico": mean_ins,
        "agreement_de": mean_de,
        "design": designs,
        "warnings": warnings,
        "params": {
            "label_key": label_key,
            "start": start,
            "goal": goal,
            "kind": kind,
            "fraction": fraction,
            "donor_key": donor_key or "",
            "groupby": groupby or "",
            "method": method,
            "n_cells": n_cells,
            "n_scanned": int(sum(r["scanned"].sum() for _, r in results)),
            "n_candidates": len(table),
            "n_null": n_null,
            "n_permutations": n_permutations,
            "seed": seed,
            "de_method": de_name,
            "perturbed_cells_per_s": float(
                np.mean([r["info"].get("perturbed_cells_per_s", 0.0) for _, r in results])
            ),
        },
    }
    if pairs_top > 1 and not groupby:
        r = results[0][1]
        ins_order = table.sort_values("rank_insilico")
        uns["pairs"] = _pairs(
            cm, r["start_cells"], ins_order, r["axis"], r["cfg"], pairs_top, progress
        )
    for w in warnings:
        log.warning(w)
    scanned = np.zeros(adata.n_obs, dtype=bool)
    for _, r in results:
        scanned |= r["scanned"]
    adata.obs[f"{key_added}_scanned"] = scanned
    adata.uns[key_added] = uns
    adata.uns.setdefault("lifelm", {})["targets"] = uns  # run metadata, as every task
    return adata if copy else None


def header_lines(result: dict) -> list[str]:
    """The ``#`` comment lines that open ``targets.tsv``: test, baseline, verdict, warnings."""
    p = result["params"]
    lines = [
        f"lifelm cells targets: {p['kind']} of {p['n_candidates']} candidates, "
        f".obs[{p['label_key']!r}] {p['start']} -> {p['goal']}",
        "in-silico: effect = fraction of the start->goal embedding axis travelled, minus "
        "matched random genes; p = label-permutation test over replicate units",
    ]
    for name, d in result["design"].items():
        lines.append(f"test unit ({name}): {d['description']}")
    lines += [
        "FDR: Benjamini-Hochberg over all rows (q, de_q)",
        f"DE baseline: {p['de_method']}; de_score = log2 fold change signed for {p['kind']}",
        f"held-out agreement with the observed shift (Spearman): in-silico "
        f"{result['agreement_insilico']:.3f}, DE {result['agreement_de']:.3f}; winner: "
        f"{result['winner']}",
        f"rank = {result['method']} ranking (--method {p['method']})",
        result["verdict"],
    ]
    lines += [f"warning: {w}" for w in result["warnings"]]
    return ["# " + line.replace("\n", " ") for line in lines]


def write_targets(
    adata: ad.AnnData | dict, path: str | Path, *, key: str = "lifelm_targets"
) -> Path:
    """Write the ranked table with its ``#`` header lines as TSV (atomically)."""
    from lifelm._core.runfolder import atomic_output

    result = adata.uns[key] if isinstance(adata, ad.AnnData) else adata
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "w") as fh:
        fh.write("\n".join(header_lines(result)) + "\n")
        result["genes"].to_csv(fh, sep="\t", index=False)
    return path


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
                "p_cells": p,
            }
        )
    df = pd.DataFrame(out)
    if len(df):
        df["q_cells"] = bh(df["p_cells"].to_numpy())
    return df.sort_values("score", ascending=False, ignore_index=True)
