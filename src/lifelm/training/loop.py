"""One plain PyTorch training loop for every LifeLM model (cells and genomes).

What it does, in order, for each step:

1. take this rank's slice of the global batch from a deterministic, seeded stream of item
   indices (epoch ``e`` is a permutation seeded by ``(seed, e)``; step ``s`` reads global
   positions ``[s·G, (s+1)·G)`` with ``G = batch_size · world_size``, and rank ``r`` takes the
   ``r``-th block of ``batch_size``), so the data order depends only on the seed and the step;
2. collate with a generator seeded by ``(seed, step, rank)`` and reseed torch the same way, so
   masking and dropout are the same whether or not the run was resumed;
3. forward under bf16 autocast on GPUs that support it (fp32 on CPU), backward, clip, AdamW,
   warmup + cosine schedule;
4. every ``checkpoint_every`` steps rank 0 writes ``checkpoints/step_N/`` (weights, config,
   optimizer and schedule state) atomically and keeps the last two.

``resume=True`` restarts from the newest complete checkpoint. The same entry point runs on one
CPU process, N gloo processes (``torchrun --nproc_per_node N``) or N GPUs (DDP).

Contract with callers: ``dataset[i]`` returns one item; ``collate_fn(items, generator)`` returns
a dict of tensors; ``model(**batch)`` returns a dict holding a scalar ``"loss"``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lifelm import __version__
from lifelm._core.progress import make_progress
from lifelm._core.runtime import (
    autocast_dtype,
    get_logger,
    init_distributed,
    resolve_device,
    seed_everything,
)
from lifelm.io.checkpoint import load_checkpoint, save_checkpoint

log = get_logger("lifelm.training")

STATE_FILE = "trainer_state.pt"
FAULT_ENV = "LIFELM_FAULT_AT_STEP"  # test hook: hard-exit after this step, as a kill would


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping settings shared by every model."""

    max_steps: int = 1000  # optimizer steps in total (the schedule is defined over these)
    batch_size: int = 32  # items per process per step; global batch = batch_size * world_size
    lr: float = 3e-4  # peak learning rate after warmup
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not on norms and biases)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    warmup_steps: int = 100  # linear warmup from 0 to lr
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    checkpoint_every: int = 200  # steps between resumable checkpoints
    keep_checkpoints: int = 2  # how many step_N folders to keep
    log_every: int = 10  # steps between metrics.jsonl lines
    eval_every: int = 0  # steps between evaluations on eval_dataset; 0 = only at the end
    seed: int = 0  # seeds data order, masking, dropout and init
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto = bf16 on capable GPUs
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True  # rich progress bar on rank 0


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    model_dir: Path  # folder with model.safetensors + config.json
    step: int  # last optimizer step
    final_loss: float  # mean training loss over the last log window
    eval_loss: float | None = None  # mean loss on eval_dataset at the end, if given
    history: list[dict[str, float]] = field(default_factory=list)


class ItemStream:
    """Deterministic global order of item indices: a fresh permutation per epoch."""

    def __init__(self, n_items: int, seed: int) -> None:
        if n_items <= 0:
            raise ValueError("the training dataset is empty")
        self.n = n_items
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> list[int]:
        """Items at global positions ``start .. start + count - 1`` (crossing epochs)."""
        out = []
        for pos in range(start, start + count):
            out.append(int(self._perm(pos // self.n)[pos % self.n]))
        return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup then cosine decay to ``lr * min_lr_ratio``; ``step`` counts from 0."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms or 1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """Newest ``checkpoints/step_N`` that holds a trainer state (written last, so it marks completeness)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step_*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _write_checkpoint(
    out_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sidecar: dict[str, Any],
    cfg: TrainConfig,
) -> Path:
    folder = out_dir / "checkpoints" / f"step_{step}"
    tmp = out_dir / "checkpoints" / f".tmp_step_{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(tmp, _unwrap(model).state_dict(), _sidecar(sidecar, step, cfg))
    torch.save({"step": step, "optimizer": optimizer.state_dict()}, tmp / STATE_FILE)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    old = sorted(
        (p for p in folder.parent.glob("step_*") if p != folder),
        key=lambda p: int(p.name.split("_")[1]),
    )
    for p in old[: max(0, len(old) - (cfg.keep_checkpoints - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return folder


def _sidecar(sidecar: dict[str, Any], step: int, cfg: TrainConfig) -> dict[str, Any]:
    return {**sidecar, "step": step, "train": asdict(cfg), "lifelm_version": __version__}


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    dataset: Sequence[Any],
    collate_fn: Callable[[list[Any], torch.Generator], dict[str, torch.Tensor]],
    *,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Mean loss over a dataset, in order, with a fixed collate seed (comparable across runs)."""
    model.eval()
    total, weight = 0.0, 0
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        batch = {k: v.to(device) for k, v in collate_fn(items, gen).items()}
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = model(**batch)["loss"]
        total += float(loss) * len(items)
        weight += len(items)
    model.train()
    return total / max(1, weight)


def train(
    model: nn.Module,
    dataset: Sequence[Any],
    *,
    config: TrainConfig,
    out_dir: str | Path,
    collate_fn: Callable[[list[Any], torch.Generator], dict[str, torch.Tensor]],
    sidecar: dict[str, Any],
    resume: bool = False,
    eval_dataset: Sequence[Any] | None = None,
    unit: str = "cells",
) -> TrainResult:
    """Train ``model`` on ``dataset`` and write ``out_dir/model/`` (weights + config).

    Parameters
    ----------
    model
        An ``nn.Module`` whose forward takes the collated batch as keyword arguments and returns a
        dict with a scalar ``"loss"``.
    dataset
        Anything with ``len`` and integer indexing.
    config
        Optimisation settings (:class:`TrainConfig`).
    out_dir
        Run folder: ``metrics.jsonl``, ``checkpoints/step_N/`` and the final ``model/``.
    collate_fn
        ``collate_fn(items, generator)``; all randomness must come from ``generator``.
    sidecar
        JSON-serialisable dict saved as ``config.json`` next to every checkpoint: it must be enough
        to rebuild the model (model config, tokenizer identity, provenance).
    resume
        Continue from the newest complete checkpoint in ``out_dir`` (an error if there is none
        and ``out_dir/model`` exists already, to avoid overwriting a finished run by mistake).
    eval_dataset
        Optional held-out items; their mean loss is logged every ``eval_every`` steps and at the end.
    unit
        What one item is, for the throughput shown (``cells``, ``sequences``).
    """
    cfg = config
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    env = init_distributed(device)
    if device.type == "cuda" and env.is_distributed:
        device = torch.device("cuda", env.local_rank)
    amp_dtype = autocast_dtype(device, cfg.precision)
    seed_everything(cfg.seed)

    model = model.to(device)
    start_step = 0
    ckpt = latest_checkpoint(out_dir) if resume else None
    optimizer = build_optimizer(model, cfg)
    if ckpt is not None:
        state, _ = load_checkpoint(ckpt)
        model.load_state_dict(state)
        trainer = torch.load(ckpt / STATE_FILE, map_location=device, weights_only=False)
        optimizer.load_state_dict(trainer["optimizer"])
        start_step = int(trainer["step"])
        if env.is_main:
            log.info("resuming from %s (step %d)", ckpt, start_step)
    elif env.is_main and (out_dir / "model").exists() and not resume:
        log.warning("%s exists; it will be overwritten when this run ends", out_dir / "model")

    if env.is_distributed:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)

    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    stream = ItemStream(len(dataset), cfg.seed)
    global_batch = cfg.batch_size * env.world_size
    metrics_path = out_dir / "metrics.jsonl"
    if env.is_main and ckpt is None and metrics_path.exists():
        metrics_path.unlink()
    history: list[dict[str, float]] = []
    window: list[float] = []
    fault_at = int(os.environ.get(FAULT_ENV, "-1"))
    t_window, items_window = time.perf_counter(), 0
    eval_loss: float | None = None
    last_loss = float("nan")

    def held_out_loss() -> float:
        assert eval_dataset is not None
        return evaluate_loss(
            _unwrap(model),
            eval_dataset,
            collate_fn,
            batch_size=cfg.batch_size,
            device=device,
            seed=cfg.seed,
            amp_dtype=amp_dtype,
        )

    model.train()
    with make_progress(disable=not cfg.progress) as progress:
        task = progress.add_task("training", total=cfg.max_steps, completed=start_step, info="")
        for step in range(start_step, cfg.max_steps):
            step_seed = (cfg.seed * 1_000_003 + step) * 1009 + env.rank
            torch.manual_seed(step_seed)
            gen = torch.Generator().manual_seed(step_seed)
            idx = stream.indices(step * global_batch + env.rank * cfg.batch_size, cfg.batch_size)
            batch = collate_fn([dataset[i] for i in idx], gen)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}

            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(**batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {float(loss)} at step {step}; lower --lr or check the input data"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                if cfg.grad_clip > 0
                else float("nan")
            )
            optimizer.step()

            last_loss = float(loss.detach())
            window.append(last_loss)
            items_window += global_batch
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                elapsed = time.perf_counter() - t_window
                row = {
                    "step": done,
                    "loss": float(np.mean(window)),
                    "lr": lr_at(step, cfg),
                    "grad_norm": grad_norm,
                    f"{unit}_per_s": items_window / max(elapsed, 1e-9),
                }
                if cfg.eval_every and eval_dataset is not None and done % cfg.eval_every == 0:
                    row["eval_loss"] = held_out_loss()
                history.append(row)
                if env.is_main:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                progress.update(
                    task, info=f"loss {row['loss']:.3f} | {row[f'{unit}_per_s']:.0f} {unit}/s"
                )
                window, t_window, items_window = [], time.perf_counter(), 0
            progress.update(task, completed=done)

            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
                if env.is_main:
                    _write_checkpoint(out_dir, done, model, optimizer, sidecar, cfg)
                if env.is_distributed:
                    torch.distributed.barrier()
            if done == fault_at:
                os._exit(17)  # simulated kill: no cleanup, no final save

    if eval_dataset is not None:
        eval_loss = held_out_loss()
    model_dir = out_dir / "model"
    final_step = max(start_step, cfg.max_steps)
    if env.is_main:
        side = _sidecar(sidecar, final_step, cfg)
        if eval_loss is not None:
            side["eval_loss"] = eval_loss
        save_checkpoint(model_dir, _unwrap(model).state_dict(), side)
    if env.is_distributed:
        torch.distributed.barrier()
    final = history[-1]["loss"] if history else last_loss
    return TrainResult(
        model_dir=model_dir,
        step=final_step,
        final_loss=final,
        eval_loss=eval_loss,
        history=history,
    )
