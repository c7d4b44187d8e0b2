"""Datasets for codon language models: gene (CDS) corpora for pretraining, SARS-CoV-2 genomes for fine-tuning.

* :func:`read_cds_fasta` reads a CDS FASTA and records each gene's source genome, so that
  :func:`split_by_genome` keeps whole genomes out of training (near-identical strains such as the
  three *S. pyogenes* must go to the same side: pass them as one group).
* :func:`dedupe_cds` drops exact and near-identical genes with MinHash over codon 4-grams and
  banded locality-sensitive hashing (Broder, 1997; Leskovec et al., *Mining of Massive Datasets*,
  ch. 3), so a gene present in three strains is not learned three times.
* :class:`PackedCodonDataset` packs documents into fixed-length rows with document ids; its items
  are collated by :func:`collate_packed` into the batch keys of
  ``lifelm.models.codon_transformer.CodonTransformer``.
* :func:`genome_documents` tokenizes reference-aligned genomes in the frame of each ORF.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lifelm.data.genomes.codons import (
    CLS_ID,
    MAX_GENOME_CODONS,
    PAD_ID,
    CodonStats,
    OrfLike,
    encode_codons,
    encode_orfs,
    pack_documents,
)
from lifelm.io.fasta import iter_fasta


@dataclass(frozen=True)
class CdsRecord:
    """One coding sequence with the genome it came from."""

    genome: str  # source genome label (split key)
    name: str  # record id (first word of the FASTA header)
    seq: str  # nucleotides, sense strand, start..stop


def genome_label(header: str, *, default: str) -> str:
    """Source genome of a CDS header: the field before the first ``|`` (lifelm/GenSLM corpora),
    the RefSeq accession of NCBI ``lcl|ACC_cds_...`` headers, else ``default``."""
    first = header.split()[0]
    if first.startswith("lcl|"):
        return first[4:].split("_cds_")[0]
    if "|" in first:
        return first.split("|")[0]
    return default


def read_cds_fasta(path: str | Path, *, min_codons: int = 30) -> list[CdsRecord]:
    """Read a CDS FASTA; drop genes shorter than ``min_codons`` or not a whole number of codons.

    Parameters
    ----------
    path
        FASTA (plain, .gz or .xz) with one coding sequence per record.
    min_codons
        Shortest gene kept.
    """
    path = Path(path)
    out = []
    for rec in iter_fasta(path):
        header, seq = rec.name, rec.sequence
        if len(seq) % 3 or len(seq) < 3 * min_codons:
            continue
        out.append(
            CdsRecord(genome_label(header, default=path.name.split(".")[0]), header.split()[0], seq)
        )
    if not out:
        raise ValueError(f"{path}: no coding sequence of at least {min_codons} whole codons")
    return out


@dataclass(frozen=True)
class DedupeReport:
    """What :func:`dedupe_cds` removed."""

    n_in: int  # genes given
    n_exact: int  # exact duplicates dropped
    n_near: int  # near duplicates dropped (estimated Jaccard >= threshold)
    n_out: int  # genes kept


def _minhash(ids: np.ndarray, k: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signature (num_perm,) of the set of codon k-grams of one gene."""
    if len(ids) < k:
        grams = np.array([hash(ids.tobytes()) & 0x7FFFFFFF], dtype=np.uint64)
    else:
        grams = np.zeros(len(ids) - k + 1, dtype=np.uint64)
        for j in range(k):  # base-69 number of the k codon ids
            grams = grams * np.uint64(69) + ids[j : len(ids) - k + 1 + j].astype(np.uint64)
        grams = np.unique(grams)
    # one seeded 64-bit mixing function per permutation (xor a salt, multiply by an odd constant,
    # xor-shift; uint64 wrap-around is intended): min-wise hashing needs the order scrambled.
    x = (grams[None, :] ^ b[:, None]) * a[:, None]  # (P, G)
    h = (x ^ (x >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return h.min(axis=1)


def dedupe_cds(
    records: Sequence[CdsRecord],
    *,
    threshold: float = 0.8,
    k: int = 4,
    num_perm: int = 32,
    bands: int = 8,
    seed: int = 0,
) -> tuple[list[CdsRecord], DedupeReport]:
    """Drop exact and near-identical genes, keeping the first of each group.

    Parameters
    ----------
    records
        Genes in a stable order (the first of a near-duplicate group survives).
    threshold
        Estimated Jaccard similarity of codon ``k``-gram sets above which two genes are duplicates.
    k
        Codons per shingle.
    num_perm
        MinHash signature length.
    bands
        LSH bands (``num_perm / bands`` rows each): more bands find more candidate pairs.
    seed
        Seeds the hash functions.
    """
    seen: set[str] = set()
    unique: list[CdsRecord] = []
    for r in records:
        key = r.seq.upper()
        if key not in seen:
            seen.add(key)
            unique.append(r)
    n_exact = len(records) - len(unique)
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
    sigs = np.stack([_minhash(encode_codons(r.seq)[0], k, a, b) for r in unique])  # (N, P)
    rows = num_perm // bands
    dropped = np.zeros(len(unique), dtype=bool)
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, sig in enumerate(sigs[:, band * rows : (band + 1) * rows]):
            buckets[sig.tobytes()].append(i)
        for members in buckets.values():
            for pos, i in enumerate(members):
                if dropped[i]:
                    continue
                for j in members[pos + 1 :]:
                    if not dropped[j] and (sigs[i] == sigs[j]).mean() >= threshold:
                        dropped[j] = True
    kept = [r for r, d in zip(unique, dropped, strict=True) if not d]
    return kept, DedupeReport(len(records), n_exact, int(dropped.sum()), len(kept))


def split_by_genome(
    records: Sequence[CdsRecord], held_out: Sequence[str]
) -> tuple[list[CdsRecord], list[CdsRecord]]:
    """Split genes into (train, held-out) by source genome; unknown names are an error."""
    genomes = Counter(r.genome for r in records)
    missing = [g for g in held_out if g not in genomes]
    if missing:
        raise ValueError(f"held-out genomes {missing} not in the corpus; it has {sorted(genomes)}")
    held = set(held_out)
    return [r for r in records if r.genome not in held], [r for r in records if r.genome in held]


def cds_documents(records: Sequence[CdsRecord]) -> tuple[list[np.ndarray], CodonStats]:
    """``[CLS]`` + codons for each gene, with summed tokenizer counts."""
    docs, total = [], CodonStats()
    for r in records:
        ids, stats = encode_codons(r.seq)
        total += stats
        docs.append(np.concatenate([[CLS_ID], ids]))
    return docs, total


def genome_documents(
    genomes: Mapping[str, str],
    orfs: Sequence[OrfLike],
    *,
    mode: Literal["orf", "genome"] = "orf",
    max_codons: int = MAX_GENOME_CODONS,
) -> tuple[list[np.ndarray], CodonStats]:
    """Tokenize reference-aligned genomes in the frame of each ORF (one doc per ORF or per genome)."""
    docs, total = [], CodonStats()
    for seq in genomes.values():
        d, stats = encode_orfs(seq, orfs, mode=mode, max_codons=max_codons)
        docs += d
        total += stats
    return docs, total


class PackedCodonDataset:
    """Fixed-length rows of packed documents; ``dataset[i]`` is a dict of ``(L,)`` int64 arrays."""

    def __init__(self, docs: Sequence[np.ndarray], row_len: int, *, seed: int = 0) -> None:
        packed = pack_documents(docs, row_len, rng=np.random.default_rng(seed))
        self.input_ids = packed.input_ids
        self.doc_ids = packed.doc_ids
        self.position_ids = packed.position_ids
        self.row_len = row_len

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {
            "input_ids": self.input_ids[i],
            "doc_ids": self.doc_ids[i],
            "position_ids": self.position_ids[i],
        }

    @property
    def n_tokens(self) -> int:
        """Non-padding tokens in all rows."""
        return int((self.input_ids != PAD_ID).sum())


def collate_packed(
    items: list[dict[str, np.ndarray]], generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Stack packed rows into ``(B, L)`` tensors (no randomness: the generator is unused)."""
    return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}


def pad_rows(docs: Sequence[np.ndarray]) -> torch.Tensor:
    """Right-pad one-document rows with ``[PAD]`` to ``(B, max_len)``."""
    width = max(len(d) for d in docs)
    out = np.full((len(docs), width), PAD_ID, dtype=np.int64)
    for i, d in enumerate(docs):
        out[i, : len(d)] = d
    return torch.from_numpy(out)
