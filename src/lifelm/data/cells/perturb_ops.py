"""In-silico perturbation operators on rank-value token lists.

A cell is its gene tokens ordered by normalised expression, highest first (``[CLS]`` is added
later by :func:`~lifelm.data.cells.datasets.pad_cells`). A perturbation edits that order:

- ``delete``: remove the gene (a knock-out); the genes below it move up one rank;
- ``overexpress``: move the gene to rank 1 (insert it there when the cell does not express it,
  dropping the last gene if the cell is at the context length);
- ``knockdown``: move the gene a stated ``fraction`` of the way from its rank to the bottom
  (``fraction=1`` puts it last; ``0`` leaves the cell unchanged);
- a combination applies the same operation to 2+ genes at once.

Every operator returns the perturbed tokens *and* ``source``: for each position of the perturbed
cell, the position the gene held in the original cell (-1 for an inserted gene). ``source`` is
what lines up the genes of the perturbed and the original cell, so that the shift of every other
gene's embedding (which genes respond) is one gather.

Single-gene perturbations of one cell are built for all target genes at once with index
arithmetic (no Python loop over genes); combinations loop over the (few) combinations.

References: Theodoris et al., *Nature* 618, 616–624 (2023) (Geneformer's in-silico deletion
and overexpression by moving rank-value tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lifelm.data.cells.tokenizer import PAD

Kind = Literal["delete", "overexpress", "knockdown"]
KINDS: tuple[str, ...] = ("delete", "overexpress", "knockdown")


@dataclass
class PerturbedCells:
    """Perturbed copies of one cell, padded into a matrix (no ``[CLS]``)."""

    tokens: np.ndarray  # (P, W) int64 gene tokens, PAD after each row's end
    source: np.ndarray  # (P, W) int64 original position of each gene, -1 inserted or padding
    lengths: np.ndarray  # (P,) genes per perturbed row

    def __len__(self) -> int:
        return len(self.lengths)

    def row(self, i: int) -> np.ndarray:
        """Row ``i`` without padding."""
        return self.tokens[i, : self.lengths[i]]


def _check(kind: str, fraction: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown perturbation {kind!r}; choose one of {', '.join(KINDS)}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"knockdown fraction must be in [0, 1], got {fraction}")


def positions(cell: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """Rank position (0-based) of each gene token in ``cell``, -1 where it is not expressed."""
    cell = np.asarray(cell)
    genes = np.asarray(genes)
    pos = np.full(len(genes), -1, dtype=np.int64)
    if len(cell) == 0:
        return pos
    order = np.argsort(cell, kind="stable")
    at = np.searchsorted(cell[order], genes)
    at = np.minimum(at, len(cell) - 1)
    hit = cell[order[at]] == genes
    pos[hit] = order[at[hit]]
    return pos


def applicable(cell: np.ndarray, genes: np.ndarray, kind: Kind) -> np.ndarray:
    """Mask of the target genes a perturbation can act on in this cell.

    Deletion and knock-down need the gene to be expressed (deleting an absent gene changes
    nothing, so the scan skips it); overexpression applies to every gene.
    """
    _check(kind, 0.0)
    if kind == "overexpress":
        return np.ones(len(genes), dtype=bool)
    return positions(cell, genes) >= 0


def perturb_cell(
    cell: np.ndarray,
    genes: np.ndarray,
    kind: Kind,
    *,
    fraction: float = 1.0,
    max_genes: int | None = None,
) -> PerturbedCells:
    """All single-gene perturbations of one cell, one row per target gene, built at once.

    Parameters
    ----------
    cell
        (L,) the cell's gene tokens, highest rank first.
    genes
        (P,) target gene tokens. For ``delete`` and ``knockdown`` they must be expressed
        (filter with :func:`applicable`); an absent gene is an error.
    kind
        ``delete``, ``overexpress`` or ``knockdown``.
    fraction
        Knock-down strength: the share of the distance to the bottom rank the gene moves.
    max_genes
        Longest allowed row (context length minus ``[CLS]``); overexpressing an absent gene
        in a full cell drops the lowest-ranked gene. Default: no limit.

    Returns
    -------
    PerturbedCells with ``P`` rows.

    Examples
    --------
    >>> r = perturb_cell(np.array([10, 11, 12, 13]), np.array([12, 10]), "delete")
    >>> r.row(0).tolist(), r.source[0, :3].tolist()
    ([10, 11, 13], [0, 1, 3])
    >>> perturb_cell(np.array([10, 11, 12]), np.array([12, 20]), "overexpress").row(1).tolist()
    [20, 10, 11, 12]
    """
    _check(kind, fraction)
    cell = np.asarray(cell, dtype=np.int64)
    genes = np.asarray(genes, dtype=np.int64)
    n = len(cell)
    p = positions(cell, genes)  # (P,) original position, -1 absent
    if kind != "overexpress" and (p < 0).any():
        missing = genes[p < 0][:5].tolist()
        raise ValueError(
            f"{kind}: genes {missing} are not expressed in this cell; filter targets with "
            "applicable() (deleting or knocking down an absent gene changes nothing)"
        )
    present = p >= 0
    # where the target lands, and the length of each perturbed row
    if kind == "delete":
        q = np.full(len(genes), -1, dtype=np.int64)
        lengths = np.full(len(genes), n - 1, dtype=np.int64)
    elif kind == "overexpress":
        q = np.zeros(len(genes), dtype=np.int64)
        lengths = np.where(present, n, n + 1)
    else:  # knockdown: a fraction of the way to the bottom
        q = p + np.rint(fraction * (n - 1 - p)).astype(np.int64)
        lengths = np.full(len(genes), n, dtype=np.int64)
    if max_genes is not None:
        lengths = np.minimum(lengths, max_genes)
    width = int(lengths.max()) if len(lengths) else 0
    j = np.arange(width)[None, :]  # (1, W) output position
    qq = q[:, None]
    # index into "the cell without the target" (for an absent target: the cell itself)
    k = j - ((qq >= 0) & (j > qq))  # output positions after the landing spot come from k - 1
    src = k + (present[:, None] & (k >= p[:, None]))  # skip the target's old position
    src = np.where(j == qq, np.where(present, p, -1)[:, None], src)  # (P, W)
    valid = j < lengths[:, None]
    tokens = np.where(j == qq, genes[:, None], cell[np.clip(src, 0, max(n - 1, 0))] if n else PAD)
    tokens = np.where(valid, tokens, PAD)
    source = np.where(valid, src, -1)
    return PerturbedCells(tokens.astype(np.int64), source.astype(np.int64), lengths)


def perturb_combination(
    cell: np.ndarray,
    genes: Sequence[int] | np.ndarray,
    kind: Kind,
    *,
    fraction: float = 1.0,
    max_genes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One perturbation of several genes at once; returns ``(tokens, source)`` for one row.

    ``delete`` removes them all; ``overexpress`` puts them at the top in the order given;
    ``knockdown`` moves each a ``fraction`` of the way to the bottom (applied top gene first).
    """
    _check(kind, fraction)
    cell = np.asarray(cell, dtype=np.int64)
    genes = np.asarray(genes, dtype=np.int64)
    if len(set(genes.tolist())) != len(genes):
        raise ValueError(f"combination {genes.tolist()} repeats a gene")
    p = positions(cell, genes)
    if kind != "overexpress" and (p < 0).any():
        raise ValueError(
            f"{kind}: genes {genes[p < 0].tolist()} of the combination are not expressed in this cell"
        )
    src = np.arange(len(cell), dtype=np.int64)
    if kind == "delete":
        keep = np.ones(len(cell), dtype=bool)
        keep[p] = False
        src = src[keep]
    elif kind == "overexpress":
        keep = np.ones(len(cell), dtype=bool)
        keep[p[p >= 0]] = False
        src = np.concatenate([p, src[keep]])  # absent genes carry -1
    else:
        for pos in np.sort(p):  # one gene at a time, each by the same fraction
            cur = int(np.flatnonzero(src == pos)[0])
            dest = cur + int(np.rint(fraction * (len(src) - 1 - cur)))
            src = np.insert(np.delete(src, cur), dest, pos)
    if max_genes is not None:
        src = src[:max_genes]
    tokens = np.where(src >= 0, cell[np.maximum(src, 0)], 0)
    if kind == "overexpress":
        tokens[: len(genes)] = genes[: len(tokens)]
    return tokens, src


def pack_rows(rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> PerturbedCells:
    """Pad ``(tokens, source)`` rows of different lengths into one :class:`PerturbedCells`."""
    lengths = np.array([len(t) for t, _ in rows], dtype=np.int64)
    width = int(lengths.max()) if len(rows) else 0
    tokens = np.full((len(rows), width), PAD, dtype=np.int64)
    source = np.full((len(rows), width), -1, dtype=np.int64)
    for i, (t, s) in enumerate(rows):
        tokens[i, : len(t)] = t
        source[i, : len(s)] = s
    return PerturbedCells(tokens, source, lengths)
