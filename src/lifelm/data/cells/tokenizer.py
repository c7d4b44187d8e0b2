"""Geneformer-style rank-value encoding of single-cell transcriptomes.

A cell becomes the list of its expressed genes ordered by normalised expression, highest first:

1. counts are library-size normalised (``count / total * 10,000``);
2. each gene is divided by its *non-zero median* over the training corpus, so that
   housekeeping genes that are high everywhere rank below genes that are high *for this cell*;
3. genes are sorted in descending order and truncated to the context length (default 2,048
   tokens including ``[CLS]``).

Step 1 multiplies a whole row by one number, so it changes the corpus medians but not the order
within a cell; the encoder therefore ranks ``count / median`` directly. Ties are broken by
vocabulary order, so the output is deterministic.

Everything works on whole CSR blocks: columns are relabelled by index (no per-cell Python loop)
and each row is sorted by a compiled, parallel kernel (numba, which scanpy already brings). The vocabulary (Ensembl IDs), the medians and the settings are saved with
every checkpoint and hashed, so a model never reads tokens made by another tokenizer.

References: Theodoris et al., *Nature* 618, 616–624 (2023) (Geneformer).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import anndata as ad
import numba
import numpy as np
import scipy.sparse as sp

from lifelm._core.errors import LifeLMError
from lifelm._core.runtime import get_logger
from lifelm.data.cells.counts import check_counts_block, find_counts
from lifelm.data.cells.genes import (
    ID_COLUMNS,
    GeneMapping,
    GeneMappingError,
    Species,
    detect_species,
    map_genes,
)

log = get_logger("lifelm.tokenizer")

PAD, MASK, CLS = 0, 1, 2
SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[CLS]")
N_SPECIAL = len(SPECIAL_TOKENS)
TOKENIZER_KIND = "rank_value_v1"
PANEL_WARN = 0.5  # warn when the data measures fewer than this fraction of the vocabulary genes


class TokenizerError(LifeLMError, ValueError):
    """Input that cannot be tokenized as asked (coverage, empty cells, bad values)."""


@dataclass
class TokenizedCells:
    """Ragged token lists, one per cell, without ``[CLS]`` (the collate adds it).

    ``tokens[offsets[i]:offsets[i + 1]]`` are cell ``i``'s gene tokens, highest rank first.
    """

    tokens: np.ndarray  # (total,) int32 token ids
    offsets: np.ndarray  # (n_cells + 1,) int64
    obs_names: np.ndarray  # (n_cells,) cell names, as in the source
    n_genes: np.ndarray  # (n_cells,) expressed vocabulary genes before truncation
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def _gather(
        self, index: np.ndarray, lens: np.ndarray, report: dict[str, Any] | None = None
    ) -> TokenizedCells:
        """The first ``lens[k]`` tokens of each cell ``index[k]``: the one ragged gather."""
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        take = np.repeat(self.offsets[index] - offsets[:-1], lens) + np.arange(offsets[-1])
        return TokenizedCells(
            tokens=self.tokens[take],
            offsets=offsets,
            obs_names=self.obs_names[index],
            n_genes=self.n_genes[index],
            report=dict(self.report if report is None else report),
        )

    def subset(self, index: np.ndarray) -> TokenizedCells:
        """Cells at ``index`` (integer positions), keeping their order."""
        index = np.asarray(index, dtype=np.int64)
        return self._gather(index, self.lengths()[index])

    def truncate(self, max_genes: int) -> TokenizedCells:
        """Every cell cut to its first ``max_genes`` tokens (``self`` when none is longer)."""
        lens = self.lengths()
        if len(lens) == 0 or lens.max() <= max_genes:
            return self
        return self._gather(np.arange(len(self), dtype=np.int64), np.minimum(lens, max_genes))

    @classmethod
    def concat(
        cls, parts: Sequence[TokenizedCells], report: dict[str, Any] | None = None
    ) -> TokenizedCells:
        """The cells of ``parts`` one after another (``report`` becomes the merged report)."""
        if not parts:
            raise ValueError("concat needs at least one TokenizedCells")
        lens = np.concatenate([p.lengths() for p in parts])
        return cls(
            tokens=np.concatenate([p.tokens[p.offsets[0] : p.offsets[-1]] for p in parts]),
            offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            obs_names=np.concatenate([p.obs_names for p in parts]),
            n_genes=np.concatenate([p.n_genes for p in parts]),
            report=dict(report or {}),
        )


@numba.njit(parallel=True, cache=True)
def _rank_rows(
    indptr: np.ndarray,
    vcol: np.ndarray,
    bits: np.ndarray,
    keys: np.ndarray,
    n_valid: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Per row: one 64-bit key per expressed vocabulary gene, sorted ascending in place.

    The key's high half is the float32 bit pattern of the normalised value, inverted so that larger
    values sort first (positive IEEE floats order like their bits); the low half is the vocabulary
    index, which breaks ties. Row ``r``'s sorted keys occupy ``keys[indptr[r] : indptr[r] + n_valid[r]]``.
    """
    for r in numba.prange(len(indptr) - 1):
        s = indptr[r]
        m = 0
        for k in range(s, indptr[r + 1]):
            if vcol[k] >= 0 and bits[k] != 0:
                high = np.uint64(0xFFFFFFFF) - np.uint64(bits[k])
                keys[s + m] = (high << np.uint64(32)) | np.uint64(vcol[k])
                m += 1
        keys[s : s + m].sort()
        n_valid[r] = m


@numba.njit(parallel=True, cache=True)
def _gather_tokens(
    indptr: np.ndarray, keys: np.ndarray, out_offsets: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Copy the gene (low 32 bits) of each row's first keys into the ragged token array."""
    for r in numba.prange(len(indptr) - 1):
        s = indptr[r]
        start = out_offsets[r]
        for k in range(out_offsets[r + 1] - start):
            out[start + k] = np.int32(keys[s + k] & np.uint64(0xFFFFFFFF)) + N_SPECIAL


def rank_block(
    block: sp.csr_matrix, col_to_vocab: np.ndarray, inv_median: np.ndarray, max_genes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank-value encode a CSR block of raw counts in the dataset's own column order.

    Parameters
    ----------
    block
        (cells, genes) counts.
    col_to_vocab
        (genes,) vocabulary index of each column, -1 for genes outside the vocabulary.
    inv_median
        (vocab,) ``1 / median`` per vocabulary gene.
    max_genes
        Keep at most this many genes per cell.

    Returns
    -------
    tokens, offsets, n_genes
        Gene token ids (``N_SPECIAL + vocabulary index``) per cell, highest normalised value first,
        and the number of expressed vocabulary genes per cell before truncation.

    Values are computed and compared in float32 (the precision of the float32 matrices Geneformer
    ranks). Several columns mapping to one gene are summed first; only their entries are touched.
    """
    indptr = block.indptr.astype(np.int64, copy=False)
    vcol = col_to_vocab.astype(np.int32, copy=False)[block.indices]  # (nnz,)
    data = _merge_duplicate_genes(block, vcol, col_to_vocab, len(inv_median))
    inv_ext = np.append(inv_median, 0.0).astype(np.float32)  # index -1 (not in vocabulary) reads 0
    bits = np.multiply(data, inv_ext[vcol], dtype=np.float32).view(np.uint32)  # (nnz,)
    keys = np.empty(len(bits), dtype=np.uint64)
    n_valid = np.empty(block.shape[0], dtype=np.int64)
    _rank_rows(indptr, vcol, bits, keys, n_valid)
    offsets = np.concatenate([[0], np.cumsum(np.minimum(n_valid, max_genes))]).astype(np.int64)
    tokens = np.empty(int(offsets[-1]), dtype=np.int32)
    _gather_tokens(indptr, keys, offsets, tokens)
    return tokens, offsets, n_valid


def _merge_duplicate_genes(
    block: sp.csr_matrix, vcol: np.ndarray, col_to_vocab: np.ndarray, n_vocab: int
) -> np.ndarray:
    """Block data with the counts of duplicated genes summed into their first entry (others 0)."""
    sources = np.bincount(col_to_vocab[col_to_vocab >= 0], minlength=n_vocab)
    dup_col = (col_to_vocab >= 0) & (sources[np.maximum(col_to_vocab, 0)] > 1)
    if not dup_col.any():
        return block.data
    sel = np.flatnonzero(dup_col[block.indices])
    data = block.data.copy()
    rows = np.searchsorted(block.indptr, sel, side="right") - 1
    _, first, inverse = np.unique(
        rows * n_vocab + vcol[sel].astype(np.int64), return_index=True, return_inverse=True
    )
    summed = np.bincount(inverse, weights=data[sel])
    data[sel] = 0
    data[sel[first]] = summed.astype(data.dtype)
    return data


def to_vocab_columns(block: sp.csr_matrix, col_to_vocab: np.ndarray, n_vocab: int) -> sp.csr_matrix:
    """Relabel a CSR block's columns into vocabulary order, duplicates summed, other genes dropped."""
    vcol = col_to_vocab[block.indices]
    data = _merge_duplicate_genes(block, vcol, col_to_vocab, n_vocab)
    keep = (vcol >= 0) & (data != 0)
    kept_before = np.concatenate([[0], np.cumsum(keep)])
    return sp.csr_matrix(
        (data[keep], vcol[keep], kept_before[block.indptr]), shape=(block.shape[0], n_vocab)
    )


def _segment_medians(cols: np.ndarray, vals: np.ndarray, n_cols: int) -> np.ndarray:
    """Exact median of ``vals`` within each column id (0 where a column has no values)."""
    order = np.lexsort((vals, cols))
    cols, vals = cols[order], vals[order]
    counts = np.bincount(cols, minlength=n_cols)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    med = np.zeros(n_cols)
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    med[has] = 0.5 * (vals[lo] + vals[hi])
    return med


@dataclass
class RankValueTokenizer:
    """Rank-value tokenizer with a corpus-derived vocabulary and gene medians.

    Use :meth:`fit` on the training corpus, then :meth:`encode` on any AnnData whose genes can be
    mapped to the same Ensembl IDs. :meth:`to_dict` / :meth:`from_dict` round-trip it through a
    checkpoint's ``config.json``.
    """

    genes: np.ndarray  # (V,) Ensembl IDs; token id of genes[i] is N_SPECIAL + i
    medians: np.ndarray  # (V,) non-zero median of count/total*target_sum over the corpus
    species: Species = "homo_sapiens"
    gencode_version: str = ""
    max_length: int = 2048  # tokens per cell including [CLS]
    target_sum: float = 10_000.0  # library size that counts are scaled to before medians
    min_coverage: float = 0.5  # error when fewer genes of a dataset are in the vocabulary

    def __post_init__(self) -> None:
        self.genes = np.asarray(self.genes).astype(str)
        self.medians = np.asarray(self.medians, dtype=np.float64)
        if len(self.genes) != len(self.medians):
            raise TokenizerError("genes and medians differ in length")
        if (self.medians <= 0).any():
            raise TokenizerError("every vocabulary gene needs a positive median")
        if self.species not in get_args(Species):
            raise TokenizerError(
                f"tokenizer species {self.species!r}; one of {', '.join(get_args(Species))}"
            )
        self.vocab = {g: i for i, g in enumerate(self.genes)}
        self._inv_median = 1.0 / self.medians

    @property
    def vocab_size(self) -> int:
        """Number of token ids (special tokens included)."""
        return N_SPECIAL + len(self.genes)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        corpus: ad.AnnData | Iterable[ad.AnnData],
        *,
        layer: str | None = None,
        min_cells: int = 1,
        max_length: int = 2048,
        target_sum: float = 10_000.0,
        species: Literal["auto", "homo_sapiens", "mus_musculus"] = "auto",
        min_mapped: float = 0.5,
    ) -> RankValueTokenizer:
        """Build the vocabulary and the non-zero medians from a corpus.

        Parameters
        ----------
        corpus
            One AnnData or several (in memory or backed); raw counts are located with
            :func:`~lifelm.data.cells.counts.find_counts`.
        layer
            Where the counts are, if not found automatically.
        min_cells
            A gene enters the vocabulary when it is expressed in at least this many cells.
        max_length
            Context length (tokens per cell including ``[CLS]``).
        target_sum
            Library size the counts are scaled to before medians are taken.
        species
            ``"auto"`` reads it from Ensembl prefixes.
        min_mapped
            Error when a dataset has fewer genes than this fraction mappable to Ensembl IDs.
        """
        datasets = [corpus] if isinstance(corpus, ad.AnnData) else list(corpus)
        if not datasets:
            raise TokenizerError("empty corpus")
        for a in datasets:
            check_shape(a, str(a.filename) if a.isbacked else "the AnnData")
        mappings = [_checked_mapping(a, species=species, min_mapped=min_mapped) for a in datasets]
        genes = np.unique(np.concatenate([m.unique_ids() for m in mappings]))
        vocab = {g: i for i, g in enumerate(genes)}
        all_cols, all_vals = [], []
        for adata, mapping in zip(datasets, mappings, strict=True):
            src = find_counts(adata, layer)
            col_to_vocab = np.array([vocab.get(g, -1) for g in mapping.ids], dtype=np.int64)
            for start, block in src.chunks():
                _check_values(block, src.where, start)
                total = np.asarray(block.sum(axis=1)).ravel()
                mapped = to_vocab_columns(block, col_to_vocab, len(genes))
                rows = np.repeat(np.arange(mapped.shape[0]), np.diff(mapped.indptr))
                scale = target_sum / np.maximum(total[rows], 1e-12)
                all_cols.append(mapped.indices.astype(np.int64))
                all_vals.append(mapped.data.astype(np.float64) * scale)
        cols = np.concatenate(all_cols)
        vals = np.concatenate(all_vals)
        n_cells_expr = np.bincount(cols, minlength=len(genes))
        medians = _segment_medians(cols, vals, len(genes))
        keep = (n_cells_expr >= min_cells) & (medians > 0)
        log.info(
            "vocabulary: %d genes (%d dropped, expressed in < %d cells); corpus %d cells",
            keep.sum(),
            (~keep).sum(),
            min_cells,
            sum(a.n_obs for a in datasets),
        )
        return cls(
            genes=genes[keep],
            medians=medians[keep],
            species=mappings[0].species,
            gencode_version=mappings[0].table_version,
            max_length=max_length,
            target_sum=target_sum,
        )

    # ----------------------------------------------------------------- encoding
    def map_dataset(self, adata: ad.AnnData) -> GeneMapping:
        """Map ``adata``'s genes and check vocabulary coverage (error below ``min_coverage``)."""
        where = str(adata.filename) if adata.isbacked else "the AnnData"
        check_shape(adata, where)
        data_species = detect_species(adata.var_names)
        for col in ID_COLUMNS:
            if data_species == "homo_sapiens" and col in adata.var:
                data_species = detect_species(adata.var[col].dropna().astype(str).tolist())
        if data_species != self.species:
            raise TokenizerError(
                f"{where}: genes are {data_species} Ensembl IDs but the model was trained on "
                f"{self.species} genes; use a {data_species} model or pretrain one on this data."
            )
        mapping = _checked_mapping(adata, species=self.species, min_mapped=0.0)
        in_vocab = np.array([g in self.vocab for g in mapping.ids])
        coverage = in_vocab.mean() if len(in_vocab) else 0.0
        if coverage < self.min_coverage:
            raise TokenizerError(
                f"{where}: only {coverage:.0%} of its {mapping.n_vars} genes are in the model "
                f"vocabulary ({len(self.genes)} {self.species} genes; {mapping.summary()}). "
                f"Below {self.min_coverage:.0%} the model sees too little of each cell: check that "
                "the species matches, that var_names hold Ensembl IDs or official symbols (or "
                f"that a var column named one of {', '.join(ID_COLUMNS)} holds Ensembl IDs), "
                "or fine-tune on data with these genes."
            )
        panel = len({g for g in mapping.ids if g in self.vocab}) / max(1, len(self.genes))
        if panel < PANEL_WARN:
            log.warning(
                "%s: the data measures %d of the model's %d vocabulary genes (%.0f%%): a "
                "targeted panel. Embeddings and predictions see only these genes and are not "
                "comparable with whole-transcriptome cells; check results against a baseline "
                "fitted on this data.",
                where,
                round(panel * len(self.genes)),
                len(self.genes),
                100 * panel,
            )
        return mapping

    def encode(
        self,
        adata: ad.AnnData,
        *,
        layer: str | None = None,
        chunk: int = 8192,
    ) -> TokenizedCells:
        """Tokenize every cell of ``adata`` (in memory or backed), in row blocks.

        Cells keep their order; cells with no vocabulary gene get an empty token list (their
        count is in ``report["empty_cells"]``) so that results still line up with ``adata.obs``.
        """
        mapping = self.map_dataset(adata)
        src = find_counts(adata, layer)
        col_to_vocab = np.array([self.vocab.get(g, -1) for g in mapping.ids], dtype=np.int32)
        toks, offs, ngenes = [], [np.zeros(1, dtype=np.int64)], []
        base = 0
        for start, block in src.chunks(chunk):
            _check_values(block, src.where, start)
            t, o, g = rank_block(block, col_to_vocab, self._inv_median, self.max_length - 1)
            toks.append(t)
            offs.append(o[1:] + base)
            ngenes.append(g)
            base += int(o[-1])
        n_genes = np.concatenate(ngenes) if ngenes else np.zeros(0, dtype=np.int64)
        report = {
            "counts_source": src.where,
            "genes": mapping.summary(),
            "n_cells": int(adata.n_obs),
            "empty_cells": int((n_genes == 0).sum()),
            "truncated_cells": int((n_genes > self.max_length - 1).sum()),
            "median_genes_per_cell": float(np.median(n_genes)) if len(n_genes) else 0.0,
            "vocab_genes_measured": int(np.unique(col_to_vocab[col_to_vocab >= 0]).size),
            "vocab_genes": len(self.genes),
        }
        return TokenizedCells(
            tokens=np.concatenate(toks) if toks else np.zeros(0, dtype=np.int32),
            offsets=np.concatenate(offs),
            obs_names=np.asarray(adata.obs_names).astype(str),
            n_genes=n_genes,
            report=report,
        )

    # ------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable identity: saved in every checkpoint's ``config.json``."""
        return {
            "kind": TOKENIZER_KIND,
            "special_tokens": list(SPECIAL_TOKENS),
            "species": self.species,
            "gencode_version": self.gencode_version,
            "max_length": self.max_length,
            "target_sum": self.target_sum,
            "min_coverage": self.min_coverage,
            "genes": self.genes.tolist(),
            "medians": [float(m) for m in self.medians],
            "sha256": self.hash(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RankValueTokenizer:
        """Rebuild from :meth:`to_dict`; the stored hash must match."""
        if d.get("kind") != TOKENIZER_KIND:
            raise TokenizerError(f"tokenizer kind {d.get('kind')!r} is not {TOKENIZER_KIND!r}")
        tok = cls(
            genes=np.asarray(d["genes"]),
            medians=np.asarray(d["medians"]),
            species=d["species"],
            gencode_version=d.get("gencode_version", ""),
            max_length=int(d["max_length"]),
            target_sum=float(d["target_sum"]),
            min_coverage=float(d.get("min_coverage", 0.5)),
        )
        if "sha256" in d and d["sha256"] != tok.hash():
            raise TokenizerError(
                "tokenizer hash mismatch: the vocabulary or medians in config.json were edited"
            )
        return tok

    @classmethod
    def from_file(cls, path: str | Path) -> RankValueTokenizer:
        """Read a ``tokenizer.json`` (of a run or a store) or a model folder's ``config.json``."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            return cls.from_dict(d.get("tokenizer", d))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise TokenizerError(
                f"{path}: not a LifeLM tokenizer ({type(e).__name__}: {e}); give the "
                "tokenizer.json of a run or store, or a model folder's config.json."
            ) from None

    def hash(self) -> str:
        """SHA-256 over the vocabulary, medians and settings."""
        h = hashlib.sha256()
        h.update(
            json.dumps([TOKENIZER_KIND, self.species, self.max_length, self.target_sum]).encode()
        )
        h.update("\n".join(self.genes).encode())
        h.update(np.round(self.medians, 9).astype("<f8").tobytes())
        return h.hexdigest()


def _check_values(block: sp.csr_matrix, where: str, start: int = 0) -> None:
    """Every block read is checked to be raw counts (see :func:`check_counts_block`)."""
    check_counts_block(block, where, start)


def check_shape(adata: ad.AnnData, where: str) -> None:
    """Refuse an AnnData with no cells or no genes (nothing to tokenize)."""
    if adata.n_obs == 0:
        raise TokenizerError(
            f"{where}: 0 cells (X is 0 × {adata.n_vars}); nothing to tokenize. Check the file "
            "(was it filtered to nothing?) and pass a dataset with cells."
        )
    if adata.n_vars == 0:
        raise TokenizerError(
            f"{where}: 0 genes (X is {adata.n_obs} × 0); nothing to tokenize. Check the file "
            "(was var filtered to nothing?) and pass a dataset with genes."
        )


def _checked_mapping(
    adata: ad.AnnData, *, species: Species | Literal["auto"], min_mapped: float
) -> GeneMapping:
    mapping = map_genes(adata.var, species=species)
    where = str(adata.filename) if adata.isbacked else "the AnnData"
    if mapping.n_mapped == 0 or mapping.mapped_fraction < min_mapped:
        raise GeneMappingError(
            f"{where}: {mapping.summary()}. Fewer than {min_mapped:.0%} of the genes could be "
            "identified: put Ensembl IDs in var (e.g. var['gene_ids']) or official "
            f"{mapping.species} symbols in var_names."
        )
    if mapping.unmapped:
        log.info("%s: %s", where, mapping.summary())
    return mapping
