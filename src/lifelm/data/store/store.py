"""Read a corpus store: memory-mapped token shards, block-shuffled epochs, a resumable loader.

:class:`CorpusStore` is a map-style dataset (``store[i]`` → ``(tokens, -1)``, the item shape of
:class:`~lifelm.data.cells.datasets.CellTokens`), so the shared training loop and the masked-gene
collator take it unchanged. Nothing is read until asked: each shard's ``tokens.bin`` is a
``numpy.memmap`` and the OS page cache does the caching.

Shuffling is by blocks (:func:`block_shuffle`): the epoch visits contiguous blocks of cells in a
random order and shuffles cells within a window of a few blocks, so a batch touches a few disk
regions instead of one per cell, yet the order is a full permutation that depends only on
``(seed, epoch)``. :class:`StoreLoader` cuts that order into global batches and gives rank ``r``
the ``r``-th slice of each (a disjoint partition); its state is ``(epoch, step)``, so resuming
mid-epoch replays exactly the batches not yet seen.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelm.data.cells.tokenizer import RankValueTokenizer
from lifelm.data.store.build import CORPUS_FILE, TOKENIZER_FILE, CorpusError
from lifelm.data.store.integrity import damaged, shard_problems

_REBUILD = (
    "Run the same `lifelm cells corpus build SOURCES… -o STORE` again: damaged shards are "
    "detected by their checksums and rebuilt, intact ones are kept."
)


def block_shuffle(
    n: int, seed: int, epoch: int, *, block_size: int = 256, window_blocks: int = 16
) -> np.ndarray:
    """A permutation of ``range(n)`` that reads contiguous blocks, seeded by ``(seed, epoch)``.

    Blocks of ``block_size`` consecutive cells are visited in random order; cells are then
    shuffled within each window of ``window_blocks`` consecutive (already shuffled) blocks.
    """
    rng = np.random.default_rng([seed, epoch])
    n_blocks = -(-n // block_size)
    starts = rng.permutation(n_blocks) * block_size  # (n_blocks,) block order
    lens = np.minimum(block_size, n - starts)
    order = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(n)
    win = block_size * window_blocks
    keys = rng.random(n) + (np.arange(n) // win)  # random within a window, windows kept in order
    return order[np.argsort(keys, kind="stable")]


class CorpusStore:
    """A finished corpus store opened for reading (tokens are memory-mapped, not loaded).

    Parameters
    ----------
    path
        Folder written by :func:`~lifelm.data.store.build.build_corpus`.
    block_size, window_blocks
        Block shuffling of :meth:`epoch_order` (see :func:`block_shuffle`).
    verify
        Check shard files against the checksums recorded at build: sizes of all shards on
        open, the SHA-256 of each shard when it is first read.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        block_size: int = 256,
        window_blocks: int = 16,
        verify: bool = True,
    ) -> None:
        self.path = Path(path)
        info_path = self.path / CORPUS_FILE
        if not info_path.is_file():
            hint = (
                "the build was interrupted: run the same `lifelm cells corpus build` again to "
                "finish it (finished shards are kept)"
                if (self.path / "build.json").is_file()
                else "build one with `lifelm cells corpus build SOURCES… -o STORE`"
            )
            raise CorpusError(
                f"{self.path}: not a finished corpus store (no {CORPUS_FILE}); {hint}."
            )
        try:
            self.info = json.loads(info_path.read_text())
            self.shards: list[dict[str, Any]] = self.info["shards"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CorpusError(f"{info_path}: damaged ({e}). {_REBUILD}") from None
        self.verify = verify
        self._verified: set[int] = set()
        for s in self.shards:  # sizes of every shard file: cheap, catches truncated/missing files
            problems = shard_problems(
                self.path / "shards" / s["name"], s.get("files", {}), full=False
            )
            if problems:
                raise damaged(self.path, s["name"], problems, _REBUILD)
        counts = np.array([s["n_cells"] for s in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])  # (n_shards + 1,) first cell of each
        self.block_size = block_size
        self.window_blocks = window_blocks
        self._tokens: dict[int, np.ndarray] = {}
        self._offsets: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    # ------------------------------------------------------------------ access
    def summary(self) -> dict[str, object]:
        """Size, cells, tokens and disk use, for ``lifelm cells corpus build|info``."""
        i = self.info
        return {
            "store": str(self.path),
            "n_cells": i["n_cells"],
            "n_tokens": i["n_tokens"],
            "n_shards": len(i["shards"]),
            "dropped_cells": i["dropped_cells"],
            "store_mb": round(i["store_bytes"] / 1e6, 2),
            "source_mb": round(i["source_bytes"] / 1e6, 2),
            "disk_ratio": round(i["store_bytes"] / max(1, i["source_bytes"]), 3),
            "build_seconds": round(i["build_seconds"], 1),
        }

    def check_shard(self, k: int) -> None:
        """Check shard ``k``'s files against their SHA-256 (once per shard and store object).

        Raises
        ------
        ShardDamagedError
            Naming the shard, what differs and the fix (run the build again).
        """
        if k in self._verified or not self.verify:
            return
        s = self.shards[k]
        problems = shard_problems(self.path / "shards" / s["name"], s.get("files", {}), full=True)
        if problems:
            raise damaged(self.path, s["name"], problems, _REBUILD)
        self._verified.add(k)

    def check(self) -> None:
        """Check every shard's SHA-256 now (otherwise each is checked when first read)."""
        for k in range(len(self.shards)):
            self.check_shard(k)

    def _shard(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self._tokens:
            self.check_shard(k)
            s = self.shards[k]
            folder = self.path / "shards" / s["name"]
            self._offsets[k] = np.load(folder / "offsets.npy")
            self._tokens[k] = (
                np.memmap(folder / "tokens.bin", dtype=s["dtype"], mode="r", shape=(s["n_tokens"],))
                if s["n_tokens"]
                else np.zeros(0, dtype=s["dtype"])
            )
        return self._tokens[k], self._offsets[k]

    def locate(self, i: int) -> tuple[int, int]:
        """(shard, row within shard) of global cell ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"cell {i} out of range for a store of {len(self)} cells")
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        return k, i - int(self.starts[k])

    def cell(self, i: int) -> np.ndarray:
        """Gene tokens of cell ``i`` (without ``[CLS]``), highest rank first, as a memory view."""
        k, j = self.locate(i)
        tokens, offsets = self._shard(k)
        return tokens[offsets[j] : offsets[j + 1]]

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.cell(int(i)), -1

    def lengths(self) -> np.ndarray:
        """(n_cells,) tokens per cell."""
        return np.concatenate([np.diff(self._shard(k)[1]) for k in range(len(self.shards))])

    def metadata(self, field: str) -> np.ndarray:
        """(n_cells,) strings of one metadata field (``dataset``, ``donor``, ``cell_type``, ``assay``)
        or ``source``/``row`` (which input and which row of it each cell came from)."""
        parts = []
        for k, s in enumerate(self.shards):
            self.check_shard(k)
            folder = self.path / "shards" / s["name"]
            with np.load(folder / "meta.npz") as z:
                if field == "row":
                    parts.append(z["row"])
                    continue
                if field == "source":
                    parts.append(
                        np.full(s["n_cells"], self.info["sources"][s["source"]], dtype=object)
                    )
                    continue
                if field not in z:
                    raise KeyError(
                        f"{self.path}: no metadata field {field!r}; have {list(z.keys())}"
                    )
                cats = json.loads((folder / "shard.json").read_text())["categories"][field]
                parts.append(np.asarray(cats, dtype=object)[z[field]])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=object)

    def tokenizer(self) -> RankValueTokenizer:
        """The tokenizer (vocabulary + streaming medians) every shard was encoded with."""
        return RankValueTokenizer.from_dict(json.loads((self.path / TOKENIZER_FILE).read_text()))

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """This store's block-shuffled permutation for ``epoch`` (read by the training loop)."""
        return block_shuffle(
            len(self), seed, epoch, block_size=self.block_size, window_blocks=self.window_blocks
        )

    def read(self, index: np.ndarray) -> list[np.ndarray]:
        """Tokens of several cells, read in storage order (fewer seeks) and returned in ``index`` order."""
        index = np.asarray(index, dtype=np.int64)
        out: list[np.ndarray] = [np.zeros(0)] * len(index)
        for pos in np.argsort(index, kind="stable"):
            out[pos] = np.asarray(self.cell(int(index[pos])))
        return out


class StoreLoader:
    """Batches of one rank's share of a block-shuffled epoch, resumable mid-epoch.

    Global batch ``g`` of epoch ``e`` is positions ``[g·B·W, (g+1)·B·W)`` of
    ``store.epoch_order(seed, e)``; rank ``r`` takes the ``r``-th ``B`` of them, so ranks never
    share a cell within an epoch. The last partial global batch is dropped (every rank runs the
    same number of steps). ``state_dict()`` is ``{"epoch", "step"}``; a loader given it replays
    exactly the remaining batches. Collation uses a generator seeded by
    ``(seed, epoch, step, rank)``, so masking does not depend on where the run restarted.

    Parameters
    ----------
    store
        The corpus to read.
    batch_size
        Cells per rank per step.
    collate_fn
        ``collate_fn(items, generator)``, e.g. :class:`~lifelm.data.cells.datasets.MaskedGeneCollator`.
    seed
        Seeds the order and the collation.
    rank, world_size
        This process's share; default: the torchrun environment.
    """

    def __init__(
        self,
        store: CorpusStore,
        *,
        batch_size: int,
        collate_fn: Callable[
            [list[tuple[np.ndarray, int]], torch.Generator], dict[str, torch.Tensor]
        ],
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        from lifelm._core.runtime import dist_env

        env = dist_env()
        self.store = store
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.seed = seed
        self.rank = env.rank if rank is None else rank
        self.world_size = env.world_size if world_size is None else world_size
        self.epoch = 0
        self.step = 0
        if len(self) == 0:
            raise CorpusError(
                f"{store.path}: {len(store)} cells are fewer than one global batch "
                f"({batch_size} × {self.world_size} ranks); lower the batch size."
            )

    def __len__(self) -> int:
        """Steps per epoch."""
        return len(self.store) // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self.epoch, self.step = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"loader state has seed {state['seed']}, this loader {self.seed}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def rank_indices(self, epoch: int, step: int) -> np.ndarray:
        """The cells this rank reads at ``step`` of ``epoch``."""
        order = self._order(epoch)
        g = self.batch_size * self.world_size
        a = step * g + self.rank * self.batch_size
        return order[a : a + self.batch_size]

    def _order(self, epoch: int) -> np.ndarray:
        if getattr(self, "_cached", (None, None))[0] != epoch:
            self._cached = (epoch, self.store.epoch_order(self.seed, epoch))
        return self._cached[1]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the current epoch; the next iteration starts the next epoch."""
        while self.step < len(self):
            idx = self.rank_indices(self.epoch, self.step)
            gen = torch.Generator().manual_seed(
                ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + self.step) * 1009 + self.rank
            )
            items = [(t, -1) for t in self.store.read(idx)]
            batch = self.collate_fn(items, gen)
            self.step += 1
            yield batch
        self.epoch, self.step = self.epoch + 1, 0


class StoreView:
    """A subset of a store's cells (sorted positions), itself a dataset with block-shuffled epochs."""

    def __init__(self, store: CorpusStore, index: np.ndarray) -> None:
        self.store = store
        self.index = np.sort(np.asarray(index, dtype=np.int64))  # sorted: blocks stay contiguous

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.store[int(self.index[i])]

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        return block_shuffle(
            len(self),
            seed,
            epoch,
            block_size=self.store.block_size,
            window_blocks=self.store.window_blocks,
        )


def split_store(
    store: CorpusStore, eval_fraction: float, seed: int = 0
) -> tuple[StoreView, StoreView | None]:
    """Hold out a random ``eval_fraction`` of cells (seeded): ``(train, eval)`` views.

    ``eval`` is None when the fraction rounds to no cell.
    """
    n_eval = round(eval_fraction * len(store))
    perm = np.random.default_rng(seed).permutation(len(store))
    train = StoreView(store, perm[n_eval:])
    return train, (StoreView(store, perm[:n_eval]) if n_eval else None)
