"""Data-parallel wrappers and sharded checkpoints: DDP, FSDP2 and torch.distributed.checkpoint.

- :func:`wrap_model` puts a model under DDP (every rank holds all weights, gradients are
  all-reduced) or FSDP2 (``fully_shard``: weights, gradients and optimizer state are sharded
  over the ranks and gathered one block at a time; needed once a model and its AdamW state no
  longer fit one GPU). Each module of an ``nn.ModuleList`` (the transformer blocks) becomes one
  FSDP unit, then the root.
- :func:`save_sharded` / :func:`load_sharded` write and read ``torch.distributed.checkpoint``
  (DCP) folders: every rank writes its own shard in parallel, and a checkpoint can be loaded on a
  different number of ranks (DCP reshards on load).
- :func:`full_state_dict` gathers the full weights (on CPU, rank 0) for the final
  ``model.safetensors``; :func:`barrier` and :func:`shutdown` wait for the other ranks with a
  timeout, so a rank that died makes the others fail with a clear error instead of hanging.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Literal, cast

import torch
import torch.distributed as dist
from torch import nn

from lifelm._core.errors import LifeLMError
from lifelm._core.runtime import DistEnv, get_logger

log = get_logger("lifelm.distributed")

Strategy = Literal["auto", "ddp", "fsdp"]


class DistributedError(LifeLMError, RuntimeError):
    """Ranks did not meet in time, or a strategy cannot be used as asked."""


def resolve_strategy(strategy: Strategy, env: DistEnv) -> Literal["none", "ddp", "fsdp"]:
    """``auto`` → DDP when several processes run, nothing for one; FSDP only when asked."""
    if strategy not in ("auto", "ddp", "fsdp"):
        raise DistributedError(f"strategy {strategy!r} is not one of auto, ddp, fsdp")
    if strategy == "fsdp":
        return "fsdp"
    return "ddp" if env.is_distributed else "none"


def shard_units(model: nn.Module) -> list[nn.Module]:
    """Modules that become their own FSDP unit: the items of every ``nn.ModuleList``."""
    units: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            units.extend(module)
    return units


def wrap_model(
    model: nn.Module, strategy: Literal["none", "ddp", "fsdp"], device: torch.device
) -> nn.Module:
    """Wrap ``model`` (already on ``device``) for data-parallel training.

    FSDP2 shards in place and returns the same object (its class becomes ``FSDP<name>``), so
    ``model.state_dict()`` then holds DTensor shards; use :func:`full_state_dict` to save weights.
    """
    if strategy == "none":
        return model
    if strategy == "ddp":
        if not dist.is_initialized():
            return model
        if device.type == "cuda":
            return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
        return nn.parallel.DistributedDataParallel(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = dist.get_world_size() if dist.is_initialized() else 1
    if not dist.is_initialized():
        raise DistributedError(
            "FSDP needs a process group: launch with torchrun (even --nproc_per_node 1)"
        )
    mesh = init_device_mesh(device.type, (world,))
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def save_sharded(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write model and optimizer state as a DCP checkpoint; every rank writes its own shard."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(folder))


def load_sharded(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load a DCP checkpoint into a (wrapped) model and its optimizer, resharding as needed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    msd, osd = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": msd, "optim": osd}  # dcp.load fills it in place
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU weights of a plain, DDP or FSDP2 model; a collective under FSDP.

    Under FSDP2 every rank must call it; rank 0 gets the tensors, the others an empty dict.
    """
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not any(isinstance(p, torch.distributed.tensor.DTensor) for p in inner.parameters()):
        return {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(
        inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    # the stubs allow nested values; a model's full state dict holds tensors only
    return cast("dict[str, torch.Tensor]", full)


def barrier(timeout_s: float = 600.0) -> None:
    """Wait for every rank, at most ``timeout_s`` seconds (a no-op without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    work = dist.barrier(async_op=True)
    try:
        ok = work.wait(timeout=datetime.timedelta(seconds=timeout_s))
    except RuntimeError as err:
        raise DistributedError(
            f"rank {dist.get_rank()}: other ranks did not reach the barrier within {timeout_s:.0f} s "
            f"({err}); one may have died: see its log"
        ) from err
    if ok is False:
        raise DistributedError(f"rank {dist.get_rank()}: barrier timed out after {timeout_s:.0f} s")


def shutdown(timeout_s: float = 300.0) -> None:
    """Barrier (with timeout) then destroy the process group, so no rank exits mid-write."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        barrier(timeout_s)
    finally:
        dist.destroy_process_group()
