"""Genome embeddings: the mean final hidden state over every real codon token of a genome.

``mode="orf"``: each ORF is read in its own frame and cut into windows of ``context`` tokens; a
genome's embedding is the token-weighted mean over all its windows (``[PAD]`` and ``[CLS]``
excluded).

``mode="genome"`` (GenSLM's whole-genome context): the ORFs are joined into one document
(``[CLS]`` ORF1 ``[SEP]`` ORF2 ...; about 9,900 tokens for SARS-CoV-2), read whole when it fits
in ``context`` (default: the model's ``max_length``, 10,240 for LifeLM's presets), else in windows
of ``context`` tokens that overlap by ``overlap`` (default ``context // 2``); each token's hidden
state is taken once, from the window where it has the most left context, and the embedding is the
mean over real tokens (codons, ``[UNK]`` and the ``[SEP]`` between ORFs).

Rows never interact (causal attention, right padding), so an embedding does not depend on
batch-mates, batch size or input order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lifelm._core.progress import track
from lifelm.data.genomes.codons import OrfLike
from lifelm.data.genomes.datasets import pad_rows
from lifelm.models.codon_transformer import CodonTransformer, real_token_mask
from lifelm.tasks.genomes.codon_lm import (
    batched,
    default_orfs,
    genome_document,
    genome_windows,
    row_batches,
    tokenize_genome,
    windows,
)


@torch.no_grad()
def embed_genomes(
    model: CodonTransformer,
    genomes: Mapping[str, str],
    *,
    orfs: Sequence[OrfLike] | None = None,
    context: int | None = None,
    batch_tokens: int = 16_384,
    progress: bool = True,
    mode: str = "orf",
    overlap: int | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Embed reference-aligned genomes.

    Parameters
    ----------
    model
        A codon model (eval mode; its device is used).
    genomes
        ``{seqName: sequence in reference coordinates}``.
    orfs
        ORFs whose codons are read (``None``: SARS-CoV-2's 12, Nextclade's gene map).
    context
        Tokens per window (``None``: 1,024 in ``"orf"`` mode, the model's ``max_length`` in
        ``"genome"`` mode; never more than ``max_length``).
    batch_tokens
        Padded tokens per forward pass (speed and memory only).
    progress
        Show a progress bar.
    mode
        ``"orf"`` or ``"genome"`` (module docstring).
    overlap
        Tokens shared by consecutive windows in ``"genome"`` mode (``None``: ``context // 2``).

    Returns
    -------
    embeddings
        ``(n_genomes, hidden)`` float32, rows in the order of ``genomes``.
    table
        One row per genome: ``seqName``, ``n_codons``, ``n_unknown`` (``[UNK]`` codons, N or
        ambiguous bases), ``n_deleted`` (codons lost to deletions or uncovered ends).
    """
    model.eval()
    device = next(model.parameters()).device
    if mode not in ("orf", "genome"):
        raise ValueError(f"mode must be 'orf' or 'genome', got {mode!r}")
    if context is None:
        context = 1024 if mode == "orf" else model.cfg.max_length
    context = min(context, model.cfg.max_length)
    orfs = default_orfs() if orfs is None else orfs
    names = list(genomes)
    toks = [tokenize_genome(genomes[n], orfs) for n in names]
    sums = torch.zeros(len(names), model.cfg.d_model, dtype=torch.float64)
    counts = torch.zeros(len(names), dtype=torch.float64)
    if mode == "genome":
        over = context // 2 if overlap is None else overlap
        _embed_genome_mode(model, toks, context, over, batch_tokens, sums, counts, progress)
        return _finish(names, toks, sums, counts)
    items = windows([t.docs for t in toks], context)
    n_batches = sum(1 for _ in batched(items, batch_tokens))
    for idx, ids in track(
        batched(items, batch_tokens), description="embedding", total=n_batches, disable=not progress
    ):
        ids = ids.to(device)
        h = model.hidden_states(ids).float()  # (B, T, D)
        keep = real_token_mask(ids)[..., None].float()  # (B, T, 1)
        row_sum = (h * keep).sum(1).double().cpu()  # (B, D)
        row_n = keep.sum((1, 2)).double().cpu()  # (B,)
        for r, i in enumerate(idx):
            g = items[i].genome
            sums[g] += row_sum[r]
            counts[g] += row_n[r]
    return _finish(names, toks, sums, counts)


def _embed_genome_mode(
    model: CodonTransformer,
    toks: list,
    context: int,
    overlap: int,
    batch_tokens: int,
    sums: torch.Tensor,
    counts: torch.Tensor,
    progress: bool,
) -> None:
    """Add each genome's owned real-token hidden states to ``sums``/``counts`` (in place)."""
    device = next(model.parameters()).device
    docs = [genome_document(t) for t in toks]
    items = genome_windows(docs, context, overlap)
    batches = list(row_batches([b - a for _, a, b, _ in items], batch_tokens))
    for idx in track(batches, description="embedding", total=len(batches), disable=not progress):
        ids = pad_rows([docs[items[i][0]].ids[items[i][1] : items[i][2]] for i in idx]).to(device)
        h = model.hidden_states(ids).float()  # (B, T, D)
        keep = real_token_mask(ids).float()  # (B, T)
        for r, i in enumerate(idx):
            g, a, b, own = items[i]
            k = keep[r, own - a : b - a, None]  # owned tokens only
            sums[g] += (h[r, own - a : b - a] * k).sum(0).double().cpu()
            counts[g] += float(k.sum())


def _finish(
    names: list[str], toks: list, sums: torch.Tensor, counts: torch.Tensor
) -> tuple[np.ndarray, pd.DataFrame]:
    emb = (sums / counts.clamp_min(1.0)[:, None]).float().numpy()
    table = pd.DataFrame(
        {
            "seqName": names,
            "n_codons": [t.stats.n_codons for t in toks],
            "n_unknown": [t.stats.n_unknown for t in toks],
            "n_deleted": [t.stats.n_deleted for t in toks],
        }
    )
    return emb, table
