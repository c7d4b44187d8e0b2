"""Synthetic single-cell data with real gene identities, for tests, the demo and users.

Cells are drawn from a negative-binomial model: each cell type over-expresses its own block of
marker genes on top of a shared baseline, library sizes vary log-normally, and a batch effect
scales a random subset of genes. Gene IDs are real GENCODE protein-coding genes, so the whole
gene-identity path (Ensembl IDs, symbols) is exercised.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lifelm.data.cells.genes import Species, gene_table


def synthetic_cells(
    n_cells: int = 600,
    n_genes: int = 400,
    n_types: int = 4,
    *,
    n_batches: int = 2,
    markers_per_type: int = 20,
    mean_library: float = 2000.0,
    dispersion: float = 0.5,
    seed: int = 0,
    species: Species = "homo_sapiens",
) -> ad.AnnData:
    """Raw-count AnnData with ``obs["cell_type"]`` and ``obs["batch"]``.

    ``var_names`` are Ensembl IDs and ``var["gene_symbol"]`` their GENCODE symbols; ``X`` is a CSR
    int32 count matrix.
    """
    rng = np.random.default_rng(seed)
    table = gene_table(species)
    coding = sorted(g for g, s in table.id_to_symbol.items() if s and not s.startswith("ENS"))
    ids = np.array(coding)[np.sort(rng.choice(len(coding), n_genes, replace=False))]
    base = rng.lognormal(mean=-1.0, sigma=1.5, size=n_genes)  # shared expression profile
    base /= base.sum()
    types = rng.integers(0, n_types, n_cells)
    batches = rng.integers(0, n_batches, n_cells)
    profile = np.tile(base, (n_types, 1))
    for t in range(n_types):
        markers = rng.choice(n_genes, markers_per_type, replace=False)
        profile[t, markers] *= rng.uniform(5, 30, markers_per_type)
    profile /= profile.sum(1, keepdims=True)
    batch_scale = np.exp(rng.normal(0, 0.3, (n_batches, n_genes)))
    lib = rng.lognormal(np.log(mean_library), 0.4, n_cells)
    mu = profile[types] * batch_scale[batches] * lib[:, None]  # (cells, genes)
    # negative binomial as a gamma-Poisson mixture
    lam = rng.gamma(1.0 / dispersion, mu * dispersion)
    counts = rng.poisson(lam).astype(np.int32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type_{t}" for t in types]),
            "batch": pd.Categorical([f"batch_{b}" for b in batches]),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"gene_symbol": [table.id_to_symbol[g] for g in ids]}, index=ids)
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
