"""Checkpoint folders: ``model.safetensors`` + ``config.json``.

A folder is enough to rebuild a model: the JSON sidecar holds the model config, the tokenizer
(vocabulary, medians, hash), the package version, the training step and data provenance; the
safetensors file holds the weights only.

Both files are written atomically (temporary file, then rename). Weights with NaN or infinite
values are refused on save and on load (:class:`NonFiniteWeightsError`): a
diverged model is never written or used. A missing, empty, truncated or unparsable file is a
:class:`CheckpointError` that names the file and the fix.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lifelm._core.errors import LifeLMError, NumericalError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
_FIX = (
    "The checkpoint is damaged (an interrupted copy or write?): copy the folder again, or use "
    "another checkpoint (e.g. an earlier checkpoints/step_N folder of the run)."
)


class CheckpointError(LifeLMError, RuntimeError):
    """A checkpoint folder is missing, incomplete or incompatible."""


class NonFiniteWeightsError(CheckpointError, NumericalError):
    """Weights hold NaN or infinite values (refused on save and on load)."""


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def nonfinite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or infinite values."""
    return [
        k
        for k, v in state_dict.items()
        if torch.is_floating_point(v) and v.numel() and not bool(torch.isfinite(v).all())
    ]


def save_checkpoint(
    folder: str | Path,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
) -> Path:
    """Write weights and config atomically (temp file then rename), so a kill never leaves half a file.

    Raises
    ------
    NonFiniteWeightsError
        When a weight holds NaN or infinite values (nothing is written).
    """
    folder = Path(folder)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    bad = nonfinite_tensors(tensors)
    if bad:
        raise NonFiniteWeightsError(
            f"{folder}: refusing to save a model with NaN or infinite weights "
            f"({len(bad)} tensors, e.g. {', '.join(bad[:3])}). Training diverged: lower the "
            "learning rate (--lr) or resume from an earlier checkpoint."
        )
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{WEIGHTS}.")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt", "lifelm": "1"})
        os.replace(tmp, folder / WEIGHTS)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _atomic_write_text(folder / CONFIG, json.dumps(config, indent=2, sort_keys=True, default=str))
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    """Read ``config.json`` from a checkpoint folder with an error that says what is missing."""
    folder = Path(folder)
    path = folder / CONFIG
    if folder.is_file():
        raise CheckpointError(
            f"{folder}: is a file; a LifeLM checkpoint is a folder holding {WEIGHTS} and "
            f"{CONFIG}: pass the folder (e.g. runs/x/model)."
        )
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no config.json. A LifeLM checkpoint folder holds {WEIGHTS} and {CONFIG}; "
            "pass the folder that `lifelm cells pretrain --out` wrote."
        )
    text = path.read_bytes()
    if not text.strip():
        raise CheckpointError(f"{path}: empty file. {_FIX}")
    try:
        config = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}). {_FIX}") from None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: holds a JSON {type(config).__name__}, not an object. {_FIX}"
        )
    return config


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, refusing an empty, truncated or non-finite one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing weights file next to {CONFIG}. {_FIX}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty weights file (0 bytes). {_FIX}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path}: cannot be read as safetensors ({str(e)[:200]}). {_FIX}"
        ) from None
    bad = nonfinite_tensors(state)
    if bad:
        raise NonFiniteWeightsError(
            f"{path}: {len(bad)} weight tensors hold NaN or infinite values (e.g. "
            f"{', '.join(bad[:3])}); such a model gives NaN outputs. Use a checkpoint from "
            "before training diverged, or retrain with a lower learning rate."
        )
    return state


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(state_dict, config)`` from a checkpoint folder."""
    folder = Path(folder)
    config = read_config(folder)
    return load_weights(folder / WEIGHTS), config
