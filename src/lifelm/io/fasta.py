"""FASTA reading and writing (plain, gzip, xz), strict validation and a metadata join.

The reader streams one record at a time, so a file of any size reads in constant memory. It
checks what breaks downstream tools silently and says where: a sequence line before the first
header, an empty record, a character outside the IUPAC nucleotide alphabet, a duplicated name.
Lower-case bases are accepted and upper-cased, and every record that had them is reported
(``FastaRecord.had_lowercase`` and a log line): soft-masked or lower-case input is common and
harmless, but GenSLM turned it into unknown tokens without a word.

A record's ``name`` is its whole header line without ``>`` (as Nextclade's ``seqName``); ``id``
is the first whitespace-separated word.
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import pandas as pd

from lifelm._core.errors import LifeLMError

logger = logging.getLogger("lifelm")

#: IUPAC nucleotide codes (upper case) plus ``-`` for alignment gaps.
IUPAC_NUCLEOTIDES = frozenset("ACGTRYSWKMBDHVN-")
_ALLOWED_BYTES = frozenset(
    ord(c) for c in IUPAC_NUCLEOTIDES | {c.lower() for c in IUPAC_NUCLEOTIDES}
)

Compression = Literal["none", "gzip", "xz", "bz2"]
_MAGIC: dict[bytes, Compression] = {b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz", b"BZh": "bz2"}
_SUFFIX: dict[str, Compression] = {".gz": "gzip", ".gzip": "gzip", ".xz": "xz", ".bz2": "bz2"}


class FastaFormatError(LifeLMError, ValueError):
    """A FASTA file that cannot be read safely; the message names file, record, line and fix."""


@dataclass(frozen=True)
class FastaRecord:
    """One sequence from a FASTA file."""

    name: str  # whole header line without ">" (Nextclade's seqName)
    sequence: str  # upper-cased bases, whitespace removed
    line: int = 0  # 1-based line number of the header in the file (0: not from a file)
    had_lowercase: bool = False  # the file had lower-case bases in this record (upper-cased here)

    @property
    def id(self) -> str:
        """First whitespace-separated word of the header."""
        return self.name.split(maxsplit=1)[0] if self.name.strip() else ""


def compression_of(path: str | Path) -> Compression:
    """How a file is compressed, from its magic bytes; the suffix is only checked against them.

    Raises
    ------
    FastaFormatError
        When the suffix says one compression and the bytes another (a renamed or half-written file).
    """
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(6)
    by_magic: Compression = next(
        (kind for magic, kind in _MAGIC.items() if head.startswith(magic)), "none"
    )
    by_suffix = _SUFFIX.get(path.suffix.lower(), "none")
    if by_suffix != "none" and by_magic != by_suffix:
        raise FastaFormatError(
            f"{path}: the name ends in {path.suffix} but the content is "
            f"{'not compressed' if by_magic == 'none' else by_magic + '-compressed'}; "
            "rename the file to match its content or re-compress it"
        )
    return by_magic


def open_text(path: str | Path) -> IO[str]:
    """Open a possibly compressed text file (plain, .gz, .xz, .bz2; detected by magic bytes)."""
    kind = compression_of(path)
    if kind == "gzip":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    if kind == "xz":
        return lzma.open(path, "rt", encoding="utf-8", errors="replace")
    if kind == "bz2":
        return bz2.open(path, "rt", encoding="utf-8", errors="replace")
    return Path(path).open(encoding="utf-8", errors="replace")


def _open_write(path: Path) -> IO[str]:
    kind = _SUFFIX.get(path.suffix.lower(), "none")
    if kind == "gzip":
        return gzip.open(path, "wt", encoding="utf-8")
    if kind == "xz":
        return lzma.open(path, "wt", encoding="utf-8")
    if kind == "bz2":
        return bz2.open(path, "wt", encoding="utf-8")
    return path.open("w", encoding="utf-8")


_DROP_ALLOWED = str.maketrans(dict.fromkeys(map(chr, _ALLOWED_BYTES)))


def _illegal(seq: str) -> str:
    """Characters of ``seq`` outside the alphabet ('' when clean); one C-level pass."""
    return "".join(sorted(set(seq.translate(_DROP_ALLOWED))))


def iter_fasta(
    source: str | Path | IO[str],
    *,
    empty: Literal["error", "keep"] = "error",
    source_name: str | None = None,
) -> Iterator[FastaRecord]:
    """Stream records from a FASTA file (plain, .gz, .xz, .bz2) with strict validation.

    Parameters
    ----------
    source
        Path, or an open text handle.
    empty
        ``"error"`` raises on a header with no sequence; ``"keep"`` yields it with an empty
        sequence (QC then marks it bad instead of the whole run failing).
    source_name
        Name used in error messages when ``source`` is a handle.

    Yields
    ------
    FastaRecord
        Upper-cased sequence with whitespace removed.

    Raises
    ------
    FastaFormatError
        Sequence before the first header, empty header, empty record (with ``empty="error"``),
        a character outside ``IUPAC_NUCLEOTIDES``, or a duplicated name.
    """
    if isinstance(source, (str, Path)):
        fname = str(source)
        with open_text(source) as fh:
            yield from _parse(fh, fname, empty)
    else:
        name = source_name or getattr(source, "name", None)
        yield from _parse(source, name if isinstance(name, str) else "<stream>", empty)


def _parse(fh: Iterable[str], fname: str, empty: str) -> Iterator[FastaRecord]:
    seen: dict[str, int] = {}
    name: str | None = None
    header_line = 0
    chunks: list[str] = []  # sequence lines of the current record
    linenos: list[int] = []  # their line numbers (for error messages)
    n_lower = 0

    def finish() -> FastaRecord:
        seq = "".join(chunks)
        if not seq and empty == "error":
            raise FastaFormatError(
                f"{fname}: record '{name}' (header on line {header_line}) has no sequence; "
                "remove it, or pass empty='keep' to report it as a failed QC instead"
            )
        bad = _illegal(seq)  # validated per record: one pass instead of one per line
        if bad:
            lineno, chunk = next(
                (n, c) for n, c in zip(linenos, chunks, strict=True) if _illegal(c)
            )
            raise FastaFormatError(
                f"{fname}: record '{name}' line {lineno} has character(s) {_illegal(chunk)!r} outside "
                f"the IUPAC nucleotide alphabet {''.join(sorted(IUPAC_NUCLEOTIDES))} (lower case "
                "allowed); convert U to T, replace '?' or '.' by N, and remove digits"
            )
        upper = seq.upper()
        return FastaRecord(
            name=name or "", sequence=upper, line=header_line, had_lowercase=upper != seq
        )

    for lineno, raw in enumerate(fh, start=1):
        if raw.startswith(">"):
            if name is not None:
                rec = finish()
                n_lower += rec.had_lowercase
                yield rec
            name = raw[1:].strip()
            header_line = lineno
            chunks, linenos = [], []
            if not name:
                raise FastaFormatError(
                    f"{fname}: line {lineno} is a header ('>') without a name; give every record a name"
                )
            if name in seen:
                raise FastaFormatError(
                    f"{fname}: record name '{name}' on line {lineno} duplicates the one on line "
                    f"{seen[name]}; names must be unique (rename or drop one)"
                )
            seen[name] = lineno
            continue
        seq = raw.strip()
        if not seq:
            continue
        if " " in seq or "\t" in seq:
            seq = "".join(seq.split())
        if name is None:
            if seq.startswith(";"):  # old-style FASTA comment before the first record
                continue
            raise FastaFormatError(
                f"{fname}: line {lineno} has sequence before any '>' header; "
                "is this a FASTA file? Every record must start with a '>name' line"
            )
        chunks.append(seq)
        linenos.append(lineno)
    if name is not None:
        rec = finish()
        n_lower += rec.had_lowercase
        yield rec
    if n_lower:
        logger.warning("%s: %d record(s) had lower-case bases; upper-cased them", fname, n_lower)


def read_fasta(
    source: str | Path | IO[str], *, empty: Literal["error", "keep"] = "error"
) -> dict[str, str]:
    """Read a whole FASTA file into ``{name: sequence}`` (see :func:`iter_fasta` for the checks)."""
    return {rec.name: rec.sequence for rec in iter_fasta(source, empty=empty)}


def write_fasta(
    path: str | Path,
    records: Iterable[FastaRecord | tuple[str, str]],
    *,
    width: int = 60,
) -> int:
    """Write records to FASTA (gzip/xz/bz2 by suffix); returns the number written.

    Parameters
    ----------
    path
        Output path; ``.gz``, ``.xz`` or ``.bz2`` compresses.
    records
        ``FastaRecord`` or ``(name, sequence)`` pairs.
    width
        Bases per line (0 writes each sequence on one line).
    """
    path = Path(path)
    n = 0
    with _open_write(path) as fh:
        for rec in records:
            name, seq = (rec.name, rec.sequence) if isinstance(rec, FastaRecord) else rec
            if "\n" in name or not name:
                raise ValueError(
                    f"{path}: cannot write record {n + 1}: its name is empty or has a newline"
                )
            fh.write(f">{name}\n")
            if width > 0:
                for i in range(0, len(seq), width):
                    fh.write(seq[i : i + width] + "\n")
            else:
                fh.write(seq + "\n")
            n += 1
    return n


@dataclass
class MetadataJoin:
    """A metadata table joined to FASTA names, with what did not match on either side."""

    table: pd.DataFrame  # one row per sequence name, in sequence order; ``seqName`` first
    key: str  # metadata column used as the join key
    missing_in_metadata: list[str] = field(default_factory=list)  # sequences without a row
    missing_in_fasta: list[str] = field(default_factory=list)  # metadata rows without a sequence

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"joined on '{self.key}': {len(self.table) - len(self.missing_in_metadata)} matched, "
            f"{len(self.missing_in_metadata)} sequence(s) without metadata, "
            f"{len(self.missing_in_fasta)} metadata row(s) without a sequence"
        )


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read a TSV (or CSV by suffix, compressed allowed) as strings, empty cells kept as ''."""
    path = Path(path)
    name = path.name.lower()
    sep = "," if name.endswith((".csv", ".csv.gz", ".csv.xz")) else "\t"
    with open_text(path) as fh:
        text = fh.read()
    return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)


def join_metadata(
    names: Iterable[str],
    metadata: str | Path | pd.DataFrame,
    *,
    key: str | None = None,
) -> MetadataJoin:
    """Join a metadata table to sequence names; report names missing on either side.

    Parameters
    ----------
    names
        Sequence names (FASTA headers) in file order.
    metadata
        A TSV/CSV path or a DataFrame.
    key
        Metadata column holding the sequence names; ``None`` picks the column that matches the
        most names (ties: the leftmost), trying the full header and then its first word.

    Returns
    -------
    MetadataJoin
        ``table`` has one row per name (``seqName`` column first, metadata columns after, empty
        where the name has no row).

    Raises
    ------
    ValueError
        Unknown ``key``, duplicated keys in the metadata, or no column matching any name.
    """
    names = list(names)
    src = str(metadata) if not isinstance(metadata, pd.DataFrame) else "metadata table"
    meta = (
        read_metadata(metadata) if not isinstance(metadata, pd.DataFrame) else metadata.astype(str)
    )
    ids = [n.split(maxsplit=1)[0] if n.strip() else n for n in names]
    if key is None:
        best, best_hits = None, 0
        for col in meta.columns:
            values = set(meta[col])
            hits = max(sum(n in values for n in names), sum(i in values for i in ids))
            if hits > best_hits:
                best, best_hits = col, hits
        if best is None:
            raise ValueError(
                f"{src}: no column contains any of the {len(names)} sequence names "
                f"(first: {names[:3]}); pass key= the column that holds them"
            )
        key = best
    elif key not in meta.columns:
        raise ValueError(f"{src}: no column '{key}'; columns are {list(meta.columns)}")
    dup = meta[key][meta[key].duplicated()].unique().tolist()
    if dup:
        raise ValueError(
            f"{src}: column '{key}' has duplicated value(s) {dup[:5]}; each sequence needs one row"
        )
    values = set(meta[key])
    use_ids = sum(n in values for n in names) < sum(i in values for i in ids)
    lookup = ids if use_ids else names
    indexed = meta.set_index(key, drop=False)
    table = indexed.reindex(lookup).fillna("").reset_index(drop=True)
    table = table.drop(columns=["seqName"], errors="ignore")
    table.insert(0, "seqName", names)
    missing_meta = [n for n, k in zip(names, lookup, strict=True) if k not in values]
    present = set(lookup)
    missing_fasta = [v for v in meta[key] if v not in present]
    return MetadataJoin(table, key, missing_meta, missing_fasta)
