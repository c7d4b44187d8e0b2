"""Norman et al. 2019's genetic-interaction map as a pair screen: find the synergistic pairs.

Pool: every pair of genes in the map (``processed_emap.csv``: 112 genes, 6,216 pairs), labelled
``A+B`` (sorted). An experiment reveals that pair's GI score from the map. The map is a
processed, replicate-combined table, so the simulated lab reveals the published score exactly
(``noise_sd`` adds measurement noise as in the screen setting). Hits: the synergistic pairs, GI
score at or below the map's ``quantile`` (10 %: GI ≤ −2.29), sought with ``direction="down"``.

Features of a pair:

* static (``perturbation`` source): the growth phenotypes of its two single perturbations from the
  same screen (``single_fitnesses.csv``; measured before any pair): sum, min, max, |difference|
  and a flag for pairs whose singles are both in the table;
* per round (``response`` source, :class:`PairProfileLearner`): for each of the two genes, the
  mean GI score over the tested pairs that contain it, the share of those in the lowest 20 % of
  all scores observed so far, and their number; combined symmetrically (sum and extreme). For a
  tested pair its own score is left out, so the feature says what was known before the test.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lifelm._core.errors import InputError
from lifelm.lab.features import GeneFeatures
from lifelm.lab.perturbseq import read_gi_map
from lifelm.lab.screens import Screen


def load_gi_screen(path: str | Path, *, quantile: float = 0.1, name: str | None = None) -> Screen:
    """Every pair of a GI map as a screen whose hits are its synergistic pairs."""
    gi = read_gi_map(path)
    genes = [str(g) for g in gi.index]
    iu = np.triu_indices(len(genes), 1)
    vals = gi.to_numpy(float)[iu]
    labels = np.array(["+".join(sorted((genes[i], genes[j]))) for i, j in zip(*iu, strict=True)])
    ok = np.isfinite(vals)
    if ok.sum() < 10:
        raise InputError(f"{path}: fewer than 10 finite GI scores")
    if not 0 < quantile < 1:
        raise InputError(f"synergy quantile must be in (0, 1) (got {quantile})")
    cut = float(np.quantile(vals[ok], quantile))
    hits = frozenset(labels[ok & (vals <= cut)].tolist())
    return Screen(
        name=name or Path(path).stem,
        genes=labels[ok],
        scores=vals[ok],
        hits=hits,
        direction="down",
        source=str(path),
        hit_source=f"synergistic pairs: GI score ≤ {cut:.3g} (the map's {quantile:.0%} quantile)",
    )


def read_single_phenotypes(path: str | Path) -> pd.Series:
    """Single-perturbation phenotypes: a CSV whose first column is the gene and second the value."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: single-phenotype table not found")
    df = pd.read_csv(path)
    if df.shape[1] < 2:
        raise InputError(f"{path}: needs a gene column and a value column")
    vals = pd.to_numeric(df.iloc[:, 1], errors="coerce")
    return pd.Series(vals.to_numpy(float), index=df.iloc[:, 0].astype(str)).dropna()


def pair_features(screen: Screen, singles: pd.Series | None = None) -> GeneFeatures:
    """Static pair features from the two singles' phenotypes (see the module docstring)."""
    labels = screen.genes.tolist()
    cols = ("perturbation:singles_known", "perturbation:single_sum", "perturbation:single_min",
            "perturbation:single_max", "perturbation:single_absdiff")  # fmt: skip
    mat = np.zeros((len(labels), len(cols)))
    if singles is not None:
        s = singles[~singles.index.duplicated()]
        for k, lab in enumerate(labels):
            a, b = lab.split("+")
            if a in s.index and b in s.index:
                va, vb = float(s[a]), float(s[b])
                mat[k] = (1.0, va + vb, min(va, vb), max(va, vb), abs(va - vb))
    return GeneFeatures(np.asarray(labels), mat, cols)


class PairProfileLearner:
    """Per-round pair features from the GI scores observed so far (see the module docstring)."""

    names = (
        "response:profile_mean_sum",
        "response:profile_mean_min",
        "response:profile_low_share_sum",
        "response:profile_low_share_max",
        "response:profile_count_sum",
    )

    def __init__(self) -> None:
        self.observed: dict[str, float] = {}

    def reset(self) -> None:
        self.observed = {}

    def observe(self, round_index: int, arrays: Mapping[str, np.ndarray]) -> None:
        if "tested" not in arrays or "score" not in arrays:
            raise InputError(f"round {round_index}: no tested pairs and scores to learn from")
        for g, v in zip(arrays["tested"].tolist(), arrays["score"].tolist(), strict=True):
            self.observed[str(g)] = float(v)

    def features(
        self, train: Sequence[str], pool: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        seen = {g: self.observed[g] for g in train if g in self.observed}
        low = float(np.quantile(list(seen.values()), 0.2)) if seen else 0.0
        total: dict[str, float] = defaultdict(float)
        count: dict[str, int] = defaultdict(int)
        n_low: dict[str, int] = defaultdict(int)
        for lab, v in seen.items():
            for g in lab.split("+"):
                total[g] += v
                count[g] += 1
                n_low[g] += int(v <= low)

        def rows(labels: Sequence[str], leave_out: bool) -> np.ndarray:
            out = np.zeros((len(labels), len(self.names)))
            for k, lab in enumerate(labels):
                own = seen.get(lab) if leave_out else None
                means, shares, counts = [], [], []
                for g in lab.split("+"):
                    t, c, lo = total[g], count[g], n_low[g]
                    if own is not None:
                        t, c, lo = t - own, c - 1, lo - int(own <= low)
                    means.append(t / c if c else 0.0)
                    shares.append(lo / c if c else 0.0)
                    counts.append(c)
                out[k] = (sum(means), min(means), sum(shares), max(shares), sum(counts))
            return out

        return rows(list(train), True), rows(list(pool), False), self.names
