"""Run-folder protection for every training run: one writer, and a manifest checked on resume.

:func:`hold_run_folder` takes :func:`lifelm._core.runfolder.lock_folder` on rank 0 (other ranks
write nothing of their own); it is re-entrant inside one process, so a task (cells ``pretrain``,
which writes its tokenizer first) can hold the lock around its whole run and the loop's own call
is then a no-op. :func:`run_settings` gives what ``manifest.json`` records (written by
:func:`lifelm._core.runfolder.ensure_manifest` on rank 0) on a fresh run (content hashes
of the input files, the training settings and the checkpoint sidecar: model shape, tokenizer,
data provenance) and, on resume, refuses other data, weights or settings, naming each
difference. :func:`raise_on_all_ranks` turns rank 0's refusal into an error on every rank, so no
rank waits for a partner that already stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from lifelm._core.runfolder import lock_folder
from lifelm._core.runtime import dist_env
from lifelm.training.distributed import DistributedError

_HELD: set[Path] = set()
# training settings that change neither the weights nor the data order (free to change on resume)
FREE_SETTINGS = frozenset({"progress", "device", "barrier_timeout_s"})
_MAX_INLINE = 200  # longer setting values are recorded by their SHA-256


@contextlib.contextmanager
def hold_run_folder(folder: str | Path) -> Iterator[None]:
    """Lock ``folder`` for this run on rank 0 (re-entrant within a process); no-op on other ranks."""
    if not dist_env().is_main:
        yield
        return
    key = Path(folder).resolve()
    if key in _HELD:
        yield
        return
    with lock_folder(folder):
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)


def _recorded(value: Any) -> Any:
    text = json.dumps(value, sort_keys=True, default=str)
    if len(text) <= _MAX_INLINE:
        return json.loads(text)
    return {"sha256": hashlib.sha256(text.encode()).hexdigest()}


def run_settings(config: Any, sidecar: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a resume must repeat: the training config and the sidecar, one level deep.

    Long values (a vocabulary, gene medians) are recorded by their hash, so the manifest stays
    small and a difference is still named by its key (``tokenizer.genes``).
    """
    train = (
        asdict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config)
    )
    out = {f"train.{k}": _recorded(v) for k, v in train.items() if k not in FREE_SETTINGS}
    for key, value in sidecar.items():
        if isinstance(value, Mapping) and value:
            out.update({f"{key}.{k}": _recorded(v) for k, v in value.items()})
        else:
            out[key] = _recorded(value)
    return out


def raise_on_all_ranks(error: BaseException | None, device: torch.device) -> None:
    """Re-raise rank 0's ``error`` there and stop the other ranks too (a no-op when all is well)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flag = torch.tensor([0.0 if error is None else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if error is None and float(flag) > 0:
            raise DistributedError(
                f"rank {dist.get_rank()}: rank 0 refused to start this run; see its error message"
            )
    if error is not None:
        raise error
