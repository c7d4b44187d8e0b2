"""The cell embedding both cell encoders share: a mean over gene tokens."""

from __future__ import annotations

import torch

PAD_ID = 0  # must match lifelm.data.cells.tokenizer.PAD (the data layer owns the ids)


def gene_mean(
    hidden: torch.Tensor, input_ids: torch.Tensor, gate: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over gene tokens (not the slot at position 0, not padding): (B, T, D) -> (B, D).

    With ``gate`` (B, T) the mean is weighted by it (a gate of 0 leaves the token out).
    """
    mask = input_ids.ne(PAD_ID).to(hidden.dtype)
    mask[:, 0] = 0
    if gate is not None:
        mask = mask * gate
    denom = mask.sum(1, keepdim=True)
    denom = denom.masked_fill(denom == 0, 1.0)  # an empty cell pools to 0, not NaN
    return (hidden * mask[..., None]).sum(1) / denom
