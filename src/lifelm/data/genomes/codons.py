"""GenSLM-compatible codon tokenizer: reading-frame aware, vectorised, never silent.

The vocabulary has 69 ids: ``[UNK]``=0, ``[CLS]``=1, ``[SEP]``=2, ``[PAD]``=3, ``[MASK]``=4, then the
64 codons at ids 5-68 in the order of GenSLM's ``codon_wordlevel_69vocab.json`` (recorded in
``shared/data/genomes/README.md``), so a GenSLM checkpoint's embedding rows line up with ours.

Unlike GenSLM's blind 3-mers from position 0, every sequence is read in the frame of an
annotated ORF (``Orf.segments`` are 1-based inclusive, the convention of
``lifelm.io.annotation.Orf``), so an indel in one gene does not shift the codons of the next.
Lower-case bases are accepted. A codon with any base outside A/C/G/T (N, IUPAC codes, a partial
gap) becomes ``[UNK]`` and is counted in :class:`CodonStats`; a codon that is entirely an
alignment gap (``---``, an in-frame deletion or an uncovered end of a reference-aligned genome)
is dropped and counted as deleted.

Documents (one per ORF, or one per genome in whole-genome mode) start with ``[CLS]`` so that the
first codon is predicted too; in whole-genome mode ORFs are joined by ``[SEP]``.
:func:`pack_documents` packs many short documents into fixed-length rows with a document id per
token, so the model can keep attention and loss inside each document.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

SPECIAL_TOKENS: tuple[str, ...] = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
UNK_ID, CLS_ID, SEP_ID, PAD_ID, MASK_ID = 0, 1, 2, 3, 4

# GenSLM's codon order (ids 5..68), from codon_wordlevel_69vocab.json (ramanathanlab/genslm @ a9c60be).
_GENSLM_ORDER = (
    "GGC GCC ATC GAC GAA ATG GTG CTG GTC GCG GAT AAA GGT AAG GAG ACC AAC GTT ATT GCA CTC CGC "
    "GCT CAG CCG TTC GTA TCG GGA AAT TAC CTT TTG ACG TCC GGG AGC CCC ACA ACT TCT TTA CGT TAT "
    "CAA CGG TTT CAC CCT CCA TGG ATA TCA TGC AGT AGA CAT TGT CTA AGG TAA CGA TGA TAG"
)
GENSLM_CODONS: tuple[str, ...] = tuple(_GENSLM_ORDER.split())
VOCAB: tuple[str, ...] = SPECIAL_TOKENS + GENSLM_CODONS
VOCAB_SIZE = len(VOCAB)  # 69
STOP_CODONS: frozenset[str] = frozenset({"TAA", "TAG", "TGA"})
START_CODON = "ATG"
MAX_GENOME_CODONS = 10_240  # GenSLM's SARS-CoV-2 context

_BASES = "ACGT"
# byte -> 0..3 for A/C/G/T (either case), 4 for a gap, 5 for anything else (N, IUPAC, ...)
_BASE_CODE = np.full(256, 5, dtype=np.int64)
for _i, _b in enumerate(_BASES):
    _BASE_CODE[ord(_b)] = _i
    _BASE_CODE[ord(_b.lower())] = _i
_BASE_CODE[ord("-")] = 4
_BASE_CODE[ord(".")] = 4
# codon index in ACGT order (16*b0 + 4*b1 + b2) -> GenSLM id
_CODON_ID = np.empty(64, dtype=np.int64)
for _tok_id, _codon in enumerate(GENSLM_CODONS, start=len(SPECIAL_TOKENS)):
    _CODON_ID[
        16 * _BASES.index(_codon[0]) + 4 * _BASES.index(_codon[1]) + _BASES.index(_codon[2])
    ] = _tok_id
_STOP_IDS = frozenset(VOCAB.index(c) for c in STOP_CODONS)
_COMPLEMENT = str.maketrans("ACGTRYKMBDHVNacgtrykmbdhvn-", "TGCAYRMKVHDBNtgcayrmkvhdbn-")


class OrfLike(Protocol):
    """What the tokenizer needs of an ORF (``lifelm.io.annotation.Orf`` satisfies it); read-only."""

    @property
    def name(self) -> str: ...

    @property
    def segments(self) -> tuple[tuple[int, int], ...]:
        """1-based inclusive (start, end) on the genome."""
        ...

    @property
    def strand(self) -> str:
        """``"+"`` or ``"-"``."""
        ...


@dataclass
class CodonStats:
    """Counts from tokenizing one sequence (or a sum of several)."""

    n_codons: int = 0  # codon tokens emitted (including [UNK])
    n_unknown: int = 0  # codons with an ambiguous base or partial gap -> [UNK]
    n_deleted: int = 0  # all-gap codons ('---') dropped
    n_trailing: int = 0  # bases left over after the last full codon (not a multiple of 3)
    unknown_by_orf: dict[str, int] = field(default_factory=dict)  # ORF name -> [UNK] count

    def __iadd__(self, other: CodonStats) -> CodonStats:
        self.n_codons += other.n_codons
        self.n_unknown += other.n_unknown
        self.n_deleted += other.n_deleted
        self.n_trailing += other.n_trailing
        for k, v in other.unknown_by_orf.items():
            self.unknown_by_orf[k] = self.unknown_by_orf.get(k, 0) + v
        return self

    @property
    def unknown_fraction(self) -> float:
        """Fraction of emitted codons that are ``[UNK]``."""
        return self.n_unknown / max(self.n_codons, 1)


def encode_codons(seq: str) -> tuple[np.ndarray, CodonStats]:
    """Tokenize a coding sequence read in frame from its first base.

    Parameters
    ----------
    seq
        Nucleotides of one ORF (sense strand), any case; ``-`` marks alignment gaps.

    Returns
    -------
    ids
        ``int64`` array of codon ids (5..68, or 0 for ``[UNK]``), all-gap codons removed.
    stats
        Counts of codons, unknowns, deleted codons and trailing bases.

    Examples
    --------
    >>> ids, stats = encode_codons("ATGgcnTAA")
    >>> ids.tolist(), stats.n_unknown
    ([10, 0, 65], 1)
    """
    n = len(seq) // 3
    codes = _BASE_CODE[np.frombuffer(seq.encode("latin-1"), dtype=np.uint8)[: 3 * n]].reshape(n, 3)
    all_gap = (codes == 4).all(axis=1)
    codes = codes[~all_gap]  # (C, 3)
    bad = (codes > 3).any(axis=1)
    index = 16 * codes[:, 0] + 4 * codes[:, 1] + codes[:, 2]
    ids = np.where(bad, UNK_ID, _CODON_ID[np.where(bad, 0, index)])
    stats = CodonStats(
        n_codons=int(ids.size),
        n_unknown=int(bad.sum()),
        n_deleted=int(all_gap.sum()),
        n_trailing=len(seq) - 3 * n,
    )
    return ids, stats


def decode_codons(ids: Iterable[int]) -> str:
    """Map ids back to nucleotides; ``[UNK]`` becomes ``NNN``, other specials are skipped."""
    out = []
    for i in ids:
        i = int(i)
        if i >= len(SPECIAL_TOKENS):
            out.append(VOCAB[i])
        elif i == UNK_ID:
            out.append("NNN")
    return "".join(out)


def is_stop(token_id: int) -> bool:
    """Whether a token id is one of the three stop codons (TAA, TAG, TGA)."""
    return int(token_id) in _STOP_IDS


def stop_ids() -> list[int]:
    """Ids of the stop codons."""
    return sorted(_STOP_IDS)


def orf_sequence(genome: str, orf: OrfLike) -> str:
    """Cut an ORF's nucleotides out of a genome (segments joined, reverse-complemented on ``-``).

    Segments are 1-based inclusive; ORF1ab's ribosomal slippage is two segments sharing a base.
    """
    parts = []
    for start, end in orf.segments:
        if not 1 <= start <= end <= len(genome):
            raise ValueError(
                f"ORF {orf.name}: segment {start}..{end} lies outside the genome of length "
                f"{len(genome)}; tokenize reference-aligned genomes (aligned_to_reference) or "
                "pass the annotation of this genome."
            )
        parts.append(genome[start - 1 : end])
    seq = "".join(parts)
    if orf.strand == "-":
        seq = seq.translate(_COMPLEMENT)[::-1]
    return seq


def encode_orfs(
    genome: str,
    orfs: Sequence[OrfLike],
    *,
    mode: Literal["orf", "genome"] = "orf",
    max_codons: int = MAX_GENOME_CODONS,
) -> tuple[list[np.ndarray], CodonStats]:
    """Tokenize a genome in the reading frame of each annotated ORF.

    Parameters
    ----------
    genome
        The genome in the coordinates of ``orfs`` (e.g. aligned to the reference).
    orfs
        ORFs with 1-based inclusive ``segments`` and a ``strand``.
    mode
        ``"orf"``: one document per ORF, ``[CLS]`` + codons. ``"genome"``: one document,
        ``[CLS]`` + ORF1 codons + ``[SEP]`` + ORF2 codons ..., cut at ``max_codons`` tokens.
    max_codons
        Longest whole-genome document in tokens (GenSLM: 10,240).

    Returns
    -------
    docs
        One ``int64`` id array per document.
    stats
        Summed counts, with ``unknown_by_orf``.
    """
    total = CodonStats()
    per_orf = []
    for orf in orfs:
        ids, stats = encode_codons(orf_sequence(genome, orf))
        stats.unknown_by_orf = {orf.name: stats.n_unknown}
        total += stats
        per_orf.append(ids)
    if mode == "orf":
        return [np.concatenate([[CLS_ID], ids]) for ids in per_orf], total
    if mode != "genome":
        raise ValueError(f"mode must be 'orf' or 'genome', got {mode!r}")
    pieces: list[np.ndarray] = [np.array([CLS_ID])]
    for k, ids in enumerate(per_orf):
        if k:
            pieces.append(np.array([SEP_ID]))
        pieces.append(ids)
    return [np.concatenate(pieces)[:max_codons]], total


def tokenizer_identity() -> dict[str, Any]:
    """What a checkpoint records about its tokenizer: vocabulary, special ids and a hash of both."""
    ident: dict[str, Any] = {
        "name": "lifelm-codon-genslm69",
        "vocab": list(VOCAB),
        "special": {"unk": UNK_ID, "cls": CLS_ID, "sep": SEP_ID, "pad": PAD_ID, "mask": MASK_ID},
        "frame": "annotated-orf",
    }
    ident["hash"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return ident


def check_tokenizer(identity: dict[str, Any], *, source: str = "checkpoint") -> None:
    """Raise when a checkpoint's tokenizer is not this one (a silent id misalignment otherwise)."""
    ours = tokenizer_identity()
    if identity.get("hash") != ours["hash"] or identity.get("vocab") != ours["vocab"]:
        raise ValueError(
            f"{source}: tokenizer {identity.get('name')!r} (hash {identity.get('hash')}) is not "
            f"{ours['name']!r} (hash {ours['hash']}); its codon ids would be misread. Use a "
            "checkpoint trained with lifelm's GenSLM-69 codon vocabulary or convert it."
        )


@dataclass(frozen=True)
class PackedRows:
    """Documents packed into fixed-length rows."""

    input_ids: np.ndarray  # (R, L) token ids, PAD after the last document of a row
    doc_ids: np.ndarray  # (R, L) document index within the row (0, 1, ...), -1 on padding
    position_ids: np.ndarray  # (R, L) position inside its document (restarts at 0 for each)


def pack_documents(
    docs: Sequence[np.ndarray], row_len: int, *, rng: np.random.Generator | None = None
) -> PackedRows:
    """Pack documents into rows of ``row_len`` tokens (best-fit decreasing), splitting long ones.

    A document longer than ``row_len`` is cut into ``row_len`` pieces, each its own document. The
    per-token ``doc_ids`` let the model build a block-diagonal causal mask so that no token attends
    to, or predicts, a token of another gene.

    Parameters
    ----------
    docs
        Token id arrays.
    row_len
        Tokens per row.
    rng
        Shuffles the order of rows when given (packing itself is deterministic).
    """
    if row_len < 2:
        raise ValueError(f"row_len must be at least 2, got {row_len}")
    pieces = [d[i : i + row_len] for d in docs for i in range(0, len(d), row_len)]
    pieces = [p for p in pieces if len(p) >= 2]  # one token predicts nothing
    order = sorted(range(len(pieces)), key=lambda k: (-len(pieces[k]), k))
    rows: list[list[np.ndarray]] = []
    free: list[tuple[int, int]] = []  # sorted (space left, row) for best-fit lookup by bisect
    for k in order:
        p = pieces[k]
        at = bisect.bisect_left(free, (len(p), -1))
        if at < len(free):
            space, r = free.pop(at)
            rows[r].append(p)
        else:
            space, r = row_len, len(rows)
            rows.append([p])
        if space - len(p) >= 2:
            bisect.insort(free, (space - len(p), r))
    n = len(rows)
    input_ids = np.full((n, row_len), PAD_ID, dtype=np.int64)
    doc_ids = np.full((n, row_len), -1, dtype=np.int64)
    position_ids = np.zeros((n, row_len), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for d, p in enumerate(row):
            input_ids[r, at : at + len(p)] = p
            doc_ids[r, at : at + len(p)] = d
            position_ids[r, at : at + len(p)] = np.arange(len(p))
            at += len(p)
    if rng is not None:
        perm = rng.permutation(n)
        input_ids, doc_ids, position_ids = input_ids[perm], doc_ids[perm], position_ids[perm]
    return PackedRows(input_ids=input_ids, doc_ids=doc_ids, position_ids=position_ids)
