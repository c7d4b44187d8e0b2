"""Sample coding sequences from a codon model: temperature and top-k, valid ORFs by construction.

Sampling starts from ``[CLS]`` and a prompt (by default the start codon ``ATG``). Special tokens
are never sampled; a stop codon ends the ORF; stops are forbidden before ``min_codons`` and forced
at ``max_codons``. So every output starts with the prompt, is a whole number of codons, has no
internal stop codon and ends with exactly one stop codon.
"""

from __future__ import annotations

import pandas as pd
import torch

from lifelm.data.genomes.codons import (
    CLS_ID,
    START_CODON,
    decode_codons,
    encode_codons,
    stop_ids,
)
from lifelm.models.codon_transformer import N_SPECIAL, CodonTransformer


# Long only because of its docstring and signature; the body is under 80 lines.
@torch.no_grad()
def generate(
    model: CodonTransformer,
    n: int = 1,
    *,
    prompt: str = START_CODON,
    temperature: float = 1.0,
    top_k: int = 0,
    min_codons: int = 30,
    max_codons: int = 500,
    seed: int = 0,
    use_cache: bool = True,
) -> pd.DataFrame:
    """Sample ``n`` open reading frames.

    Parameters
    ----------
    model
        A codon model in eval mode.
    n
        Sequences to sample (in one batch).
    prompt
        Leading nucleotides (a whole number of codons, A/C/G/T, no stop codon).
    temperature
        Softmax temperature (> 0); lower is more conservative.
    top_k
        Sample among the ``top_k`` most likely codons (0: all).
    min_codons
        No stop codon before this many codons (prompt included).
    max_codons
        Length cap in codons, stop included; a stop is forced at the cap.
    seed
        Seeds the sampler.
    use_cache
        Reuse past keys and values (:meth:`CodonTransformer.decode`): each step runs the new
        token only. The same tokens come out as without it (``top_k=1`` is greedy decoding);
        rows longer than the model's ``max_length`` fall back to recomputing the last
        ``max_length`` tokens, as without the cache.

    Returns
    -------
    DataFrame
        ``seqName`` (``generated_1`` ...), ``sequence`` (nucleotides), ``n_codons``,
        ``stopped`` (True when the model chose the stop itself, False when it was forced),
        ``mean_log_likelihood`` (per sampled codon under the untempered model).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    prompt_ids, stats = encode_codons(prompt.upper())
    if stats.n_unknown or stats.n_trailing or any(int(i) in stop_ids() for i in prompt_ids):
        raise ValueError(
            f"prompt {prompt!r} must be whole A/C/G/T codons without a stop codon (e.g. 'ATG')"
        )
    if max_codons <= len(prompt_ids):
        raise ValueError(
            f"max_codons ({max_codons}) must exceed the prompt's {len(prompt_ids)} codons"
        )
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    stops = torch.tensor(stop_ids())
    ids = torch.tensor([[CLS_ID, *prompt_ids.tolist()]] * n, dtype=torch.long)  # (n, 1 + p)
    done = torch.zeros(n, dtype=torch.bool)
    forced = torch.zeros(n, dtype=torch.bool)
    ll = torch.zeros(n, dtype=torch.float64)
    n_sampled = torch.zeros(n, dtype=torch.long)
    model.eval()
    past = None
    while not bool(done.all()):
        n_codons = ids.shape[1] - 1
        if use_cache and ids.shape[1] <= model.cfg.max_length:
            new = ids if past is None else ids[:, -1:]
            step_logits, past = model.decode(new.to(device), past)
            logits = step_logits[:, -1].float().cpu()  # (n, V)
        else:
            ctx = ids[:, -model.cfg.max_length :].to(device)
            logits = model.head(model.hidden_states(ctx))[:, -1].float().cpu()  # (n, V)
        logp = logits.log_softmax(-1)
        allowed = torch.zeros_like(logits, dtype=torch.bool)
        allowed[:, N_SPECIAL:] = True  # codons only
        if n_codons + 1 < min_codons:
            allowed[:, stops] = False
        if n_codons + 1 >= max_codons:  # last slot: a stop codon and nothing else
            allowed[:] = False
            allowed[:, stops] = True
        z = (logits / temperature).masked_fill(~allowed, float("-inf"))
        if top_k > 0:
            kth = z.topk(min(top_k, int(allowed.sum(1).min())), dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        nxt = torch.multinomial(z.softmax(-1), 1, generator=gen).squeeze(1)  # (n,)
        nxt = torch.where(done, torch.full_like(nxt, CLS_ID), nxt)  # finished rows: filler
        live = ~done
        ll[live] += logp[live, nxt[live]].double()
        n_sampled[live] += 1
        is_stop = torch.isin(nxt, stops) & live
        if n_codons + 1 >= max_codons:
            forced |= live  # the model was not free to continue
        done |= is_stop
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    seqs = [decode_codons(row[1:].tolist()) for row in ids]
    seqs = [_cut_at_stop(s) for s in seqs]
    return pd.DataFrame(
        {
            "seqName": [f"generated_{i + 1}" for i in range(n)],
            "sequence": seqs,
            "n_codons": [len(s) // 3 for s in seqs],
            "stopped": (~forced).numpy(),
            "mean_log_likelihood": (ll / n_sampled.clamp_min(1)).numpy(),
        }
    )


def _cut_at_stop(seq: str) -> str:
    """Cut after the first in-frame stop codon (later codons are filler of finished rows)."""
    stop_set = {"TAA", "TAG", "TGA"}
    for k in range(0, len(seq), 3):
        if seq[k : k + 3] in stop_set:
            return seq[: k + 3]
    return seq


def is_valid_orf(seq: str) -> bool:
    """Starts with ATG, whole codons of A/C/G/T, one stop codon and only at the end."""
    if len(seq) < 6 or len(seq) % 3 or not set(seq) <= set("ACGT") or not seq.startswith("ATG"):
        return False
    codons = [seq[k : k + 3] for k in range(0, len(seq), 3)]
    stops = {"TAA", "TAG", "TGA"}
    return codons[-1] in stops and not any(c in stops for c in codons[:-1])
