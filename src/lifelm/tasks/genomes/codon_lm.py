"""Shared plumbing of the codon-model tasks: load a checkpoint, read genomes, cut windows, run batches.

A genome is read in the reference frame: it is aligned to Wuhan-Hu-1 (or given already aligned,
29,903 characters with ``-`` for deletions), then each ORF is tokenized as ``[CLS]`` + codons and
cut into windows of at most ``context`` tokens (the same cut as in training packing). Every window
is one row, right-padded; causal attention means a row's outputs do not depend on its batch-mates.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelm._core.runtime import get_logger, resolve_device
from lifelm.data.genomes.align import Reference
from lifelm.data.genomes.codons import (
    CLS_ID,
    VOCAB,
    CodonStats,
    OrfLike,
    check_tokenizer,
    encode_codons,
    orf_sequence,
    tokenizer_identity,
)
from lifelm.data.genomes.datasets import pad_rows
from lifelm.io.checkpoint import CheckpointError, load_checkpoint, read_config
from lifelm.models.codon_transformer import CodonTransformer, CodonTransformerConfig

log = get_logger("lifelm.genomes")
MODEL_TYPE = "codon_transformer"


def model_sidecar(cfg: CodonTransformerConfig, **extra: Any) -> dict[str, Any]:
    """The ``config.json`` content of a codon model checkpoint (before the loop adds step/version)."""
    return {
        "model_type": MODEL_TYPE,
        "model": cfg.to_dict(),
        "tokenizer": tokenizer_identity(),
        **extra,
    }


def load_codon_model(
    folder: str | Path, *, device: str | torch.device | None = "cpu"
) -> tuple[CodonTransformer, dict[str, Any]]:
    """Load a codon model from a LifeLM checkpoint folder, a run folder (its ``model/``), or a
    Hugging Face GPT-NeoX (GenSLM) folder.

    Returns the model in eval mode and its sidecar config.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file() and (folder / "model" / "config.json").is_file():
        folder = folder / "model"
    config = read_config(folder)
    if config.get("model_type") == "gpt_neox":
        from lifelm.io.hf import read_gpt_neox

        state, fields_ = read_gpt_neox(folder, vocab=list(VOCAB))
        cfg = CodonTransformerConfig.from_dict(fields_)
        config = model_sidecar(cfg, source=str(folder))
    else:
        if config.get("model_type") != MODEL_TYPE:
            raise CheckpointError(
                f"{folder}/config.json: model_type {config.get('model_type')!r} is not a codon model "
                f"({MODEL_TYPE!r}); pass a folder written by `lifelm genomes pretrain/finetune`."
            )
        check_tokenizer(config.get("tokenizer", {}), source=str(folder / "config.json"))
        state, _ = load_checkpoint(folder)
        cfg = CodonTransformerConfig.from_dict(config["model"])
    model = CodonTransformer(cfg)
    model.load_state_dict(state)
    return model.to(resolve_device(device)).eval(), config


def read_genomes(
    path: str | Path, *, reference: str | None = None, names: Sequence[str] | None = None
) -> tuple[dict[str, str], dict[str, int]]:
    """Read genomes and bring them to reference coordinates.

    Sequences that are already reference-length alignments (every one 29,903 characters, ``-`` for
    deletions, as Nextclade's ``aligned.fasta``) are used as they are; others are aligned with
    ``lifelm.data.genomes.align`` (minimap2). Returns ``(genomes, n_unaligned)`` where the second
    dict counts genomes that could not be aligned (left out, with a warning).
    """
    from lifelm.io.fasta import read_fasta

    seqs = read_fasta(path)
    if names is not None:
        missing = [n for n in names if n not in seqs]
        if missing:
            raise KeyError(f"{path}: {len(missing)} requested names not found, e.g. {missing[:3]}")
        seqs = {n: seqs[n] for n in names}
    ref_len = len(reference) if reference else len(Reference.sarscov2().sequence)
    if all(len(s) == ref_len for s in seqs.values()):
        return seqs, {}
    from lifelm.data.genomes import align  # G1's minimap2 alignment

    out, failed = {}, {}
    for name, s in seqs.items():
        if len(s) == ref_len and "-" in s:
            out[name] = s
            continue
        try:
            out[name] = align.aligned_to_reference(s)
        except Exception as err:  # an unalignable genome is skipped and counted, not fatal
            log.warning(
                "%s: %s could not be aligned to the reference (%s); skipped", path, name, err
            )
            failed[name] = 1
    return out, failed


@dataclass(frozen=True)
class Window:
    """One row of model input cut from one ORF of one genome."""

    genome: int  # index of the genome in the input order
    orf: int  # index of the ORF
    start: int  # index of the window's first token in the ORF document ([CLS] = 0)
    ids: np.ndarray  # (t,) token ids


@dataclass(frozen=True)
class GenomeTokens:
    """A genome's ORF documents (``[CLS]`` + codons) and, per token, its reference codon number."""

    docs: list[np.ndarray]  # one per ORF
    codon_index: list[
        np.ndarray
    ]  # per ORF: 0-based codon number in the ORF of each token (-1 for [CLS])
    stats: CodonStats


def tokenize_genome(genome: str, orfs: Sequence[OrfLike]) -> GenomeTokens:
    """Tokenize a reference-aligned genome ORF by ORF, remembering which codon each token is."""
    docs, index, total = [], [], CodonStats()
    for orf in orfs:
        seq = orf_sequence(genome, orf)
        ids, stats = encode_codons(seq)
        n = len(seq) // 3
        codons = np.frombuffer(seq[: 3 * n].encode("latin-1"), dtype=np.uint8).reshape(n, 3)
        gap = (codons == ord("-")).all(axis=1)  # deleted codons have no token
        stats.unknown_by_orf = {orf.name: stats.n_unknown}
        total += stats
        docs.append(np.concatenate([[CLS_ID], ids]))
        index.append(np.concatenate([[-1], np.flatnonzero(~gap)]))
    return GenomeTokens(docs, index, total)


def windows(docs_per_genome: Sequence[Sequence[np.ndarray]], context: int) -> list[Window]:
    """Cut every ORF document into consecutive windows of at most ``context`` tokens."""
    out = []
    for g, docs in enumerate(docs_per_genome):
        for o, doc in enumerate(docs):
            for start in range(0, len(doc), context):
                piece = doc[start : start + context]
                if len(piece) >= 2:
                    out.append(Window(g, o, start, piece))
    return out


def batched(items: Sequence[Window], batch_tokens: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Group windows (longest first, so padding is small) into batches of about ``batch_tokens``.

    Yields ``(indices into items, (B, T) padded input_ids)``. The grouping changes only speed:
    every row is computed independently.
    """
    order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
    at = 0
    while at < len(order):
        width = len(items[order[at]].ids)
        n = max(1, batch_tokens // width)
        idx = order[at : at + n]
        at += n
        yield idx, pad_rows([items[i].ids for i in idx])


def default_orfs(annotation: str | Path | None = None) -> list[OrfLike]:
    """ORFs from an annotation file (GFF3/GenBank), or SARS-CoV-2's (Nextclade's 12) when none is given."""
    if annotation is None:
        return list(Reference.sarscov2().orfs)
    from lifelm.io.annotation import read_annotation

    return list(read_annotation(annotation))


def reference_sequence(path: str | Path | None = None) -> str:
    """The single sequence of a reference FASTA, or Wuhan-Hu-1 when none is given."""
    if path is None:
        return Reference.sarscov2().sequence
    from lifelm.io.fasta import read_fasta

    seqs = read_fasta(path)
    if len(seqs) != 1:
        raise ValueError(f"{path}: a reference FASTA holds one sequence, found {len(seqs)}")
    return next(iter(seqs.values()))


# --------------------------------------------------------------------------------------------
# Whole-genome mode: one document per genome, strided windows when it does not fit
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenomeDocument:
    """A genome as one document: ``[CLS]`` + ORF 1 codons + ``[SEP]`` + ORF 2 codons + ...

    ``orf_offsets[o]`` is the index of the token that stands where ORF ``o``'s own ``[CLS]``
    would (``[CLS]`` for the first ORF, ``[SEP]`` for the others), so ORF ``o``'s token ``t >= 1``
    is document token ``orf_offsets[o] + t``.
    """

    ids: np.ndarray
    orf_offsets: tuple[int, ...]


def genome_document(tokens: GenomeTokens) -> GenomeDocument:
    """Join a genome's ORF documents into one (GenSLM's whole-genome context)."""
    from lifelm.data.genomes.codons import SEP_ID

    pieces, offsets, at = [], [], 0
    for o, doc in enumerate(tokens.docs):
        head = CLS_ID if o == 0 else SEP_ID
        pieces.append(np.concatenate([[head], doc[1:]]))
        offsets.append(at)
        at += len(doc)
    return GenomeDocument(np.concatenate(pieces).astype(np.int64), tuple(offsets))


def strided_windows(n: int, context: int, overlap: int) -> list[tuple[int, int, int]]:
    """Cover ``n`` tokens with windows of ``context`` tokens that overlap by ``overlap``.

    Returns ``(start, end, own_from)`` per window: the window reads tokens ``start:end`` and
    *owns* tokens ``own_from:end`` (their outputs are taken from it). Every token is owned by
    exactly one window, and every owned token after the first window has at least ``overlap``
    tokens of left context inside its window. ``n <= context``: one window, the whole document.

    >>> strided_windows(10, 4, 2)
    [(0, 4, 0), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    """
    if not 0 <= overlap < context:
        raise ValueError(f"overlap must be in [0, context), got {overlap} for context {context}")
    out = [(0, min(n, context), 0)]
    stride = context - overlap
    start = stride
    while out[-1][1] < n:
        out.append((start, min(n, start + context), start + overlap))
        start += stride
    return out


def genome_windows(
    docs: Sequence[GenomeDocument], context: int, overlap: int
) -> list[tuple[int, int, int, int]]:
    """``(genome, start, end, own_from)`` strided windows of every whole-genome document."""
    return [
        (g, a, b, own)
        for g, d in enumerate(docs)
        for a, b, own in strided_windows(len(d.ids), context, overlap)
    ]


def row_batches(lengths: Sequence[int], batch_tokens: int) -> Iterator[list[int]]:
    """Indices of rows grouped longest first into batches of about ``batch_tokens`` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    at = 0
    while at < len(order):
        n = max(1, batch_tokens // max(1, lengths[order[at]]))
        yield order[at : at + n]
        at += n
