"""Gene/ORF annotation from GFF3 or GenBank, as small frozen ``Orf`` records.

An ``Orf`` is a name, its segments on the reference (1-based, inclusive, in reading order) and a
strand. Several segments express a spliced or frameshifted CDS: SARS-CoV-2's ORF1ab is
``((266, 13468), (13468, 21555))``: position 13468 is read twice because of the ribosomal -1
slippage. Nextclade's gene map instead splits it into ORF1a and ORF1b, each one segment.

GFF3 is parsed here (it is nine tab-separated columns); rows of the same ``ID`` (or, without
one, the same name) form one multi-segment feature. GenBank is read with Biopython.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lifelm._core.errors import LifeLMError
from lifelm.io.fasta import open_text


class AnnotationError(LifeLMError, ValueError):
    """An annotation file that cannot be turned into ORFs; the message names file and line."""


@dataclass(frozen=True)
class Orf:
    """An open reading frame on a reference sequence.

    Examples
    --------
    >>> orf = Orf("ORF1ab", ((266, 13468), (13468, 21555)), "+")
    >>> orf.length, orf.length % 3
    (21291, 0)
    """

    name: str  # gene name as used in mutation notation (e.g. "S" in "S:D614G")
    segments: tuple[
        tuple[int, int], ...
    ]  # 1-based inclusive (start, end) on the reference, reading order
    strand: Literal["+", "-"] = "+"  # "-" means the ORF reads the reverse complement

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError(f"ORF '{self.name}' has no segments")
        for start, end in self.segments:
            if start < 1 or end < start:
                raise ValueError(
                    f"ORF '{self.name}': bad segment ({start}, {end}); need 1 <= start <= end"
                )
        if self.strand not in ("+", "-"):
            raise ValueError(f"ORF '{self.name}': strand must be '+' or '-', got {self.strand!r}")

    @property
    def start(self) -> int:
        """Leftmost reference position (1-based)."""
        return min(s for s, _ in self.segments)

    @property
    def end(self) -> int:
        """Rightmost reference position (1-based, inclusive)."""
        return max(e for _, e in self.segments)

    @property
    def length(self) -> int:
        """Nucleotides read, counting positions read twice (slippage) twice."""
        return sum(e - s + 1 for s, e in self.segments)

    def positions(self) -> list[int]:
        """1-based reference positions in reading order (reverse for the minus strand)."""
        if self.strand == "+":
            return [p for s, e in self.segments for p in range(s, e + 1)]
        return [p for s, e in self.segments for p in range(e, s - 1, -1)]

    def to_dict(self) -> dict:
        """JSON-ready form (inverse of :meth:`from_dict`)."""
        return {
            "name": self.name,
            "segments": [list(s) for s in self.segments],
            "strand": self.strand,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Orf:
        """Build from :meth:`to_dict` output."""
        return cls(
            d["name"], tuple((int(s), int(e)) for s, e in d["segments"]), d.get("strand", "+")
        )


_NAME_KEYS = ("gene_name", "Name", "gene", "locus_tag", "ID")


def read_gff3(
    path: str | Path, *, feature_types: Sequence[str] = ("CDS", "gene"), seqid: str | None = None
) -> list[Orf]:
    """ORFs from a GFF3 file.

    Parameters
    ----------
    path
        GFF3 file (compressed allowed).
    feature_types
        Feature types to read, in order of preference: the first type present in the file is used
        (``CDS`` when the file has CDS rows, else ``gene``, as in Nextclade's gene maps).
    seqid
        Keep only rows of this sequence id (column 1); ``None`` keeps all.

    Returns
    -------
    list[Orf]
        In file order of first appearance; rows sharing an ``ID`` are joined into segments.
    """
    rows: dict[str, list[tuple[int, int, int, str, str]]] = {}
    names: dict[str, str] = {}
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.startswith("##FASTA"):
                break
            if not line.strip() or line.startswith("#"):
                continue
            cols = line.rstrip("\r\n").split("\t")
            if len(cols) != 9:
                raise AnnotationError(
                    f"{path}: line {lineno} has {len(cols)} tab-separated columns, GFF3 needs 9"
                )
            if seqid is not None and cols[0] != seqid:
                continue
            ftype = cols[2]
            if ftype not in feature_types:
                continue
            try:
                start, end = int(cols[3]), int(cols[4])
            except ValueError:
                raise AnnotationError(
                    f"{path}: line {lineno}: start/end '{cols[3]}', '{cols[4]}' are not integers"
                ) from None
            attrs = {}
            for item in cols[8].split(";"):
                if "=" in item:
                    k, v = item.split("=", 1)
                    attrs[k.strip()] = urllib.parse.unquote(v.strip())
            name = next((attrs[k] for k in _NAME_KEYS if attrs.get(k)), None)
            if name is None:
                raise AnnotationError(
                    f"{path}: line {lineno}: {ftype} has none of the attributes {_NAME_KEYS} to name it"
                )
            group = f"{ftype}\t{attrs.get('ID', name)}"
            rows.setdefault(group, []).append((start, end, lineno, cols[6], ftype))
            names.setdefault(group, name)
    chosen = next((t for t in feature_types if any(g.startswith(t + "\t") for g in rows)), None)
    if chosen is None:
        raise AnnotationError(f"{path}: no features of type {list(feature_types)}")
    orfs = []
    for group, segs in rows.items():
        if not group.startswith(chosen + "\t"):
            continue
        strands = {s[3] for s in segs}
        if len(strands) != 1 or strands - {"+", "-"}:
            raise AnnotationError(
                f"{path}: feature '{names[group]}' (line {segs[0][2]}) has strand(s) {sorted(strands)}; "
                "need one of '+' or '-'"
            )
        strand: Literal["+", "-"] = "-" if strands.pop() == "-" else "+"
        ordered = sorted(segs, key=lambda s: s[0], reverse=strand == "-")
        orfs.append(Orf(names[group], tuple((s[0], s[1]) for s in ordered), strand))
    _check_unique(orfs, path)
    return orfs


def read_genbank(path: str | Path, *, feature_type: str = "CDS") -> list[Orf]:
    """ORFs from the CDS features of a GenBank file (Biopython), joins kept as segments."""
    from Bio import SeqIO

    orfs = []
    with open_text(path) as fh:
        for record in SeqIO.parse(fh, "genbank"):
            for feat in record.features:
                if feat.type != feature_type:
                    continue
                q = feat.qualifiers
                name = next((q[k][0] for k in ("gene", "locus_tag", "product") if k in q), None)
                if name is None:
                    raise AnnotationError(
                        f"{path}: record {record.id}: a {feature_type} at {feat.location} has no "
                        "/gene, /locus_tag or /product to name it"
                    )
                parts = feat.location.parts
                strand: Literal["+", "-"] = "-" if parts[0].strand == -1 else "+"
                segs = tuple((int(p.start) + 1, int(p.end)) for p in parts)
                orfs.append(Orf(name, segs, strand))
    if not orfs:
        raise AnnotationError(f"{path}: no {feature_type} features found")
    _check_unique(orfs, path)
    return orfs


def read_annotation(path: str | Path) -> list[Orf]:
    """ORFs from GFF3 (``.gff``, ``.gff3``) or GenBank (``.gb``, ``.gbk``, ``.gbff``, ``.genbank``)."""
    name = Path(path).name.lower()
    for ext in (".gz", ".xz", ".bz2"):
        name = name.removesuffix(ext)
    if name.endswith((".gff", ".gff3")):
        return read_gff3(path)
    if name.endswith((".gb", ".gbk", ".gbff", ".genbank")):
        return read_genbank(path)
    raise AnnotationError(f"{path}: unknown annotation format; use .gff3 or .gb (GenBank)")


def _check_unique(orfs: list[Orf], path: str | Path) -> None:
    seen: set[str] = set()
    for orf in orfs:
        if orf.name in seen:
            raise AnnotationError(
                f"{path}: two features are both named '{orf.name}'; mutation names would be ambiguous. "
                "Give them distinct gene names"
            )
        seen.add(orf.name)
