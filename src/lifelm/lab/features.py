"""Gene features for the loop's models, from what LifeLM has.

Sources (the prefix of each column, so a benchmark can leave one out):

* ``expression``: log mean expression, detected fraction and an "in the data" flag of each gene in
  a single-cell dataset (e.g. PBMCs for T-cell screens: a gene the cells do not express rarely
  changes their phenotype when knocked out);
* ``coexpression``: the gene's loadings on the leading components of the cells × genes matrix
  (log-normalised, scaled per gene, truncated SVD): genes in one co-expression module lie close;
* ``embedding``: the cell model's input gene embeddings (``gene_embedding`` rows of a LifeLM cell
  checkpoint, mapped from Ensembl IDs to symbols through the packaged GENCODE table), reduced by PCA;
* ``neighbours`` is not a column here: it is computed every round from the outcomes observed so
  far (the mean effect of each gene's nearest tested genes in co-expression space), see
  :mod:`lifelm.lab.strategies`.

Genes missing from a source get zeros and a 0 in that source's ``present`` column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from lifelm._core.errors import InputError

SOURCES = ("expression", "coexpression", "embedding", "neighbours")
# the Perturb-seq setting adds ``perturbation`` (static: number of targets) and ``response``
# (per round: the response model's predicted effect, see lifelm.lab.perturbseq)
ALL_SOURCES = (*SOURCES, "perturbation", "response")


@dataclass(frozen=True)
class GeneFeatures:
    """A genes × features matrix whose columns are named ``source:name``."""

    genes: np.ndarray
    matrix: np.ndarray
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "genes", np.asarray(self.genes).astype(str))
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape != (len(self.genes), len(self.columns)):
            raise InputError(
                f"gene features: matrix shape {m.shape} does not match "
                f"{len(self.genes)} genes × {len(self.columns)} columns"
            )
        if not np.isfinite(m).all():
            raise InputError("gene features contain NaN or infinite values")
        object.__setattr__(self, "matrix", m)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.split(":", 1)[0] for c in self.columns))

    def select(self, sources: Sequence[str]) -> GeneFeatures:
        """Only the columns of ``sources`` (unknown names are ignored; none left → 0 columns)."""
        keep = [i for i, c in enumerate(self.columns) if c.split(":", 1)[0] in set(sources)]
        return GeneFeatures(self.genes, self.matrix[:, keep], tuple(self.columns[i] for i in keep))

    def align(self, genes: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows for ``genes`` (zeros for genes without features)."""
        pos = {g: i for i, g in enumerate(self.genes)}
        out = np.zeros((len(genes), self.matrix.shape[1]))
        for k, g in enumerate(genes):
            i = pos.get(g)
            if i is not None:
                out[k] = self.matrix[i]
        return out

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update("\0".join(self.genes).encode())
        h.update("\0".join(self.columns).encode())
        h.update(np.ascontiguousarray(self.matrix).tobytes())
        return h.hexdigest()


def empty_features(genes: Sequence[str]) -> GeneFeatures:
    return GeneFeatures(np.asarray(genes, dtype=str), np.zeros((len(genes), 0)), ())


def combine(*parts: GeneFeatures) -> GeneFeatures:
    """Column-wise union over the genes of the first part."""
    if not parts:
        raise InputError("combine() needs at least one feature set")
    genes = parts[0].genes
    mats = [parts[0].matrix] + [p.align(genes) for p in parts[1:]]
    cols = tuple(c for p in parts for c in p.columns)
    return GeneFeatures(genes, np.hstack(mats), cols)


def _symbols(adata) -> np.ndarray:
    names = np.asarray(adata.var_names).astype(str)
    if "gene_symbol" in adata.var.columns:
        sym = adata.var["gene_symbol"].astype(str).to_numpy()
        return np.where(sym != "nan", sym, names)
    return names


def expression_features(
    genes: Sequence[str] | np.ndarray,
    adata,
    *,
    n_components: int = 16,
    min_cells: int = 3,
    seed: int = 0,
) -> GeneFeatures:
    """``expression`` and ``coexpression`` features of ``genes`` from a counts AnnData.

    Parameters
    ----------
    genes
        The screen's gene symbols (rows of the result, in this order).
    adata
        Cells × genes with raw counts in ``X`` and symbols in ``var_names`` (or ``var['gene_symbol']``).
    n_components
        Components of the co-expression SVD.
    min_cells
        Genes detected in fewer cells count as absent.
    """
    from sklearn.decomposition import TruncatedSVD

    genes = np.asarray(genes, dtype=str)
    X = adata.X
    X = sp.csr_matrix(X, dtype=np.float64) if not sp.issparse(X) else X.tocsr().astype(np.float64)
    if X.shape[0] < 10:
        raise InputError(f"expression data: {X.shape[0]} cells; at least 10 are needed")
    if X.data.size and (X.data < 0).any():
        raise InputError("expression data: negative values in X; counts are needed")
    lib = np.asarray(X.sum(axis=1)).ravel()
    lib[lib == 0] = 1.0
    Xn = sp.diags(1e4 / lib) @ X
    Xn.data = np.log1p(Xn.data)
    detected = np.asarray((X > 0).sum(axis=0)).ravel()
    keep = detected >= min_cells
    sym = _symbols(adata)
    # first occurrence of a symbol wins
    first: dict[str, int] = {}
    for j, s in enumerate(sym):
        if keep[j] and s not in first:
            first[s] = j
    cols = np.array(sorted(first.values()), dtype=np.int64)
    if len(cols) < n_components + 2:
        raise InputError(f"expression data: only {len(cols)} genes detected in ≥{min_cells} cells")
    Xk = Xn[:, cols]
    mean = np.asarray(Xk.mean(axis=0)).ravel()
    sq = np.asarray(Xk.multiply(Xk).mean(axis=0)).ravel()
    sd = np.sqrt(np.maximum(sq - mean**2, 1e-12))
    Xs = Xk @ sp.diags(1.0 / sd)
    svd = TruncatedSVD(n_components=n_components, random_state=seed)
    svd.fit(Xs)
    loadings = svd.components_.T * svd.singular_values_ / np.sqrt(Xs.shape[0])  # genes × k
    loadings /= np.abs(loadings).max(axis=0, keepdims=True) + 1e-12
    row = {sym[j]: k for k, j in enumerate(cols)}
    n_cells = X.shape[0]
    feats = np.zeros((len(genes), 3 + n_components))
    for i, g in enumerate(genes):
        k = row.get(g)
        if k is None:
            continue
        j = cols[k]
        feats[i, 0] = 1.0
        feats[i, 1] = np.log1p(mean[k])
        feats[i, 2] = detected[j] / n_cells
        feats[i, 3:] = loadings[k]
    names = (
        "expression:present",
        "expression:log_mean",
        "expression:detected",
        *tuple(f"coexpression:c{c + 1}" for c in range(n_components)),
    )
    return GeneFeatures(genes, feats, names)


def embedding_features(
    genes: Sequence[str] | np.ndarray, model: str | Path, *, n_components: int = 16
) -> GeneFeatures:
    """``embedding`` features: the cell model's input gene embeddings, PCA-reduced."""
    from sklearn.decomposition import PCA

    from lifelm.data.cells.genes import gene_table
    from lifelm.data.cells.tokenizer import N_SPECIAL
    from lifelm.tasks.cells.model_io import load_cell_model

    cm = load_cell_model(model)
    weight = cm.trunk.gene_embedding.weight.detach().cpu().numpy().astype(np.float64)
    tok = cm.tokenizer
    table = gene_table(tok.species)
    sym_row: dict[str, int] = {}
    for i, gid in enumerate(tok.genes):
        s = table.id_to_symbol.get(str(gid), str(gid))
        sym_row.setdefault(s, N_SPECIAL + i)
    genes = np.asarray(genes, dtype=str)
    hit = [sym_row.get(g) for g in genes]
    rows = sorted({r for r in hit if r is not None})
    if len(rows) < n_components + 2:
        raise InputError(
            f"{model}: only {len(rows)} of {len(genes)} screen genes are in the model's vocabulary; "
            "gene embeddings cannot serve as features"
        )
    pca = PCA(n_components=n_components, random_state=0).fit(weight[rows])
    z = pca.transform(weight[rows])
    z /= np.abs(z).max(axis=0, keepdims=True) + 1e-12
    pos = {r: k for k, r in enumerate(rows)}
    feats = np.zeros((len(genes), 1 + n_components))
    for i, r in enumerate(hit):
        if r is not None:
            feats[i, 0] = 1.0
            feats[i, 1:] = z[pos[r]]
    names = ("embedding:present", *tuple(f"embedding:e{c + 1}" for c in range(n_components)))
    return GeneFeatures(genes, feats, names)
