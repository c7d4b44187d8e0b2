"""AnnData ``.h5ad`` files, in memory or backed, read in row chunks without loading X whole.

:class:`MatrixSource` is the one way the rest of LifeLM reads an expression matrix: it wraps an
in-memory matrix (CSR/CSC/dense) or an on-disk h5py group (CSR, CSC or dense) and hands out
CSR row blocks. A backed file never has its matrix loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import scipy.sparse as sp

from lifelm._core.errors import LifeLMError

ROW_CHUNK = 8192  # rows per block when streaming a matrix


class H5adError(LifeLMError, ValueError):
    """An .h5ad file cannot be read as LifeLM needs it; the message names the file, field and fix."""


def read_h5ad(path: str | Path, *, backed: bool = False) -> ad.AnnData:
    """Read an ``.h5ad`` file, whole (default) or backed (``backed="r"``: X stays on disk).

    Parameters
    ----------
    path
        File to read.
    backed
        Open in read-only backed mode: ``.obs``/``.var`` are loaded, ``X`` is read on demand.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "build.json").is_file():
            raise H5adError(
                f"{path}: an unfinished corpus store (no corpus.json): run the same "
                "`lifelm cells corpus build` again to finish it (finished shards are kept)."
            )
        raise H5adError(
            f"{path}: is a folder, not an .h5ad file; pass the .h5ad file itself "
            "(only `lifelm cells pretrain` also reads a corpus store folder)."
        )
    if not path.is_file():
        raise H5adError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise H5adError(f"{path}: empty file (0 bytes); copy or write the .h5ad again.")
    if not h5py.is_hdf5(path):
        raise H5adError(
            f"{path}: not an HDF5/.h5ad file. Convert it with anndata "
            "(e.g. `anndata.read_loom(...).write_h5ad(...)` or `scanpy.read_10x_h5`)."
        )
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise H5adError(f"{path}: cannot be read as .h5ad ({_damage(e)})") from e


def _damage(e: BaseException) -> str:
    """The reason an HDF5 read failed, with the likely cause and the fix."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "truncated" in msg:
        return (
            f"{msg}: the file is truncated, e.g. by an interrupted download or copy; "
            "copy or download it again"
        )
    return (
        f"{type(e).__name__}: {msg[:300]}; the file is damaged or not written by anndata: "
        "copy it again or re-write it with `anndata.AnnData.write_h5ad`"
    )


@dataclass
class MatrixSource:
    """A cells × genes matrix that can be read in CSR row blocks.

    ``matrix`` is either an in-memory array/sparse matrix or an h5py object from a backed file.
    ``name`` says where it came from (``X``, ``layers['counts']``, ``raw.X``) for error messages.
    """

    matrix: Any
    name: str
    path: str | None = None
    n_obs: int = 0
    n_vars: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.matrix, h5py.Group):
            shape = self.matrix.attrs.get("shape", self.matrix.attrs.get("h5sparse_shape"))
            self.n_obs, self.n_vars = int(shape[0]), int(shape[1])
        else:
            self.n_obs, self.n_vars = self.matrix.shape

    @property
    def where(self) -> str:
        return f"{self.path}:{self.name}" if self.path else self.name

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as CSR with canonical indices (views into an in-memory CSR; never a copy of the whole matrix)."""
        m = self.matrix
        if isinstance(m, (h5py.Group, h5py.Dataset)) or hasattr(m, "to_memory"):
            try:
                block = self._read_disk_rows(start, stop)
            except LifeLMError:
                raise
            except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
                raise H5adError(
                    f"{self.where}: rows {start}:{stop} cannot be read ({_damage(e)})"
                ) from e
        elif sp.issparse(m) and m.format == "csr":  # zero-copy views of data and indices
            lo, hi = int(m.indptr[start]), int(m.indptr[stop])
            block = sp.csr_matrix(
                (m.data[lo:hi], m.indices[lo:hi], m.indptr[start : stop + 1] - lo),
                shape=(stop - start, m.shape[1]),
                copy=False,
            )
        elif sp.issparse(m):
            block = sp.csr_matrix(m[start:stop])
        else:
            block = sp.csr_matrix(np.asarray(m[start:stop]))
        if (
            not block.has_canonical_format
        ):  # unsorted or repeated indices: fix a copy, never the source
            block = block.copy()
            block.sum_duplicates()
        return block

    def _read_disk_rows(self, start: int, stop: int) -> sp.csr_matrix:
        m = self.matrix
        if isinstance(m, h5py.Group):
            return _read_h5_rows(m, start, stop, self.n_vars)
        return sp.csr_matrix(m[start:stop])

    def chunks(self, chunk: int = ROW_CHUNK) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(start, rows)`` blocks covering every row in order."""
        for start in range(0, self.n_obs, chunk):
            yield start, self.rows(start, min(self.n_obs, start + chunk))


def _read_h5_rows(group: h5py.Group, start: int, stop: int, n_vars: int) -> sp.csr_matrix:
    enc = group.attrs.get("encoding-type", "")
    if isinstance(enc, bytes):
        enc = enc.decode()
    if enc == "csr_matrix":
        indptr = group["indptr"][start : stop + 1]
        lo, hi = int(indptr[0]), int(indptr[-1])
        data = group["data"][lo:hi]
        indices = group["indices"][lo:hi]
        return sp.csr_matrix((data, indices, indptr - lo), shape=(stop - start, n_vars))
    if enc == "csc_matrix":
        # CSC cannot be row-sliced cheaply; anndata's reader does it column-block-wise.
        from anndata.io import sparse_dataset

        return sp.csr_matrix(sparse_dataset(group)[start:stop])
    raise H5adError(f"{group.file.filename}:{group.name}: unsupported encoding {enc!r}")


def backed_sources(path: str | Path) -> dict[str, MatrixSource]:
    """The candidate count matrices of an h5ad file on disk (``X``, ``layers/*``, ``raw/X``), unread."""
    path = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise H5adError(f"{path}: cannot be read as .h5ad ({_damage(e)})") from e
    out: dict[str, MatrixSource] = {}
    if "X" in f:
        out["X"] = MatrixSource(f["X"], "X", path)
    if "layers" in f:
        for key in f["layers"]:
            out[f"layers['{key}']"] = MatrixSource(f["layers"][key], f"layers['{key}']", path)
    if "raw" in f and "X" in f["raw"]:
        out["raw.X"] = MatrixSource(f["raw"]["X"], "raw.X", path)
    return out


def memory_sources(adata: ad.AnnData) -> dict[str, MatrixSource]:
    """The candidate count matrices of an AnnData object (backed X is read lazily)."""
    path = str(adata.filename) if adata.isbacked else None
    out: dict[str, MatrixSource] = {}
    if adata.X is not None:
        out["X"] = MatrixSource(adata.X, "X", path)
    for key in adata.layers:
        out[f"layers['{key}']"] = MatrixSource(adata.layers[key], f"layers['{key}']", path)
    if adata.raw is not None and adata.raw.n_vars == adata.n_vars:
        out["raw.X"] = MatrixSource(adata.raw.X, "raw.X", path)
    return out
