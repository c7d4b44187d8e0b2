"""Dataset upload: stream to a temporary file with the size limit enforced while reading,
hash (SHA-256) as it streams, validate with LifeLM's own readers, then move into place.

Nothing half-written stays: the temporary file (and an archive's extraction folder) is removed
on every error path (too large, invalid, client gone). Stored files are content-addressed
(``<sha256><suffix>``); a corpus-store archive is extracted to ``<sha256>.corpus/``.

Kinds: ``h5ad``; ``fasta`` (plain, .gz, .xz); ``table`` (.tsv, .csv, .txt: screens, label
tables, gene lists, embeddings); ``corpus`` (a ``.tar``/``.tar.gz``/``.tgz`` of a
``lifelm cells corpus build`` output folder; only regular files and folders are extracted).
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
    ".tsv": "table",
    ".csv": "table",
    ".txt": "table",
    ".tar": "corpus",
    ".tar.gz": "corpus",
    ".tgz": "corpus",
}
MAX_ARCHIVE_MEMBERS = 100_000


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
        if kind == "table":
            return _table_facts(path)
        if kind == "corpus":
            raise UploadError(500, "corpus archives are validated by extract_corpus")
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


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def place(tmp: Path, store: Path, sha256: str, suffix: str) -> Path:
    """Move a validated upload to its content address (an identical file is kept once)."""
    store.mkdir(parents=True, exist_ok=True)
    dest = store / f"{sha256}{suffix}"
    if dest.exists():
        tmp.unlink()
    else:
        os.replace(tmp, dest)
    return dest


def _table_facts(path: Path) -> dict[str, Any]:
    """A .tsv/.csv must parse as a table with a header and at least one row; a .txt is a list
    of non-empty UTF-8 lines (a gene or name list)."""
    if path.suffix == ".txt":
        try:
            lines = [x.strip() for x in path.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as e:
            raise UploadError(422, f"not UTF-8 text ({e})") from None
        items = [x for x in lines if x]
        if not items:
            raise UploadError(422, "no lines: a list needs one name a line")
        return {"lines": len(items)}
    import pandas as pd

    sep = "\t" if path.suffix == ".tsv" else ","
    try:
        df = pd.read_csv(path, sep=sep, comment=None, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UploadError(422, f"not a readable {path.suffix[1:].upper()} table ({e})") from None
    if df.empty or df.shape[1] < 1:
        raise UploadError(422, "a table needs a header line and at least one row")
    return {"rows": int(df.shape[0]), "columns": [str(c) for c in df.columns[:50]]}


def _refuse(member: str, why: str) -> UploadError:
    return UploadError(422, f"archive member {member!r} {why}; refused (nothing was stored)")


def extract_corpus(archive: Path, dest: Path, limit: int) -> dict[str, Any]:
    """Extract a corpus-store archive into ``dest`` and check it with LifeLM's store reader.

    Only regular files and folders are accepted: absolute paths, ``..``, links (symbolic or
    hard), devices and FIFOs are refused, as are more than ``MAX_ARCHIVE_MEMBERS`` members or
    more than ``limit`` bytes once extracted. The store may sit at the archive's top level or
    in one top folder. The store is then opened with :class:`~lifelm.data.store.store.CorpusStore`
    and every shard checked against its recorded SHA-256. On any error ``dest`` is removed.
    """
    import shutil
    import tarfile

    try:
        try:
            tar = tarfile.open(archive, "r:*")  # noqa: SIM115 (closed by the `with` below)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UploadError(422, f"not a tar archive ({e})") from None
        with tar:
            members = []
            total = 0
            try:
                for m in tar:
                    members.append(m)
                    if len(members) > MAX_ARCHIVE_MEMBERS:
                        raise UploadError(422, f"more than {MAX_ARCHIVE_MEMBERS} members")
                    name = m.name
                    parts = Path(name).parts
                    if name.startswith(("/", "\\")) or Path(name).is_absolute():
                        raise _refuse(name, "has an absolute path")
                    if ".." in parts or "\x00" in name:
                        raise _refuse(name, "leaves the archive's folder ('..')")
                    if m.issym() or m.islnk():
                        raise _refuse(name, "is a link")
                    if not (m.isfile() or m.isdir()):
                        raise _refuse(name, "is a device, FIFO or other special file")
                    total += m.size
                    if total > limit:
                        raise UploadError(413, f"archive unpacks to more than {limit} bytes")
            except (tarfile.TarError, EOFError, OSError) as e:
                raise UploadError(422, f"damaged archive ({e})") from None
            dest.mkdir(parents=True)
            try:
                # every member was checked above; the 'data' filter checks them once more
                tar.extractall(dest, members=members, filter="data")
            except (tarfile.TarError, EOFError, OSError) as e:
                raise UploadError(422, f"damaged archive ({e})") from None
        root = dest
        tops = list(dest.iterdir())
        if not (dest / "corpus.json").exists() and len(tops) == 1 and tops[0].is_dir():
            root = tops[0]
        return corpus_facts(root) | {"root": str(root.relative_to(dest))}
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def corpus_facts(folder: Path) -> dict[str, Any]:
    """Open a corpus store with LifeLM's reader, check every shard's SHA-256; return its card."""
    from lifelm._core.errors import LifeLMError
    from lifelm.data.store.store import CorpusStore

    try:
        store = CorpusStore(folder)
        store.check()
        tok = store.tokenizer()
    except (LifeLMError, ValueError, OSError, KeyError) as e:
        raise UploadError(422, f"not a finished corpus store: {e}") from None
    return {
        "cells": len(store),
        "genes": len(tok.genes),
        "tokens": int(store.info["n_tokens"]),
        "shards": len(store.shards),
        "tokenizer_sha256": tok.hash(),
    }


def tree_digest(folder: Path) -> str:
    """SHA-256 over a folder's files (relative path and content), in sorted order."""
    digest = hashlib.sha256()
    for p in sorted(x for x in folder.rglob("*") if x.is_file()):
        digest.update(str(p.relative_to(folder)).encode() + b"\0")
        with open(p, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def place_folder(src: Path, store: Path, sha256: str, *, link: bool) -> Path:
    """Put a validated store folder at its content address (hard links when ``link``)."""
    import shutil

    store.mkdir(parents=True, exist_ok=True)
    dest = store / f"{sha256}.corpus"
    if dest.exists():
        if not link:
            shutil.rmtree(src, ignore_errors=True)
        return dest
    if link:
        tmp = store / f".{sha256}.corpus.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, copy_function=os.link)
        os.replace(tmp, dest)
    else:
        os.replace(src, dest)
    return dest
