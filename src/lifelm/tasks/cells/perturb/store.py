"""The scan's results: :class:`ScanResult` in memory, and the resumable results folder on disk.

A scan folder holds ``manifest.json`` (written by :func:`lifelm._core.runfolder.ensure_manifest`:
the model weights' hash, the hashes of the cells and the targets, the settings), ``targets.json``
and one ``part-NNNNNN.npz`` per group of finished cells, each written atomically. A scan re-run on
the same folder with the same inputs skips the cells already there; with other inputs it is
refused, naming what differs. One writer at a time (:func:`~lifelm._core.runfolder.lock_folder`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelm._core.runfolder import MANIFEST_NAME, ManifestMismatchError, ensure_manifest
from lifelm.data.cells.tokenizer import TokenizedCells
from lifelm.io.checkpoint import WEIGHTS
from lifelm.tasks.cells.model_io import CellModel

SCAN_FORMAT = "lifelm-perturb-scan-v1"
TARGETS_FILE = "targets.json"


class ScanFolderMismatchError(ManifestMismatchError, ValueError):
    """The scan folder holds a scan of other cells, targets, weights or settings."""


@dataclass
class ScanResult:
    """Long-format results: one row per (cell, perturbation).

    ``targets[target[r]]`` are the gene tokens perturbed in row ``r``; ``cell[r]`` indexes the
    scanned cells. Gene-level shifts are ragged: row ``r``'s affected genes are
    ``affected[gs_offsets[r]:gs_offsets[r + 1]]`` with shifts ``gene_shift[...]``.
    """

    targets: list[tuple[int, ...]]  # perturbation id -> gene tokens
    cell: np.ndarray  # (R,) int64 cell index
    target: np.ndarray  # (R,) int64 perturbation id
    shift: np.ndarray  # (R,) float32 cosine distance perturbed vs original cell embedding
    original: np.ndarray  # (n_cells, D) float32 original embeddings (NaN when not scanned)
    perturbed: np.ndarray | None = None  # (R, D) float32 when keep_embeddings
    affected: np.ndarray | None = None  # (sum,) int64 gene tokens, when gene_shifts
    gene_shift: np.ndarray | None = None  # (sum,) float16 cosine distance per affected gene
    gs_offsets: np.ndarray | None = None  # (R + 1,) int64
    info: dict = field(default_factory=dict)  # timings and settings

    def target_tokens(self) -> np.ndarray:
        """(R,) the first perturbed gene token of each row (the gene, for singles)."""
        first = np.array([t[0] for t in self.targets], dtype=np.int64)
        return first[self.target]


def _sha256(arrays: Sequence[np.ndarray], sep: bytes = b"") -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes() + sep)
    return h.hexdigest()


def scan_settings(
    model: CellModel,
    cells: TokenizedCells,
    targets: list[tuple[int, ...]],
    config: Any,
    cell_targets: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """What identifies a scan's results: tokenizer, cells, targets and the settings that matter."""
    settings = asdict(config)
    settings.pop("max_tokens")  # batching does not change the result
    settings.pop("precision")
    # int8/bf16 change the numbers and are recorded; compile and jobs do not (and are not)
    tech = settings.pop("techniques", None)
    if tech is not None:
        settings.update(config.techniques.result_settings())
    out: dict[str, Any] = {
        "format": SCAN_FORMAT,
        "tokenizer_sha256": model.tokenizer.hash(),
        "model": str(model.folder) if model.folder else "",
        "cells_sha256": _sha256([cells.offsets, cells.tokens]),
        "targets_sha256": hashlib.sha256(
            json.dumps([list(t) for t in targets]).encode()
        ).hexdigest(),
        "n_cells": len(cells),
        "settings": settings,
    }
    if cell_targets is not None:
        ids = [np.asarray(c, dtype=np.int64) for c in cell_targets]
        out["cell_targets_sha256"] = _sha256(ids, sep=b"|")
    return out


def _weights_input(model: CellModel, settings: dict[str, Any]) -> dict[str, Path | None]:
    """The weights as a manifest input: the checkpoint file, or (in memory) a hash in settings."""
    if model.folder is not None and (Path(model.folder) / WEIGHTS).is_file():
        return {"model_weights": Path(model.folder) / WEIGHTS}
    state = model.trunk.state_dict()
    raw = [
        state[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        for k in sorted(state)
    ]
    settings["model_weights_sha256"] = _sha256(raw)
    return {"model_weights": None}


def open_scan_folder(
    out_dir: Path, model: CellModel, settings: dict[str, Any], targets: list[tuple[int, ...]]
) -> set[int]:
    """Create the scan folder or check it belongs to this scan; return the finished cells.

    The caller holds the folder's lock.
    """
    manifest_settings = dict(settings)
    manifest_settings.pop("model")  # the weights' hash stands for the model, not its path
    inputs = _weights_input(model, manifest_settings)
    resume = (out_dir / MANIFEST_NAME).is_file()
    try:
        ensure_manifest(
            out_dir, job="perturb-scan", inputs=inputs, settings=manifest_settings, resume=resume
        )
    except ManifestMismatchError as err:
        raise ScanFolderMismatchError(
            f"{out_dir}: this folder holds a different scan; use a new --out folder or delete "
            f"this one to start over.\n{err}"
        ) from None
    if not resume:
        (out_dir / TARGETS_FILE).write_text(json.dumps([list(t) for t in targets]))
    done: set[int] = set()
    for part in sorted(out_dir.glob("part-*.npz")):
        with np.load(part) as z:
            done.update(z["cells"].tolist())
    return done


def write_part(out_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    """Add one group's results to the folder (atomic: a killed write leaves no part)."""
    k = len(list(out_dir.glob("part-*.npz")))
    tmp = out_dir / f".part-{k:06d}.tmp.npz"
    # numpy's stubs let **kwds collide with the allow_pickle flag; the keys here are array names
    named: dict[str, Any] = dict(arrays)
    np.savez(tmp, **named)
    os.replace(tmp, out_dir / f"part-{k:06d}.npz")


def load_scan(out_dir: str | Path) -> ScanResult:
    """Read a (finished or partial) scan folder written by :func:`scan_cells`."""
    out_dir = Path(out_dir)
    info = json.loads((out_dir / MANIFEST_NAME).read_text())["settings"]
    targets = [tuple(t) for t in json.loads((out_dir / TARGETS_FILE).read_text())]
    parts = [dict(np.load(p)) for p in sorted(out_dir.glob("part-*.npz"))]
    return merge_parts(parts, targets, info["n_cells"], info)


def _cat(xs: Sequence[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(xs).astype(dtype) if len(xs) else np.zeros(0, dtype)


def merge_parts(
    parts: list[dict[str, np.ndarray]], targets: list[tuple[int, ...]], n_cells: int, info: dict
) -> ScanResult:
    """One :class:`ScanResult` from the per-group result parts."""
    d = parts[0]["original"].shape[1] if parts else 0
    original = np.full((n_cells, d), np.nan, dtype=np.float32)
    for p in parts:
        original[p["cells"]] = p["original"]
    has_emb = bool(parts) and "perturbed" in parts[0]
    res = ScanResult(
        targets=targets,
        cell=_cat([p["row_cell"] for p in parts], np.int64),
        target=_cat([p["row_target"] for p in parts], np.int64),
        shift=_cat([p["shift"] for p in parts], np.float32),
        original=original,
        perturbed=np.concatenate([p["perturbed"] for p in parts]) if has_emb else None,
        info=info,
    )
    if parts and "affected" in parts[0]:
        res.affected = _cat([p["affected"] for p in parts], np.int64)
        res.gene_shift = _cat([p["gene_shift"] for p in parts], np.float16)
        counts = np.concatenate([np.diff(p["gs_offsets"]) for p in parts])
        res.gs_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return res


def result_part(
    group: np.ndarray,
    original: np.ndarray,
    batches: list[dict[str, np.ndarray]],
    *,
    d_model: int,
    keep_embeddings: bool,
    gene_shifts: bool,
) -> dict[str, np.ndarray]:
    """The arrays of one results part from its per-batch outputs."""
    part = {
        "cells": np.asarray(group, dtype=np.int64),
        "original": original,
        "row_cell": _cat([b["row_cell"] for b in batches], np.int64),
        "row_target": _cat([b["row_target"] for b in batches], np.int64),
        "shift": _cat([b["shift"] for b in batches], np.float32),
    }
    if keep_embeddings:
        embs = [b["perturbed"] for b in batches]
        part["perturbed"] = np.concatenate(embs) if embs else np.zeros((0, d_model), np.float32)
    if gene_shifts:
        part["affected"] = _cat([b["affected"] for b in batches], np.int64)
        part["gene_shift"] = _cat([b["gene_shift"] for b in batches], np.float16)
        counts = _cat([b["gs_count"] for b in batches], np.int64)
        part["gs_offsets"] = np.concatenate([[0], np.cumsum(counts)])
    return part


__all__ = [
    "ScanFolderMismatchError",
    "ScanResult",
    "load_scan",
    "merge_parts",
    "open_scan_folder",
    "result_part",
    "scan_settings",
    "write_part",
]
