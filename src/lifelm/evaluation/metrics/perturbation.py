"""Metrics for perturbation response prediction: pure functions over arrays (numpy/scipy only).

All expression inputs are log1p(CP10k). A *delta* is a perturbed pseudobulk minus the control
pseudobulk of the same context. No score is clipped at a baseline: a model worse than "no change"
gets a worse number, not zero.

- ``mse`` / ``pearson`` on deltas, over all genes or over the top-k DE genes of the truth;
- ``top_de_genes``: top-k genes by |Welch t| of perturbed vs control cells;
- ``de_overlap``: share of the true top-k DE genes among the predicted top-k (by |predicted delta|);
- ``discrimination_score``: for each perturbation, 1 - (rank of the true effect among all true
  effects, by L1 distance to the predicted effect) / n, as in ArcInstitute's cell-eval
  (1 is best, 1/n worst; 0.5 + 1/(2n) on average for a constant prediction that ties everything);
- ``energy_distance``: between predicted and real cells (Szekely & Rizzo), for distributions;
- ``noise_ceiling``: the same metrics when one random half of the real perturbed cells predicts
  the other half; what a perfect model could reach given measurement noise.

References: Ahlmann-Eltze, Huber & Anders, Nat Methods 2025; Wu et al. 2024 (PerturBench);
ArcInstitute cell-eval (discrimination score, energy distance definitions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import pearsonr, ttest_ind


def mse(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean squared error between two (G,) vectors.

    Examples
    --------
    >>> mse(np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    2.5
    """
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    return float(np.mean((pred - true) ** 2))


def pearson(pred: np.ndarray, true: np.ndarray) -> float:
    """Pearson r between two (G,) vectors; NaN when either is constant (e.g. a zero delta).

    Examples
    --------
    >>> round(pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0])), 4)
    0.9934
    """
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.size < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return float("nan")
    return float(pearsonr(pred, true).statistic)


def top_de_genes(pert_cells: np.ndarray, ctrl_cells: np.ndarray, k: int = 20) -> np.ndarray:
    """Indices of the top-k genes by |Welch t| of perturbed (n, G) vs control (m, G) cells.

    Genes with no variance in either group get t = 0 (they cannot be called).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t = ttest_ind(pert_cells, ctrl_cells, axis=0, equal_var=False).statistic
    t = np.nan_to_num(np.abs(np.asarray(t, dtype=np.float64)), nan=0.0, posinf=0.0)
    return np.argsort(-t, kind="stable")[: min(k, t.size)]


def de_overlap(pred_delta: np.ndarray, true_de: np.ndarray) -> float:
    """Share of the true DE genes found among the predicted top-k genes by |predicted delta|.

    ``k`` is ``len(true_de)``. A constant prediction ranks genes arbitrarily (index order).

    Examples
    --------
    >>> de_overlap(np.array([0.0, 3.0, -2.0, 0.1]), np.array([1, 3]))
    0.5
    """
    k = len(true_de)
    top = np.argsort(-np.abs(np.asarray(pred_delta)), kind="stable")[:k]
    return len(set(top.tolist()) & set(np.asarray(true_de).tolist())) / max(k, 1)


def discrimination_score(
    pred_deltas: np.ndarray,
    true_deltas: np.ndarray,
    exclude: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """Per-perturbation discrimination: can the prediction pick its own perturbation out?

    Parameters
    ----------
    pred_deltas, true_deltas
        (P, G) predicted and real effects, row i of both is perturbation i.
    exclude
        Per perturbation, gene indices left out of the distance (its target genes, whose
        knock-down or activation is trivially predictable).

    Returns
    -------
    (P,) ``1 - rank / P`` where rank counts real effects strictly closer (L1) than the true one;
    ties count half, so a constant prediction scores about the middle rather than the top.
    """
    pred_deltas, true_deltas = np.asarray(pred_deltas), np.asarray(true_deltas)
    n, g = true_deltas.shape
    out = np.empty(n)
    for i in range(n):
        mask = np.ones(g, dtype=bool)
        if exclude is not None:
            mask[np.asarray(exclude[i], dtype=int)] = False
        d = np.abs(true_deltas[:, mask] - pred_deltas[i, mask]).sum(axis=1)  # (P,)
        closer = np.sum(d < d[i]) + 0.5 * (np.sum(d == d[i]) - 1)
        out[i] = 1.0 - closer / n
    return out


def energy_distance(x: np.ndarray, y: np.ndarray, *, max_cells: int = 500, seed: int = 0) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` between (n, D) and (m, D) point clouds.

    Euclidean; each cloud is subsampled to ``max_cells`` rows (seeded) to bound the cost.
    The within-cloud means leave out the zero diagonal (the U-statistic), so that the value does
    not grow as clouds get smaller; cell-eval's ``edistance`` keeps the diagonal.

    Examples
    --------
    >>> energy_distance(np.zeros((3, 2)), np.zeros((4, 2)))
    0.0
    """
    rng = np.random.default_rng(seed)

    def _sub(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        return a[rng.choice(len(a), max_cells, replace=False)] if len(a) > max_cells else a

    x, y = _sub(x), _sub(y)

    def _within(a: np.ndarray) -> float:
        n = len(a)
        return float(cdist(a, a).sum() / (n * (n - 1))) if n > 1 else 0.0

    return float(2 * cdist(x, y).mean() - _within(x) - _within(y))


def score_predictions(
    pred_deltas: np.ndarray,
    true_deltas: np.ndarray,
    de_genes: Sequence[np.ndarray],
    *,
    exclude: Sequence[Sequence[int]] | None = None,
) -> dict[str, np.ndarray]:
    """All pseudobulk metrics for P test perturbations.

    Parameters
    ----------
    pred_deltas, true_deltas
        (P, G) predicted and real effects.
    de_genes
        Per perturbation, the true top-k DE gene indices (see ``top_de_genes``).
    exclude
        Per perturbation, gene indices the discrimination score leaves out.

    Returns
    -------
    Metric name -> (P,) values: ``mse``, ``pearson``, ``mse_de``, ``pearson_de``, ``de_overlap``,
    ``discrimination``.
    """
    pred_deltas, true_deltas = np.atleast_2d(pred_deltas), np.atleast_2d(true_deltas)
    if pred_deltas.shape != true_deltas.shape:
        raise ValueError(
            f"pred {pred_deltas.shape} and true {true_deltas.shape} deltas differ in shape"
        )
    out = {
        "mse": np.array([mse(p, t) for p, t in zip(pred_deltas, true_deltas, strict=True)]),
        "pearson": np.array([pearson(p, t) for p, t in zip(pred_deltas, true_deltas, strict=True)]),
        "mse_de": np.array(
            [mse(p[d], t[d]) for p, t, d in zip(pred_deltas, true_deltas, de_genes, strict=True)]
        ),
        "pearson_de": np.array(
            [
                pearson(p[d], t[d])
                for p, t, d in zip(pred_deltas, true_deltas, de_genes, strict=True)
            ]
        ),
        "de_overlap": np.array(
            [de_overlap(p, d) for p, d in zip(pred_deltas, de_genes, strict=True)]
        ),
    }
    out["discrimination"] = (
        discrimination_score(pred_deltas, true_deltas, exclude)
        if len(pred_deltas) > 1
        else np.full(len(pred_deltas), np.nan)
    )
    return out


def noise_ceiling(
    pert_cells: Sequence[np.ndarray],
    ctrl_cells: Sequence[np.ndarray],
    *,
    k: int = 20,
    n_boot: int = 5,
    embed: Sequence[np.ndarray] | None = None,
    exclude: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Metrics when half of the real perturbed cells predicts the other half (bootstrap mean).

    Parameters
    ----------
    pert_cells, ctrl_cells
        Per test perturbation, its (n_i, G) perturbed cells and the (m_i, G) control cells of its
        context.
    k
        Number of DE genes (chosen on the held-out half, as for a model).
    n_boot
        Number of random half splits averaged.
    embed
        Optional per-perturbation (n_i, D) embedded cells (rows aligned to ``pert_cells``) for
        the energy distance; omitted when ``None``.
    exclude
        As in ``score_predictions``.
    seed
        Seeds the half splits.

    Returns
    -------
    Metric name -> (P,) values averaged over splits, plus ``energy`` when ``embed`` is given.
    The truth is a half, so noisier than the full data a model is scored on: the ceiling is
    conservative (a perfect model could score a little better).
    """
    rng = np.random.default_rng(seed)
    runs: list[dict[str, np.ndarray]] = []
    for b in range(n_boot):
        preds, trues, des, energies = [], [], [], []
        for i, (p, c) in enumerate(zip(pert_cells, ctrl_cells, strict=True)):
            if len(p) < 4:
                raise ValueError(f"noise_ceiling: perturbation {i} has {len(p)} cells; need >= 4")
            perm = rng.permutation(len(p))
            a, bb = perm[: len(p) // 2], perm[len(p) // 2 :]
            cm = c.mean(axis=0)
            preds.append(p[a].mean(axis=0) - cm)
            trues.append(p[bb].mean(axis=0) - cm)
            des.append(top_de_genes(p[bb], c, k))
            if embed is not None:
                energies.append(energy_distance(embed[i][a], embed[i][bb], seed=seed + b))
        res = score_predictions(np.stack(preds), np.stack(trues), des, exclude=exclude)
        if embed is not None:
            res["energy"] = np.array(energies)
        runs.append(res)
    return {key: np.mean([r[key] for r in runs], axis=0) for key in runs[0]}
