"""ResponseModel: predict a cell population's expression change after a perturbation.

Inputs are representations taken from a pretrained cell model (the caller supplies them, so this
module stays tensors-in, tensors-out):

- ``gene_features`` (G, Dg): one vector per measured output gene (the cell model's gene
  embedding rows);
- a perturbation: target genes as tokens (rows of a target table of pretrained gene vectors,
  so an unseen target still has a representation) and stimuli as learned tokens;
- ``context`` (B, Dc): the pooled cell-model embedding of the context's control cells.

The perturbation encoder sums its tokens (a combination is the sum of its parts, so the additive
prior is built in), adds the projected context and refines the sum with a residual MLP. Two
gene-wise bilinear heads read the result against projected gene features:

- ``delta`` (B, G): the mean change in log1p(CP10k), offset by a fixed ``prior`` (the training
  mean delta) so that an untrained model is the train-mean baseline;
- ``log_scale`` (B, G): log ratio of perturbed to control per-gene spread, for per-cell samples
  ``control cell + delta + (control cell - control mean) * (exp(log_scale) - 1)``.

References: Ahlmann-Eltze et al. 2025 (the linear baseline this extends with learned maps);
Roohani et al. 2023 (GEARS, gene tokens for perturbations).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ResponseModelConfig:
    """Shape of the response model."""

    n_genes: int  # G, measured output genes
    gene_dim: int  # Dg, size of the pretrained gene vectors
    context_dim: int  # Dc, size of the pretrained cell embeddings
    n_stimuli: int = 0  # learned stimulus tokens (IFN-beta, drugs)
    d_model: int = 64  # hidden size of the perturbation encoder
    dropout: float = 0.1  # on the encoder MLP

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class ResponseModel(nn.Module):
    """Perturbation encoder + gene-wise heads (see the module docstring)."""

    prior: torch.Tensor  # buffer: the train-mean delta

    def __init__(self, cfg: ResponseModelConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.target_proj = nn.Linear(cfg.gene_dim, d)  # target-gene token -> perturbation space
        self.stimulus = nn.Embedding(max(cfg.n_stimuli, 1), d)
        self.context_proj = nn.Linear(cfg.context_dim, d)
        self.mix = nn.Sequential(
            nn.LayerNorm(d),
            nn.Linear(d, 2 * d),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(2 * d, d),
        )
        self.gene_proj = nn.Linear(cfg.gene_dim, d)  # output-gene features -> decoder keys
        self.delta_out = nn.Linear(d, d, bias=False)
        self.scale_out = nn.Linear(d, d, bias=False)
        self.gene_bias = nn.Parameter(torch.zeros(cfg.n_genes))
        self.scale_bias = nn.Parameter(torch.zeros(cfg.n_genes))
        self.register_buffer("prior", torch.zeros(cfg.n_genes))  # train-mean delta
        nn.init.zeros_(self.delta_out.weight)  # start exactly at the prior
        nn.init.zeros_(self.scale_out.weight)

    def encode(
        self,
        target_vectors: torch.Tensor,
        target_mask: torch.Tensor,
        stimulus_ids: torch.Tensor,
        stimulus_mask: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        """Perturbation-in-context vector (B, d).

        Parameters
        ----------
        target_vectors
            (B, T, Dg) pretrained vectors of the target genes (padded).
        target_mask
            (B, T) 1 for real targets.
        stimulus_ids
            (B, S) stimulus token ids (padded with 0).
        stimulus_mask
            (B, S) 1 for real stimuli.
        context
            (B, Dc) control-cell embedding of the context.
        """
        t = (self.target_proj(target_vectors) * target_mask[..., None]).sum(1)  # (B, d)
        s = (self.stimulus(stimulus_ids) * stimulus_mask[..., None]).sum(1)  # (B, d)
        h = t + s + self.context_proj(context)  # (B, d)
        return h + self.mix(h)

    def forward(
        self,
        gene_features: torch.Tensor,
        target_vectors: torch.Tensor,
        target_mask: torch.Tensor,
        stimulus_ids: torch.Tensor,
        stimulus_mask: torch.Tensor,
        context: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """``delta`` (B, G) and ``log_scale`` (B, G); ``gene_features`` is (G, Dg)."""
        h = self.encode(target_vectors, target_mask, stimulus_ids, stimulus_mask, context)  # (B, d)
        keys = self.gene_proj(gene_features)  # (G, d)
        delta = self.delta_out(h) @ keys.T + self.gene_bias + self.prior  # (B, G)
        log_scale = self.scale_out(h) @ keys.T + self.scale_bias  # (B, G)
        return {"delta": delta, "log_scale": log_scale}
