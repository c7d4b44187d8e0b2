"""Align genomes to a reference with minimap2 (``mappy``) and call their mutations.

Pipeline for one genome:

1. ``MutationCaller.align``: ungap the input, map it with one reused ``mappy.Aligner`` (the
   reverse complement is tried when it maps to the minus strand), join colinear pieces when
   minimap2 splits an alignment (long N runs, messy regions), and turn the CIGAR into a
   reference-length string (bases, ``-`` for deleted positions, ``.`` for reference positions the
   genome does not reach) plus the insertions, keyed by the reference position they follow.
2. ``call_mutations``: nucleotide substitutions (``C241T``), deletion ranges (``21765-21770``),
   insertions (``22204:GAGCCAGAA``), ``N`` runs as ``missing`` and other IUPAC codes as
   ``nonACGTNs``, never as substitutions; then per ORF, in the reference reading frame (segments
   read in order, so ORF1ab's -1 slippage reads position 13468 twice), amino-acid substitutions
   (``S:D614G``) and deletions (``S:H69-``). Codons with an ambiguous or uncovered base are not
   called (Nextclade's ``X``). A deletion that starts inside a codon is assembled the way a
   ribosome reads it: ``ATC CAT GTC`` minus ``TCCATG`` is ``ATC`` = I68 kept, H69 and V70 deleted.
   Codons read out of frame (after an indel whose net length is not a multiple of 3, until it is
   compensated) are reported as a frameshift range and get no amino-acid calls.

All functions here are pure over strings and small tuples; the pandas tables live in
``lifelm.tasks.genomes``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from lifelm.io.annotation import Orf, read_annotation
from lifelm.io.fasta import read_fasta

_COMPLEMENT = str.maketrans("ACGTRYKMSWBDHVN.-", "TGCAYRMKSWVHDBN.-")
_ACGT = frozenset("ACGT")
UNCOVERED = "."  # internal mark for reference positions the genome does not reach


def _standard_code() -> dict[str, str]:
    from Bio.Data.CodonTable import unambiguous_dna_by_id

    standard = unambiguous_dna_by_id[1]  # NCBI table 1, the standard code
    table = dict(standard.forward_table)
    table.update(dict.fromkeys(standard.stop_codons, "*"))
    return table


CODON_TABLE: dict[str, str] = _standard_code()


def translate_codon(codon: str) -> str:
    """Amino acid of a codon (standard code); ``X`` when any base is not A/C/G/T."""
    return CODON_TABLE.get(codon, "X")


def reverse_complement(seq: str) -> str:
    """Reverse complement, IUPAC-aware."""
    return seq.translate(_COMPLEMENT)[::-1]


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A reference genome and its ORFs."""

    name: str  # sequence name (e.g. "MN908947.3")
    sequence: str  # upper-case bases
    orfs: tuple[Orf, ...]  # ORFs in the order mutation lists are written

    def __post_init__(self) -> None:
        bad = set(self.sequence) - _ACGT
        if bad:
            raise ValueError(
                f"reference {self.name}: non-ACGT bases {sorted(bad)[:10]}; use a clean reference"
            )
        for orf in self.orfs:
            if orf.end > len(self.sequence):
                raise ValueError(
                    f"reference {self.name}: ORF {orf.name} ends at {orf.end}, past the sequence end {len(self.sequence)}"
                )
            if orf.length % 3:
                raise ValueError(
                    f"reference {self.name}: ORF {orf.name} length {orf.length} is not a multiple of 3"
                )

    @classmethod
    def sarscov2(cls) -> Reference:
        """SARS-CoV-2 Wuhan-Hu-1 (MN908947.3) with Nextclade's gene map (ORF1a, ORF1b, S, ...)."""
        return _sarscov2()

    @classmethod
    def from_files(cls, fasta: str | Path, annotation: str | Path | None = None) -> Reference:
        """Reference from a one-record FASTA and a GFF3/GenBank annotation (``None``: no ORFs)."""
        seqs = read_fasta(fasta)
        if len(seqs) != 1:
            raise ValueError(
                f"{fasta}: a reference FASTA needs exactly one record, found {len(seqs)}"
            )
        ((name, seq),) = seqs.items()
        orfs = (
            tuple(sorted(read_annotation(annotation), key=lambda o: o.start)) if annotation else ()
        )
        return cls(name.split()[0], seq, orfs)

    def orf(self, name: str) -> Orf:
        """The ORF of this name."""
        for orf in self.orfs:
            if orf.name == name:
                return orf
        raise KeyError(
            f"reference {self.name} has no ORF '{name}'; ORFs: {[o.name for o in self.orfs]}"
        )


@cache
def _sarscov2() -> Reference:
    text = resources.files("lifelm").joinpath("resources/sarscov2_wuhan_hu_1.json").read_text()
    data = json.loads(text)
    return Reference(data["name"], data["sequence"], tuple(Orf.from_dict(d) for d in data["orfs"]))


# --------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignerConfig:
    """How genomes are mapped to the reference."""

    preset: str = (
        "asm20"  # minimap2 preset; asm20 tolerates ~5% divergence, enough for a virus species
    )
    min_query_length: int = 100  # shorter inputs are not aligned (minimap2 needs seeds)
    max_end_mismatch: float = 0.05  # clipped ends are placed on the diagonal if at most this fraction of their A/C/G/T mismatch
    gap_fill_max: int = (
        20_000  # longest gap between two minimap2 pieces re-aligned with a global aligner
    )


@dataclass(frozen=True)
class Alignment:
    """One genome aligned to the reference coordinates."""

    aligned: str  # reference length: bases, "-" deleted, "." not reached by the genome
    insertions: tuple[tuple[int, str], ...]  # (reference position the bases follow, 1-based; bases)
    start: int  # first reference position covered (1-based); 0 when the genome did not align
    end: int  # last reference position covered (1-based, inclusive); 0 when unaligned
    strand: Literal["+", "-"] = "+"  # "-": the input was the reverse complement
    pieces: int = 0  # minimap2 alignments joined (more than 1: a split alignment was mended)

    @property
    def is_aligned(self) -> bool:
        """Whether any of the genome aligned."""
        return self.end > 0

    def to_reference(self) -> str:
        """Reference-length string, ``-`` for deletions and uncovered ends, insertions removed."""
        return self.aligned.replace(UNCOVERED, "-")


@dataclass(frozen=True)
class AaChange:
    """An amino-acid substitution (``alt`` a residue or ``*``) or deletion (``alt == "-"``)."""

    gene: str  # ORF name
    pos: int  # 1-based codon number in the ORF
    ref: str  # reference amino acid
    alt: str  # query amino acid, "*" stop, "-" deleted

    def __str__(self) -> str:
        return f"{self.gene}:{self.ref}{self.pos}{self.alt}"


@dataclass(frozen=True)
class Mutations:
    """Everything called for one genome, in reference coordinates (1-based)."""

    substitutions: tuple[tuple[int, str, str], ...] = ()  # (pos, ref, alt)
    deletions: tuple[tuple[int, int], ...] = ()  # inclusive ranges of deleted reference positions
    insertions: tuple[tuple[int, str], ...] = ()  # (position the bases follow, bases)
    missing: tuple[tuple[int, int], ...] = ()  # inclusive ranges of N
    non_acgtn: tuple[tuple[int, str], ...] = ()  # (pos, IUPAC code) other than N
    aa_substitutions: tuple[AaChange, ...] = ()
    aa_deletions: tuple[AaChange, ...] = ()
    frameshifts: tuple[
        tuple[str, int, int], ...
    ] = ()  # (gene, first codon, last codon) read out of frame
    alignment_start: int = 0  # first covered reference position (0: unaligned)
    alignment_end: int = 0  # last covered reference position
    stop_codons: tuple[AaChange, ...] = field(
        default=()
    )  # premature stops (subset of aa_substitutions)


def _ranges(positions: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for p in positions:
        if out and out[-1][1] == p - 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def format_ranges(ranges: Iterable[tuple[int, int]]) -> str:
    """Nextclade's range list: ``1-54,21765-21770,28271`` (a single position has no dash)."""
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


class MutationCaller:
    """Aligns genomes to one reference (one reused ``mappy.Aligner``) and calls mutations.

    Parameters
    ----------
    reference
        Reference genome and ORFs; ``None`` uses SARS-CoV-2 Wuhan-Hu-1 with Nextclade's genes.
    config
        Alignment settings.

    Examples
    --------
    >>> caller = MutationCaller()
    >>> ref = caller.reference.sequence
    >>> muts = caller.call(ref[:240] + "T" + ref[241:])
    >>> [f"{r}{p}{a}" for p, r, a in muts.substitutions]
    ['C241T']
    """

    def __init__(
        self, reference: Reference | None = None, config: AlignerConfig | None = None
    ) -> None:
        import mappy

        self.reference = reference or Reference.sarscov2()
        self.config = config or AlignerConfig()
        self._aligner = mappy.Aligner(seq=self.reference.sequence, preset=self.config.preset)
        if not self._aligner:
            raise RuntimeError(f"minimap2 could not index reference {self.reference.name}")
        self._ref_arr = np.frombuffer(self.reference.sequence.encode(), dtype=np.uint8)
        self._orf_pos = {
            o.name: np.asarray(o.positions(), dtype=np.int64) - 1 for o in self.reference.orfs
        }  # 0-based positions in reading order
        self._codon_start = np.zeros(
            len(self.reference.sequence) + 1, dtype=bool
        )  # first base of a codon of some ORF
        for p in self._orf_pos.values():
            self._codon_start[p[0::3]] = True

    # ---- alignment --------------------------------------------------------------------------

    def align(self, sequence: str) -> Alignment:
        """Align one genome (any case, gaps ignored) to the reference."""
        query = sequence.replace("-", "").upper()
        n_ref = len(self.reference.sequence)
        unaligned = Alignment(UNCOVERED * n_ref, (), 0, 0)
        if (
            len(query) < self.config.min_query_length
            or query.count("N") > len(query) - self.config.min_query_length
        ):
            return unaligned
        hits = [h for h in self._aligner.map(query) if h.strand != 0]
        strand: Literal["+", "-"] = "+"
        primary = [h for h in hits if h.is_primary]
        if primary and max(primary, key=lambda h: h.mlen).strand == -1:
            query = reverse_complement(query)
            strand = "-"
            hits = [h for h in self._aligner.map(query) if h.strand != 0]
        hits = [h for h in hits if h.strand == 1]
        if not hits:
            return unaligned
        chain = self._colinear(hits)
        chars = [UNCOVERED] * n_ref
        insertions: dict[int, str] = {}
        prev = None
        for hit in chain:
            if prev is not None:
                self._fill_gap(query, prev.q_en, hit.q_st, prev.r_en, hit.r_st, chars, insertions)
            self._apply_cigar(query, hit, chars, insertions)
            prev = hit
        start, end = chain[0].r_st, chain[-1].r_en  # 0-based half-open
        start = self._extend_left(query, chain[0].q_st, start, chars)
        end = self._extend_right(query, chain[-1].q_en, end, chars)
        self._place_deletions(chars, insertions)
        return Alignment(
            "".join(chars), tuple(sorted(insertions.items())), start + 1, end, strand, len(chain)
        )

    def _place_deletions(self, chars: list[str], insertions: dict[int, str]) -> None:
        """Move each deletion to a canonical place among its equivalent placements.

        A deletion can slide by one base when the base it passes equals the reference at both
        its old and new place, so the genome and its substitutions stay the same. Nextclade's
        convention, which the lineage truth follows: a deletion of whole codons starts on a
        codon's first base when it can (``21992-21994`` = S:Y144-, not ``21991-21993``); any
        other deletion is left-aligned.
        """
        ref = self.reference.sequence
        gaps = [m.span() for m in re.finditer(r"-+", "".join(chars))]
        for s, e in gaps:
            n = e - s
            if any(s <= p <= e for p in insertions):
                continue  # an insertion beside the gap: leave minimap2's choice
            lo = s
            while (
                lo > 0
                and chars[lo - 1] in _ACGT
                and chars[lo - 1] == ref[lo - 1] == ref[lo - 1 + n]
            ):
                lo -= 1
            hi = s
            while (
                hi + n < len(ref)
                and chars[hi + n] in _ACGT
                and chars[hi + n] == ref[hi + n] == ref[hi]
            ):
                hi += 1
            if lo == hi:
                continue
            target = lo
            if n % 3 == 0:
                target = next((t for t in range(lo, hi + 1) if self._codon_start[t]), lo)
            if target != s:
                for p in range(min(s, target), max(e, target + n)):
                    chars[p] = "-" if target <= p < target + n else ref[p]

    @staticmethod
    def _colinear(hits: list) -> list:
        """The best hit plus every other hit that fits before or after it on both sequences."""
        hits = sorted(hits, key=lambda h: h.mlen, reverse=True)
        chain = [hits[0]]
        for h in hits[1:]:
            ok = all(
                (h.q_en <= c.q_st and h.r_en <= c.r_st) or (h.q_st >= c.q_en and h.r_st >= c.r_en)
                for c in chain
            )
            if ok:
                chain.append(h)
        return sorted(chain, key=lambda h: h.r_st)

    @staticmethod
    def _apply_cigar(query: str, hit, chars: list[str], insertions: dict[int, str]) -> None:
        r, q = hit.r_st, hit.q_st
        for length, op in hit.cigar:
            if op in (0, 7, 8):  # M, =, X: aligned columns
                chars[r : r + length] = query[q : q + length]
                r += length
                q += length
            elif op == 1:  # I: bases after reference position r (1-based r)
                insertions[r] = insertions.get(r, "") + query[q : q + length]
                q += length
            elif op in (2, 3):  # D, N: reference positions absent from the genome
                chars[r : r + length] = "-" * length
                r += length
            else:  # soft/hard clips do not occur inside mappy's cigar
                q += length

    def _fill_gap(
        self,
        query: str,
        q0: int,
        q1: int,
        r0: int,
        r1: int,
        chars: list[str],
        insertions: dict[int, str],
    ) -> None:
        """Align the stretch between two minimap2 pieces (often a long N run)."""
        qs, rs = query[q0:q1], self.reference.sequence[r0:r1]
        if len(qs) == len(rs):
            chars[r0:r1] = qs
        elif not qs:
            chars[r0:r1] = "-" * len(rs)
        elif not rs:
            insertions[r0] = insertions.get(r0, "") + qs
        elif max(len(qs), len(rs)) > self.config.gap_fill_max:
            chars[r0:r1] = UNCOVERED * len(rs)
        else:
            for kind, a, b, qa in _global_ops(rs, qs):
                if kind == "M":
                    chars[r0 + a : r0 + b] = qs[qa : qa + b - a]
                elif kind == "D":
                    chars[r0 + a : r0 + b] = "-" * (b - a)
                else:
                    insertions[r0 + a] = insertions.get(r0 + a, "") + qs[qa : qa + b]

    def _end_ok(self, qs: str, rs: str) -> bool:
        pairs = [(x, y) for x, y in zip(qs, rs, strict=True) if x in _ACGT]
        if not pairs:
            return True
        mism = sum(x != y for x, y in pairs)
        return mism <= max(1, self.config.max_end_mismatch * len(pairs))

    def _extend_left(self, query: str, q_st: int, r_st: int, chars: list[str]) -> int:
        """Place the clipped start on the diagonal (typically Ns or primer sites) when it fits."""
        n = min(q_st, r_st)
        if n and self._end_ok(query[q_st - n : q_st], self.reference.sequence[r_st - n : r_st]):
            chars[r_st - n : r_st] = query[q_st - n : q_st]
            return r_st - n
        return r_st

    def _extend_right(self, query: str, q_en: int, r_en: int, chars: list[str]) -> int:
        n = min(len(query) - q_en, len(chars) - r_en)
        if n and self._end_ok(query[q_en : q_en + n], self.reference.sequence[r_en : r_en + n]):
            chars[r_en : r_en + n] = query[q_en : q_en + n]
            return r_en + n
        return r_en

    def aligned_to_reference(self, sequence: str) -> str:
        """Reference-length string of a genome: ``-`` for deletions and uncovered ends, insertions dropped."""
        return self.align(sequence).to_reference()

    # ---- calling ----------------------------------------------------------------------------

    def call(self, sequence: str) -> Mutations:
        """Align one genome and call its mutations."""
        return self.call_aligned(self.align(sequence))

    def call_aligned(self, aln: Alignment) -> Mutations:
        """Call mutations from an :class:`Alignment`."""
        if not aln.is_aligned:
            return Mutations()
        ref = self.reference.sequence
        q = np.frombuffer(aln.aligned.encode(), dtype=np.uint8)
        diff = np.nonzero(q != self._ref_arr)[0]
        subs, dels, miss, amb = [], [], [], []
        for i in diff.tolist():
            c = aln.aligned[i]
            if c in _ACGT:
                subs.append((i + 1, ref[i], c))
            elif c == "-":
                dels.append(i + 1)
            elif c == "N":
                miss.append(i + 1)
            elif c != UNCOVERED:
                amb.append((i + 1, c))
        ins = dict(aln.insertions)
        aa_subs: list[AaChange] = []
        aa_dels: list[AaChange] = []
        shifts: list[tuple[str, int, int]] = []
        stops: list[AaChange] = []
        for orf in self.reference.orfs:
            s, d, f = self._call_orf(orf, aln.aligned, ins)
            aa_subs += s
            aa_dels += d
            shifts += f
            n_codons = orf.length // 3
            stops += [c for c in s if c.alt == "*" and c.pos < n_codons]
        return Mutations(
            substitutions=tuple(subs),
            deletions=tuple(_ranges(dels)),
            insertions=tuple(sorted(ins.items())),
            missing=tuple(_ranges(miss)),
            non_acgtn=tuple(amb),
            aa_substitutions=tuple(aa_subs),
            aa_deletions=tuple(aa_dels),
            frameshifts=tuple(shifts),
            alignment_start=aln.start,
            alignment_end=aln.end,
            stop_codons=tuple(stops),
        )

    def _call_orf(
        self, orf: Orf, aligned: str, ins: dict[int, str]
    ) -> tuple[list[AaChange], list[AaChange], list[tuple[str, int, int]]]:
        pos = self._orf_pos[orf.name]  # (3C,) 0-based reference positions in reading order
        region = aligned[orf.start - 1 : orf.end]
        has_ins = any(orf.start <= p < orf.end for p in ins)
        if "-" not in region and not has_ins:
            return self._call_orf_fast(orf, aligned, pos), [], []
        return self._call_orf_indels(orf, aligned, ins, pos)

    def _call_orf_fast(self, orf: Orf, aligned: str, pos: np.ndarray) -> list[AaChange]:
        """No indel in the ORF: compare codons position by position."""
        q = np.frombuffer(aligned.encode(), dtype=np.uint8)[pos].reshape(-1, 3)  # (C, 3)
        r = self._ref_arr[pos].reshape(-1, 3)  # (C, 3)
        out = []
        minus = orf.strand == "-"
        for ci in np.nonzero((q != r).any(axis=1))[0].tolist():
            qc, rc = q[ci].tobytes().decode(), r[ci].tobytes().decode()
            if minus:
                qc, rc = qc.translate(_COMPLEMENT), rc.translate(_COMPLEMENT)
            qa, ra = translate_codon(qc), translate_codon(rc)
            if qa != "X" and qa != ra:
                out.append(AaChange(orf.name, ci + 1, ra, qa))
        return out

    def _call_orf_indels(
        self, orf: Orf, aligned: str, ins: dict[int, str], pos: np.ndarray
    ) -> tuple[list[AaChange], list[AaChange], list[tuple[str, int, int]]]:
        """Assemble query codons the way a ribosome reads them across deletions and insertions."""
        ref = self.reference.sequence
        minus = orf.strand == "-"
        plist = pos.tolist()
        n = len(plist) // 3
        result: list[str | None] = [None] * n  # query codon, "" deleted, None masked/unknown
        shifted = [False] * n
        offset = 0  # net inserted minus deleted bases so far
        buf = ""
        pending: list[int] = []
        for ci in range(n):
            out_of_frame = False
            for k in range(3):
                i = 3 * ci + k
                p = plist[i]
                c = aligned[p]
                if c == "-":
                    offset -= 1
                else:
                    if offset % 3:
                        out_of_frame = True
                    buf += c.translate(_COMPLEMENT) if minus else c
                if i + 1 < len(plist) and abs(plist[i + 1] - p) == 1:
                    after = min(p, plist[i + 1]) + 1  # 1-based position the insertion follows
                    extra = ins.get(after)
                    if extra:
                        buf += reverse_complement(extra) if minus else extra
                        offset += len(extra)
            if out_of_frame:
                for j in [*pending, ci]:
                    shifted[j] = True
                pending, buf = [], ""
                continue
            if not buf:
                result[ci] = ""
            elif len(buf) < 3:
                pending.append(ci)
            else:
                # The codon made across a deletion goes where its amino acid matches the reference
                # (I68 in ATC|CAT|GTC - TCCATG), else after the deleted ones (S:L24-,P25-,P26-,A27S),
                # as a peptide alignment with left-aligned gaps places it.
                group = [*pending, ci]
                qa = translate_codon(buf[:3])
                same = [j for j in group if self._ref_aa(orf, plist, j) == qa]
                keep = same[-1] if same else group[-1]
                for j in group:
                    result[j] = buf[:3] if j == keep else ""
                pending, buf = [], ""  # buf[3:] is an in-frame insertion (no aa call)
        for j in pending:  # a deletion at the ORF's end that never completed a codon
            shifted[j] = True
        subs, dels = [], []
        for ci in range(n):
            rc = "".join(ref[p] for p in plist[3 * ci : 3 * ci + 3])
            ra = translate_codon(rc.translate(_COMPLEMENT) if minus else rc)
            qc = result[ci]
            if qc is None:
                continue
            if qc == "":
                dels.append(AaChange(orf.name, ci + 1, ra, "-"))
                continue
            qa = translate_codon(qc)
            if qa != "X" and qa != ra:
                subs.append(AaChange(orf.name, ci + 1, ra, qa))
        merged: list[tuple[int, int]] = []
        for a, b in _ranges(i for i in range(n) if shifted[i]):
            if merged and all(result[j] == "" for j in range(merged[-1][1] + 1, a)):
                merged[-1] = (merged[-1][0], b)  # one frameshift, interrupted by deleted codons
            else:
                merged.append((a, b))
        shifts = [(orf.name, a + 1, b + 1) for a, b in merged]
        return subs, dels, shifts

    def _ref_aa(self, orf: Orf, plist: list[int], ci: int) -> str:
        rc = "".join(self.reference.sequence[p] for p in plist[3 * ci : 3 * ci + 3])
        return translate_codon(rc.translate(_COMPLEMENT) if orf.strand == "-" else rc)


def _global_ops(ref: str, query: str) -> list[tuple[str, int, int, int]]:
    """Global alignment of two short stretches (Biopython): ops (kind, ref_from, ref_to, query_at).

    ``M`` and ``D`` cover reference ``[ref_from, ref_to)``; ``I`` inserts ``ref_to`` query bases
    from ``query_at`` after reference offset ``ref_from``.
    """
    from Bio.Align import PairwiseAligner

    aligner = PairwiseAligner(mode="global", match_score=2, mismatch_score=-4)
    aligner.open_gap_score, aligner.extend_gap_score = -6, -1
    aligner.wildcard = "N"
    coords = aligner.align(ref, query)[0].coordinates  # (2, K)
    ops = []
    for (r0, q0), (r1, q1) in zip(coords.T[:-1], coords.T[1:], strict=True):
        if r1 > r0 and q1 > q0:
            ops.append(("M", int(r0), int(r1), int(q0)))
        elif r1 > r0:
            ops.append(("D", int(r0), int(r1), int(q0)))
        else:
            ops.append(("I", int(r0), int(q1 - q0), int(q0)))
    return ops


# --------------------------------------------------------------------------------------------
# Convenience and parallel calling
# --------------------------------------------------------------------------------------------


@cache
def _default_caller() -> MutationCaller:
    return MutationCaller()


def aligned_to_reference(sequence: str, reference: Reference | None = None) -> str:
    """A genome in reference coordinates (reference length, ``-`` for deletions and uncovered ends).

    Insertions are removed. Uses SARS-CoV-2 Wuhan-Hu-1 when ``reference`` is ``None``.
    """
    caller = _default_caller() if reference is None else MutationCaller(reference)
    return caller.aligned_to_reference(sequence)


_WORKER: MutationCaller | None = None


def _init_worker(reference: Reference, config: AlignerConfig) -> None:
    global _WORKER
    _WORKER = MutationCaller(reference, config)


def _work(item: tuple[str, str]) -> tuple[str, Alignment, Mutations]:
    assert _WORKER is not None
    aln = _WORKER.align(item[1])
    return item[0], aln, _WORKER.call_aligned(aln)


def call_many(
    records: Iterable[tuple[str, str]],
    *,
    reference: Reference | None = None,
    config: AlignerConfig | None = None,
    n_jobs: int = 1,
    chunksize: int = 8,
) -> Iterator[tuple[str, Alignment, Mutations]]:
    """Align and call many genomes, in input order, optionally in ``n_jobs`` processes.

    Parameters
    ----------
    records
        ``(name, sequence)`` pairs; streamed, so a large FASTA is never held in memory whole.
    reference, config
        As for :class:`MutationCaller`.
    n_jobs
        Worker processes (each builds its own aligner; the index of a 30 kb genome is instant).

    Yields
    ------
    tuple
        ``(name, Alignment, Mutations)``.
    """
    reference = reference or Reference.sarscov2()
    config = config or AlignerConfig()
    if n_jobs <= 1:
        caller = MutationCaller(reference, config)
        for name, seq in records:
            aln = caller.align(seq)
            yield name, aln, caller.call_aligned(aln)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(n_jobs, initializer=_init_worker, initargs=(reference, config)) as pool:
        yield from pool.imap(_work, records, chunksize=chunksize)
