"""Corpus sources: ``.h5ad`` files read backed, and TileDB-SOMA experiments (CELLxGENE Census).

A :class:`CorpusSource` hands the store builder three things and never the whole matrix:
a *shell* AnnData (``obs`` and ``var`` only) for gene mapping and metadata, the number of
cells, and CSR row blocks of raw counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lifelm._core.errors import LifeLMError
from lifelm.data.cells.counts import NotCountsError, find_counts, inspect_counts
from lifelm.io.h5ad import MatrixSource, read_h5ad

# per-cell metadata kept in the store, with the obs columns looked for (first present wins)
METADATA_FIELDS: dict[str, tuple[str, ...]] = {
    "dataset": ("dataset_id", "dataset", "study"),
    "donor": ("donor_id", "donor", "individual", "patient", "subject", "sample_id", "sample"),
    "cell_type": ("cell_type", "celltype", "cell_type_label", "cell_label", "annotation"),
    "assay": ("assay", "technology", "tech", "protocol", "platform"),
}


class SourceError(LifeLMError, ValueError):
    """A corpus source cannot be opened or read; the message names it and the fix."""


@dataclass
class CorpusSource:
    """One input of a corpus: where it is, its metadata shell and a row-block reader."""

    uri: str  # path of the .h5ad or the SOMA experiment
    kind: str  # "h5ad" or "soma"
    shell: ad.AnnData  # obs + var (X may be backed or absent); used for gene mapping
    matrix: Any  # MatrixSource (h5ad) or _SomaMatrix (soma)

    @property
    def n_obs(self) -> int:
        return int(self.shell.n_obs)

    @property
    def name(self) -> str:
        return Path(self.uri.rstrip("/")).name

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Raw counts of cells ``start:stop`` as CSR, columns in ``shell.var`` order."""
        return self.matrix.rows(start, stop)

    def close(self) -> None:
        """Release the file handle (and HDF5 caches) of a backed h5ad."""
        if self.kind == "h5ad" and self.shell.isbacked:
            self.shell.file.close()

    def metadata(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Per-cell strings of cells ``start:stop`` for every field of :data:`METADATA_FIELDS`
        ('' where unknown; the source's name for ``dataset`` when it has no such column)."""
        obs = self.shell.obs.iloc[start:stop]
        out: dict[str, np.ndarray] = {}
        for field, columns in METADATA_FIELDS.items():
            col = next((c for c in columns if c in obs.columns), None)
            if col is None:
                fill = Path(self.uri.rstrip("/")).stem if field == "dataset" else ""
                out[field] = np.full(len(obs), fill, dtype=object)
            else:
                out[field] = obs[col].astype(str).fillna("").to_numpy(dtype=object)
        return out


def open_source(
    uri: str | Path, *, layer: str | None = None, measurement: str = "RNA"
) -> CorpusSource:
    """Open an ``.h5ad`` file (backed) or a SOMA experiment folder/URI.

    Parameters
    ----------
    uri
        Path of an ``.h5ad`` file, or of a TileDB-SOMA experiment (a folder, or ``s3://…``).
    layer
        h5ad: where the raw counts are (found automatically when omitted). SOMA: the X layer
        name (``raw`` for CELLxGENE Census, ``data`` for ``tiledbsoma.io.from_anndata``).
    measurement
        SOMA measurement holding the RNA counts.
    """
    s = str(uri)
    if s.endswith(".h5ad"):
        adata = read_h5ad(s, backed=True)
        return CorpusSource(s, "h5ad", adata, find_counts(adata, layer))
    if Path(s).is_dir() or "://" in s:
        return _open_soma(s, layer, measurement)
    raise SourceError(
        f"{s}: not an .h5ad file nor a SOMA experiment folder. Give .h5ad files or the URI of a "
        "TileDB-SOMA experiment (e.g. one written by tiledbsoma.io.from_anndata)."
    )


class _SomaMatrix:
    """Row blocks of a SOMA sparse X layer, indexed by position in the obs table."""

    def __init__(
        self, uri: str, measurement: str, layer: str, obs_ids: np.ndarray, var_ids: np.ndarray
    ):
        self.uri, self.measurement, self.layer = uri, measurement, layer
        self.obs_ids = obs_ids  # (n_obs,) soma_joinid of each cell, in obs order
        self.var_ids = var_ids  # (n_vars,) soma_joinid of each gene, in var order
        self._var_order = np.argsort(var_ids)
        self._exp: Any = None

    @property
    def where(self) -> str:
        return f"{self.uri}:ms[{self.measurement!r}].X[{self.layer!r}]"

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        import tiledbsoma

        if self._exp is None:  # opened lazily so that the object can be sent to a worker process
            self._exp = tiledbsoma.Experiment.open(self.uri)
        ids = self.obs_ids[start:stop]
        x = self._exp.ms[self.measurement].X[self.layer]
        table = x.read(coords=(ids,)).tables().concat()
        r = np.searchsorted(ids, table["soma_dim_0"].to_numpy()) if len(ids) else np.zeros(0, int)
        vpos = self._var_order[
            np.searchsorted(self.var_ids[self._var_order], table["soma_dim_1"].to_numpy())
        ]
        block = sp.csr_matrix(
            (table["soma_data"].to_numpy(), (r, vpos)), shape=(len(ids), len(self.var_ids))
        )
        block.sum_duplicates()
        return block

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_exp": None}


def _open_soma(uri: str, layer: str | None, measurement: str) -> CorpusSource:
    try:
        import tiledbsoma
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise SourceError(
            f"{uri}: reading SOMA experiments needs tiledbsoma: pip install 'lifelm[soma]'"
        ) from err
    try:
        exp = tiledbsoma.Experiment.open(uri)
    except Exception as err:
        raise SourceError(f"{uri}: cannot be opened as a TileDB-SOMA experiment ({err})") from err
    with exp:
        if measurement not in exp.ms:
            raise SourceError(
                f"{uri}: no measurement {measurement!r}; it has {list(exp.ms)}. Pass --measurement."
            )
        ms = exp.ms[measurement]
        layers = list(ms.X)
        name = layer or next((x for x in ("raw", "data", "counts") if x in layers), None)
        if name not in layers:
            raise SourceError(
                f"{uri}: X layer {name!r} not found in measurement {measurement!r}; layers: "
                f"{layers}. Pass --layer with the raw-count layer."
            )
        obs = exp.obs.read().concat().to_pandas()
        var = ms.var.read().concat().to_pandas()
    obs_ids = obs["soma_joinid"].to_numpy()
    var_ids = var["soma_joinid"].to_numpy()
    order = np.argsort(obs_ids, kind="stable")  # read in joinid order: contiguous on disk
    obs, obs_ids = obs.iloc[order], obs_ids[order]
    obs.index = _index(obs, ("obs_id", "cell_id", "obs_names")).astype(str)
    var.index = _index(var, ("var_id", "feature_id", "gene_ids", "var_names")).astype(str)
    shell = ad.AnnData(obs=obs, var=var)
    matrix = _SomaMatrix(uri, measurement, name, obs_ids, var_ids)
    check = inspect_counts(MatrixSource(matrix.rows(0, min(2000, len(obs_ids))), matrix.where))
    if not check.is_counts:
        raise NotCountsError(
            f"{matrix.where}: {check.reason}; LifeLM tokenizes raw counts. Pass --layer with the "
            "raw-count X layer (CELLxGENE Census: raw)."
        )
    return CorpusSource(uri, "soma", shell, matrix)


def _index(df: pd.DataFrame, candidates: tuple[str, ...]) -> pd.Index:
    col = next((c for c in candidates if c in df.columns), None)
    return pd.Index(df[col]) if col else pd.Index(df["soma_joinid"])
