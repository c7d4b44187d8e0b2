"""Checkpoint folders: ``model.safetensors`` + ``config.json``.

A folder is enough to rebuild a model: the JSON sidecar holds the model config, the tokenizer
identity (vocabulary, medians, hash), the package version, the training step and data
provenance. Extra arrays (gene medians, vocabularies) go into the safetensors file under an
``extra.`` prefix so that the JSON stays readable.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lifelm._core.errors import LifeLMError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(LifeLMError, RuntimeError):
    """A checkpoint folder is missing, incomplete or incompatible."""


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_checkpoint(
    folder: str | Path,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
) -> Path:
    """Write weights and config atomically (temp file then rename), so a kill never leaves half a file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{WEIGHTS}.")
    os.close(fd)
    save_file(tensors, tmp, metadata={"format": "pt", "lifelm": "1"})
    os.replace(tmp, folder / WEIGHTS)
    _atomic_write_text(folder / CONFIG, json.dumps(config, indent=2, sort_keys=True, default=str))
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    """Read ``config.json`` from a checkpoint folder with an error that says what is missing."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no config.json. A LifeLM checkpoint folder holds {WEIGHTS} and {CONFIG}; "
            "pass the folder that `lifelm cells pretrain --out` wrote."
        )
    return json.loads(path.read_text())


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(state_dict, config)`` from a checkpoint folder."""
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing weights file next to {CONFIG}.")
    return load_file(str(weights)), config
