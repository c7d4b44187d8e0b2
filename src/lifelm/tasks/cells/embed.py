"""Cell embeddings from a cell model, written to ``adata.obsm``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import torch

from lifelm._core.errors import NumericalError
from lifelm._core.progress import make_progress
from lifelm._core.runtime import autocast_dtype, get_logger, resolve_device
from lifelm.data.cells.datasets import length_batches, pad_cells
from lifelm.data.cells.tokenizer import PAD, TokenizedCells
from lifelm.tasks.cells.cpu_techniques import CpuTechniques, embed_fn, embed_parallel, resolve
from lifelm.tasks.cells.model_io import CellModel, load_cell_model

if TYPE_CHECKING:
    from lifelm.models.bert_encoder import BertEncoder
    from lifelm.models.cell_transformer import CellTransformer

log = get_logger("lifelm.embed")
DEFAULT_EMBEDDING = "mean over gene tokens of the last layer (after the final LayerNorm)"


def as_cell_model(model: CellModel | str | Path, device: str = "auto") -> CellModel:
    """Accept a loaded model or a checkpoint folder."""
    if isinstance(model, CellModel):
        return model.to(device)
    return load_cell_model(model, device=str(resolve_device(device)))


@torch.inference_mode()
def embed_tokens(
    model: CellModel,
    cells: TokenizedCells,
    *,
    batch_size: int = 64,
    progress: bool = True,
    techniques: CpuTechniques | None = None,
) -> np.ndarray:
    """Pooled embeddings (n_cells, d_model) as float32; NaN rows for cells with no vocabulary gene.

    Cells are batched by length (longest first) so little compute goes to padding; padding keys
    are masked, so a cell's embedding does not depend on its batch-mates or the batch size.
    ``techniques`` switches on CPU techniques (int8, compile, bf16, worker processes; see
    :mod:`lifelm.tasks.cells.cpu_techniques`); pass what :func:`resolve` returned.
    """
    trunk = model.trunk
    trunk.eval()
    device = next(trunk.parameters()).device
    amp = autocast_dtype(device)
    out = np.full((len(cells), trunk.config.d_model), np.nan, dtype=np.float32)
    lengths = cells.lengths()
    todo = np.flatnonzero(lengths > 0)
    if techniques is not None:
        return _embed_with(trunk, cells, todo, out, batch_size, techniques)
    t0 = time.perf_counter()
    with make_progress(disable=not progress) as bar:
        task = bar.add_task("embedding", total=len(todo), info="")
        for batch in length_batches(lengths[todo], batch_size):
            idx = todo[batch]
            ids = pad_cells([cells[i] for i in idx], trunk.config.max_length).to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                emb = trunk.embed(ids, ids.ne(PAD))
            out[idx] = emb.float().cpu().numpy()
            done = bar.tasks[task].completed + len(idx)
            rate = done / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, completed=done, info=f"{rate:.0f} cells/s")
    return out


def check_embeddings(emb: np.ndarray, lengths: np.ndarray, *, where: str) -> None:
    """Refuse embeddings that cannot be right, before anything is written.

    Cells with no vocabulary gene (``lengths == 0``) are NaN by design and counted. Refused
    (:class:`~lifelm._core.errors.NumericalError`): no cell with a vocabulary gene at all, a NaN
    or infinite value in a cell that had genes, or an all-zero vector for such a cell (a broken
    model gives those; a working one never does).
    """
    has = lengths > 0
    if not has.any():
        raise NumericalError(
            f"none of the {len(lengths)} cells has a gene in the vocabulary of {where}, so every "
            "embedding would be NaN. Check that the data holds raw counts of the model's species "
            "and gene identifiers (Ensembl IDs or symbols), or use a model trained on these genes."
        )
    ok = emb[has]
    bad = ~np.isfinite(ok).all(axis=1)
    if bad.any():
        raise NumericalError(
            f"{where}: gave NaN or infinite embeddings for {int(bad.sum())} of {int(has.sum())} "
            "cells that have vocabulary genes; nothing was written. The model weights are "
            "broken (diverged training?): use another checkpoint, or run on --device cpu to "
            "rule out a reduced-precision overflow."
        )
    zero = ~ok.any(axis=1)
    if zero.any():
        raise NumericalError(
            f"{where}: gave all-zero embeddings for {int(zero.sum())} of {int(has.sum())} cells; "
            "nothing was written. The model weights are broken (zeroed or untrained "
            "normalisation): use another checkpoint."
        )


def _embed_with(
    trunk: CellTransformer | BertEncoder,
    cells: TokenizedCells,
    todo: np.ndarray,
    out: np.ndarray,
    batch_size: int,
    tech: CpuTechniques,
) -> np.ndarray:
    """:func:`embed_tokens` with CPU techniques: the same length batches, another forward."""
    device = next(trunk.parameters()).device
    batches = [todo[b] for b in length_batches(cells.lengths()[todo], batch_size)]
    if tech.jobs > 1:
        seqs = [cells[i] for i in range(len(cells))]
        for idx, emb in zip(
            batches,
            embed_parallel(trunk, seqs, batches, tech, trunk.config.max_length),
            strict=True,
        ):
            out[idx] = emb
        return out
    fn = embed_fn(trunk, tech, device)
    with torch.inference_mode():
        for idx in batches:
            ids = pad_cells([cells[i] for i in idx], trunk.config.max_length).to(device)
            out[idx] = fn(ids).float().cpu().numpy()
    return out


def embed(
    adata: ad.AnnData,
    model: CellModel | str | Path,
    *,
    layer: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    key_added: str = "X_lifelm",
    copy: bool = False,
    techniques: CpuTechniques | None = None,
) -> ad.AnnData | None:
    """Embed every cell with a pretrained cell model.

    Parameters
    ----------
    adata
        Cells × genes with raw counts (in X, ``layers["counts"]`` or ``.raw``; backed is fine).
    model
        A :class:`~lifelm.tasks.cells.model_io.CellModel` or its checkpoint folder.
    layer
        Where the counts are, if not found automatically.
    batch_size
        Cells per forward pass (does not change the result).
    device
        ``auto`` (CUDA if present), ``cpu`` or ``cuda``.
    key_added
        Name of the ``.obsm`` entry.
    copy
        Return a modified copy instead of writing into ``adata``.
    techniques
        CPU techniques (:class:`~lifelm.tasks.cells.cpu_techniques.CpuTechniques`: int8,
        ``torch.compile``, bf16, worker processes); ``None`` = the plain path. What ran is recorded
        in ``.uns["lifelm"]["embed"]["techniques"]``.

    Returns
    -------
    The AnnData when ``copy=True``, else ``None``. Writes:

    - ``.obsm[key_added]``: (n_obs, d_model) float32 embeddings (NaN for cells with no
      vocabulary gene, which are counted in the log and in ``uns``: ``empty_cells``);

    Raises
    ------
    NumericalError
        When no cell has a vocabulary gene, or the model gives NaN/infinite/all-zero vectors
        for cells that have genes (see :func:`check_embeddings`); ``adata`` is left unchanged.
    - ``.uns["lifelm"]["embed"]``: model folder, tokenizer hash and the tokenization report.
    """
    cm = as_cell_model(model, device)
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    cells = cm.tokenizer.encode(adata, layer=layer)
    if cells.report["empty_cells"]:
        log.warning(
            "%d cells have no gene in the model vocabulary; their embeddings are NaN",
            cells.report["empty_cells"],
        )
    notes: list[str] = []
    if techniques == CpuTechniques():
        techniques = None  # all off: the plain path (progress bar included)
    if techniques is not None:
        techniques, notes = resolve(techniques, next(cm.trunk.parameters()).device)
    emb = embed_tokens(cm, cells, batch_size=batch_size, techniques=techniques)
    check_embeddings(emb, cells.lengths(), where=str(cm.folder or "the model"))
    adata.obsm[key_added] = emb
    adata.uns.setdefault("lifelm", {})["embed"] = {
        "model": str(cm.folder) if cm.folder else "",
        "tokenizer_sha256": cm.tokenizer.hash(),
        "key_added": key_added,
        "embedding": cm.config.get("data", {}).get("embedding", DEFAULT_EMBEDDING),
        "techniques": {**(techniques or CpuTechniques()).to_dict(), "notes": notes},
        **{k: v for k, v in cells.report.items() if k != "genes"},
        "genes": cells.report["genes"],
    }
    return adata if copy else None
