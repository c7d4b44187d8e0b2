"""What both cell encoders share: the attention key mask (with its gate) and the cell embedding,
a mean over gene tokens."""

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


def key_mask(keep: torch.Tensor, gate: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Attention key mask (B, 1, 1, T) from ``keep`` (B, T; True = a real token).

    Without ``gate`` the boolean mask itself; with ``gate`` (B, T) the float mask SDPA adds to
    the scores: ``log gate`` on every key (``gate = 1`` is the plain model, ``gate -> 0`` removes
    the token), ``-inf`` on padding.
    """
    mask = keep.bool()[:, None, None, :]
    if gate is None:
        return mask
    return torch.log(gate)[:, None, None, :].masked_fill(~mask, float("-inf")).to(dtype)
