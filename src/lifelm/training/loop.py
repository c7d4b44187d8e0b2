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
CPU process, N gloo processes (``torchrun --nproc_per_node N``) or N GPUs, under DDP or, with
``strategy="fsdp"``, FSDP2 (:mod:`lifelm.training.distributed`); FSDP checkpoints are sharded
``torch.distributed.checkpoint`` folders that every rank writes in parallel and that load on
another number of ranks. A dataset may define ``epoch_order(seed, epoch)`` to replace the epoch
permutation (the corpus store's block shuffling does); the order must be a permutation.

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
from lifelm.training.distributed import (
    Strategy,
    barrier,
    full_state_dict,
    load_sharded,
    resolve_strategy,
    save_sharded,
    wrap_model,
)

log = get_logger("lifelm.training")

STATE_FILE = "trainer_state.pt"
DCP_DIR = "dcp"  # sharded weights + optimizer state inside an FSDP checkpoint folder
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
    strategy: Strategy = (
        "auto"  # auto = DDP under torchrun; fsdp = FSDP2 + sharded (DCP) checkpoints
    )
    barrier_timeout_s: float = 1800.0  # a rank waiting longer than this for the others fails


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

    def __init__(
        self,
        n_items: int,
        seed: int,
        order: Callable[[int, int], np.ndarray] | None = None,
    ) -> None:
        if n_items <= 0:
            raise ValueError("the training dataset is empty")
        self.n = n_items
        self.seed = seed
        self.order = order  # order(seed, epoch) -> permutation; default: a uniform one
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if self.order is not None:
                perm = np.asarray(self.order(self.seed, epoch))
                if len(perm) != self.n:
                    raise ValueError(
                        f"epoch_order gave {len(perm)} items for a dataset of {self.n}"
                    )
            else:
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perms = {epoch: perm}
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
    _prune(folder, cfg)
    return folder


def _write_sharded_checkpoint(
    out_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sidecar: dict[str, Any],
    cfg: TrainConfig,
    is_main: bool,
) -> Path:
    """Every rank writes its shard of weights and optimizer state (DCP) into a temporary folder;
    rank 0 then adds the sidecar and the trainer state and renames it (complete or absent)."""
    folder = out_dir / "checkpoints" / f"step_{step}"
    tmp = out_dir / "checkpoints" / f".tmp_step_{step}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(cfg.barrier_timeout_s)
    save_sharded(tmp / DCP_DIR, model, optimizer)
    barrier(cfg.barrier_timeout_s)
    if is_main:
        (tmp / "config.json").write_text(
            json.dumps(_sidecar(sidecar, step, cfg), indent=2, sort_keys=True, default=str)
        )
        torch.save({"step": step, "format": "dcp"}, tmp / STATE_FILE)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        _prune(folder, cfg)
    barrier(cfg.barrier_timeout_s)
    return folder


def _prune(folder: Path, cfg: TrainConfig) -> None:
    old = sorted(
        (p for p in folder.parent.glob("step_*") if p != folder),
        key=lambda p: int(p.name.split("_")[1]),
    )
    for p in old[: max(0, len(old) - (cfg.keep_checkpoints - 1))]:
        shutil.rmtree(p, ignore_errors=True)


def _mean_over_ranks(value: float, device: torch.device, distributed: bool) -> float:
    """Mean of a per-rank number over all ranks (the loss of the global batch when ranks hold
    equal shares); the value itself in a single process."""
    if not distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t) / torch.distributed.get_world_size()


def _as_float(x: torch.Tensor) -> float:
    """A scalar tensor (or an FSDP DTensor) as a Python float."""
    return float(x.full_tensor() if hasattr(x, "full_tensor") else x)


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
    strategy = resolve_strategy(cfg.strategy, env)
    start_step = 0
    ckpt = latest_checkpoint(out_dir) if resume else None
    if strategy == "fsdp":  # shard first: the optimizer and a resumed state live on the shards
        model = wrap_model(model, strategy, device)
    optimizer = build_optimizer(model, cfg)
    if ckpt is not None:
        trainer = torch.load(ckpt / STATE_FILE, map_location=device, weights_only=False)
        if trainer.get("format") == "dcp":
            if strategy != "fsdp":
                raise ValueError(
                    f"{ckpt} is a sharded (FSDP) checkpoint; resume it with strategy='fsdp'"
                )
            load_sharded(ckpt / DCP_DIR, model, optimizer)
        else:
            if strategy == "fsdp":
                raise ValueError(
                    f"{ckpt} is a DDP/single-process checkpoint; resume it without strategy='fsdp'"
                )
            state, _ = load_checkpoint(ckpt)
            model.load_state_dict(state)
            optimizer.load_state_dict(trainer["optimizer"])
        start_step = int(trainer["step"])
        if env.is_main:
            log.info("resuming from %s (step %d)", ckpt, start_step)
    elif env.is_main and (out_dir / "model").exists() and not resume:
        log.warning("%s exists; it will be overwritten when this run ends", out_dir / "model")

    if strategy == "ddp":
        model = wrap_model(model, strategy, device)

    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    stream = ItemStream(len(dataset), cfg.seed, getattr(dataset, "epoch_order", None))
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
                _as_float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
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
                    "loss": _mean_over_ranks(float(np.mean(window)), device, env.is_distributed),
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
                if strategy == "fsdp":
                    _write_sharded_checkpoint(
                        out_dir, done, model, optimizer, sidecar, cfg, env.is_main
                    )
                else:
                    if env.is_main:
                        _write_checkpoint(out_dir, done, model, optimizer, sidecar, cfg)
                    barrier(cfg.barrier_timeout_s)
            if done == fault_at:
                os._exit(17)  # simulated kill: no cleanup, no final save

    if eval_dataset is not None:
        eval_loss = held_out_loss()
    model_dir = out_dir / "model"
    final_step = max(start_step, cfg.max_steps)
    weights = full_state_dict(model)  # a collective under FSDP: every rank takes part
    if env.is_main:
        side = _sidecar(sidecar, final_step, cfg)
        if eval_loss is not None:
            side["eval_loss"] = eval_loss
        save_checkpoint(model_dir, weights, side)
    barrier(cfg.barrier_timeout_s)
    final = history[-1]["loss"] if history else last_loss
    return TrainResult(
        model_dir=model_dir,
        step=final_step,
        final_loss=final,
        eval_loss=eval_loss,
        history=history,
    )
