"""The Perturb-seq setting: each experiment reveals a perturbation's measured expression response.

Pool: the perturbations of a Perturb-seq ``.h5ad`` (single genes and, where the data have them,
pairs ``A+B``), one context (cell line) at a time. The truth of a perturbation is its *effect*:
the mean log1p(CP10k) expression of its cells minus that of the control cells (the
``delta`` of ``lifelm bench perturbation``), and its *magnitude* the L2 norm of that shift over
the measured genes other than its own targets (a CRISPRa target's own induction says nothing
about its downstream response). Hits are the strongest ``top_fraction`` (10 %) of the pool by
magnitude on the full data; with Norman's genetic-interaction map (``gi_map=``) the pairs whose GI
score lies in the map's lower ``synergy_quantile`` (synergistic: the double's growth phenotype is
stronger than the singles predict) are tracked as a second set, ``synergy``.

:class:`PerturbSeqLab` is the assay oracle: an experiment on perturbation ``p`` in round ``r``
draws a bootstrap of ``p``'s cells and a bootstrap of the control cells (seeded by
(seed, round, perturbation)) and returns the difference of their means, so every read-out carries
the data's own cell-to-cell noise and never equals the full-data mean. The loop saves the vectors
as ``responses.npz`` and the magnitude as the round's score.

:class:`ResponseLearner` is the strategy's side: the response-model baselines of
``lifelm bench perturbation`` (:mod:`lifelm.evaluation.baselines.perturbation`: the mean shift
``TrainMean``, ``Linear`` of Ahlmann-Eltze et al. 2025 and ``Additive`` for pairs) refitted every
round on the read-outs of the tested perturbations only (plus the control mean, which every plate
measures). Its predicted magnitude is the ``response`` feature of the loop's surrogate
(``Additive`` where both singles of a pair were tested, else ``Linear``; computed out of fold
for tested perturbations). :func:`response_accuracy` scores those models on the untested pool
after each round against the full data (Pearson of the deltas over all genes, as the benchmark
reports it, and over the top-20 DE genes), next to the mean-shift baseline.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lifelm._core.errors import InputError
from lifelm._core.runfolder import atomic_output
from lifelm.data.cells.perturbation import (
    CONTROL,
    PerturbationData,
    canonical_label,
    components,
    make_condition,
)
from lifelm.evaluation.baselines.perturbation import (
    Additive,
    Linear,
    PerturbationBaseline,
    TrainMean,
)
from lifelm.evaluation.metrics.perturbation import score_predictions, top_de_genes
from lifelm.lab.backends import RoundResult
from lifelm.lab.features import GeneFeatures
from lifelm.lab.screens import Screen

CONTROL_LABELS = ("control", "non-targeting", "ctrl", "NT", "non_targeting")
CONTEXT = "pool"  # the one context of a Perturb-seq pool
MIN_CELLS = 10


@dataclass(frozen=True)
class PerturbScreen(Screen):
    """A Perturb-seq pool: the Screen fields (genes = perturbation labels, scores = magnitudes)
    plus the cells the oracle answers from and the full-data deltas (the truth)."""

    data: PerturbationData | None = field(default=None, compare=False, repr=False)
    truth: np.ndarray | None = field(default=None, compare=False, repr=False)  # (P, G)
    top_fraction: float = 0.1
    notes: tuple[str, ...] = ()

    @property
    def expression_genes(self) -> np.ndarray:
        if self.data is None:
            raise InputError(f"{self.name}: no cells attached")
        return self.data.genes

    def target_indices(self, label: str) -> list[int]:
        """Measured genes that ``label`` targets (left out of its magnitude)."""
        pos = {g: i for i, g in enumerate(self.expression_genes)}
        return [pos[g] for g in components(label) if g in pos]

    def digest(self) -> str:
        h = hashlib.sha256(super().digest().encode())
        if self.data is not None:
            h.update(np.ascontiguousarray(self.data.x).tobytes())
            h.update("\0".join(self.data.perturbation).encode())
        return h.hexdigest()


def magnitude(delta: np.ndarray, exclude: Sequence[int]) -> float:
    """L2 norm of an expression shift over the genes not in ``exclude``."""
    keep = np.ones(delta.shape[-1], dtype=bool)
    keep[list(exclude)] = False
    return float(np.linalg.norm(np.asarray(delta, dtype=np.float64)[keep]))


def _read(path: Path):
    import anndata as ad

    if not path.is_file():
        raise InputError(f"{path}: Perturb-seq file not found")
    try:
        return ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as e:
        raise InputError(f"{path}: not a readable .h5ad ({e})") from None


def read_gi_map(path: str | Path) -> pd.DataFrame:
    """Norman et al. 2019's genetic-interaction map: a square gene × gene CSV of GI scores."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: GI map not found")
    gi = pd.read_csv(path, index_col=0)
    if gi.shape[0] != gi.shape[1] or list(gi.index) != list(gi.columns):
        raise InputError(
            f"{path}: a GI map is a square CSV whose row and column labels are the same genes "
            f"(got {gi.shape[0]} rows × {gi.shape[1]} columns)"
        )
    return gi.apply(pd.to_numeric, errors="coerce")


def synergistic_pairs(
    gi: pd.DataFrame, labels: Sequence[str], *, quantile: float = 0.1
) -> tuple[frozenset[str], float]:
    """Pairs among ``labels`` whose GI score is in the map's lower ``quantile`` (and the cut)."""
    vals = gi.to_numpy(float)[np.triu_indices(len(gi), 1)]
    cut = float(np.nanquantile(vals, quantile))
    found = set()
    for lab in labels:
        parts = components(lab)
        if len(parts) == 2 and all(p in gi.index for p in parts):
            v = gi.loc[parts[0], parts[1]]
            if np.isfinite(v) and v <= cut:
                found.add(lab)
    return frozenset(found), cut


# Long only because of its docstring and signature; the body is under 80 lines.
def load_perturbseq(
    path: str | Path,
    *,
    perturbation_key: str = "perturbation",
    control: Sequence[str] | None = None,
    subset: Mapping[str, str] | None = None,
    top_fraction: float = 0.1,
    gi_map: str | Path | None = None,
    synergy_quantile: float = 0.1,
    min_cells: int = MIN_CELLS,
    name: str | None = None,
) -> PerturbScreen:
    """Read a Perturb-seq ``.h5ad`` (raw counts) into a :class:`PerturbScreen`.

    Parameters
    ----------
    path
        Cells × genes with raw counts in ``X`` (or ``layers['counts']``) and a per-cell
        perturbation label (``A`` or ``A+B``; GEARS' ``A+ctrl`` is read as ``A``).
    perturbation_key
        The ``.obs`` column with the labels.
    control
        Labels of control cells (default: any of ``control``, ``non-targeting``, ``ctrl``, ``NT``).
    subset
        Keep cells with ``obs[key] == value`` for every item (e.g. ``{"dataset": "norman19"}``).
    top_fraction
        Share of the pool that counts as a hit (strongest by magnitude).
    gi_map
        Norman's GI map (``processed_emap.csv``); adds the ``synergy`` set of pairs.
    synergy_quantile
        A pair is synergistic when its GI score is at or below this quantile of the map.
    min_cells
        Perturbations with fewer cells are left out of the pool (named in ``notes``).

    Raises
    ------
    InputError
        A missing column, no control cells, several cell types at once, non-count data, or a
        GI map that holds none of the pool's pairs.
    """
    import scipy.sparse as sp

    path = Path(path)
    adata = _read(path)
    for key, value in (subset or {}).items():
        if key not in adata.obs:
            raise InputError(f"{path}: --subset column {key!r} is not in .obs")
        adata = adata[adata.obs[key].astype(str) == str(value)].copy()
        if adata.n_obs == 0:
            raise InputError(f"{path}: no cell has obs[{key!r}] == {value!r}")
    if perturbation_key not in adata.obs:
        raise InputError(
            f"{path}: .obs has no column {perturbation_key!r} (columns: "
            f"{', '.join(map(str, adata.obs.columns))}); name the per-cell perturbation column "
            "with --perturbation-key"
        )
    for key in ("cell_type", "cell_line"):
        if key in adata.obs and adata.obs[key].nunique() > 1:
            kinds = ", ".join(map(str, adata.obs[key].unique()[:6]))
            raise InputError(
                f"{path}: cells from {adata.obs[key].nunique()} {key}s ({kinds}); a pool is one "
                f"context at a time: choose one with --subset {key}=VALUE"
            )
    controls = tuple(control) if control else CONTROL_LABELS
    raw = adata.obs[perturbation_key].astype(str).str.strip()
    labels = np.array([canonical_label(s, control_values=controls) for s in raw])
    is_ctrl = labels == CONTROL
    if not is_ctrl.any():
        seen = ", ".join(pd.unique(raw)[:8])
        raise InputError(
            f"{path}: no control cells: obs[{perturbation_key!r}] holds none of "
            f"{', '.join(controls)} (values: {seen}, …). A Perturb-seq response is measured "
            "against control cells; name their label with --control LABEL."
        )
    x = adata.layers.get("counts", adata.X)
    vals = x.data if sp.issparse(x) else np.asarray(x)
    if vals.size and (vals.min() < 0 or not np.allclose(vals[:10000], np.round(vals[:10000]))):
        raise InputError(f"{path}: X is not raw counts (negative or non-integer values)")
    adata.X = sp.csr_matrix(x, dtype=np.float32)
    adata.obs["perturbation"] = labels
    adata.obs["context"] = CONTEXT
    data = PerturbationData.from_anndata(adata, name=name or path.stem)
    counts = pd.Series(labels[~is_ctrl]).value_counts()
    pool = sorted(counts.index[counts >= min_cells])
    notes = []
    small = sorted(counts.index[counts < min_cells])
    if small:
        notes.append(f"left out (< {min_cells} cells): {', '.join(small)}")
    if len(pool) < 2:
        raise InputError(f"{path}: {len(pool)} perturbations with ≥ {min_cells} cells; need ≥ 2")
    ctrl_mean = data.control_mean(CONTEXT)
    truth = np.stack([data.cells(make_condition(CONTEXT, p)).mean(0) - ctrl_mean for p in pool])
    pos = {g: i for i, g in enumerate(data.genes)}
    mags = np.array(
        [
            magnitude(truth[i], [pos[g] for g in components(p) if g in pos])
            for i, p in enumerate(pool)
        ]
    )
    if not 0 < top_fraction < 1:
        raise InputError(f"top fraction must be in (0, 1) (got {top_fraction})")
    n_hits = max(1, math.ceil(top_fraction * len(pool)))
    hits = frozenset(np.asarray(pool)[np.argsort(-mags, kind="stable")[:n_hits]].tolist())
    hit_sets: dict[str, frozenset[str]] = {}
    if gi_map is not None:
        gi = read_gi_map(gi_map)
        syn, cut = synergistic_pairs(gi, pool, quantile=synergy_quantile)
        n_pairs_in_map = sum(
            len(components(p)) == 2 and all(g in gi.index for g in components(p)) for p in pool
        )
        if n_pairs_in_map == 0:
            raise InputError(
                f"{gi_map}: none of the pool's pairs is in the GI map; nothing to call synergy on"
            )
        hit_sets["synergy"] = syn
        notes.append(
            f"synergy: GI score ≤ {cut:.3g} (the map's {synergy_quantile:.0%} quantile); "
            f"{len(syn)} of {n_pairs_in_map} pool pairs in the map"
        )
    return PerturbScreen(
        name=name or path.stem,
        genes=np.asarray(pool),
        scores=mags,
        hits=hits,
        direction="up",
        source=str(path),
        hit_source=(
            f"strongest {top_fraction:.0%} of {len(pool)} perturbations by the L2 norm of the "
            "full-data mean expression shift vs control (targets left out)"
        ),
        hit_sets=hit_sets,
        data=data,
        truth=truth,
        top_fraction=top_fraction,
        notes=tuple(notes),
    )


class PerturbSeqLab:
    """Assay oracle over a Perturb-seq pool (see the module docstring); records every query."""

    name = "simulated"

    def __init__(self, screen: PerturbScreen, *, seed: int = 0) -> None:
        if screen.data is None:
            raise InputError(f"{screen.name}: the Perturb-seq lab needs the cells")
        self._screen = screen
        self._data: PerturbationData = screen.data
        self.seed = int(seed)
        self.queried: list[str] = []
        cond = self._data.condition
        self._rows = {
            p: np.flatnonzero(cond == make_condition(CONTEXT, p)) for p in screen.genes.tolist()
        }
        self._ctrl = np.flatnonzero(cond == make_condition(CONTEXT, CONTROL))

    noise_model = "bootstrap of the perturbation's cells minus a bootstrap of the control cells"

    def check_pool(self, genes: Sequence[str]) -> None:
        unknown = [g for g in genes if g not in self._screen.index]
        if unknown:
            raise InputError(
                f"the pool has {len(unknown)} perturbations that {self._screen.name} did not "
                f"measure (e.g. {', '.join(unknown[:5])}); known: "
                f"{', '.join(self._screen.genes[:8])}, … Pairs are written A+B."
            )

    def measure(self, round_index: int, genes: Sequence[str]) -> np.ndarray:
        """(len(genes), G) measured expression shifts (records the query)."""
        self.check_pool(genes)
        self.queried.extend(genes)
        x = self._data.x
        out = np.empty((len(genes), x.shape[1]), dtype=np.float32)
        for k, g in enumerate(genes):
            rows = self._rows[g]
            rng = np.random.default_rng([self.seed, int(round_index), self._screen.index[g]])
            cells = x[rows[rng.integers(len(rows), size=len(rows))]]
            ctrl = x[self._ctrl[rng.integers(len(self._ctrl), size=len(self._ctrl))]]
            out[k] = cells.mean(0) - ctrl.mean(0)
        return out

    def run(self, round_index: int, genes: Sequence[str]) -> RoundResult:
        deltas = self.measure(round_index, genes)
        mags = [
            magnitude(d, self._screen.target_indices(g)) for g, d in zip(genes, deltas, strict=True)
        ]
        table = pd.DataFrame(
            {
                "gene": list(genes),
                "score": mags,
                "n_cells": [len(self._rows[g]) for g in genes],
            }
        )
        protocol = {
            "backend": self.name,
            "round": int(round_index),
            "n_experiments": len(genes),
            "assay": f"Perturb-seq {self._screen.name} ({self._screen.source or 'in memory'})",
            "noise_model": self.noise_model,
            "readout": f"mean log1p(CP10k) shift of {len(self._data.genes)} genes vs control",
            "steps": [{"op": "perturb_and_sequence", "perturbations": list(genes)}],
        }
        log = (
            f"round {round_index}: simulated Perturb-seq on {self._screen.name}\n"
            f"  {len(genes)} perturbations; noise: {self.noise_model}\n"
        )
        arrays = {
            "conditions": np.asarray(genes, dtype=str),
            "delta": deltas,
            "genes": np.asarray(self._data.genes, dtype=str),
        }
        return RoundResult(table=table, protocol=protocol, log=log, arrays=arrays)


# ----------------------------------------------------------------------------- response models


def _observed_data(
    genes: np.ndarray, control_mean: np.ndarray, observed: Mapping[str, np.ndarray]
) -> PerturbationData:
    """A PerturbationData whose only cells are the read-outs: one row per tested perturbation
    (control mean + measured shift) and one control row, so ``deltas`` are the read-outs."""
    labels = [*observed, CONTROL]
    x = np.vstack([control_mean + observed[p] for p in observed] + [control_mean])
    return PerturbationData(
        x=x.astype(np.float32),
        genes=genes,
        perturbation=np.asarray(labels, dtype=str),
        context=np.full(len(labels), CONTEXT),
        name="observed",
    )


def fit_response_models(
    genes: np.ndarray, control_mean: np.ndarray, observed: Mapping[str, np.ndarray]
) -> dict[str, PerturbationBaseline]:
    """The benchmark's baselines fitted on the observed read-outs (≥ 1 needed)."""
    if not observed:
        raise InputError(
            "no read-outs yet: a response model needs at least one tested perturbation"
        )
    data = _observed_data(genes, control_mean, observed)
    train = [make_condition(CONTEXT, p) for p in observed]
    models: dict[str, PerturbationBaseline] = {
        "mean_shift": TrainMean().fit(data, train),
        "additive": Additive().fit(data, train),
    }
    if len(train) >= 2:
        models["linear"] = Linear().fit(data, train)
    return models


def predict_responses(
    models: Mapping[str, PerturbationBaseline], labels: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per method ``(P, G)`` predictions (NaN rows where a method does not apply), plus
    ``lab_model``: additive where both singles were tested, else linear (else the mean shift)."""
    out: dict[str, np.ndarray] = {}
    for name, m in models.items():
        rows = []
        for p in labels:
            d = m.predict_delta(make_condition(CONTEXT, p))
            rows.append(np.full(len(m.data.genes), np.nan) if d is None else np.asarray(d))
        out[name] = np.vstack(rows) if rows else np.zeros((0, 0))
    fallback = out.get("linear", out["mean_shift"])
    add = out["additive"]
    has_add = np.isfinite(add).all(axis=1) if len(add) else np.zeros(0, dtype=bool)
    out["lab_model"] = np.where(has_add[:, None], add, fallback) if len(add) else add
    return out


class ResponseLearner:
    """The strategy's response model: refitted on the read-outs, never on untested cells.

    Features (``response:`` columns): the predicted magnitude of each perturbation and whether
    the additive prediction was available; for tested perturbations the prediction comes from
    models fitted without that perturbation (out of fold), so it says what the model would have
    predicted before the experiment.
    """

    def __init__(
        self, genes: np.ndarray, control_mean: np.ndarray, targets: Mapping[str, list[int]]
    ):
        self.genes = np.asarray(genes, dtype=str)
        self.control_mean = np.asarray(control_mean, dtype=np.float64)
        self._targets = dict(targets)
        self.observed: dict[str, np.ndarray] = {}

    @classmethod
    def for_screen(cls, screen: PerturbScreen) -> ResponseLearner:
        """Public facts of the pool only: gene names, the control mean and each label's targets."""
        if screen.data is None:
            raise InputError(f"{screen.name}: no cells attached")
        targets = {p: screen.target_indices(p) for p in screen.genes.tolist()}
        return cls(screen.data.genes, screen.data.control_mean(CONTEXT), targets)

    def reset(self) -> None:
        self.observed = {}

    def observe(self, round_index: int, arrays: Mapping[str, np.ndarray]) -> None:
        if "delta" not in arrays:
            raise InputError(f"round {round_index}: the lab returned no expression read-outs")
        for p, d in zip(arrays["conditions"].tolist(), arrays["delta"], strict=True):
            self.observed[str(p)] = np.asarray(d, dtype=np.float64)

    def _targets_of(self, p: str) -> list[int]:
        if p in self._targets:
            return self._targets[p]
        pos = {g: i for i, g in enumerate(self.genes)}
        return [pos[g] for g in components(p) if g in pos]

    def _features_for(
        self, labels: Sequence[str], observed: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        if not observed or not labels:
            return np.zeros((len(labels), 2))
        pred = predict_responses(
            fit_response_models(self.genes, self.control_mean, observed), labels
        )
        add_ok = np.isfinite(pred["additive"]).all(axis=1)
        mags = [
            magnitude(d, self._targets_of(p))
            for p, d in zip(labels, pred["lab_model"], strict=True)
        ]
        return np.column_stack([mags, add_ok.astype(float)])

    def features(
        self, train: Sequence[str], pool: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        seen = {p: self.observed[p] for p in train if p in self.observed}
        x_pool = self._features_for(list(pool), seen)
        x_train = (
            np.vstack(
                [self._features_for([p], {q: v for q, v in seen.items() if q != p}) for p in train]
            )
            if len(train)
            else np.zeros((0, 2))
        )
        return x_train, x_pool, ("response:predicted_magnitude", "response:additive_available")


def perturbation_features(
    screen: PerturbScreen, gene_features: GeneFeatures | None = None
) -> GeneFeatures:
    """Static features per perturbation: the number of targets, plus the mean row of its target
    genes in ``gene_features`` (e.g. co-expression in another dataset, cell-model embeddings)."""
    labels = screen.genes.tolist()
    cols = ["perturbation:n_targets"]
    mat = [np.array([[len(components(p))] for p in labels], dtype=float)]
    if gene_features is not None and gene_features.matrix.shape[1]:
        rows = [gene_features.align(components(p)).mean(axis=0) for p in labels]
        mat.append(np.vstack(rows))
        cols += list(gene_features.columns)
    return GeneFeatures(np.asarray(labels), np.hstack(mat), tuple(cols))


# ----------------------------------------------------------------------------- evaluation


def response_accuracy(
    screen: PerturbScreen, rounds: Sequence[Mapping[str, np.ndarray]], *, k: int = 20
) -> pd.DataFrame:
    """After each round: the response models (refitted on the read-outs so far) scored on the
    untested pool against the full data. One row per (round, method), mean over untested
    perturbations of ``pearson`` (delta, all genes), ``pearson_de`` (top-``k`` DE genes), ``mse``."""
    if screen.data is None or screen.truth is None:
        raise InputError(f"{screen.name}: response accuracy needs the cells")
    data = screen.data
    ctrl = data.control_cells(CONTEXT)
    labels = screen.genes.tolist()
    de = {p: top_de_genes(data.cells(make_condition(CONTEXT, p)), ctrl, k) for p in labels}
    learner = ResponseLearner.for_screen(screen)
    rows = []
    for r, arrays in enumerate(rounds):
        learner.observe(r, arrays)
        untested = [p for p in labels if p not in learner.observed]
        if not untested:
            break
        preds = predict_responses(
            fit_response_models(learner.genes, learner.control_mean, learner.observed), untested
        )
        idx = [screen.index[p] for p in untested]
        for method, pred in preds.items():
            ok = np.isfinite(pred).all(axis=1)
            if not ok.any():
                continue
            sc = score_predictions(
                pred[ok],
                screen.truth[np.asarray(idx)[ok]],
                [de[p] for p, o in zip(untested, ok, strict=True) if o],
                exclude=[screen.target_indices(p) for p, o in zip(untested, ok, strict=True) if o],
            )
            rows.append(
                {
                    "round": r,
                    "n_tested": len(learner.observed),
                    "method": method,
                    "n_scored": int(ok.sum()),
                    "n_untested": len(untested),
                    **{m: float(np.nanmean(sc[m])) for m in ("pearson", "pearson_de", "mse")},
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "round",
            "n_tested",
            "method",
            "n_scored",
            "n_untested",
            "pearson",
            "pearson_de",
            "mse",
        ],
    )


def write_response_accuracy(
    screen: PerturbScreen, out: str | Path, rounds: Sequence[Mapping[str, np.ndarray]]
) -> Path:
    """:func:`response_accuracy` written to ``OUT/response_accuracy.csv``."""
    target = Path(out) / "response_accuracy.csv"
    with atomic_output(target) as tmp:
        response_accuracy(screen, rounds).to_csv(tmp, index=False)
    return target
