"""Datasets and collate functions over rank-value tokens: the batch keys every cell model reads.

Batch keys (the contract between data and models): ``input_ids`` (B, T) int64 with ``[CLS]``
first and ``[PAD]`` after the last gene, ``attention_mask`` (B, T) bool, and ``labels`` (B, T)
int64 for masked-gene pretraining (-100 where no prediction is asked) or (B,) for cell labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lifelm.data.cells.tokenizer import CLS, MASK, N_SPECIAL, PAD, TokenizedCells

IGNORE = -100


def pad_cells(cells: list[np.ndarray], max_length: int, multiple: int = 8) -> torch.Tensor:
    """``[CLS] + genes`` per cell, right-padded with ``[PAD]`` to the longest (rounded up to ``multiple``)."""
    longest = min(max_length, 1 + max((len(c) for c in cells), default=0))
    width = min(max_length, -(-longest // multiple) * multiple)
    out = torch.full((len(cells), width), PAD, dtype=torch.long)
    out[:, 0] = CLS
    for i, c in enumerate(cells):
        n = min(len(c), width - 1)
        out[i, 1 : 1 + n] = torch.from_numpy(np.asarray(c[:n], dtype=np.int64))
    return out


@dataclass
class CellTokens:
    """Token lists as a map-style dataset (item = one cell's gene tokens, optionally with a label)."""

    cells: TokenizedCells
    labels: np.ndarray | None = None  # (n_cells,) int class index

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.cells[i], (-1 if self.labels is None else int(self.labels[i]))


@dataclass(frozen=True)
class MaskedGeneCollator:
    """BERT masking over gene tokens: of ``mask_prob`` of the genes, 80 % → [MASK], 10 % → random, 10 % kept."""

    vocab_size: int  # token ids, special tokens included
    max_length: int  # tokens per cell including [CLS]
    mask_prob: float = 0.15  # fraction of gene tokens to predict

    def __call__(
        self, items: list[tuple[np.ndarray, int]], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        ids = pad_cells([c for c, _ in items], self.max_length)
        genes = ids >= N_SPECIAL
        pick = (torch.rand(ids.shape, generator=generator) < self.mask_prob) & genes
        # at least one prediction per cell that has genes, so no cell contributes nothing
        none = genes.any(1) & ~pick.any(1)
        if none.any():
            first = genes.float().argmax(1)
            pick[none, first[none]] = True
        labels = torch.where(pick, ids, torch.full_like(ids, IGNORE))
        roll = torch.rand(ids.shape, generator=generator)
        random_ids = torch.randint(N_SPECIAL, self.vocab_size, ids.shape, generator=generator)
        ids = torch.where(pick & (roll < 0.8), torch.full_like(ids, MASK), ids)
        ids = torch.where(pick & (roll >= 0.8) & (roll < 0.9), random_ids, ids)
        return {"input_ids": ids, "attention_mask": ids.ne(PAD), "labels": labels}


@dataclass(frozen=True)
class LabelCollator:
    """Padded tokens plus one class index per cell."""

    max_length: int

    def __call__(
        self, items: list[tuple[np.ndarray, int]], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        ids = pad_cells([c for c, _ in items], self.max_length)
        labels = torch.tensor([y for _, y in items], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": ids.ne(PAD), "labels": labels}


def length_batches(
    lengths: np.ndarray, batch_size: int, max_tokens: int | None = 16_384
) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (longest first), to waste little on padding.

    A batch closes at ``batch_size`` cells or when padding every cell to the batch's longest
    (the first, since cells are sorted) would exceed ``max_tokens`` tokens, so a few very long
    cells do not force a whole batch of short ones to their length.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        width = int(lengths[order[start]]) + 1  # + [CLS]
        n = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // width))
        batches.append(order[start : start + n])
        start += n
    return batches
