"""CPU inference techniques for cell embedding and in-silico perturbation, each switchable on its own.

- ``quantize="int8"``: dynamic int8 quantisation of every ``nn.Linear``
  (``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantised per batch).
  Lossy: measure the cost (``benchmarks/cpu_techniques.py``, ``tests/test_cpu_techniques.py``).
- ``compile=True``: ``torch.compile`` of the embedding forward (dynamic shapes). Compilation
  takes seconds to minutes, so it is off by default; when it fails (no C compiler, unsupported
  op) the run falls back to eager and says so.
- ``precision="bf16"``: bf16 autocast on CPUs with AVX-512 BF16 or AMX (read from
  ``/proc/cpuinfo``); elsewhere it is skipped with a message and fp32 runs.
- ``jobs=N``: N worker processes pinned to disjoint blocks of the allowed cores, each with as
  many torch threads as cores, pulling batches from one shared queue, longest cells first. The
  batches are the ones a single process makes, so every cell's embedding is computed the same way.

:func:`resolve` turns the request into what will run (and notes why anything was dropped);
:func:`prepare` and :func:`technique_fn` apply the techniques to a network and its forward
(:func:`embed_fn` for embedding; the in-silico scan of ``lifelm cells perturb|targets`` uses the
same two); :func:`run_pinned` runs work items in pinned worker processes (embedding batches in
:func:`embed_parallel`, groups of cells in the scan).
"""

from __future__ import annotations

import copy
import os
import queue
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch
from torch import nn

from lifelm._core.errors import InputError
from lifelm._core.runtime import get_logger

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from lifelm.models.bert_encoder import BertEncoder
    from lifelm.models.cell_transformer import CellTransformer

log = get_logger("lifelm.cpu")
_Net = TypeVar("_Net", bound=nn.Module)


@dataclass(frozen=True)
class CpuTechniques:
    """Which CPU techniques an embedding or perturbation run uses (all off = fp32, one process)."""

    quantize: str = "none"  # none | int8
    compile: bool = False
    precision: str = "auto"  # auto | fp32 | bf16
    jobs: int = 1

    def __post_init__(self) -> None:
        if self.quantize not in ("none", "int8"):
            raise InputError(f"quantize {self.quantize!r}: use 'none' or 'int8'")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InputError(f"precision {self.precision!r}: use auto, fp32 or bf16")
        if self.jobs < 1:
            raise InputError(f"jobs={self.jobs}: use 1 or more worker processes")
        if self.quantize == "int8" and self.precision == "bf16":
            raise InputError("--quantize int8 and --precision bf16 exclude each other; pick one")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def result_settings(self) -> dict[str, str]:
        """The techniques that change the numbers (int8, bf16), for a run's manifest.

        ``compile`` and ``jobs`` give the same results and are left out, so a resumed run may
        change them; nothing is returned when none is on, so older manifests still match.
        """
        out = {}
        if self.quantize != "none":
            out["cpu_quantize"] = self.quantize
        if self.precision == "bf16":
            out["cpu_precision"] = self.precision
        return out


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX-BF16), and why not."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    have = sorted(flags & {"avx512_bf16", "amx_bf16"})
    cap = torch.backends.cpu.get_cpu_capability()
    if have:
        return True, f"CPU has {', '.join(have)} (torch capability {cap})"
    return False, f"CPU has neither avx512_bf16 nor amx_bf16 (torch capability {cap})"


def resolve(request: CpuTechniques, device: torch.device) -> tuple[CpuTechniques, list[str]]:
    """What will actually run, and a note for each technique that was dropped."""
    notes: list[str] = []
    if device.type != "cpu":
        if request.quantize != "none" or request.jobs > 1:
            notes.append(f"int8 and multi-process are CPU techniques; ignored on {device.type}")
            log.warning("%s", notes[-1])
        return replace(request, quantize="none", jobs=1), notes
    out = request
    if request.precision == "bf16":
        ok, why = cpu_bf16_support()
        if not ok:
            notes.append(f"bf16 skipped: {why}; running fp32")
            log.warning("bf16 skipped: %s; running fp32", why)
            out = replace(out, precision="fp32")
    cores = len(_allowed_cores())
    if request.jobs > cores:
        raise InputError(
            f"--jobs {request.jobs} is more than the {cores} cores this process may use; "
            f"use at most {cores}"
        )
    return out, notes


def quantize_int8(network: _Net) -> _Net:
    """A copy of ``network`` with every ``nn.Linear`` dynamically quantised to int8."""
    with warnings.catch_warnings():  # torch.ao's deprecation notices (the API still works)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        # quantize_dynamic swaps the Linear layers of the copy in place and returns the copy,
        # so the result has the class of ``network``
        return cast(
            "_Net",
            torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(network).eval(), {nn.Linear}, dtype=torch.qint8
            ),
        )


def amp_dtype(tech: CpuTechniques, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``tech`` on ``device`` (``auto`` = bf16 on a GPU that has it)."""
    if tech.precision == "bf16":
        return torch.bfloat16
    if tech.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def compiled(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile(fn)`` (dynamic shapes) that falls back to ``fn`` with a warning on failure."""
    state = {"fn": torch.compile(fn, dynamic=True)}

    def guarded(ids: torch.Tensor) -> torch.Tensor:
        try:
            return state["fn"](ids)
        except Exception as err:
            if state["fn"] is fn:
                raise
            log.warning("torch.compile failed (%s); running eager", str(err).splitlines()[0][:200])
            state["fn"] = fn
            return fn(ids)

    return guarded


def prepare(trunk: _Net, tech: CpuTechniques) -> _Net:
    """The network the techniques run: an int8 copy of ``trunk`` with ``quantize="int8"``, else it."""
    return quantize_int8(trunk) if tech.quantize == "int8" else trunk


def technique_fn(
    fn: Callable[[torch.Tensor], torch.Tensor], tech: CpuTechniques, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` (a forward of a :func:`prepare`-d network) under the precision and compile of ``tech``.

    Embedding (:func:`embed_fn`) and the in-silico scan (``perturb.scan``) both wrap their
    forward with this, so a technique means the same thing in every command.
    """
    amp = amp_dtype(tech, device)

    def eager(ids: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            return fn(ids)

    return compiled(eager) if tech.compile else eager


def embed_fn(
    trunk: CellTransformer | BertEncoder, tech: CpuTechniques, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward ``ids -> (B, D)`` embedding with the techniques of ``tech`` applied."""
    model = prepare(trunk, tech)
    return technique_fn(lambda ids: model.embed(ids, ids.ne(0)), tech, device)


# ------------------------------------------------------------------ multi-process


def _allowed_cores() -> list[int]:
    """The cores this process may run on (all cores where the OS has no affinity API, e.g. macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _split_cores(jobs: int) -> list[list[int]]:
    cores = _allowed_cores()
    return [list(map(int, c)) for c in np.array_split(cores, jobs)]


def _worker(
    rank: int,
    cores: list[int],
    setup: Callable[[Any], Callable[[Any], Any]],
    shared: Any,
    tasks: Queue[Any],
    results: Queue[Any],
) -> None:  # pragma: no cover - runs in a child process
    try:
        if hasattr(os, "sched_setaffinity"):  # pinning is Linux-only; elsewhere threads only
            os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))
        work = setup(shared)
        with torch.inference_mode():
            while (item := tasks.get()) is not None:
                k, payload = item
                results.put((k, work(payload)))
    except BaseException:
        results.put(("error", f"worker {rank}: {traceback.format_exc()}"))


def run_pinned(
    setup: Callable[[Any], Callable[[Any], Any]],
    shared: Any,
    items: Sequence[Any],
    jobs: int,
) -> Iterator[tuple[int, Any]]:
    """Run ``setup(shared)(item)`` for every item in ``jobs`` worker processes pinned to cores.

    ``setup`` (a module-level function, so ``spawn`` can pickle it) runs once per worker and
    returns the work function (e.g. builds the int8 copy there). Items are queued in the order
    given (put the slow ones first); ``(index, result)`` pairs are yielded as they finish, so a
    caller can write each result at once. A worker's exception is raised here with its traceback.
    """
    ctx = torch.multiprocessing.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for k, item in enumerate(items):
        tasks.put((k, item))
    blocks = _split_cores(jobs)
    for _ in blocks:
        tasks.put(None)
    procs = [
        ctx.Process(target=_worker, args=(r, cores, setup, shared, tasks, results), daemon=True)
        for r, cores in enumerate(blocks)
    ]
    for p in procs:
        p.start()
    try:
        for _ in range(len(items)):
            while True:
                try:
                    k, res = results.get(timeout=5)
                    break
                except queue.Empty:
                    dead = [p for p in procs if p.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(
                            f"worker process died (exit code {dead[0].exitcode})"
                        ) from None
            if k == "error":
                raise RuntimeError(res)
            yield int(k), res
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def _embed_setup(shared: Any) -> Callable[[Any], Any]:  # pragma: no cover - child process
    from lifelm.data.cells.datasets import pad_cells

    trunk, tech, cells, max_length = shared
    fn = embed_fn(trunk, tech, torch.device("cpu"))
    return lambda idx: fn(pad_cells([cells[i] for i in idx], max_length)).float().numpy()


def embed_parallel(
    trunk: CellTransformer | BertEncoder,
    cells: list[np.ndarray],
    batches: list[np.ndarray],
    tech: CpuTechniques,
    max_length: int,
) -> list[np.ndarray]:
    """Embeddings of ``batches`` (index arrays into ``cells``) by ``tech.jobs`` pinned workers.

    Returns one (len(batch), D) array per batch, in the order of ``batches``.
    """
    shared = (trunk, replace(tech, jobs=1), cells, max_length)
    out: list[np.ndarray | None] = [None] * len(batches)
    for b, emb in run_pinned(_embed_setup, shared, [np.asarray(i) for i in batches], tech.jobs):
        out[b] = emb
    done = [emb for emb in out if emb is not None]
    if len(done) != len(out):  # every batch was counted once above; guard against a lost one
        raise RuntimeError(f"embedding workers returned {len(done)} of {len(out)} batches")
    return done
