"""Annotation baselines every model result is shown next to.

- majority class;
- logistic regression on 50 principal components of log1p-normalised highly variable genes
  (HVGs and PCA fitted on the training cells only).

Both read raw counts through the same gene-identity layer as the models, so a cross-study query
is aligned to the reference on Ensembl IDs.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from lifelm.data.cells.counts import find_counts
from lifelm.data.cells.genes import column_map, map_genes


def majority_baseline(y_train: np.ndarray, n_test: int) -> np.ndarray:
    """Predict the most frequent training label for every test cell."""
    values, counts = np.unique(np.asarray(y_train, dtype=str), return_counts=True)
    return np.full(n_test, values[counts.argmax()])


def log_normalized(
    adata: ad.AnnData, genes: dict[str, int], layer: str | None = None
) -> sp.csr_matrix:
    """Counts → CP10k → log1p, with columns in the order of ``genes`` (Ensembl ID → column)."""
    src = find_counts(adata, layer)
    cmap = column_map(map_genes(adata.var), genes)
    blocks = []
    for _, block in src.chunks():
        total = np.asarray(block.sum(1)).ravel()
        x = sp.csr_matrix(block @ cmap, dtype=np.float32)
        x = sp.diags(1e4 / np.maximum(total, 1)).dot(x).tocsr()
        x.data = np.log1p(x.data)
        blocks.append(x)
    return sp.vstack(blocks).tocsr()


@dataclass
class PcaLogReg:
    """HVGs → 50 PCs → logistic regression, fitted on the reference."""

    genes: dict[str, int]
    hvg: np.ndarray
    model: Pipeline  # StandardScaler, clip, PCA, LogisticRegression

    @classmethod
    def fit(
        cls,
        adata: ad.AnnData,
        labels: np.ndarray,
        *,
        n_hvg: int = 2000,
        n_pcs: int = 50,
        seed: int = 0,
        layer: str | None = None,
    ) -> PcaLogReg:
        mapping = map_genes(adata.var)
        ids = mapping.unique_ids()
        genes = {g: i for i, g in enumerate(ids)}
        x = log_normalized(adata, genes, layer)
        # HVGs chosen on the training cells by scanpy's Seurat recipe (binned normalised dispersion)
        hv = ad.AnnData(x)
        sc.pp.highly_variable_genes(hv, n_top_genes=min(n_hvg, x.shape[1]), flavor="seurat")
        hvg = np.flatnonzero(hv.var["highly_variable"].to_numpy())
        n_comp = min(n_pcs, len(hvg) - 1, x.shape[0] - 1)
        model = make_pipeline(
            StandardScaler(),  # sc.pp.scale: zero mean, unit variance per gene …
            FunctionTransformer(np.clip, kw_args={"a_min": -10, "a_max": 10}),  # … clipped at 10
            PCA(n_components=n_comp, random_state=seed),
            LogisticRegression(max_iter=2000),
        )
        model.fit(x[:, hvg].toarray(), np.asarray(labels, dtype=str))
        return cls(genes, hvg, model)

    def transform(self, adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
        """The PCA embedding (for embedding-quality comparisons)."""
        x = log_normalized(adata, self.genes, layer)[:, self.hvg].toarray()
        return self.model[:-1].transform(x)

    def predict(self, adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
        x = log_normalized(adata, self.genes, layer)[:, self.hvg].toarray()
        return self.model.predict(x)

    @property
    def classes(self) -> list[str]:
        """Class names in the column order of :meth:`predict_proba`."""
        return [str(c) for c in self.model.classes_]

    def predict_proba(
        self, adata: ad.AnnData, layer: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (columns in :attr:`classes` order) and the PCA embedding."""
        x = log_normalized(adata, self.genes, layer)[:, self.hvg].toarray()
        pcs = self.model[:-1].transform(x)
        return self.model[-1].predict_proba(pcs), pcs
