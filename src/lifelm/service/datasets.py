"""Dataset upload: stream to a temporary file with the size limit enforced while reading,
hash (SHA-256) as it streams, validate with LifeLM's own readers, then move into place.

Nothing half-written stays: the temporary file is removed on every error path (too large,
invalid, client gone). Stored files are content-addressed (``<sha256><suffix>``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MIN_GENE_IDENTITY = 0.5  # the tokenizer's default vocabulary coverage threshold
SUFFIXES = {
    ".h5ad": "h5ad",
    ".fa": "fasta",
    ".fasta": "fasta",
    ".fna": "fasta",
    ".fa.gz": "fasta",
    ".fasta.gz": "fasta",
    ".fna.gz": "fasta",
    ".fa.xz": "fasta",
    ".fasta.xz": "fasta",
    ".fna.xz": "fasta",
}


class UploadError(Exception):
    """An upload refused: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_name(name: str) -> tuple[str, str]:
    """Return ``(kind, suffix)`` of a dataset name, refusing paths and unknown formats."""
    if not NAME.match(name) or ".." in name:
        raise UploadError(
            422,
            f"dataset name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
            "(no '/', no '..', at most 128 characters)",
        )
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return SUFFIXES[suffix], suffix
    raise UploadError(
        422,
        f"dataset name {name!r} has no known suffix; expected one of {', '.join(SUFFIXES)}",
    )


async def receive(chunks: AsyncIterator[bytes], tmp: Path, limit: int) -> tuple[str, int]:
    """Write ``chunks`` to ``tmp``; stop and remove it as soon as ``limit`` bytes are passed."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as fh:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise UploadError(
                        413, f"upload larger than the server's limit of {limit} bytes; refused"
                    )
                digest.update(chunk)
                fh.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if size == 0:
        tmp.unlink(missing_ok=True)
        raise UploadError(422, "empty upload")
    return digest.hexdigest(), size


def validate(path: Path, kind: str, name: str) -> dict[str, Any]:
    """Check the file with LifeLM's readers; return the card's facts. Errors name ``name``.

    h5ad: read it and find raw counts (log-normalised data is refused with the CLI's message);
    gene identities are mapped as the tokenizer maps them and the coverage is reported.
    FASTA: every record parsed with the strict reader (alphabet, headers, duplicates).
    """
    from lifelm._core.errors import LifeLMError

    try:
        if kind == "h5ad":
            return _h5ad_facts(path)
        return _fasta_facts(path)
    except UploadError as e:
        raise UploadError(e.status, f"{name}: {e}") from None
    except (LifeLMError, ValueError, OSError) as e:
        raise UploadError(422, str(e).replace(str(path), name)) from None


def _h5ad_facts(path: Path) -> dict[str, Any]:
    from lifelm.data.cells.counts import find_counts
    from lifelm.io.h5ad import read_h5ad

    adata = read_h5ad(path)
    src = find_counts(adata)
    facts: dict[str, Any] = {"cells": int(adata.n_obs), "genes": int(adata.n_vars)}
    facts["counts"] = src.where
    from lifelm.data.cells.genes import map_genes

    mapping = map_genes(adata.var)
    if mapping.mapped_fraction < MIN_GENE_IDENTITY:
        raise UploadError(
            422,
            f"only {mapping.mapped_fraction:.0%} of its {mapping.n_vars} genes map to Ensembl IDs "
            f"({mapping.summary()}); below {MIN_GENE_IDENTITY:.0%} no LifeLM model can read it: "
            "put Ensembl IDs or GENCODE symbols in var_names or var['gene_ids']",
        )
    facts["gene_mapping"] = mapping.summary()
    facts["species"] = mapping.species
    return facts


def _fasta_facts(path: Path) -> dict[str, Any]:
    from lifelm.io.fasta import iter_fasta

    n = total = 0
    for rec in iter_fasta(path):
        n += 1
        total += len(rec.sequence)
    return {"genomes": n, "bases": total}


def place(tmp: Path, store: Path, sha256: str, suffix: str) -> Path:
    """Move a validated upload to its content address (an identical file is kept once)."""
    store.mkdir(parents=True, exist_ok=True)
    dest = store / f"{sha256}{suffix}"
    if dest.exists():
        tmp.unlink()
    else:
        os.replace(tmp, dest)
    return dest
