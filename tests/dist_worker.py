"""Worker for the multi-process tests in test_distributed.py (run under torchrun, or imported).

``toy``: a two-layer MLP regression whose loss is a mean over items, so N ranks at batch B
compute exactly the gradient of one process at batch N·B (up to float summation order).
``cells``: the CellTransformer ``test`` preset on a corpus store, masked-gene loss.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lifelm._core.runtime import seed_everything
from lifelm.training.distributed import shutdown
from lifelm.training.loop import TrainConfig, train


@dataclass
class ToyData:
    """64 fixed (x, y) pairs: y is a noisy non-linear function of x."""

    n: int = 64

    def __post_init__(self) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(self.n, 8)).astype(np.float32)
        self.y = (np.tanh(self.x @ rng.normal(size=8)) + 0.1 * rng.normal(size=self.n)).astype(
            np.float32
        )

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.float32]:
        return self.x[i], self.y[i]


def toy_collate(items: list, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "x": torch.from_numpy(np.stack([x for x, _ in items])),
        "y": torch.tensor([y for _, y in items]),
    }


class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 16), nn.Linear(16, 1)])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.layers[0](x))  # (B, 16)
        return {"loss": ((self.layers[1](h).squeeze(-1) - y) ** 2).mean()}


def toy_config(steps: int, batch_size: int, strategy: str, every: int) -> TrainConfig:
    return TrainConfig(
        max_steps=steps,
        batch_size=batch_size,
        lr=1e-2,
        warmup_steps=2,
        log_every=1,
        checkpoint_every=every,
        progress=False,
        device="cpu",
        strategy=strategy,  # type: ignore[arg-type]
        barrier_timeout_s=120,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", choices=["toy", "cells"], required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--store", default="")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--checkpoint-every", type=int, default=2)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--stop-after", type=int, default=None)
    a = p.parse_args(argv)
    cfg = toy_config(a.steps, a.batch_size, a.strategy, a.checkpoint_every)
    seed_everything(0)
    if a.task == "toy":
        result = train(
            ToyModel(),
            ToyData(),
            config=cfg,
            out_dir=a.out,
            collate_fn=toy_collate,
            sidecar={},
            resume=a.resume,
            stop_after=a.stop_after,
        )
    else:
        from lifelm.data.cells.datasets import MaskedGeneCollator
        from lifelm.data.store.store import CorpusStore
        from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig

        store = CorpusStore(a.store, block_size=8, window_blocks=2)
        vocab = store.tokenizer().vocab_size
        mcfg = CellTransformerConfig.from_name("test", vocab_size=vocab, max_length=64)
        result = train(
            CellTransformer(mcfg),
            store,
            config=cfg,
            out_dir=a.out,
            collate_fn=MaskedGeneCollator(vocab, 64),
            sidecar={"model": mcfg.to_dict()},
            resume=a.resume,
            stop_after=a.stop_after,
        )
    if result.stopped:
        os._exit(17)  # a simulated kill: no shutdown, no cleanup
    shutdown(timeout_s=120)


def _forked_rank(rank: int, world: int, port: int, argv: list[str], env: dict[str, str]) -> None:
    os.environ.update(
        {
            **env,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    main(argv)


def run_forked(argv: list[str], world: int = 2, env: dict[str, str] | None = None) -> list[int]:
    """Run ``main(argv)`` in ``world`` forked processes with the torchrun environment set.

    Forking reuses the already imported torch and lifelm, so a 2-process run starts in well under
    a second instead of the several seconds a fresh ``torchrun`` interpreter needs; the processes
    are otherwise what torchrun would start (same env variables, gloo, separate address spaces).
    Returns the exit codes.
    """
    ctx = multiprocessing.get_context("fork")
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [
        ctx.Process(target=_forked_rank, args=(r, world, port, argv, env or {}))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    return [p.exitcode if p.exitcode is not None else -9 for p in procs]


if __name__ == "__main__":
    main()
