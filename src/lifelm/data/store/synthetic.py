"""Large synthetic corpora made by resampling real cells, for scaling runs on one machine.

Each output cell is a real cell drawn at random (with replacement) from a source ``.h5ad`` whose
counts are binomially thinned by a per-cell factor in ``thin`` (so no two copies are identical,
and library sizes spread as in real data); genes, sparsity and expression statistics stay those of
real cells. Metadata (cell type, donor, …) is copied from the drawn cell. Files are written one by
one (temporary name, then rename), so a killed run keeps the files already written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from lifelm._core.progress import track
from lifelm.data.cells.counts import find_counts
from lifelm.io.h5ad import read_h5ad


def synthesize_corpus(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    n_cells: int,
    *,
    cells_per_file: int = 50_000,
    thin: tuple[float, float] = (0.7, 1.0),
    compression: str | None = "gzip",
    seed: int = 0,
) -> list[Path]:
    """Write ``n_cells`` resampled real cells as ``.h5ad`` files of ``cells_per_file`` cells.

    Parameters
    ----------
    sources
        Real raw-count ``.h5ad`` files; file ``k`` resamples source ``k mod len(sources)``.
    out_dir
        Folder for ``synthetic_00000.h5ad`` …; existing files are kept (resume).
    n_cells
        Cells in total.
    cells_per_file
        Cells per file (bounds memory while writing).
    thin
        Range of the per-cell binomial thinning probability.
    compression
        h5ad compression (``gzip`` as the shared files, or None).
    seed
        Seeds everything; file ``k`` depends only on ``(seed, k)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_files = -(-n_cells // cells_per_file)
    cache: dict[int, tuple[ad.AnnData, sp.csr_matrix]] = {}
    paths = []
    for k in track(range(n_files), description="synthetic files", total=n_files):
        path = out_dir / f"synthetic_{k:05d}.h5ad"
        paths.append(path)
        if path.is_file():
            continue
        s = k % len(sources)
        if s not in cache:
            adata = read_h5ad(sources[s])
            counts = find_counts(adata)
            cache[s] = (adata, sp.csr_matrix(counts.rows(0, counts.n_obs)))
        adata, x = cache[s]
        n = min(cells_per_file, n_cells - k * cells_per_file)
        rng = np.random.default_rng([seed, k])
        pick = rng.integers(0, adata.n_obs, size=n)
        block = x[pick]  # (n, genes) copies of real cells
        p = rng.uniform(*thin, size=n)
        rows = np.repeat(np.arange(n), np.diff(block.indptr))
        block.data = rng.binomial(block.data.astype(np.int64), p[rows]).astype(np.int32)
        block.eliminate_zeros()
        obs = adata.obs.iloc[pick].copy()
        obs.index = [f"syn{k}_{i}" for i in range(n)]
        obs["source_cell"] = np.asarray(adata.obs_names)[pick]
        out = ad.AnnData(X=block, obs=obs, var=adata.var.copy())
        tmp = path.with_name(f".{path.name}.tmp")
        out.write_h5ad(tmp, compression=compression)
        os.replace(tmp, path)
    return paths
