"""Device, dtype, seeding and the torchrun environment.

Every training entry point reads its distributed setting from the environment that
``torchrun`` (or ``srun`` through a launcher that sets the same variables) provides, so the
same code runs on one CPU process, N gloo processes or N GPUs.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from lifelm._core.errors import InputError

log = logging.getLogger("lifelm")


def get_logger(name: str = "lifelm") -> logging.Logger:
    """Return a package logger that prints ``LEVEL message`` once handlers are configured."""
    logger = logging.getLogger(name)
    if not logging.getLogger("lifelm").handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger("lifelm").addHandler(handler)
        logging.getLogger("lifelm").setLevel(os.environ.get("LIFELM_LOG_LEVEL", "INFO"))
    return logger


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``"auto"``/``None`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(
            f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device!r}: no CUDA device here; use --device cpu or auto.")
    return dev


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype to autocast to: bf16 on a GPU that supports it, none (fp32) on CPU."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002  (libraries that still use the global RNG)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class DistEnv:
    """What torchrun told this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env() -> DistEnv:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun and our SLURM launcher)."""
    return DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: torch.device) -> DistEnv:
    """Initialise the default process group when launched under torchrun; a no-op otherwise.

    NCCL on CUDA, gloo on CPU. Returns the environment so callers need not re-read it.
    """
    env = dist_env()
    if env.is_distributed and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(env.local_rank)
        torch.distributed.init_process_group(backend=backend)
    return env


def shutdown_distributed() -> None:
    """Barrier then destroy the process group, so no rank exits while another still writes."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def print0(*args: object) -> None:
    """Print on rank 0 only."""
    if dist_env().is_main:
        print(*args, flush=True)
