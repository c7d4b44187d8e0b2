"""Resumable training checkpoints: one writer for plain, DDP and sharded (FSDP) runs, and a reader
that falls back past a damaged newest checkpoint.

A checkpoint is ``out/checkpoints/step_N/``: ``config.json`` (the sidecar, step, training config,
version), the weights (``model.safetensors``, or a ``dcp/`` folder of per-rank shards under
FSDP) and ``trainer_state.pt`` (step, and the optimizer state when not sharded). It is written
into ``.tmp_step_N`` and renamed, the trainer state last, so a folder named ``step_N`` is
complete unless something damaged it afterwards; the newest ``keep`` folders are kept.

On resume the newest checkpoint is read; if its trainer state is missing or unreadable, its
``config.json`` is not JSON, or its weights are truncated or empty, a warning names the damage
and the previous checkpoint is used. No checkpoint at all is a :class:`NoCheckpointError`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from lifelm._core.runtime import get_logger
from lifelm.io.checkpoint import CONFIG, WEIGHTS, CheckpointError, save_checkpoint
from lifelm.training.distributed import barrier, load_sharded, save_sharded

log = get_logger("lifelm.training")

STATE_FILE = "trainer_state.pt"
DCP_DIR = "dcp"  # sharded weights + optimizer state inside an FSDP checkpoint folder


class NoCheckpointError(CheckpointError):
    """``--resume`` was asked, but the run folder holds no usable checkpoint."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint folder whose files cannot be read back (truncated, empty, not JSON)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (the model itself otherwise)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def checkpoint_folders(out_dir: str | Path) -> list[Path]:
    """Every ``checkpoints/step_N`` folder of a run, newest first (complete or not)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """Newest ``checkpoints/step_N`` that holds a trainer state (written last, so it marks completeness)."""
    return next((p for p in checkpoint_folders(out_dir) if (p / STATE_FILE).is_file()), None)


def require_checkpoint(out_dir: Path) -> list[Path]:
    """The run's checkpoint folders, newest first; :class:`NoCheckpointError` when there is none."""
    folders = checkpoint_folders(out_dir)
    if not folders:
        raise NoCheckpointError(
            f"{out_dir}: --resume was given but {out_dir / 'checkpoints'} holds no checkpoint "
            "(a run writes one every --checkpoint-every steps). Run without --resume to start "
            "afresh, or point --out at the folder of the run to continue."
        )
    return folders


def write_checkpoint(
    out_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    *,
    sharded: bool,
    is_main: bool,
    keep: int,
    timeout_s: float,
) -> Path:
    """Write ``checkpoints/step_{step}`` (complete or absent); every rank calls it.

    Sharded: every rank writes its shard of weights and optimizer state (DCP) into the temporary
    folder. Rank 0 writes ``config.json``, the full weights when not sharded, and the trainer
    state last, then renames the folder and prunes old ones.
    """
    folder = out_dir / "checkpoints" / f"step_{step}"
    tmp = out_dir / "checkpoints" / f".tmp_step_{step}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(timeout_s)
    if sharded:
        save_sharded(tmp / DCP_DIR, model, optimizer)
        barrier(timeout_s)
    if is_main:
        if sharded:
            (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
            state: dict[str, Any] = {"step": step, "format": "dcp"}
        else:
            save_checkpoint(tmp, unwrap(model).state_dict(), config)
            state = {"step": step, "optimizer": optimizer.state_dict()}
        torch.save(state, tmp / STATE_FILE)  # last: its presence marks a complete folder
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        _prune(folder, keep)
    barrier(timeout_s)
    return folder


def _prune(folder: Path, keep: int) -> None:
    old = [p for p in checkpoint_folders(folder.parent.parent) if p != folder]
    for p in old[max(0, keep - 1) :]:
        shutil.rmtree(p, ignore_errors=True)


def _trainer_state(ckpt: Path, device: torch.device) -> dict[str, Any]:
    """The trainer state and a readable ``config.json``, or :class:`DamagedCheckpointError`."""
    path = ckpt / STATE_FILE
    if not path.is_file():
        raise DamagedCheckpointError(f"{path} is missing")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # torch raises many kinds on a truncated pickle
        raise DamagedCheckpointError(
            f"{path} cannot be read ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict) or "step" not in state:
        raise DamagedCheckpointError(f"{path} holds no training step")
    try:
        json.loads((ckpt / CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise DamagedCheckpointError(f"{ckpt / CONFIG} is not readable JSON ({err})") from err
    return state


def _load_into(
    ckpt: Path,
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sharded: bool,
) -> None:
    if state.get("format") == "dcp":
        if not sharded:
            raise CheckpointError(
                f"{ckpt} is a sharded (FSDP) checkpoint; resume it with strategy='fsdp'"
            )
        if not (ckpt / DCP_DIR / ".metadata").is_file():
            raise DamagedCheckpointError(f"{ckpt / DCP_DIR / '.metadata'} is missing")
        load_sharded(ckpt / DCP_DIR, model, optimizer)
        return
    if sharded:
        raise CheckpointError(
            f"{ckpt} is a DDP/single-process checkpoint; resume it without strategy='fsdp'"
        )
    path = ckpt / WEIGHTS
    try:
        weights = load_file(str(path))
    except Exception as err:  # safetensors raises on a truncated or empty file
        raise DamagedCheckpointError(
            f"{path} cannot be read ({type(err).__name__}: {err})"
        ) from err
    if not weights:
        raise DamagedCheckpointError(f"{path} holds no tensors")
    model.load_state_dict(weights)  # a shape mismatch is another model, not damage: it raises
    optimizer.load_state_dict(state["optimizer"])


def restore(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    sharded: bool,
    device: torch.device,
    is_main: bool,
) -> int:
    """Load the newest readable checkpoint into ``model`` and ``optimizer``; return its step.

    A damaged checkpoint is skipped with a warning that names the damaged file.
    """
    folders = require_checkpoint(out_dir)
    damaged: list[str] = []
    for ckpt in folders:
        try:
            state = _trainer_state(ckpt, device)
            _load_into(ckpt, state, model, optimizer, sharded)
        except DamagedCheckpointError as err:
            damaged.append(str(err))
            if is_main:
                log.warning(
                    "checkpoint %s is damaged: %s; falling back to the previous one", ckpt.name, err
                )
            continue
        step = int(state["step"])
        if is_main:
            log.info("resuming from %s (step %d)", ckpt, step)
        return step
    raise NoCheckpointError(
        f"{out_dir}: every checkpoint is damaged, nothing to resume:\n  "
        + "\n  ".join(damaged)
        + "\nRun without --resume to start afresh."
    )
