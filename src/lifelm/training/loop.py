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

The run is set up (device, process group, wrapping, optimizer), guarded (a lock on ``out_dir``
and a ``manifest.json`` checked on resume: :mod:`lifelm.training.runguard`), restored (newest
readable checkpoint: :mod:`lifelm.training.checkpoints`), then stepped; logging, evaluation and
checkpoints are separate functions called between steps. ``resume=True`` restarts from the newest
complete checkpoint (an error when there is none); ``stop_after=N`` ends the run after step ``N``
without the final save, exactly as a kill would leave it (the resume tests use it). The same entry point runs on one
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
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from lifelm import __version__
from lifelm._core.errors import LifeLMError
from lifelm._core.progress import make_progress
from lifelm._core.runfolder import ensure_manifest
from lifelm._core.runtime import (
    DistEnv,
    autocast_dtype,
    get_logger,
    init_distributed,
    resolve_device,
    seed_everything,
)
from lifelm.io.checkpoint import save_checkpoint
from lifelm.training.checkpoints import (
    DCP_DIR,
    STATE_FILE,
    NoCheckpointError,
    checkpoint_folders,
    latest_checkpoint,
    require_checkpoint,
    restore,
    unwrap,
    write_checkpoint,
)
from lifelm.training.distributed import (
    Strategy,
    barrier,
    full_state_dict,
    resolve_strategy,
    wrap_model,
)
from lifelm.training.runguard import (
    hold_run_folder,
    raise_on_all_ranks,
    run_settings,
)

log = get_logger("lifelm.training")

__all__ = [
    "DCP_DIR",
    "STATE_FILE",
    "ItemStream",
    "NoCheckpointError",
    "TrainConfig",
    "TrainResult",
    "build_optimizer",
    "evaluate_loss",
    "latest_checkpoint",
    "lr_at",
    "train",
]


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
    eval_every: int = 0  # steps between evaluations on eval_dataset (any step); 0 = only at the end
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
    stopped: bool = False  # True when stop_after ended the run early (no final model written)


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
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


Collate = Callable[[list[Any], torch.Generator], dict[str, torch.Tensor]]


class ItemDataset(Protocol):
    """What training reads: a length and items by index (a list, a memory-mapped store)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int, /) -> Any: ...


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
    dataset: ItemDataset,
    collate_fn: Collate,
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


# ----------------------------------------------------------------------------- set-up


@dataclass
class _Run:
    """One training run: where it writes, where it runs, and its (wrapped) model and optimizer."""

    cfg: TrainConfig
    out_dir: Path
    device: torch.device
    env: DistEnv
    strategy: Literal["none", "ddp", "fsdp"]
    amp_dtype: torch.dtype | None
    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None

    def checkpoint(self, step: int, sidecar: dict[str, Any]) -> Path:
        assert self.optimizer is not None
        return write_checkpoint(
            self.out_dir,
            step,
            self.model,
            self.optimizer,
            _sidecar(sidecar, step, self.cfg),
            sharded=self.strategy == "fsdp",
            is_main=self.env.is_main,
            keep=self.cfg.keep_checkpoints,
            timeout_s=self.cfg.barrier_timeout_s,
        )


def _setup(model: nn.Module, cfg: TrainConfig, out_dir: Path) -> _Run:
    """Device, process group, precision and seeds; the model moved (not yet wrapped)."""
    device = resolve_device(cfg.device)
    env = init_distributed(device)
    if device.type == "cuda" and env.is_distributed:
        device = torch.device("cuda", env.local_rank)
    seed_everything(cfg.seed)
    return _Run(
        cfg=cfg,
        out_dir=out_dir,
        device=device,
        env=env,
        strategy=resolve_strategy(cfg.strategy, env),
        amp_dtype=autocast_dtype(device, cfg.precision),
        model=model.to(device),
    )


def _open_folder(
    run: _Run,
    *,
    resume: bool,
    inputs: Mapping[str, str | Path | None],
    settings: Mapping[str, Any],
    job: str,
) -> None:
    """Check the run folder on rank 0 (checkpoint present on resume, manifest) and clear what a
    fresh run replaces (old checkpoints and metrics); every rank raises if rank 0 refused."""
    error: LifeLMError | None = None
    if run.env.is_main:
        try:
            if resume:
                require_checkpoint(run.out_dir)
            ensure_manifest(run.out_dir, job=job, inputs=inputs, settings=settings, resume=resume)
        except LifeLMError as err:
            error = err
        if error is None and not resume:
            _clear_previous_run(run.out_dir)
    raise_on_all_ranks(error, run.device)


def _clear_previous_run(out_dir: Path) -> None:
    """A fresh run in a used folder: old checkpoints (another run's) and metrics go."""
    if checkpoint_folders(out_dir) or (out_dir / "checkpoints").is_dir():
        log.warning("%s: removing the checkpoints of the previous run (a fresh run)", out_dir)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    if (out_dir / "model").exists():
        log.warning("%s exists; it will be overwritten when this run ends", out_dir / "model")


def _wrap_and_restore(run: _Run, resume: bool) -> int:
    """Wrap the model (FSDP before the optimizer, DDP after the restore), build the optimizer and
    restore the newest readable checkpoint; return the step to start from."""
    if run.strategy == "fsdp":  # shard first: the optimizer and a resumed state live on the shards
        run.model = wrap_model(run.model, run.strategy, run.device)
    run.optimizer = build_optimizer(run.model, run.cfg)
    start = 0
    if resume:
        start = restore(
            run.out_dir,
            run.model,
            run.optimizer,
            sharded=run.strategy == "fsdp",
            device=run.device,
            is_main=run.env.is_main,
        )
    if run.strategy == "ddp":
        run.model = wrap_model(run.model, run.strategy, run.device)
    if start and run.env.is_main:
        _trim_metrics(run.out_dir / "metrics.jsonl", start)
    return start


def _trim_metrics(path: Path, step: int) -> None:
    """Drop the rows a killed run logged after its checkpoint (the resumed run logs them again)."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
    if len(kept) != len(rows):
        path.write_text("".join(line + "\n" for line in kept))


# ----------------------------------------------------------------------------- step and log


def _batch(
    run: _Run, dataset: ItemDataset, collate_fn: Collate, stream: ItemStream, step: int
) -> dict[str, torch.Tensor]:
    """This rank's slice of global batch ``step``; collate and torch reseeded from (seed, step, rank)."""
    cfg, env = run.cfg, run.env
    step_seed = (cfg.seed * 1_000_003 + step) * 1009 + env.rank
    torch.manual_seed(step_seed)
    gen = torch.Generator().manual_seed(step_seed)
    global_batch = cfg.batch_size * env.world_size
    idx = stream.indices(step * global_batch + env.rank * cfg.batch_size, cfg.batch_size)
    batch = collate_fn([dataset[i] for i in idx], gen)
    return {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}


def _step(run: _Run, batch: dict[str, torch.Tensor], step: int) -> tuple[float, float]:
    """One optimizer step; returns the loss and the gradient norm before clipping."""
    assert run.optimizer is not None
    cfg = run.cfg
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        loss = run.model(**batch)["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"loss is {float(loss)} at step {step}; lower --lr or check the input data"
        )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = (
        _as_float(nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip))
        if cfg.grad_clip > 0
        else float("nan")
    )
    run.optimizer.step()
    return float(loss.detach()), grad_norm


class _Metrics:
    """The training-loss window between log lines, and ``metrics.jsonl`` (rank 0 writes)."""

    def __init__(self, run: _Run, unit: str) -> None:
        self.run, self.unit = run, unit
        self.path = run.out_dir / "metrics.jsonl"
        self.history: list[dict[str, float]] = []
        self.window: list[float] = []
        self.items = 0
        self.t0 = time.perf_counter()
        self.last_loss = float("nan")

    def add(self, loss: float) -> None:
        self.window.append(loss)
        self.last_loss = loss
        self.items += self.run.cfg.batch_size * self.run.env.world_size

    def log(
        self, done: int, grad_norm: float, eval_loss: float | None, *, train: bool = True
    ) -> dict[str, float]:
        """Write the row of step ``done``: the mean loss of the window (``train``), the eval loss."""
        row: dict[str, float] = {"step": done}
        if train and self.window:
            run = self.run
            elapsed = time.perf_counter() - self.t0
            row["loss"] = _mean_over_ranks(
                float(np.mean(self.window)), run.device, run.env.is_distributed
            )
            row["lr"] = lr_at(done - 1, run.cfg)
            row["grad_norm"] = grad_norm
            row[f"{self.unit}_per_s"] = self.items / max(elapsed, 1e-9)
            self.window, self.items, self.t0 = [], 0, time.perf_counter()
        if eval_loss is not None:
            row["eval_loss"] = eval_loss
        self.history.append(row)
        if self.run.env.is_main:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    def final_loss(self) -> float:
        losses = [r["loss"] for r in self.history if "loss" in r]
        return losses[-1] if losses else self.last_loss


# ----------------------------------------------------------------------------- train


# Over 80 lines because of its numpydoc docstring; the body is the step loop, about 45 lines.
# Long only because of its docstring and signature; the body is under 80 lines.
def train(
    model: nn.Module,
    dataset: ItemDataset,
    *,
    config: TrainConfig,
    out_dir: str | Path,
    collate_fn: Collate,
    sidecar: dict[str, Any],
    resume: bool = False,
    eval_dataset: ItemDataset | None = None,
    unit: str = "cells",
    inputs: Mapping[str, str | Path | None] | None = None,
    job: str = "train",
    stop_after: int | None = None,
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
        Run folder: ``metrics.jsonl``, ``manifest.json``, ``checkpoints/step_N/`` and the final
        ``model/``. Locked while the run writes (a second writer is refused).
    collate_fn
        ``collate_fn(items, generator)``; all randomness must come from ``generator``.
    sidecar
        JSON-serialisable dict saved as ``config.json`` next to every checkpoint: it must be enough
        to rebuild the model (model config, tokenizer identity, provenance).
    resume
        Continue from the newest readable checkpoint in ``out_dir``; an error when there is none,
        or when the data files, the settings or the sidecar differ from the run's manifest.
    eval_dataset
        Optional held-out items; their mean loss is logged every ``eval_every`` steps and at the end.
    unit
        What one item is, for the throughput shown (``cells``, ``sequences``).
    inputs
        Files the run reads (data, starting weights), by name; their content hashes go into the
        manifest, so a resume on other files is refused.
    job
        The kind of run recorded in the manifest (``cells-pretrain``, ``codon-pretrain``…).
    stop_after
        End the run after this step, without the final save, as a kill would (tests).
    """
    cfg = config
    run = _setup(model, cfg, Path(out_dir))
    with hold_run_folder(run.out_dir):
        settings = run_settings(cfg, sidecar)
        _open_folder(run, resume=resume, inputs=inputs or {}, settings=settings, job=job)
        start = _wrap_and_restore(run, resume)
        stream = ItemStream(len(dataset), cfg.seed, getattr(dataset, "epoch_order", None))
        metrics = _Metrics(run, unit)

        def held_out() -> float:
            assert eval_dataset is not None
            return evaluate_loss(
                unwrap(run.model), eval_dataset, collate_fn, batch_size=cfg.batch_size,
                device=run.device, seed=cfg.seed, amp_dtype=run.amp_dtype,
            )  # fmt: skip

        run.model.train()
        with make_progress(disable=not cfg.progress) as progress:
            task = progress.add_task("training", total=cfg.max_steps, completed=start, info="")
            for step in range(start, cfg.max_steps):
                loss, grad_norm = _step(run, _batch(run, dataset, collate_fn, stream, step), step)
                metrics.add(loss)
                done = step + 1
                is_log = done % cfg.log_every == 0 or done == cfg.max_steps
                is_eval = bool(cfg.eval_every) and eval_dataset is not None
                is_eval = is_eval and done % cfg.eval_every == 0
                if is_log or is_eval:
                    row = metrics.log(
                        done, grad_norm, held_out() if is_eval else None, train=is_log
                    )
                    if "loss" in row:
                        info = f"loss {row['loss']:.3f} | {row[f'{unit}_per_s']:.0f} {unit}/s"
                        progress.update(task, info=info)
                progress.update(task, completed=done)
                if (
                    cfg.checkpoint_every
                    and done % cfg.checkpoint_every == 0
                    and done < cfg.max_steps
                ):
                    run.checkpoint(done, sidecar)
                if stop_after is not None and done >= stop_after and done < cfg.max_steps:
                    return TrainResult(
                        model_dir=run.out_dir / "model", step=done,
                        final_loss=metrics.final_loss(), history=metrics.history, stopped=True,
                    )  # fmt: skip
        eval_loss = held_out() if eval_dataset is not None else None
        return _finish(run, sidecar, max(start, cfg.max_steps), eval_loss, metrics)


def _finish(
    run: _Run, sidecar: dict[str, Any], step: int, eval_loss: float | None, metrics: _Metrics
) -> TrainResult:
    """Gather the full weights (a collective under FSDP) and write ``out_dir/model`` on rank 0."""
    model_dir = run.out_dir / "model"
    weights = full_state_dict(run.model)
    if run.env.is_main:
        side = _sidecar(sidecar, step, run.cfg)
        if eval_loss is not None:
            side["eval_loss"] = eval_loss
        save_checkpoint(model_dir, weights, side)
    barrier(run.cfg.barrier_timeout_s)
    return TrainResult(
        model_dir=model_dir,
        step=step,
        final_loss=metrics.final_loss(),
        eval_loss=eval_loss,
        history=metrics.history,
    )
