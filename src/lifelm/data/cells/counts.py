"""Find the raw counts in an AnnData object and refuse anything that is not counts.

Rank-value tokens are computed from library-size-normalised counts, so a model fed log data or
scaled data would silently see the wrong ranks. The search order is ``layer`` if given, then
``X``, ``layers["counts"]`` and ``raw.X``; the first matrix that passes the check on its first
:data:`SAMPLE_ROWS` rows wins. When none does, the error lists what each candidate looked like
and how to point at counts. Choosing on a sample is not enough (a file can hold counts in its
first rows and log-normalised cells after them), so every row block that is tokenized or streamed
into a store is checked again by :func:`check_counts_block`, in the pass that reads it anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import scipy.sparse as sp

from lifelm._core.errors import LifeLMError
from lifelm.io.h5ad import MatrixSource, memory_sources

SAMPLE_ROWS = (
    2000  # rows inspected to choose which matrix holds counts (every row is checked later)
)
MAX_NON_INTEGER = 0.001  # fraction of non-integer non-zero values tolerated in raw counts


class NotCountsError(LifeLMError, ValueError):
    """No raw-count matrix was found where one was looked for."""


@dataclass(frozen=True)
class CountsCheck:
    """What a matrix looked like on its first rows."""

    source: str
    is_counts: bool
    reason: str


def inspect_counts(src: MatrixSource, rows: int = SAMPLE_ROWS) -> CountsCheck:
    """Decide from the first ``rows`` rows whether ``src`` holds raw counts."""
    block = src.rows(0, min(rows, src.n_obs))
    data = np.asarray(block.data, dtype=np.float64)
    if data.size == 0:
        return CountsCheck(src.where, False, "no non-zero values in the first rows")
    if not np.isfinite(data).all():
        return CountsCheck(src.where, False, "holds NaN or infinite values")
    if (data < 0).any():
        return CountsCheck(
            src.where, False, f"holds negative values (min {data.min():.3g}): scaled data"
        )
    frac = np.abs(data - np.rint(data))
    if (frac > 1e-3).mean() > MAX_NON_INTEGER:
        maxv = data.max()
        kind = "log-normalized" if maxv < 30 else "normalized (non-integer)"
        return CountsCheck(
            src.where,
            False,
            f"looks {kind}: {100 * (frac > 1e-3).mean():.0f}% non-integer values, max {maxv:.3g}",
        )
    return CountsCheck(src.where, True, "integer-valued and non-negative")


def check_counts_block(block: sp.csr_matrix, where: str, start: int = 0) -> None:
    """Refuse a CSR row block that is not raw counts (NaN/inf, negative or non-integer values).

    Called on every block that is tokenized or streamed into a store, so the whole matrix is
    checked in the pass that reads it anyway (``find_counts`` only looks at the first
    :data:`SAMPLE_ROWS` rows to choose the matrix). Integer dtypes pass without a scan.

    Raises
    ------
    NotCountsError
        Naming ``where``, the rows of the block and what was found.
    """
    data = block.data
    if data.size == 0:
        return
    rows = f"rows {start}:{start + block.shape[0]}"
    if data.dtype.kind in "iub":
        if data.dtype.kind == "i" and data.min() < 0:
            raise NotCountsError(
                f"{where}: negative values in {rows} (min {data.min()}); raw counts are "
                "non-negative integers. Point --layer at the raw counts."
            )
        return
    if not np.isfinite(data).all():
        raise NotCountsError(
            f"{where}: NaN or infinite values in {rows}; raw counts are finite non-negative "
            "integers. Fix or drop those cells, or point --layer at the raw counts."
        )
    if data.min() < 0:
        raise NotCountsError(
            f"{where}: negative values in {rows} (min {data.min():.3g}): scaled data, not raw "
            "counts. Point --layer at the raw counts (e.g. --layer counts)."
        )
    non_int = np.abs(data - np.rint(data)) > 1e-3
    frac = float(non_int.mean())
    if frac > MAX_NON_INTEGER:
        bad = int(np.searchsorted(block.indptr, np.flatnonzero(non_int)[0], side="right") - 1)
        raise NotCountsError(
            f"{where}: {rows} are not raw counts ({100 * frac:.1f}% non-integer values, first in "
            f"row {start + bad}, max {data.max():.3g}: log-normalised or scaled cells). "
            "Every cell must hold raw UMI/read counts: point --layer at the raw counts, or recover "
            "counts for these cells (e.g. expm1(x) * total / 1e4) before tokenizing."
        )


def find_counts(adata: ad.AnnData, layer: str | None = None) -> MatrixSource:
    """Return the raw-count matrix of ``adata``.

    Parameters
    ----------
    adata
        In-memory or backed AnnData.
    layer
        Name of a layer (``"counts"``), ``"X"`` or ``"raw"`` to look only there.

    Raises
    ------
    NotCountsError
        When the matrix looked at is not raw counts; the message says which layer was looked at,
        what it held, and how to point at counts.
    """
    if 0 in adata.shape:
        raise NotCountsError(
            f"{_where(adata)}: {adata.n_obs} cells × {adata.n_vars} genes, nothing to tokenize. "
            "Check the file (was it filtered to nothing?) and pass a dataset with cells and genes."
        )
    sources = memory_sources(adata)
    if layer is not None:
        key = {"X": "X", "raw": "raw.X", "raw.X": "raw.X"}.get(layer, f"layers['{layer}']")
        if key not in sources:
            raise NotCountsError(
                f"{_where(adata)}: layer {layer!r} not found; available: "
                f"{', '.join(sources) or 'none'}."
            )
        order = [key]
    else:
        order = [k for k in ("X", "layers['counts']", "raw.X") if k in sources]
    checks = []
    for key in order:
        check = inspect_counts(sources[key])
        if check.is_counts:
            return sources[key]
        checks.append(check)
    looked = "; ".join(f"{c.source} {c.reason}" for c in checks) or "no X, layers or raw"
    raise NotCountsError(
        f"{_where(adata)}: no raw counts found ({looked}). LifeLM tokenizes raw UMI/read counts. "
        "Put counts in layers['counts'] or X and pass layer='counts' (CLI: --layer counts); "
        "if only log1p(normalized) values exist, recover counts first (e.g. expm1(x) * total / 1e4)."
    )


def _where(adata: ad.AnnData) -> str:
    return str(adata.filename) if adata.isbacked else f"AnnData ({adata.n_obs}×{adata.n_vars})"
