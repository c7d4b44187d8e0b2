"""BertEncoder: the post-LayerNorm BERT encoder of published Geneformer checkpoints.

Geneformer (Theodoris et al. 2023; V2: Chen et al. 2024) is a Hugging Face ``BertForMaskedLM``:
learned absolute position embeddings plus a (single) token-type embedding, post-LayerNorm blocks
(``x = LN(x + Attn(x)); x = LN(x + FFN(x))``), ReLU (V1) or exact GELU (V2). LifeLM's own
:class:`~lifelm.models.cell_transformer.CellTransformer` is pre-LN, so this is a separate model
with the same interface the cell tasks call (``encode``, ``pool``, ``embed``, ``input_embedding``,
``position_shift``, ``config.d_model``, ``config.max_length``).

Token layout. The tasks hand every model LifeLM's layout: ``[CLS] g_1 … g_n [PAD] …`` with LifeLM
token ids. This model translates it to Geneformer's input before the first layer:

- ids go through ``token_map`` (LifeLM id -> Geneformer id; a buffer written at import);
- ``special="none"`` (V1): the ``[CLS]`` slot is dropped, genes take positions ``0 … n-1``;
- ``special="cls_eos"`` (V2): ``<cls>`` stays at position 0 and ``<eos>`` is inserted after the
  last gene.

Hidden states come back in LifeLM's layout (position 0 is the ``[CLS]`` slot, zero for V1; gene
``i`` at position ``1 + i``; zeros at padding), so per-gene shifts of the perturbation scan line up.
``encode`` returns Geneformer's ``hidden_states[output_layer]`` (0 = embedding output, ``n_layers``
= last layer; Geneformer's default ``emb_layer=-1`` is ``n_layers - 1``) and runs no layer above it.
``pool`` is the mean over genes (Geneformer's "cell" embedding, ``<cls>``/``<eos>`` excluded) or,
with ``pooling="cls"``, the ``<cls>`` state (V2's "cls" embedding). No masked-LM head is kept.

Tensors in, tensors out: no AnnData, no files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifelm.models.pooling import PAD_ID, gene_mean, key_mask

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass(frozen=True)
class BertEncoderConfig:
    """Shape and token conventions of an imported BERT (Geneformer) encoder."""

    vocab_size: int  # LifeLM token ids (specials + tokenizer genes); token_map's length
    bert_vocab_size: int  # rows of the word embedding (Geneformer's token dictionary)
    n_layers: int = 6
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 512
    max_position: int = 2048  # BERT max_position_embeddings (Geneformer's model input size)
    max_length: int = (
        2049  # LifeLM tokens per cell incl. the [CLS] slot (what pad_cells may hand in)
    )
    activation: str = "relu"  # relu (V1) | gelu (V2), exact erf GELU as in HF "gelu"
    norm_eps: float = 1e-12
    type_vocab_size: int = 2
    special: str = "none"  # none (V1) | cls_eos (V2)
    bert_pad_id: int = 0
    bert_cls_id: int = -1
    bert_eos_id: int = -1
    output_layer: int = 5  # hidden_states index returned by encode (Geneformer default n_layers-1)
    pooling: str = "mean"  # mean (genes) | cls (V2 only)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r}: only {sorted(ACTIVATIONS)} map 1:1")
        if self.special not in ("none", "cls_eos"):
            raise ValueError(f"special {self.special!r} is not 'none' or 'cls_eos'")
        if not 0 <= self.output_layer <= self.n_layers:
            raise ValueError(f"output_layer {self.output_layer} is outside 0..{self.n_layers}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling {self.pooling!r} is not 'mean' or 'cls'")
        if self.pooling == "cls" and self.special != "cls_eos":
            raise ValueError("pooling='cls' needs a model trained with <cls> (Geneformer V2)")

    @property
    def offset(self) -> int:
        """LifeLM position ``p`` sits at BERT position ``p - offset``."""
        return 1 if self.special == "none" else 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class BertLayer(nn.Module):
    """One post-LN BERT block with separate q/k/v projections (Hugging Face's layout)."""

    def __init__(self, cfg: BertEncoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.ffn_in = nn.Linear(d, cfg.d_ff)
        self.act = ACTIVATIONS[cfg.activation]()
        self.ffn_out = nn.Linear(cfg.d_ff, d)
        self.ffn_norm = nn.LayerNorm(d, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_heads

        def heads(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, h, d // h).transpose(1, 2)  # (B, H, T, Dh)

        y = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), attn_mask=key_mask
        )
        x = self.attn_norm(x + self.attn_out(y.transpose(1, 2).reshape(b, t, d)))
        return self.ffn_norm(x + self.ffn_out(self.act(self.ffn_in(x))))


class BertEncoder(nn.Module):
    """Geneformer's encoder behind LifeLM's cell-model interface (see the module docstring)."""

    token_map: torch.Tensor  # buffer registered in __init__: LifeLM token id -> BERT token id

    def __init__(self, cfg: BertEncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.word_embeddings = nn.Embedding(cfg.bert_vocab_size, d)
        self.position_embeddings = nn.Embedding(cfg.max_position, d)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, d)
        self.embed_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.n_layers))
        self.register_buffer("token_map", torch.zeros(cfg.vocab_size, dtype=torch.long))

    @property
    def gene_embedding(self) -> nn.Embedding:
        """Input embedding table indexed by LifeLM token ids (a frozen copy; for gene features)."""
        return nn.Embedding.from_pretrained(self.word_embeddings.weight[self.token_map].detach())

    # ------------------------------------------------------------------ inputs
    def _positions(self, t: int, device: torch.device) -> torch.Tensor:
        pos = (torch.arange(t, device=device) - self.config.offset).clamp_min(0)
        if t - self.config.offset > self.config.max_position:
            raise ValueError(
                f"{t - self.config.offset} tokens exceed the model's {self.config.max_position} positions"
            )
        return pos

    def input_embedding(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Word + position + token-type embedding (B, T, D) in LifeLM's layout, before the LayerNorm.

        For V1 the ``[CLS]`` slot (position 0) gets a placeholder that :meth:`encode` drops.
        """
        pos = self._positions(input_ids.shape[1], input_ids.device)
        word = self.word_embeddings(self.token_map[input_ids])
        return word + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]

    def position_shift(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start, D): input change of a token moved from LifeLM position ``p + 1`` to ``p``."""
        w = self.position_embeddings.weight
        a, b = start - self.config.offset, stop - self.config.offset
        if a < 0:
            raise ValueError(f"position_shift starts at {start}: the [CLS] slot does not move")
        return w[a:b] - w[a + 1 : b + 1]

    # ----------------------------------------------------------------- forward
    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, D) of layer ``config.output_layer`` in LifeLM's layout.

        Arguments as :meth:`lifelm.models.cell_transformer.CellTransformer.encode`: ``attention_mask``
        is 1 on real tokens (``[CLS]`` slot included), ``inputs_embeds`` replaces
        :meth:`input_embedding`, ``gate`` (B, T) adds ``log gate`` to every score on that key.
        """
        cfg = self.config
        keep = input_ids.ne(PAD_ID) if attention_mask is None else attention_mask.bool()
        b, t = input_ids.shape
        need = t - cfg.offset + (cfg.special == "cls_eos")  # BERT positions this width takes
        # trailing padding columns are dropped only when the width would not fit (a data-dependent
        # width breaks torch.compile graphs; padding keys are masked either way)
        n = t if need <= cfg.max_position else max(int(keep.sum(1).max()), 1)
        lengths = keep[:, :n].sum(1)  # tokens per row incl. the [CLS] slot
        x = (
            self.input_embedding(input_ids[:, :n])
            if inputs_embeds is None
            else inputs_embeds[:, :n]
        )
        k = keep[:, :n]
        g = None if gate is None else gate[:, :n]
        if cfg.special == "none":  # V1: the [CLS] slot is not an input
            x, k = x[:, 1:], k[:, 1:]
            g = None if g is None else g[:, 1:]
        else:  # V2: <eos> after the last gene (LifeLM's first padding slot)
            w = n + 1
            is_eos = torch.arange(w, device=x.device)[None, :] == lengths[:, None]  # (B, W)
            if w > cfg.max_position:
                raise ValueError(
                    f"{n} tokens + <eos> exceed the model's {cfg.max_position} positions"
                )
            eos = self.word_embeddings.weight[cfg.bert_eos_id]  # (D,)
            pos = self.position_embeddings.weight[:w]
            eos_emb = eos + pos + self.token_type_embeddings.weight[0]  # (W, D)
            x = torch.cat([x, x.new_zeros(b, 1, x.shape[-1])], 1)
            x = torch.where(is_eos[..., None], eos_emb[None].to(x.dtype), x)
            k = torch.cat([k, k.new_zeros(b, 1)], 1) | is_eos
            if g is not None:
                g = torch.cat([g, g.new_ones(b, 1)], 1)
                g = torch.where(is_eos, torch.ones_like(g), g)
        x = self.embed_norm(x)  # (B, W, D) = hidden_states[0]
        mask = key_mask(k, g, x.dtype)
        for layer in self.layers[: cfg.output_layer]:
            x = layer(x, mask)
        out = x.new_zeros(b, t, x.shape[-1])
        if cfg.special == "none":
            out[:, 1:n] = x
        else:
            out[:, :n] = x[:, :n]
        return out.masked_fill(~keep[..., None], 0.0)

    def pool(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, gate: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cell embedding (B, D): mean over gene tokens (gate-weighted if given) or the ``<cls>`` state."""
        if self.config.pooling == "cls":
            return hidden[:, 0]
        return gene_mean(hidden, input_ids, gate)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled cell embedding (B, D) (arguments: :meth:`encode`)."""
        hidden = self.encode(input_ids, attention_mask, inputs_embeds=inputs_embeds, gate=gate)
        return self.pool(hidden, input_ids, gate)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return {"hidden": self.encode(input_ids, attention_mask)}
