"""Replicate units, label permutations and the differential-expression baseline of ``targets``.

Cells of one donor are not independent, so statistics that compare two states (``start`` vs
``goal``) are computed on **units**, never on cells:

- **paired donors** (every donor has cells in both states, e.g. before/after stimulation): one
  unit per donor and state; the null swaps the two labels *within* donors (all ``2**n_donors``
  swaps when that is at most ``n_permutations + 1``, else a seeded sample);
- **unpaired donors** (each donor is in one state): one unit per donor; the null permutes the
  state labels *among* donors;
- **pseudo-replicates** (no donor column): the cells of each state are split at random into
  ``n_pseudo`` groups and the null permutes the groups' labels. This is exact when cells are
  exchangeable, but **anti-conservative** when the cells come from few donors or samples that
  are not recorded: a donor column should be given whenever one exists.

A permutation p-value is the share of labellings (the observed one included) whose statistic is
at least as extreme as the observed one, so it holds under the null "the state labels are
exchangeable between units" by construction. The differential-expression baseline is a
pseudobulk (counts summed per unit, log2 CPM + 1) mean difference goal - start, tested with the
same permutations.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from lifelm._core.errors import InputError
from lifelm.data.cells.counts import find_counts
from lifelm.data.cells.tokenizer import to_vocab_columns


class TooFewReplicatesError(InputError):
    """Too few cells or donors in a state for a test that can reach significance."""


@dataclass(frozen=True)
class Design:
    """Replicate units of a two-state comparison and the labellings of its permutation null."""

    kind: str  # "paired donors" | "unpaired donors" | "pseudo-replicates"
    unit: np.ndarray  # (n_cells,) unit index per cell, -1 = not used
    unit_start: np.ndarray  # (U,) bool, True = start state (the observed labelling)
    unit_name: np.ndarray  # (U,) str, donor or pseudo-replicate name
    labellings: np.ndarray  # (B, U) bool, row 0 = observed; True = start
    exhaustive: bool  # every labelling enumerated (exact test)
    folds: np.ndarray  # (U,) 0/1: the two halves of the held-out comparison
    dropped: list[str] = field(default_factory=list)  # donors left out, with the reason

    @property
    def n_units(self) -> int:
        return len(self.unit_start)

    @property
    def min_p(self) -> float:
        """Smallest attainable p-value."""
        return 1.0 / len(self.labellings)

    def describe(self) -> str:
        n_s, n_g = int(self.unit_start.sum()), int((~self.unit_start).sum())
        how = "all" if self.exhaustive else "random"
        what = {
            "paired donors": "state labels swapped within donors",
            "unpaired donors": "state labels permuted among donors",
            "pseudo-replicates": "state labels permuted among random pseudo-replicates of cells",
        }[self.kind]
        return (
            f"{self.kind} ({n_s} start and {n_g} goal units); permutation test, {what}, "
            f"{how} {len(self.labellings)} labellings (smallest p {self.min_p:.2g})"
        )


def _paired_labellings(
    unit_start: np.ndarray, unit_donor: np.ndarray, n_perm: int, rng: np.random.Generator
) -> tuple[np.ndarray, bool]:
    donors, inv = np.unique(unit_donor, return_inverse=True)
    n = len(donors)
    if 2**n <= n_perm + 1:
        flips = np.array(list(itertools.product([False, True], repeat=n)), dtype=bool)
        exhaustive = True
    else:
        flips = rng.random((n_perm + 1, n)) < 0.5
        flips[0] = False
        exhaustive = False
    return unit_start[None, :] ^ flips[:, inv], exhaustive


def _unpaired_labellings(
    unit_start: np.ndarray, n_perm: int, rng: np.random.Generator
) -> tuple[np.ndarray, bool]:
    u, k = len(unit_start), int(unit_start.sum())
    if math.comb(u, k) <= n_perm + 1:
        rows = [unit_start.copy()]
        for comb in itertools.combinations(range(u), k):
            lab = np.zeros(u, dtype=bool)
            lab[list(comb)] = True
            if not np.array_equal(lab, unit_start):
                rows.append(lab)
        return np.array(rows, dtype=bool), True
    rows = [unit_start] + [rng.permutation(unit_start) for _ in range(n_perm)]
    return np.array(rows, dtype=bool), False


def _split_folds(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0/1 per group id (alternating over a seeded shuffle)."""
    ids = np.unique(groups)
    order = rng.permutation(ids)
    fold_of = {g: i % 2 for i, g in enumerate(order)}
    return np.array([fold_of[g] for g in groups], dtype=np.int64)


# Long because each of the three designs (paired donors, unpaired donors, pseudo-replicates) and its refusal message is spelled out in turn.
def make_design(
    state: np.ndarray,
    donors: np.ndarray | None,
    *,
    n_pseudo: int = 6,
    min_unit_cells: int = 3,
    n_permutations: int = 2000,
    seed: int = 0,
    donor_key: str = "donor",
) -> Design:
    """Units and permutation labellings for cells with ``state`` 1 (start), 0 (goal), -1 (other).

    Raises :class:`TooFewReplicatesError` when the design cannot reach p < 0.05 (too few donors
    or cells), naming the fix.
    """
    rng = np.random.default_rng(seed)
    state = np.asarray(state)
    n = len(state)
    unit = np.full(n, -1, dtype=np.int64)
    names: list[str] = []
    starts: list[bool] = []
    dropped: list[str] = []
    if donors is not None:
        donors = np.asarray(donors).astype(str)
        used = state >= 0
        missing = used & np.isin(donors, ["", "nan", "None", "<NA>"])
        if missing.any():
            dropped.append(f"{int(missing.sum())} cells without a donor in .obs[{donor_key!r}]")
        tab = pd.crosstab(donors[used & ~missing], state[used & ~missing])
        for s in (0, 1):
            if s not in tab.columns:
                tab[s] = 0
        ok = tab >= min_unit_cells
        paired = tab.index[ok[0] & ok[1]].to_numpy()
        for d in tab.index[(tab[0] + tab[1] > 0) & ~(ok[0] & ok[1]) & (ok[0] | ok[1])]:
            if len(paired) >= 2:
                dropped.append(f"donor {d!r}: fewer than {min_unit_cells} cells in one state")
        if len(paired) >= 2:
            kind = "paired donors"
            for d in paired:
                for s in (1, 0):
                    unit[(donors == d) & (state == s) & ~missing] = len(names)
                    names.append(str(d))
                    starts.append(bool(s))
        else:
            kind = "unpaired donors"
            for d in tab.index:
                if tab.loc[d, 0] > 0 and tab.loc[d, 1] > 0:
                    dropped.append(f"donor {d!r}: in both states but too few cells to pair")
                    continue
                s = 1 if tab.loc[d, 1] > 0 else 0
                if tab.loc[d, s] < min_unit_cells:
                    dropped.append(f"donor {d!r}: fewer than {min_unit_cells} cells")
                    continue
                unit[(donors == d) & (state == s) & ~missing] = len(names)
                names.append(str(d))
                starts.append(bool(s))
        unit_start = np.array(starts, dtype=bool)
        unit_name = np.array(names, dtype=object)
        n_s, n_g = int(unit_start.sum()), int((~unit_start).sum())
        if kind == "paired donors":
            labellings, exhaustive = _paired_labellings(unit_start, unit_name, n_permutations, rng)
            folds = _split_folds(unit_name, rng)
            distinct = 2 ** len(paired)
        else:
            if n_s < 1 or n_g < 1:
                raise TooFewReplicatesError(
                    f".obs[{donor_key!r}]: no donor has >= {min_unit_cells} cells in "
                    f"{'the start' if n_s < 1 else 'the goal'} state; give more cells, lower "
                    "min_unit_cells, or omit --donor-key/donor_key= (cell pseudo-replicates, "
                    "anti-conservative)."
                )
            labellings, exhaustive = _unpaired_labellings(unit_start, n_permutations, rng)
            folds = np.zeros(len(unit_start), dtype=np.int64)
            for s in (True, False):
                m = unit_start == s
                folds[m] = _split_folds(unit_name[m], rng)
            distinct = math.comb(n_s + n_g, n_s)
        if distinct < 20:
            raise TooFewReplicatesError(
                f".obs[{donor_key!r}]: {kind} with {n_s} start and {n_g} goal units allow only "
                f"{distinct} distinct labellings, so no p-value can fall below "
                f"{1 / distinct:.2g}. Give data with more donors (paired: >= 5 donors with "
                f">= {min_unit_cells} cells in both states; unpaired: e.g. >= 3 per state), or "
                "omit --donor-key/donor_key= to test cell pseudo-replicates (anti-conservative "
                "when cells come from few donors)."
            )
        return Design(kind, unit, unit_start, unit_name, labellings, exhaustive, folds, dropped)
    for s in (1, 0):
        idx = rng.permutation(np.flatnonzero(state == s))
        k = min(n_pseudo, len(idx) // max(min_unit_cells, 1))
        if k < 3:
            raise TooFewReplicatesError(
                f"the {'start' if s == 1 else 'goal'} state has {len(idx)} cells; a test over "
                f"cell pseudo-replicates needs >= {3 * min_unit_cells} (3 groups of "
                f">= {min_unit_cells}). Give more cells of that state."
            )
        for r, part in enumerate(np.array_split(idx, k)):
            unit[part] = len(names)
            names.append(f"{'start' if s == 1 else 'goal'}-{r + 1}")
            starts.append(bool(s))
    unit_start = np.array(starts, dtype=bool)
    unit_name = np.array(names, dtype=object)
    labellings, exhaustive = _unpaired_labellings(unit_start, n_permutations, rng)
    folds = np.zeros(len(unit_start), dtype=np.int64)
    for s in (True, False):
        m = unit_start == s
        folds[m] = np.arange(m.sum()) % 2
    return Design(
        "pseudo-replicates", unit, unit_start, unit_name, labellings, exhaustive, folds, dropped
    )


def permutation_pvalues(
    statistic: Callable[[np.ndarray], np.ndarray], labellings: np.ndarray, *, chunk: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Observed statistic (row 0 of ``labellings``) and two-sided permutation p-values.

    ``statistic`` maps a (b, U) block of labellings to a (b, G) block of statistics. p = share of
    labellings, the observed one included, with ``|T| >= |T_observed|`` (NaN where T is NaN).
    """
    obs = statistic(labellings[:1])[0]
    ref = np.abs(obs) * (1 - 1e-9) - 1e-15
    count = np.zeros(len(obs), dtype=np.int64)
    for b in range(0, len(labellings), chunk):
        t = statistic(labellings[b : b + chunk])
        count += (np.abs(np.nan_to_num(t, nan=0.0)) >= ref).sum(0)
    p = count / len(labellings)
    p[~np.isfinite(obs)] = np.nan
    return obs, p


def bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values over the finite p-values (NaN stays NaN)."""
    p = np.asarray(p, dtype=float)
    q = np.full(len(p), np.nan)
    fin = np.isfinite(p)
    if fin.any():
        q[fin] = stats.false_discovery_control(p[fin], method="bh")
    return q


def pseudobulk(
    adata: ad.AnnData,
    unit: np.ndarray,
    n_units: int,
    col_to_vocab: np.ndarray,
    *,
    n_vocab: int,
    layer: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Counts summed per unit in vocabulary order (U, n_vocab) and each unit's library size."""
    src = find_counts(adata, layer)
    counts = np.zeros((n_units, n_vocab), dtype=np.float64)
    lib = np.zeros(n_units, dtype=np.float64)
    for start, block in src.chunks(8192):
        u = unit[start : start + block.shape[0]]
        keep = u >= 0
        if not keep.any():
            continue
        ind = sp.csr_matrix(
            (np.ones(int(keep.sum())), (u[keep], np.flatnonzero(keep))),
            shape=(n_units, block.shape[0]),
        )
        lib += np.asarray(ind @ block.sum(1)).ravel()
        counts += (ind @ to_vocab_columns(sp.csr_matrix(block), col_to_vocab, n_vocab)).toarray()
    return counts, lib


def log_cpm(counts: np.ndarray, lib: np.ndarray) -> np.ndarray:
    """log2(counts per million + 1) per unit."""
    return np.log2(counts / np.maximum(lib, 1.0)[:, None] * 1e6 + 1.0)


def mean_difference(x: np.ndarray, include: np.ndarray | None = None) -> Callable:
    """Statistic for :func:`permutation_pvalues`: mean over goal units - mean over start units."""
    inc = np.ones(x.shape[0], dtype=bool) if include is None else include

    def stat(lab: np.ndarray) -> np.ndarray:
        s = (lab & inc).astype(float)
        g = (~lab & inc).astype(float)
        return g @ x / g.sum(1, keepdims=True) - s @ x / s.sum(1, keepdims=True)

    return stat


def de_ranking(logcpm: np.ndarray, design: Design, *, sign: float = 1.0) -> pd.DataFrame:
    """Pseudobulk DE of each column of ``logcpm`` (U, G) between the states.

    Returns ``de_log2fc`` (mean log2 CPM goal - start over units), ``de_score`` (``sign`` x
    log2fc: larger = more in the direction the perturbation should move the cells), ``de_p``
    (two-sided permutation p over the design's labellings) and ``de_q`` (BH).
    """
    lfc, p = permutation_pvalues(mean_difference(logcpm), design.labellings)
    return pd.DataFrame({"de_log2fc": lfc, "de_score": sign * lfc, "de_p": p, "de_q": bh(p)})
