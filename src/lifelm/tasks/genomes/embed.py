"""Genome embeddings: the mean final hidden state over every real codon token of a genome.

Each ORF is read in its own frame and cut into windows of ``context`` tokens; a genome's embedding
is the token-weighted mean over all its windows (``[PAD]`` and ``[CLS]`` excluded). Rows never
interact (causal attention, right padding), so an embedding does not depend on batch-mates, batch
size or input order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lifelm._core.progress import track
from lifelm.data.genomes.codons import OrfLike
from lifelm.models.codon_transformer import CodonTransformer, real_token_mask
from lifelm.tasks.genomes.codon_lm import batched, default_orfs, tokenize_genome, windows


@torch.no_grad()
def embed_genomes(
    model: CodonTransformer,
    genomes: Mapping[str, str],
    *,
    orfs: Sequence[OrfLike] | None = None,
    context: int = 1024,
    batch_tokens: int = 16_384,
    progress: bool = True,
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
        Tokens per window (at most the model's ``max_length``).
    batch_tokens
        Padded tokens per forward pass (speed and memory only).
    progress
        Show a progress bar.

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
    context = min(context, model.cfg.max_length)
    orfs = default_orfs() if orfs is None else orfs
    names = list(genomes)
    toks = [tokenize_genome(genomes[n], orfs) for n in names]
    items = windows([t.docs for t in toks], context)
    sums = torch.zeros(len(names), model.cfg.d_model, dtype=torch.float64)
    counts = torch.zeros(len(names), dtype=torch.float64)
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
