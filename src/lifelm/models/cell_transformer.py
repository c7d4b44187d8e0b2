"""CellTransformer: a BERT-style encoder over rank-value gene tokens (a Geneformer-like "virtual cell").

A cell is a sequence ``[CLS] g_1 g_2 … g_T`` of gene tokens ordered by normalised expression
(see ``lifelm.data.cells.tokenizer``). The model adds a learned gene embedding and a learned
position (rank) embedding, runs pre-LayerNorm transformer blocks with
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU),
and offers three heads:

- masked-gene prediction (pretraining), computed only at masked positions, with the output
  projection tied to the gene embedding;
- a pooled cell embedding (mean over gene tokens, padding excluded), which computes no head at
  all (Geneformer's embedding extractor runs the full masked-LM head on every token and
  throws it away);
- a cell-type classifier on the pooled embedding (:class:`CellClassifier`).

Tensors in, tensors out: no AnnData, no files. References: Devlin et al. 2019 (BERT);
Theodoris et al. 2023 (Geneformer); Xiong et al. 2020 (pre-LN transformers).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lifelm.models.pooling import PAD_ID, gene_mean, key_mask
from lifelm.models.presets import lookup_preset

if TYPE_CHECKING:
    from lifelm.models.bert_encoder import BertEncoder


@dataclass(frozen=True)
class CellTransformerConfig:
    """Shape of the encoder. Named presets: :meth:`from_name`."""

    vocab_size: int  # token ids, special tokens included
    n_layers: int = 6  # transformer blocks
    d_model: int = 256  # hidden size
    n_heads: int = 4  # attention heads (d_model % n_heads == 0)
    d_ff: int = 512  # feed-forward inner size
    max_length: int = 2048  # tokens per cell including [CLS]
    dropout: float = 0.02  # on attention output, FFN output and embeddings
    norm_eps: float = 1e-12  # LayerNorm epsilon

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    @classmethod
    def from_name(cls, name: str, *, vocab_size: int, **overrides: object) -> CellTransformerConfig:
        """A preset by name (see :data:`PRESETS`), with optional field overrides."""
        fields_ = {**lookup_preset(PRESETS, name, family="cell model"), **overrides}
        return cls(vocab_size=vocab_size, **fields_)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


PRESETS: dict[str, dict[str, int | float]] = {
    # tests: seconds on a laptop CPU
    "test": {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64, "max_length": 256},
    # demo / CPU pretraining in minutes
    "tiny": {"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 128, "max_length": 512},
    "small": {"n_layers": 4, "d_model": 128, "n_heads": 4, "d_ff": 256, "max_length": 1024},
    # Geneformer V1 shape (6 layers, 256 hidden, 4 heads, 512 FFN, 2,048 tokens)
    "geneformer-6l": {"n_layers": 6, "d_model": 256, "n_heads": 4, "d_ff": 512, "max_length": 2048},
    # Geneformer 12-layer shape (12 layers, 512 hidden, 8 heads, 1,024 FFN)
    "geneformer-12l": {
        "n_layers": 12,
        "d_model": 512,
        "n_heads": 8,
        "d_ff": 1024,
        "max_length": 2048,
    },
}


class SelfAttention(nn.Module):
    """Multi-head self-attention through SDPA; padding keys are masked out."""

    def __init__(self, cfg: CellTransformerConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, H, T, Dh)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, Dh)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)); x + FFN(LN(x))."""

    def __init__(self, cfg: CellTransformerConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), key_mask))
        return x + self.drop(self.ffn(self.ln2(x)))


class CellTransformer(nn.Module):
    """Encoder trunk with the masked-gene pretraining head and a pooled cell embedding."""

    def __init__(self, cfg: CellTransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.gene_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD_ID)
        self.position_embedding = nn.Embedding(cfg.max_length, cfg.d_model)
        self.embed_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.embed_drop = nn.Dropout(cfg.dropout)
        blocks = [Block(cfg) for _ in range(cfg.n_layers)]
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        # masked-gene head: transform, then project onto the (tied) gene embedding
        self.mlm_transform = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_model),
            nn.GELU(),
            nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps),
        )
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(self._init)
        for block in blocks:  # GPT-2 style scaled init of residual projections
            ffn_out = block.ffn[2]
            if not isinstance(ffn_out, nn.Linear):
                raise TypeError(f"Block.ffn[2] is a {type(ffn_out).__name__}, expected nn.Linear")
            nn.init.normal_(block.attn.out.weight, std=0.02 / math.sqrt(2 * cfg.n_layers))
            nn.init.normal_(ffn_out.weight, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                nn.init.zeros_(m.weight[m.padding_idx])

    def input_embedding(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Gene + position embedding (B, T, D), before the embedding LayerNorm."""
        t = input_ids.shape[1]
        if t > self.config.max_length:
            raise ValueError(f"sequence of {t} tokens exceeds max_length={self.config.max_length}")
        pos = torch.arange(t, device=input_ids.device)
        return self.gene_embedding(input_ids) + self.position_embedding(pos)[None]

    def position_shift(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start, D): the input change of a token moved from position ``p + 1`` to ``p``,
        for ``p`` in ``[start, stop)`` (what moving a gene up one rank does to its input)."""
        w = self.position_embedding.weight
        return w[start:stop] - w[start + 1 : stop + 1]

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, D) after the final LayerNorm. ``attention_mask`` is 1 on real tokens.

        ``inputs_embeds`` (B, T, D) replaces :meth:`input_embedding` (pass a leaf tensor to
        differentiate with respect to the inputs); ``input_ids`` still mark the padding.
        ``gate`` (B, T) weighs each token as an attention key: ``log gate`` is added to every
        score on that key, so ``gate = 1`` is the plain model and ``gate -> 0`` removes the token
        (the first-order perturbation screen differentiates with respect to it).
        """
        if attention_mask is None:
            attention_mask = input_ids.ne(PAD_ID)
        x = self.input_embedding(input_ids) if inputs_embeds is None else inputs_embeds
        x = self.embed_drop(self.embed_norm(x))  # (B, T, D)
        mask = key_mask(attention_mask, gate, x.dtype)  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x)

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, gate: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean over gene tokens (not [CLS] at position 0, not padding): (B, T, D) -> (B, D).

        With ``gate`` (B, T) the mean is weighted by it (a gate of 0 leaves the token out).
        """
        return gene_mean(hidden, input_ids, gate)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled cell embedding (B, D); no prediction head is computed (arguments: :meth:`encode`)."""
        hidden = self.encode(input_ids, attention_mask, inputs_embeds=inputs_embeds, gate=gate)
        return self.pool(hidden, input_ids, gate)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Gene logits (N, V) for hidden states (N, D), through the tied gene embedding."""
        return self.mlm_transform(hidden) @ self.gene_embedding.weight.T + self.mlm_bias

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Masked-gene loss: cross-entropy at positions where ``labels != -100``."""
        hidden = self.encode(input_ids, attention_mask)  # (B, T, D)
        out = {"hidden": hidden}
        if labels is not None:
            where = labels.ne(-100)
            logits = self.mlm_logits(hidden[where])  # (N_masked, V), only where needed
            out["loss"] = F.cross_entropy(logits.float(), labels[where])
            out["n_masked"] = where.sum()
        return out


@dataclass(frozen=True)
class CellClassifierConfig:
    """A classification head on the pooled cell embedding."""

    n_classes: int  # number of labels
    hidden: int = 0  # 0 = linear head; >0 = one hidden layer of this size
    dropout: float = 0.1  # before the head


class CellClassifier(nn.Module):
    """Fine-tuning wrapper: trunk + pooled embedding + classification head."""

    class_weight: torch.Tensor  # buffer registered in __init__

    def __init__(self, trunk: CellTransformer | BertEncoder, cfg: CellClassifierConfig) -> None:
        super().__init__()
        self.trunk: CellTransformer | BertEncoder = trunk
        self.config = cfg
        d = trunk.config.d_model
        layers: list[nn.Module] = [nn.Dropout(cfg.dropout)]
        if cfg.hidden:
            layers += [nn.Linear(d, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.n_classes)]
        else:
            layers += [nn.Linear(d, cfg.n_classes)]
        self.head = nn.Sequential(*layers)
        # per-class loss weights (inverse frequency when classes are unbalanced); saved with the model
        self.register_buffer("class_weight", torch.ones(cfg.n_classes))

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class logits (B, C)."""
        return self.head(self.trunk.embed(input_ids, attention_mask))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        logits = self.logits(input_ids, attention_mask)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits.float(), labels, weight=self.class_weight)
        return out
