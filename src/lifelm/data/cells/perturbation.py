"""Perturbation datasets in one schema, log1p(CP10k) pseudobulks, and seeded, saved splits.

Every loader returns an AnnData whose ``.X`` holds raw counts and whose ``.obs`` carries:

- ``perturbation``: ``"control"`` for control cells, a gene symbol for a single perturbation,
  ``"A+B"`` for a combination (sorted, so ``B+A`` and ``A+B`` are one condition) and a stimulus
  name (e.g. ``"IFNB"``) for a chemical or cytokine treatment;
- ``context``: the cell type, cell line or other context the perturbation was applied in;
- ``is_control``: bool.

``.uns["perturbation_schema"]`` records the stimuli (labels that are not gene targets) and the
source file. A *condition* is the pair ``(context, perturbation)``, written ``"context|pert"``.

Splits hold out whole conditions, never cells of a condition, so that a test condition's cells
are never seen in training:

- ``unseen_single``: a fraction of single perturbations is held out; combinations that contain a
  held-out gene are dropped from training too (they would leak the held-out effect).
- ``unseen_combo``: combinations whose singles are all in training are held out (a fraction).
- ``unseen_context``: every perturbed condition of one context is held out (Kang: one cell
  type's stimulated cells). The context's control cells stay in training: a user has them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

CONTROL = "control"
SEP = "|"  # joins context and perturbation into a condition id
SplitKind = Literal["unseen_single", "unseen_combo", "unseen_context"]
Preset = Literal["perturbench", "papalexi", "gears", "kang"]  # read_perturbation's layouts
GEARS_CONTROL = "ctrl"


# ----------------------------------------------------------------------------- schema


def canonical_label(label: str, *, control_values: Sequence[str] = (CONTROL,)) -> str:
    """Map a raw label to the schema: ``control``, ``A`` or sorted ``A+B``.

    GEARS writes singles as ``A+ctrl`` or ``ctrl+A`` and controls as ``ctrl``; both map here.

    Examples
    --------
    >>> canonical_label("ctrl+KLF1", control_values=("ctrl",))
    'KLF1'
    >>> canonical_label("MAPK1+CNN1")
    'CNN1+MAPK1'
    """
    label = str(label).strip()
    controls = {*control_values, CONTROL, GEARS_CONTROL}
    if label in controls:
        return CONTROL
    parts = [p for p in label.split("+") if p and p not in controls]
    if not parts:
        return CONTROL
    return "+".join(sorted(set(parts)))


def components(label: str) -> list[str]:
    """The parts of a label (``[]`` for control)."""
    return [] if label == CONTROL else label.split("+")


# Long only because of its docstring and signature; the body is under 80 lines.
def standardize(
    adata: ad.AnnData,
    *,
    perturbation_key: str,
    control_values: Sequence[str],
    context_key: str | None = None,
    context: str = "default",
    stimuli: Sequence[str] = (),
    stimulus_rename: dict[str, str] | None = None,
    counts_layer: str | None = None,
    source: str = "<memory>",
) -> ad.AnnData:
    """Write ``perturbation``, ``context`` and ``is_control`` into a copy of ``adata``.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``.X`` (or in ``layers[counts_layer]``).
    perturbation_key
        ``.obs`` column with the raw perturbation label.
    control_values
        Raw labels that mean "control" (e.g. ``("ctrl",)`` or ``("non-targeting",)``).
    context_key
        ``.obs`` column with the cell type / cell line; ``None`` uses ``context`` for all cells.
    context
        The context name used when ``context_key`` is ``None``.
    stimuli
        Canonical labels that are treatments, not gene targets (e.g. ``("IFNB",)``).
    stimulus_rename
        Raw label -> stimulus name (e.g. ``{"stim": "IFNB"}``).
    counts_layer
        Layer holding raw counts; it is moved into ``.X``.
    source
        File name recorded in ``.uns`` and in error messages.

    Returns
    -------
    AnnData with raw integer counts in ``.X`` and the schema columns in ``.obs``.
    """
    if perturbation_key not in adata.obs:
        raise KeyError(
            f"{source}: .obs has no column {perturbation_key!r} (columns: {list(adata.obs.columns)}); "
            "pass perturbation_key= naming the per-cell perturbation label"
        )
    if context_key is not None and context_key not in adata.obs:
        raise KeyError(
            f"{source}: .obs has no column {context_key!r}; pass context_key=None for a single context"
        )
    out = adata.copy()
    if counts_layer is not None:
        if counts_layer not in out.layers:
            raise KeyError(f"{source}: no layer {counts_layer!r}; raw counts are needed")
        out.X = out.layers[counts_layer]
    x = out.X
    vals = x.data if sp.issparse(x) else np.asarray(x)
    if vals.size and (vals.min() < 0 or not np.allclose(vals[:10000], np.round(vals[:10000]))):
        raise ValueError(
            f"{source}: X is not raw counts (negative or non-integer values); "
            "pass counts_layer= naming the raw-count layer"
        )
    out.X = sp.csr_matrix(x, dtype=np.float32)
    rename = stimulus_rename or {}
    raw = out.obs[perturbation_key].astype(str).map(lambda s: rename.get(s, s))
    labels = [canonical_label(s, control_values=control_values) for s in raw]
    out.obs["perturbation"] = pd.Categorical(labels)
    if context_key is None:
        out.obs["context"] = pd.Categorical([context] * out.n_obs)
    else:
        ctx = out.obs[context_key].astype(str)
        if ctx.isin(["nan", "None", ""]).any():
            bad = int(ctx.isin(["nan", "None", ""]).sum())
            raise ValueError(f"{source}: {bad} cells have no {context_key!r}; drop or label them")
        out.obs["context"] = pd.Categorical(ctx)
    out.obs["is_control"] = out.obs["perturbation"].astype(str) == CONTROL
    if not out.obs["is_control"].any():
        raise ValueError(
            f"{source}: no control cells (control_values={list(control_values)} matched nothing in "
            f"{perturbation_key!r}); pass the label your controls carry"
        )
    out.var_names_make_unique()
    out.uns["perturbation_schema"] = {"stimuli": list(stimuli), "source": source}
    return out


PRESETS: dict[str, dict] = {
    # PerturBench devel file: Norman 2019 CRISPRa (k562) + McFaline-Figueroa CRISPRi (3 lines)
    "perturbench": {
        "perturbation_key": "perturbation",
        "control_values": ("control",),
        "context_key": "cell_type",
    },
    "papalexi": {"perturbation_key": "perturbation", "control_values": ("non-targeting",)},
    "gears": {
        "perturbation_key": "condition",
        "control_values": ("ctrl",),
        "context_key": "cell_type",
        "counts_layer": "counts",
    },
    "kang": {
        "perturbation_key": "condition",
        "control_values": ("ctrl",),
        "context_key": "cell_type",
        "stimuli": ("IFNB",),
        "stimulus_rename": {"stim": "IFNB"},
    },
}


def read_perturbation(
    path: str | Path,
    preset: Preset,
    *,
    subset: dict[str, str] | None = None,
) -> ad.AnnData:
    """Read an ``.h5ad`` and put it into the schema with a named preset.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    preset
        Column conventions of the source (see ``PRESETS``).
    subset
        Keep cells whose ``.obs[key] == value`` for every item (e.g. ``{"dataset": "norman19"}``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (see shared/data/singlecell/README.md)")
    if preset not in PRESETS:
        raise ValueError(f"{path}: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    adata = ad.read_h5ad(path)
    for key, value in (subset or {}).items():
        if key not in adata.obs:
            raise KeyError(f"{path}: subset column {key!r} not in .obs")
        adata = adata[adata.obs[key].astype(str) == value].copy()
    return standardize(adata, source=str(path), **PRESETS[preset])


# ----------------------------------------------------------------------------- normalisation


def log1p_cp10k(x: np.ndarray | sp.spmatrix) -> np.ndarray:
    """``log1p(count / total * 1e4)`` per cell, dense float32 (cells x genes)."""
    x = sp.csr_matrix(x, dtype=np.float64)
    totals = np.asarray(x.sum(axis=1)).ravel()
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(np.asarray(sp.diags(scale) @ x.todense())).astype(np.float32)


@dataclass
class PerturbationData:
    """Normalised cells of one dataset, grouped by condition (the form baselines and metrics take).

    Attributes
    ----------
    x
        (N, G) log1p(CP10k) expression.
    genes
        (G,) gene symbols.
    perturbation, context
        (N,) per-cell labels.
    stimuli
        Labels that are treatments, not gene targets.
    counts
        (N, G) raw counts (sparse), kept for models that tokenize counts.
    """

    x: np.ndarray
    genes: np.ndarray
    perturbation: np.ndarray
    context: np.ndarray
    stimuli: tuple[str, ...] = ()
    counts: sp.csr_matrix | None = None
    name: str = "dataset"

    @classmethod
    def from_anndata(cls, adata: ad.AnnData, *, name: str = "dataset") -> PerturbationData:
        """Normalise a schema AnnData (see ``standardize``)."""
        for col in ("perturbation", "context"):
            if col not in adata.obs:
                raise KeyError(
                    f"{name}: .obs[{col!r}] missing; run standardize/read_perturbation first"
                )
        schema = adata.uns.get("perturbation_schema", {})
        return cls(
            x=log1p_cp10k(adata.X),
            genes=np.asarray(adata.var_names, dtype=str),
            perturbation=adata.obs["perturbation"].astype(str).to_numpy(),
            context=adata.obs["context"].astype(str).to_numpy(),
            stimuli=tuple(schema.get("stimuli", ())),
            counts=sp.csr_matrix(adata.X),
            name=name,
        )

    @property
    def condition(self) -> np.ndarray:
        """(N,) ``context|perturbation`` per cell."""
        return np.char.add(
            np.char.add(self.context.astype(str), SEP), self.perturbation.astype(str)
        )

    def conditions(self, *, include_control: bool = False) -> list[str]:
        """Sorted condition ids."""
        cond = np.unique(self.condition)
        if include_control:
            return cond.tolist()
        return [c for c in cond.tolist() if split_condition(c)[1] != CONTROL]

    def cells(self, condition: str) -> np.ndarray:
        """(n, G) cells of one condition."""
        idx = np.flatnonzero(self.condition == condition)
        if idx.size == 0:
            raise KeyError(f"{self.name}: no cells for condition {condition!r}")
        return self.x[idx]

    def control_cells(self, context: str) -> np.ndarray:
        """(n, G) control cells of one context."""
        return self.cells(make_condition(context, CONTROL))

    def control_mean(self, context: str) -> np.ndarray:
        """(G,) mean control expression of a context."""
        return self.control_cells(context).mean(axis=0)

    def pseudobulk(self, conditions: Sequence[str]) -> np.ndarray:
        """(C, G) mean expression per condition."""
        return np.stack([self.cells(c).mean(axis=0) for c in conditions])

    def deltas(self, conditions: Sequence[str]) -> np.ndarray:
        """(C, G) pseudobulk minus the control mean of the condition's context."""
        return np.stack(
            [
                self.cells(c).mean(axis=0) - self.control_mean(split_condition(c)[0])
                for c in conditions
            ]
        )


def make_condition(context: str, perturbation: str) -> str:
    """``context|perturbation``."""
    return f"{context}{SEP}{perturbation}"


def split_condition(condition: str) -> tuple[str, str]:
    """``context|perturbation`` -> ``(context, perturbation)``."""
    context, _, pert = condition.rpartition(SEP)
    return context, pert


# ----------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class PerturbationSplit:
    """Which conditions train and which test. Control cells of every context are always in train."""

    dataset: str  # dataset name the split was made for
    kind: str  # unseen_single | unseen_combo | unseen_context
    seed: int  # RNG seed that chose the held-out conditions
    train: tuple[str, ...]  # perturbed condition ids used for fitting
    test: tuple[str, ...]  # held-out condition ids scored
    dropped: tuple[str, ...] = ()  # conditions in neither (they would leak a test effect)
    note: str = ""  # what was held out, in words
    meta: dict = field(default_factory=dict)  # e.g. the held-out context

    def save(self, path: str | Path) -> Path:
        """Write the split as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> PerturbationSplit:
        """Read a split written by ``save``."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            return cls(
                **{
                    **d,
                    "train": tuple(d["train"]),
                    "test": tuple(d["test"]),
                    "dropped": tuple(d.get("dropped", ())),
                }
            )
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{path}: not a perturbation split JSON ({err}); re-create it with make_split"
            ) from err


# Long only because of its docstring and signature; the body is under 80 lines.
def make_split(
    data: PerturbationData,
    kind: SplitKind,
    *,
    seed: int = 0,
    test_fraction: float = 0.25,
    context: str | None = None,
) -> PerturbationSplit:
    """Hold out conditions of one kind; the choice is a function of ``seed`` only.

    Parameters
    ----------
    data
        The dataset.
    kind
        ``unseen_single``, ``unseen_combo`` or ``unseen_context`` (see module docstring).
    seed
        Seeds the choice of held-out perturbations (or, for ``unseen_context``, which context).
    test_fraction
        Fraction of eligible perturbations held out (at least one).
    context
        For ``unseen_context``: hold out this context instead of a seeded choice.
    """
    rng = np.random.default_rng(seed)
    conds = data.conditions()
    pairs = [split_condition(c) for c in conds]
    if kind == "unseen_single":
        singles = sorted({p for _, p in pairs if "+" not in p and p not in data.stimuli})
        if len(singles) < 2:
            raise ValueError(
                f"{data.name}: unseen_single needs >= 2 single perturbations, has {len(singles)}"
            )
        n = min(len(singles) - 1, max(1, round(test_fraction * len(singles))))
        held = set(rng.choice(singles, size=n, replace=False).tolist())
        test = [c for c, (_, p) in zip(conds, pairs, strict=True) if p in held]
        dropped = [
            c
            for c, (_, p) in zip(conds, pairs, strict=True)
            if "+" in p and held & set(components(p))
        ]
        note = f"held-out singles: {sorted(held)}"
        meta = {"held_out": sorted(held)}
    elif kind == "unseen_combo":
        single_set = {(ctx, p) for ctx, p in pairs if "+" not in p}
        eligible = sorted(
            {
                p
                for ctx, p in pairs
                if "+" in p and all((ctx, g) in single_set for g in components(p))
            }
        )
        if not eligible:
            raise ValueError(f"{data.name}: no combination has all its singles measured")
        n = max(1, round(test_fraction * len(eligible)))
        held = set(rng.choice(eligible, size=n, replace=False).tolist())
        test = [c for c, (_, p) in zip(conds, pairs, strict=True) if p in held]
        dropped = []
        note = f"held-out combos (singles seen): {sorted(held)}"
        meta = {"held_out": sorted(held)}
    elif kind == "unseen_context":
        ctxs = sorted({ctx for ctx, _ in pairs})
        if len(ctxs) < 2:
            raise ValueError(f"{data.name}: unseen_context needs >= 2 contexts with perturbations")
        if context is None:
            order = (
                rng.permutation(len(ctxs))
                if seed >= len(ctxs)
                else np.roll(np.arange(len(ctxs)), -seed)
            )
            context = ctxs[int(order[0])]
        elif context not in ctxs:
            raise ValueError(f"{data.name}: context {context!r} not among {ctxs}")
        test = [c for c, (ctx, _) in zip(conds, pairs, strict=True) if ctx == context]
        dropped = []
        note = f"held-out context: {context}"
        meta = {"held_out": [context]}
    else:
        raise ValueError(
            f"unknown split kind {kind!r}; use unseen_single, unseen_combo or unseen_context"
        )
    test_set, drop_set = set(test), set(dropped)
    train = [c for c in conds if c not in test_set and c not in drop_set]
    if not train:
        raise ValueError(
            f"{data.name}: split {kind} (seed {seed}) leaves no training perturbations"
        )
    return PerturbationSplit(
        dataset=data.name,
        kind=kind,
        seed=seed,
        train=tuple(train),
        test=tuple(sorted(test)),
        dropped=tuple(sorted(dropped)),
        note=note,
        meta=meta,
    )


def synthetic_perturbation(
    *,
    n_genes: int = 60,
    singles: Sequence[str] = ("G0", "G1", "G2", "G3", "G4", "G5"),
    combos: Sequence[str] = ("G0+G1", "G2+G3", "G4+G5"),
    contexts: Sequence[str] = ("A", "B"),
    cells_per_condition: int = 40,
    seed: int = 0,
) -> ad.AnnData:
    """A tiny perturbation dataset with known, additive effects (for tests and demos).

    Gene ``Gi`` is gene ``i`` of the matrix; perturbing it raises that gene and a few genes in a
    fixed program; combinations add the single effects; contexts shift the baseline. Counts are
    Poisson. Returns schema AnnData (``standardize`` already applied).
    """
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(n_genes)]
    base = rng.gamma(2.0, 2.0, size=n_genes)
    program = {g: rng.normal(0, 0.8, size=n_genes) * (rng.random(n_genes) < 0.2) for g in singles}
    for g in singles:
        program[g][genes.index(g)] = 1.5
    ctx_shift = {c: rng.normal(0, 0.3, size=n_genes) for c in contexts}
    xs, perts, ctxs = [], [], []
    for ctx in contexts:
        for label in [CONTROL, *singles, *combos]:
            effect = sum((program[g] for g in components(label)), np.zeros(n_genes))
            rate = base * np.exp(ctx_shift[ctx] + effect)
            xs.append(rng.poisson(rate, size=(cells_per_condition, n_genes)))
            perts += [label] * cells_per_condition
            ctxs += [ctx] * cells_per_condition
    adata = ad.AnnData(
        X=sp.csr_matrix(np.concatenate(xs).astype(np.float32)),
        obs=pd.DataFrame(
            {"perturbation": perts, "cell_type": ctxs}, index=[f"c{i}" for i in range(len(perts))]
        ),
        var=pd.DataFrame(index=genes),
    )
    return standardize(
        adata,
        perturbation_key="perturbation",
        control_values=(CONTROL,),
        context_key="cell_type",
        source="synthetic",
    )
