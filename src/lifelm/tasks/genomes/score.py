"""Likelihood of genomes under a codon model: genome log-likelihood, per-mutation ratios, per-ORF perplexity.

Every ORF is read in its reference frame and cut into windows of ``context`` tokens; each codon is
scored given the codons before it in its window (the first token of a window has no context and
is not scored; ``[UNK]`` codons are never scored).

For an observed codon substitution (the genome's codon differs from the reference codon at the
same ORF position, both unambiguous), the log-likelihood ratio is
``log p(alt codon | genome context) - log p(ref codon | genome context)``: positive means the model
finds the observed codon more plausible than the reference one in this genome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lifelm._core.progress import track
from lifelm.data.genomes.align import translate_codon
from lifelm.data.genomes.codons import VOCAB, OrfLike, orf_sequence
from lifelm.data.genomes.datasets import pad_rows
from lifelm.models.codon_transformer import CodonTransformer
from lifelm.tasks.genomes.codon_lm import (
    GenomeTokens,
    batched,
    default_orfs,
    genome_document,
    genome_windows,
    reference_sequence,
    row_batches,
    tokenize_genome,
    windows,
)

_ACGT = frozenset("ACGT")
_ID = {c: i for i, c in enumerate(VOCAB)}


@torch.no_grad()
def _predictions(
    model: CodonTransformer,
    toks: Sequence[GenomeTokens],
    context: int,
    batch_tokens: int,
) -> list[list[np.ndarray]]:
    """Per genome, per ORF: ``(len(doc), V)`` log-probabilities predicting each token (NaN rows
    where a token has no context: [CLS] and window starts)."""
    device = next(model.parameters()).device
    V = model.cfg.vocab_size
    out = [[np.full((len(d), V), np.nan, dtype=np.float32) for d in t.docs] for t in toks]
    items = windows([t.docs for t in toks], context)
    for idx, ids in batched(items, batch_tokens):
        logp_t, _ = model.token_logprobs(ids.to(device))  # (B, T, V)
        logp = logp_t.cpu().numpy()
        for r, i in enumerate(idx):
            w = items[i]
            n = len(w.ids)
            # logits at window position j predict document token start + j + 1
            out[w.genome][w.orf][w.start + 1 : w.start + n] = logp[r, : n - 1]
    return out


@torch.no_grad()
def _predictions_genome(
    model: CodonTransformer,
    toks: Sequence[GenomeTokens],
    context: int,
    overlap: int,
    batch_tokens: int,
) -> list[list[np.ndarray]]:
    """Whole-genome mode of :func:`_predictions`: each genome is one document (ORFs joined by
    ``[SEP]``) read in strided windows, so a codon is predicted from the codons before it in the
    genome, across ORFs, up to ``context`` tokens back (at least ``overlap``). Same output shape:
    per genome, per ORF, ``(len(doc), V)`` with NaN on each ORF's ``[CLS]`` row."""
    device = next(model.parameters()).device
    V = model.cfg.vocab_size
    gdocs = [genome_document(t) for t in toks]
    full = [np.full((len(d.ids), V), np.nan, dtype=np.float32) for d in gdocs]
    items = genome_windows(gdocs, context, overlap)
    for idx in row_batches([b - a for _, a, b, _ in items], batch_tokens):
        ids = pad_rows([gdocs[items[i][0]].ids[items[i][1] : items[i][2]] for i in idx])
        logp_t, _ = model.token_logprobs(ids.to(device))
        logp = logp_t.cpu().numpy()
        for r, i in enumerate(idx):
            g, a, b, own = items[i]
            lo = max(own, a + 1)  # tokens predicted from inside this window
            full[g][lo:b] = logp[r, lo - a - 1 : b - a - 1]
    out = []
    for t, d, f in zip(toks, gdocs, full, strict=True):
        per_orf = []
        for o, doc in enumerate(t.docs):
            p = f[d.orf_offsets[o] : d.orf_offsets[o] + len(doc)].copy()
            p[0] = np.nan  # the ORF's [CLS] is not a codon
            per_orf.append(p)
        out.append(per_orf)
    return out


# Long only because of its docstring and signature; the body is under 80 lines.
def score_genomes(
    model: CodonTransformer,
    genomes: Mapping[str, str],
    *,
    orfs: Sequence[OrfLike] | None = None,
    reference: str | None = None,
    context: int | None = None,
    batch_tokens: int = 16_384,
    chunk: int = 32,
    progress: bool = True,
    mode: str = "orf",
    overlap: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Score reference-aligned genomes.

    Parameters
    ----------
    model
        A codon model in eval mode.
    genomes
        ``{seqName: sequence in reference coordinates}``.
    orfs
        ORFs to read (``None``: SARS-CoV-2's).
    reference
        Reference genome in the same coordinates (``None``: Wuhan-Hu-1), for the mutation ratios.
    context
        Tokens per window (``None``: 1,024 in ``"orf"`` mode, the model's ``max_length`` in
        ``"genome"`` mode; never more than ``max_length``).
    batch_tokens
        Padded tokens per forward pass.
    chunk
        Genomes held in memory at once.
    progress
        Show a progress bar.
    mode
        ``"orf"``: every ORF is its own document, read in windows of ``context`` tokens.
        ``"genome"``: GenSLM's whole-genome context: one document per genome (ORFs joined by
        ``[SEP]``, about 9,900 tokens for SARS-CoV-2), read whole when it fits in ``context``
        (default then: the model's ``max_length``, 10,240 for LifeLM's presets) or in windows of
        ``context`` tokens overlapping by ``overlap`` (default ``context // 2``), each codon
        predicted once, from the window where it has the most left context.
    overlap
        Tokens shared by consecutive windows in ``"genome"`` mode.

    Returns
    -------
    genomes_table
        ``seqName``, ``log_likelihood`` (sum over scored codons, nats), ``n_scored``,
        ``mean_log_likelihood``, ``perplexity``.
    mutations_table
        One row per codon substitution: ``seqName``, ``orf``, ``codon`` (1-based in the ORF),
        ``ref_codon``, ``alt_codon``, ``aaSubstitution`` (``S:D614G``; synonymous ones too),
        ``synonymous``, ``llr`` (NaN when the codon has no context in its window).
    orfs_table
        ``seqName``, ``orf``, ``n_scored``, ``nll`` (summed negative log-likelihood, nats).
    """
    model.eval()
    orfs = default_orfs() if orfs is None else list(orfs)
    ref = reference_sequence() if reference is None else reference
    ref_orfs = [orf_sequence(ref, o) for o in orfs]
    if mode not in ("orf", "genome"):
        raise ValueError(f"mode must be 'orf' or 'genome', got {mode!r}")
    if context is None:
        context = 1024 if mode == "orf" else model.cfg.max_length
    context = min(context, model.cfg.max_length)
    over = context // 2 if overlap is None else overlap
    names = list(genomes)
    g_rows, m_rows, o_rows = [], [], []
    starts = range(0, len(names), chunk)
    for c0 in track(starts, description="scoring", total=len(starts), disable=not progress):
        part = names[c0 : c0 + chunk]
        toks = [tokenize_genome(genomes[n], orfs) for n in part]
        if mode == "genome":
            preds = _predictions_genome(model, toks, context, over, batch_tokens)
        else:
            preds = _predictions(model, toks, context, batch_tokens)
        for name, tok, pred in zip(part, toks, preds, strict=True):
            total_ll, total_n = 0.0, 0
            genome = genomes[name]
            for o, orf in enumerate(orfs):
                doc, lp = tok.docs[o], pred[o]
                tgt_lp = lp[np.arange(len(doc)), doc]  # (len,) log p of each actual token
                ok = ~np.isnan(tgt_lp) & (doc >= 5)  # codons with context; not [UNK]/specials
                nll = float(-tgt_lp[ok].sum())
                o_rows.append((name, orf.name, int(ok.sum()), nll))
                total_ll -= nll
                total_n += int(ok.sum())
                seq = orf_sequence(genome, orf)
                for t in range(1, len(doc)):
                    k = int(tok.codon_index[o][t])
                    alt, rc = seq[3 * k : 3 * k + 3], ref_orfs[o][3 * k : 3 * k + 3]
                    if alt == rc or not (set(alt) <= _ACGT and set(rc) <= _ACGT):
                        continue
                    a_aa, r_aa = translate_codon(alt), translate_codon(rc)
                    llr = float(lp[t, _ID[alt]] - lp[t, _ID[rc]])
                    m_rows.append(
                        (
                            name,
                            orf.name,
                            k + 1,
                            rc,
                            alt,
                            f"{orf.name}:{r_aa}{k + 1}{a_aa}",
                            a_aa == r_aa,
                            llr,
                        )
                    )
            g_rows.append((name, total_ll, total_n))
    gt = pd.DataFrame(g_rows, columns=["seqName", "log_likelihood", "n_scored"])
    gt["mean_log_likelihood"] = gt["log_likelihood"] / gt["n_scored"].clip(lower=1)
    gt["perplexity"] = np.exp(-gt["mean_log_likelihood"])
    mt = pd.DataFrame(
        m_rows,
        columns=[
            "seqName",
            "orf",
            "codon",
            "ref_codon",
            "alt_codon",
            "aaSubstitution",
            "synonymous",
            "llr",
        ],
    )
    ot = pd.DataFrame(o_rows, columns=["seqName", "orf", "n_scored", "nll"])
    return gt, mt, ot


def perplexity(
    model: CodonTransformer,
    genomes: Mapping[str, str],
    *,
    orfs: Sequence[OrfLike] | None = None,
    context: int = 1024,
    batch_tokens: int = 16_384,
    progress: bool = True,
) -> pd.DataFrame:
    """Per-ORF perplexity over a set of (held-out) genomes, padding and ``[UNK]`` excluded.

    Returns one row per ORF plus ``ALL``: ``orf``, ``n_scored`` (codons scored, summed over
    genomes), ``nll_per_codon`` (nats) and ``perplexity`` (``exp`` of it; 1 is perfect, 64 is a
    uniform guess over codons).
    """
    _, _, ot = score_genomes(
        model, genomes, orfs=orfs, context=context, batch_tokens=batch_tokens, progress=progress
    )
    return perplexity_table(ot)


def perplexity_table(orf_rows: pd.DataFrame) -> pd.DataFrame:
    """Aggregate the ``orfs_table`` of :func:`score_genomes` into per-ORF perplexity."""
    agg = orf_rows.groupby("orf", sort=False)[["n_scored", "nll"]].sum().reset_index()
    total = pd.DataFrame(
        {"orf": ["ALL"], "n_scored": [agg["n_scored"].sum()], "nll": [agg["nll"].sum()]}
    )
    agg = pd.concat([agg, total], ignore_index=True)
    agg["nll_per_codon"] = agg["nll"] / agg["n_scored"].clip(lower=1)
    agg["perplexity"] = np.exp(agg["nll_per_codon"])
    return agg[["orf", "n_scored", "nll_per_codon", "perplexity"]]
