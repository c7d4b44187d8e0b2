"""Screen tables: the measured truth that a simulated lab reveals one experiment at a time.

A screen file is a CSV with one row per gene (or one row per gene and replicate):

* the gene column (``gene``/``Gene``, or the first column) and the score column
  (``score``/``Score``, or the second column), e.g. a MAGeCK log fold change;
* optionally ``replicate``: several rows per gene, one per replicate; the simulated assay then
  answers with one measured replicate, so the data's own replicate noise is kept;
* optionally ``is_control`` (or control rows named ``non-targeting…``, ``NTC…``, ``safe-targeting…``,
  ``negative-control…``; not ``CTRL``, a human gene): the null distribution of the screen, used for the plate's negative-control wells and,
  when no hit list is given, to call hits (two-sided or one-sided normal test against the controls,
  Benjamini–Hochberg at ``fdr``).

The hits (what a discovery loop should find) come from the authors' list (``hits=``: ``.npy`` as in
BioDiscoveryAgent, or a text file with one gene a line) or are called from the controls; a file with
neither is refused. ``direction`` says which tail is sought: ``"both"``, ``"up"`` or ``"down"``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from lifelm._core.errors import InputError

Direction = Literal["both", "up", "down"]
CONTROL_PATTERN = re.compile(
    r"^(non[-_ ]?targeting|ntc([-_ ]|\d|$)|safe[-_ ]?targeting|neg(ative)?[-_ ]?control)", re.I
)
# not "control"/"ctrl" alone: CTRL is a human gene (chymotrypsin-like) in genome-wide screens


@dataclass(frozen=True)
class Screen:
    """One screen: gene-level scores, optional replicates and controls, and the hits to find.

    ``replicates`` is ``(n_genes, n_rep)`` with NaN where a gene lacks a replicate (or ``None``);
    ``control_scores`` the control rows' scores (or ``None``).
    """

    name: str
    genes: np.ndarray
    scores: np.ndarray
    hits: frozenset[str]
    direction: Direction = "both"
    replicates: np.ndarray | None = None
    control_scores: np.ndarray | None = None
    source: str = ""
    hit_source: str = ""
    index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    # further sets to track beside the hits (e.g. Norman's synergistic pairs): name -> genes
    hit_sets: Mapping[str, frozenset[str]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        genes = np.asarray(self.genes).astype(str)
        object.__setattr__(self, "genes", genes)
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float64))
        object.__setattr__(self, "index", {g: i for i, g in enumerate(genes)})
        if len(self.index) != len(genes):
            raise InputError(f"screen {self.name}: duplicate gene names")
        if self.direction not in ("both", "up", "down"):
            raise InputError(
                f"screen {self.name}: direction must be both, up or down (got {self.direction!r})"
            )
        unknown = sorted(set(self.hits) - set(self.index))
        if unknown:
            raise InputError(
                f"screen {self.name}: {len(unknown)} hit genes are not in the screen table "
                f"(e.g. {', '.join(unknown[:5])}); the hit list must come from the same screen."
            )
        if not self.hits:
            raise InputError(f"screen {self.name}: the hit list is empty; nothing to discover.")
        for set_name, members in self.hit_sets.items():
            if set(members) - set(self.index):
                raise InputError(f"screen {self.name}: hit set {set_name!r} names unscreened genes")

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def digest(self) -> str:
        """Content hash of genes, scores, replicates, controls, hits and direction."""
        h = hashlib.sha256()
        h.update("\0".join(self.genes).encode())
        h.update(self.scores.tobytes())
        if self.replicates is not None:
            h.update(np.nan_to_num(self.replicates, nan=1e300).tobytes())
        if self.control_scores is not None:
            h.update(self.control_scores.tobytes())
        h.update("\0".join(sorted(self.hits)).encode())
        h.update(self.direction.encode())
        for name in sorted(self.hit_sets):
            h.update(f"\0{name}:".encode() + "\0".join(sorted(self.hit_sets[name])).encode())
        return h.hexdigest()

    def null(self) -> tuple[float, float]:
        """Mean and sd of the negative controls; ``(0, 0)`` when the screen has none."""
        if self.control_scores is None or len(self.control_scores) < 2:
            return 0.0, 0.0
        return float(self.control_scores.mean()), float(self.control_scores.std(ddof=1))


def _read_hits(path: Path) -> set[str]:
    if not path.is_file():
        raise InputError(f"{path}: hit list not found")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise InputError(f"{path}: not a numpy array of gene names ({e})") from None
        return {str(g) for g in np.asarray(arr).ravel()}
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _columns(df: pd.DataFrame, path: Path) -> tuple[str, str]:
    lower = {c.lower(): c for c in df.columns}
    gene = lower.get("gene") or df.columns[0]
    score = lower.get("score") or (df.columns[1] if len(df.columns) > 1 else None)
    if score is None or score == gene:
        raise InputError(f"{path}: needs a gene column and a score column (got {list(df.columns)})")
    return gene, score


def call_hits(
    genes: np.ndarray,
    scores: np.ndarray,
    controls: np.ndarray,
    *,
    direction: Direction = "both",
    fdr: float = 0.05,
) -> set[str]:
    """Hits by a normal test of each gene's score against the control distribution, BH at ``fdr``."""
    mu, sd = float(np.mean(controls)), float(np.std(controls, ddof=1))
    if not np.isfinite(sd) or sd <= 0:
        raise InputError("the control rows have no spread; hits cannot be called from them")
    z = (scores - mu) / sd
    if direction == "both":
        p = 2 * stats.norm.sf(np.abs(z))
    elif direction == "up":
        p = stats.norm.sf(z)
    else:
        p = stats.norm.cdf(z)
    q = stats.false_discovery_control(p, method="bh")
    return {str(g) for g in genes[q <= fdr]}


# Long only because of its docstring and signature; the body is under 80 lines.
def load_screen(
    path: str | Path,
    *,
    hits: str | Path | None = None,
    direction: Direction = "both",
    name: str | None = None,
    fdr: float = 0.05,
) -> Screen:
    """Read a screen table (see the module docstring) and its hits.

    Raises
    ------
    InputError
        A missing or unreadable file, missing columns, non-numeric or NaN scores, duplicate genes
        without a ``replicate`` column, hits outside the table, or a file with neither controls nor
        a hit list.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: screen file not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise InputError(f"{path}: not a readable CSV ({e})") from None
    if df.empty:
        raise InputError(f"{path}: no rows")
    gcol, scol = _columns(df, path)
    df[gcol] = df[gcol].astype(str).str.strip()
    vals = pd.to_numeric(df[scol], errors="coerce")
    bad = df.loc[vals.isna(), gcol]
    if len(bad):
        raise InputError(
            f"{path}: column {scol!r} has {len(bad)} missing or non-numeric scores "
            f"(e.g. genes {', '.join(bad.astype(str).head(5))}); fix or drop those rows."
        )
    df[scol] = vals.astype(float)
    lower = {c.lower(): c for c in df.columns}
    if "is_control" in lower:
        is_ctrl = df[lower["is_control"]].astype(str).str.lower().isin(["true", "1", "yes"])
    else:
        is_ctrl = df[gcol].str.match(CONTROL_PATTERN)
    controls = df.loc[is_ctrl, scol].to_numpy(float)
    body = df.loc[~is_ctrl]
    replicates = None
    if "replicate" in lower:
        wide = body.pivot_table(index=gcol, columns=lower["replicate"], values=scol, aggfunc="mean")
        genes = wide.index.to_numpy(str)
        replicates = wide.to_numpy(float)
        scores = np.nanmean(replicates, axis=1)
        if replicates.shape[1] < 2:
            replicates = None
    else:
        dup = body[gcol].duplicated(keep=False)
        if dup.any():
            raise InputError(
                f"{path}: genes appear more than once ({', '.join(body.loc[dup, gcol].unique()[:5])}); "
                "add a 'replicate' column for replicate rows or aggregate them first."
            )
        genes = body[gcol].to_numpy(str)
        scores = body[scol].to_numpy(float)
    if hits is not None:
        hit_set = _read_hits(Path(hits))
        hit_source = str(hits)
    elif len(controls) >= 2:
        hit_set = call_hits(genes, scores, controls, direction=direction, fdr=fdr)
        hit_source = f"called from {len(controls)} control rows (normal test, BH FDR {fdr})"
    else:
        raise InputError(
            f"{path}: the screen has no control rows (an 'is_control' column or genes named "
            "non-targeting/NTC/safe-targeting) and no hit list was given, so hits cannot be "
            "called. Add the screen's non-targeting controls or pass the authors' hits "
            "(--hits FILE, .npy or one gene a line)."
        )
    return Screen(
        name=name or path.stem.removeprefix("ground_truth_"),
        genes=genes,
        scores=scores,
        hits=frozenset(hit_set),
        direction=direction,
        replicates=replicates,
        control_scores=controls if len(controls) else None,
        source=str(path),
        hit_source=hit_source,
    )
