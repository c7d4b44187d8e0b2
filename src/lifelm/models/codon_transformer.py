"""Codon transformer: a decoder-only language model over GenSLM's 69-token codon vocabulary.

The shape follows GenSLM (Zvyagin et al., 2022, "GenSLMs: Genome-scale language models reveal
SARS-CoV-2 evolutionary dynamics"), itself a GPT-NeoX (Black et al., 2022): token embedding,
``n_layers`` pre-norm blocks of causal self-attention with rotary position embeddings (Su et al.,
2021) on a fraction of each head's dimensions and a feed-forward network, a final norm and a
linear head over the vocabulary.

What is notable, and fixes faults of the original code:

* **Packing.** Many short genes share one row; ``doc_ids`` (B, T) gives each token's document,
  attention is block-diagonal causal (no token sees another gene) and rotary positions restart
  at each document (``position_ids``).
* **Loss on real tokens only.** No target is ``[PAD]`` or ``[UNK]``, and no token is asked to
  predict the first token of the next document.
* **Embeddings over real tokens only.** The mean excludes ``[PAD]`` and ``[CLS]``; causal
  attention with right padding makes a row's hidden states independent of its batch-mates.
* GPT-NeoX's layout (LayerNorm with biases, GELU, biases in every linear layer) is the only
  one; the two switches GPT-NeoX checkpoints differ in (parallel residual, tied head) are config
  fields, so ``lifelm.io.hf`` can map their weights 1:1. Field names match the cell model's
  (``d_model``, ``d_ff``, ``max_length``) and presets are looked up the same way.

The model takes and returns tensors only; tokenization lives in ``lifelm.data.genomes.codons``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from lifelm.models.presets import lookup_preset

# ids of GenSLM's 69-token vocabulary that the model needs to know (see data/genomes/codons.py)
UNK_ID, CLS_ID, SEP_ID, PAD_ID, MASK_ID = 0, 1, 2, 3, 4
N_SPECIAL = 5


@dataclass(frozen=True)
class CodonTransformerConfig:
    """Shape of a codon transformer; presets by name with :meth:`from_name`."""

    name: str = "custom"  # preset name, kept in the checkpoint for the record
    vocab_size: int = 69  # GenSLM's codon vocabulary: 5 specials + 64 codons
    n_layers: int = 2  # transformer blocks
    d_model: int = 32  # model width D
    n_heads: int = 2  # attention heads; head_dim = d_model / n_heads
    d_ff: int = 128  # feed-forward width (4 * d_model in GenSLM)
    rotary_fraction: float = (
        0.25  # share of each head's dims that get rotary positions (GenSLM: 0.25)
    )
    rotary_base: float = 10_000.0  # rotary frequency base
    max_length: int = 10_240  # longest row the model is meant for (GenSLM's SARS-CoV-2 context)
    norm_eps: float = 1e-5  # LayerNorm epsilon
    # GPT-NeoX checkpoints set these two; LifeLM's presets keep the GenSLM defaults
    parallel_residual: bool = True  # x + attn(ln1(x)) + mlp(ln2(x)) instead of sequential
    tie_embeddings: bool = False  # share input embedding and output head (GenSLM does not)
    dropout: float = 0.0  # dropout on attention output and residual branches
    init_std: float = 0.02  # normal init of weights

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_heads

    @property
    def rotary_dims(self) -> int:
        """How many of a head's dims are rotated (even)."""
        return int(self.head_dim * self.rotary_fraction) // 2 * 2

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.rotary_fraction <= 1.0:
            raise ValueError(f"rotary_fraction must be in [0, 1], got {self.rotary_fraction}")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> CodonTransformerConfig:
        """A preset by name (see :data:`PRESETS`), with optional field overrides."""
        return cls(name=name, **{**lookup_preset(PRESETS, name, family="codon model"), **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodonTransformerConfig:
        """Rebuild from :meth:`to_dict` output (unknown keys are an error, not ignored).

        Checkpoints written before the config names were unified (``hidden``, ``ffn``,
        ``max_len``; ``norm="layernorm"``, ``activation="gelu"``, ``bias=True``) still load.
        """
        d = {_RENAMED.get(k, k): v for k, v in d.items()}
        for key, only in _REMOVED.items():
            if key in d and (value := d.pop(key)) != only:
                raise ValueError(f"codon model config {key}={value!r} is no longer supported")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown codon model config fields {sorted(unknown)}")
        return cls(**d)


# fields renamed to the cell model's names, and switches no preset used (their only value)
_RENAMED = {"hidden": "d_model", "ffn": "d_ff", "max_len": "max_length"}
_REMOVED = {"norm": "layernorm", "activation": "gelu", "bias": True}

PRESETS: dict[str, dict[str, Any]] = {
    "test": {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 128},
    "tiny": {"n_layers": 4, "d_model": 128, "n_heads": 4, "d_ff": 512},
    "small": {"n_layers": 6, "d_model": 256, "n_heads": 8, "d_ff": 1024},
    # GenSLM 25M: GPT-NeoX, 8 layers, hidden 512, 8 heads, FFN 2048, rotary 0.25, context 2048
    "genslm-25m": {"n_layers": 8, "d_model": 512, "n_heads": 8, "d_ff": 2048, "max_length": 2048},
}


def _norm(cfg: CodonTransformerConfig) -> nn.Module:
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


def rotary_cos_sin(
    position_ids: torch.Tensor, dims: int, base: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``(B, 1, T, dims)`` for the positions given (GPT-NeoX half-split layout)."""
    inv_freq = 1.0 / (
        base ** (torch.arange(0, dims, 2, device=position_ids.device, dtype=torch.float32) / dims)
    )
    angles = position_ids.float()[..., None] * inv_freq  # (B, T, dims/2)
    emb = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, dims)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of ``x`` (B, H, T, hd); the rest pass through."""
    d = cos.shape[-1]
    if d == 0:
        return x
    rot, rest = x[..., :d], x[..., d:]
    half1, half2 = rot[..., : d // 2], rot[..., d // 2 :]
    rotated = torch.cat([-half2, half1], dim=-1)
    return torch.cat([rot * cos + rotated * sin, rest], dim=-1)


class Attention(nn.Module):
    """Multi-head causal self-attention with rotary positions, through SDPA."""

    def __init__(self, cfg: CodonTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(
            cfg.d_model,
            3 * cfg.d_model,
        )  # rows: [q; k; v]
        self.out = nn.Linear(
            cfg.d_model,
            cfg.d_model,
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        q, k, v = self._qkv(x, cos, sin)
        drop = self.cfg.dropout if self.training else 0.0
        if mask is None:  # one document per row, right padding: plain causal is exact
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:  # packed rows: block-diagonal causal mask (B, 1, T, T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self._merge(y)

    def _qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys (both rotated) and values, each (B, H, T, hd)."""
        B, T, _ = x.shape
        H, hd = self.cfg.n_heads, self.cfg.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        """Heads (B, H, T, hd) back to (B, T, D) through the output projection."""
        B, _, T, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def step(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attention of new tokens ``x`` (B, T, D) over the cached keys/values and themselves.

        ``cos``/``sin`` are the rotary tables of the new tokens' absolute positions. Returns the
        output and the cache extended by the new keys and values (B, H, past + T, hd).
        """
        T = x.shape[1]
        q, k, v = self._qkv(x, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        n_past = k.shape[2] - T
        if T == 1:  # one new token sees everything before it
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # new token i sees the cache and new tokens 0..i
            allowed = torch.ones(T, n_past + T, dtype=torch.bool, device=x.device).tril(n_past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self._merge(y), (k, v)


class FeedForward(nn.Module):
    """GELU MLP (GPT-NeoX)."""

    def __init__(self, cfg: CodonTransformerConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Pre-norm transformer block, sequential or GPT-NeoX parallel residual."""

    def __init__(self, cfg: CodonTransformerConfig) -> None:
        super().__init__()
        self.parallel = cfg.parallel_residual
        self.norm1, self.norm2 = _norm(cfg), _norm(cfg)
        self.attn, self.mlp = Attention(cfg), FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        a = self.drop(self.attn(self.norm1(x), cos, sin, mask))
        if self.parallel:
            return x + a + self.drop(self.mlp(self.norm2(x)))
        x = x + a
        return x + self.drop(self.mlp(self.norm2(x)))

    def step(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`forward` for new tokens with a key/value cache (inference only)."""
        a, cache = self.attn.step(self.norm1(x), cos, sin, past)
        if self.parallel:
            return x + a + self.mlp(self.norm2(x)), cache
        x = x + a
        return x + self.mlp(self.norm2(x)), cache


KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class CodonTransformer(nn.Module):
    """Decoder-only codon language model.

    Batch keys (all ``(B, T)`` int64): ``input_ids``; optional ``doc_ids`` (document index per
    token in packed rows, ``-1`` on padding) and ``position_ids`` (position inside the document).
    """

    def __init__(self, cfg: CodonTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = _norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=self.cfg.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states ``(B, T, D)``."""
        T = input_ids.shape[1]
        if position_ids is None:  # one row of positions, broadcast over the batch
            position_ids = torch.arange(T, device=input_ids.device)[None]
        mask = None
        if doc_ids is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
            mask = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal  # (B, T, T)
            mask = mask[:, None]  # (B, 1, T, T), broadcast over heads
        x = self.embed(input_ids)  # (B, T, D)
        cos, sin = rotary_cos_sin(position_ids, self.cfg.rotary_dims, self.cfg.rotary_base, x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        return self.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Next-codon loss over real targets: ``{"loss", "n_tokens", "logits" (B, T, V)}``."""
        logits = self.head(self.hidden_states(input_ids, doc_ids, position_ids))  # (B, T, V)
        valid = target_mask(input_ids, doc_ids)  # (B, T-1)
        targets = input_ids[:, 1:].masked_fill(~valid, -100)
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=-100,
        )
        return {"loss": loss, "n_tokens": valid.sum(), "logits": logits}

    @torch.no_grad()
    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        doc_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of every vocabulary entry at each position ``(B, T, V)`` (fp32),
        and the mask ``(B, T-1)`` of real next-token targets."""
        logits = self.head(self.hidden_states(input_ids, doc_ids, position_ids)).float()
        return logits.log_softmax(-1), target_mask(input_ids, doc_ids)

    @torch.no_grad()
    def decode(
        self, input_ids: torch.Tensor, past: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits ``(B, T, V)`` of new tokens that continue the rows held in ``past``.

        Incremental decoding with a key/value cache: ``past`` is what the previous call returned
        (``None`` at the start); the new tokens get positions after the cached ones. The logits
        equal those of :meth:`forward` on the whole row (up to float rounding), at the cost of
        the new tokens only. Rows are one document each, no padding.
        """
        T = input_ids.shape[1]
        start = 0 if past is None else past[0][0].shape[2]
        positions = torch.arange(start, start + T, device=input_ids.device)[None]
        x = self.embed(input_ids)
        cos, sin = rotary_cos_sin(positions, self.cfg.rotary_dims, self.cfg.rotary_base, x.dtype)
        new: KVCache = []
        for i, block in enumerate(self.blocks):
            x, cache = cast(Block, block).step(x, cos, sin, None if past is None else past[i])
            new.append(cache)
        return self.head(self.norm(x)), new

    @torch.no_grad()
    def embed_mean(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Mean hidden state over real tokens (not ``[PAD]``/``[CLS]``) of one-document rows ``(B, D)``."""
        h = self.hidden_states(input_ids).float()  # (B, T, D)
        keep = real_token_mask(input_ids).float()[..., None]  # (B, T, 1)
        return (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def real_token_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """True on codons, ``[UNK]`` and ``[SEP]``; False on ``[PAD]``, ``[CLS]`` and ``[MASK]``."""
    return (input_ids != PAD_ID) & (input_ids != CLS_ID) & (input_ids != MASK_ID)


def target_mask(input_ids: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
    """Which next-token targets count ``(B, T-1)``: not padding, not ``[UNK]``/``[CLS]``, same document."""
    tgt = input_ids[:, 1:]
    valid = (tgt != PAD_ID) & (tgt != UNK_ID) & (tgt != CLS_ID) & (tgt != MASK_ID)
    if doc_ids is not None:
        valid &= (doc_ids[:, 1:] == doc_ids[:, :-1]) & (doc_ids[:, 1:] >= 0)
    return valid
