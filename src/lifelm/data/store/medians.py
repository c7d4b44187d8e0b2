"""Streaming, constant-memory gene medians: one log-spaced histogram per gene.

The rank-value tokenizer divides each gene by its non-zero median over the corpus. The exact
median (:meth:`~lifelm.data.cells.tokenizer.RankValueTokenizer.fit`) keeps every non-zero value in
memory, which does not scale past a few million cells. Here each gene keeps a histogram of
``log10(count / total * target_sum)`` with ``bins_per_decade`` bins between ``10**lo`` and
``10**hi``; memory is ``n_genes × n_bins`` counters whatever the number of cells, histograms of
different files simply add, and the median is read off the cumulative counts with log-linear
interpolation inside its bin. With the default 50 bins per decade a bin spans 4.7 %, and the
interpolated median is typically within 1 % of the exact one (the test measures it on real cells).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class HistogramSpec:
    """Where the per-gene log-histogram bins lie."""

    lo: float = -4.0  # log10 of the smallest value binned (smaller values go to the first bin)
    hi: float = 5.0  # log10 of the largest value binned (larger values go to the last bin)
    bins_per_decade: int = 50  # resolution: a bin spans 10**(1/bins_per_decade) - 1 relative

    @property
    def n_bins(self) -> int:
        return round((self.hi - self.lo) * self.bins_per_decade)

    def bin_of(self, values: np.ndarray) -> np.ndarray:
        """Bin index of each positive value, clipped into range."""
        b = np.floor((np.log10(values) - self.lo) * self.bins_per_decade)
        return np.clip(b, 0, self.n_bins - 1).astype(np.int64)

    def to_dict(self) -> dict[str, float]:
        return {"lo": self.lo, "hi": self.hi, "bins_per_decade": self.bins_per_decade}


class GeneHistograms:
    """Per-gene histograms of normalised non-zero values, filled block by block.

    Parameters
    ----------
    n_genes
        Number of genes (columns of the blocks given to :meth:`add`).
    spec
        Bin layout; histograms with the same spec can be merged with ``+=``.
    target_sum
        Library size that counts are scaled to (as in the tokenizer).
    """

    def __init__(
        self, n_genes: int, spec: HistogramSpec | None = None, target_sum: float = 10_000.0
    ) -> None:
        self.spec = spec or HistogramSpec()
        self.target_sum = target_sum
        self.counts = np.zeros((n_genes, self.spec.n_bins), dtype=np.int64)  # (G, bins)
        self.n_cells = 0

    def add(self, block: sp.csr_matrix, totals: np.ndarray) -> None:
        """Add a CSR block of counts whose columns are the genes; ``totals`` are the full row sums.

        ``totals`` may include genes that are not columns of ``block`` (as the tokenizer's
        library size does).
        """
        rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))  # (nnz,)
        keep = block.data > 0
        vals = block.data[keep] * (self.target_sum / np.maximum(totals[rows[keep]], 1e-12))
        flat = block.indices[keep].astype(np.int64) * self.spec.n_bins + self.spec.bin_of(vals)
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)
        self.n_cells += block.shape[0]

    def __iadd__(self, other: GeneHistograms) -> GeneHistograms:
        if other.spec != self.spec or other.counts.shape != self.counts.shape:
            raise ValueError("histograms with different bins or genes cannot be merged")
        self.counts += other.counts
        self.n_cells += other.n_cells
        return self

    def n_expressed(self) -> np.ndarray:
        """(G,) number of cells in which each gene is non-zero."""
        return self.counts.sum(axis=1)

    def medians(self) -> np.ndarray:
        """(G,) estimated non-zero median per gene (0 where a gene was never seen)."""
        return histogram_medians(self.counts, self.spec)


def histogram_medians(counts: np.ndarray, spec: HistogramSpec) -> np.ndarray:
    """Median of each row of a (genes, bins) histogram, log-linearly interpolated inside its bin.

    The median sits at 0-based rank ``(n - 1) / 2``; inside the bin holding that rank the values
    are taken as evenly spread in log space, the ``k``-th of ``c`` at fraction ``(k + 0.5) / c``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = counts.sum(axis=1)
    cum = np.cumsum(counts, axis=1)  # (G, bins)
    target = (n - 1) / 2.0  # rank of the median, 0-based (between two ranks when n is even)
    out = np.zeros(len(counts))
    has = n > 0
    if not has.any():
        return out
    c, cu, t = counts[has], cum[has], target[has]
    vals = []
    for r in (np.floor(t), np.ceil(t)):  # the two middle ranks; their mean is the median
        b = (cu <= r[:, None]).sum(axis=1)  # first bin whose cumulative count exceeds r
        before = np.where(b > 0, cu[np.arange(len(b)), np.maximum(b - 1, 0)], 0)
        frac = (r - before + 0.5) / c[np.arange(len(b)), b]
        vals.append(10 ** (spec.lo + (b + frac) / spec.bins_per_decade))
    out[has] = 0.5 * (vals[0] + vals[1])
    return out
