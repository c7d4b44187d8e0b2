"""In-silico perturbation: delete, overexpress or knock down genes in a cell model, fast.

Two paths:

- **Exact batched scan** (:func:`scan_cells`): every perturbation of every cell is a row; rows of
  one or many cells are packed into padded batches under a token budget (``max_tokens`` = rows x
  width, which sets memory), sorted by length so padding is small. Padding keys are masked, so a
  row's result does not depend on its batch-mates (checked by a test: one batch = many batches).
  Deletion and knock-down skip genes the cell does not express. On a GPU the forward pass runs
  in bf16. Only the trunk runs: no masked-LM head (Geneformer's perturber computes its
  vocabulary-sized head on every token and discards it). Results are flushed to disk per group
  of cells, so a scan killed halfway resumes without recomputing finished cells.
- **First-order screen** (:func:`screen_deletions`), the CPU fast path: each gene gets a gate
  ``g`` that scales its attention weight (``log g`` added to its attention key) and its pooling
  weight; ``g = 1`` is the cell, ``g = 0`` removes the gene. One backward pass through a few
  copies of the cell (random directions orthogonal to the embedding) estimates the embedding
  shift of deleting every gene at once; :func:`fast_scan` then recomputes the top candidates
  exactly and :func:`topk_recovery` measures how often the exact top-k was found.
  A second, trivial screen (``screen="rank"``) takes each cell's highest-ranked genes. Both are
  candidate generators: the first-order term linearises a large change (a gate from 1 to 0, a
  one-rank move of every lower gene), so its candidates are recomputed exactly and its recovery
  of the exact top-k is measured (``benchmarks/perturb_throughput.py``), not assumed.

Shift measures: ``shift`` is the cosine distance between the perturbed and the original cell
embedding (Geneformer's measure); with ``gene_shifts=True`` every other gene's contextual
embedding is compared too (cosine distance at the same gene), which shows which genes respond.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lifelm._core.progress import make_progress
from lifelm._core.runtime import autocast_dtype, get_logger
from lifelm.data.cells.datasets import pad_cells
from lifelm.data.cells.genes import gene_table
from lifelm.data.cells.perturb_ops import (
    Kind,
    PerturbedCells,
    applicable,
    pack_rows,
    perturb_cell,
    perturb_combination,
)
from lifelm.data.cells.tokenizer import CLS, N_SPECIAL, PAD, TokenizedCells
from lifelm.models.cell_transformer import CellTransformer
from lifelm.tasks.cells.embed import as_cell_model
from lifelm.tasks.cells.model_io import CellModel

log = get_logger("lifelm.perturb")
Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True)
class ScanConfig:
    """How to perturb and how to batch."""

    kind: Kind = "delete"  # delete | overexpress | knockdown
    fraction: float = 1.0  # knockdown: share of the way to the bottom rank the gene moves
    max_tokens: int = 32_768  # rows x width per forward pass (sets memory; not the result)
    cells_per_part: int = 32  # cells per results file on disk (the resume granularity)
    gene_shifts: bool = False  # also the cosine shift of every other gene's embedding
    keep_embeddings: bool = False  # keep each perturbed cell embedding (needed for targets)
    precision: Precision = "auto"  # auto = bf16 on a GPU that has it, fp32 on CPU


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


# ----------------------------------------------------------------------------- targets


def single_targets(tokens: Sequence[int] | np.ndarray) -> list[tuple[int, ...]]:
    """Single-gene perturbations from gene tokens."""
    return [(int(t),) for t in tokens]


def _cell_rows(
    cell: np.ndarray,
    targets: list[tuple[int, ...]],
    single_ids: np.ndarray | None,
    single_tokens: np.ndarray | None,
    combo_ids: np.ndarray,
    cfg: ScanConfig,
    max_genes: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, PerturbedCells]:
    """Perturbation ids that apply to this cell (and are ``allowed``) and their perturbed rows."""
    parts: list[tuple[np.ndarray, PerturbedCells]] = []
    if allowed is not None:
        combo_ids = combo_ids[np.isin(combo_ids, allowed)]
    if single_tokens is not None and len(single_tokens):
        ok = applicable(cell, single_tokens, cfg.kind)
        if allowed is not None:
            ok &= np.isin(single_ids, allowed)
        ids = single_ids[ok]
        if len(ids):
            rows = perturb_cell(
                cell, single_tokens[ok], cfg.kind, fraction=cfg.fraction, max_genes=max_genes
            )
            parts.append((ids, rows))
    if len(combo_ids):
        ok_ids, rows = [], []
        for t in combo_ids:
            genes = np.array(targets[t], dtype=np.int64)
            if applicable(cell, genes, cfg.kind).all():
                ok_ids.append(t)
                rows.append(
                    perturb_combination(
                        cell, genes, cfg.kind, fraction=cfg.fraction, max_genes=max_genes
                    )
                )
        if ok_ids:
            parts.append((np.array(ok_ids, dtype=np.int64), pack_rows(rows)))
    if not parts:
        return np.zeros(0, dtype=np.int64), pack_rows([])
    if len(parts) == 1:
        return parts[0]
    merged = pack_rows(
        [(p.row(i), p.source[i, : p.lengths[i]]) for _, p in parts for i in range(len(p))]
    )
    return np.concatenate([ids for ids, _ in parts]), merged


def fit_context(cells: TokenizedCells, max_genes: int) -> TokenizedCells:
    """Cells cut to the model's context (genes beyond it are invisible to the model)."""
    lens = cells.lengths()
    if len(lens) == 0 or lens.max() <= max_genes:
        return cells
    kept = np.minimum(lens, max_genes)
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    take = np.repeat(cells.offsets[:-1] - offsets[:-1], kept) + np.arange(offsets[-1])
    return TokenizedCells(
        tokens=cells.tokens[take],
        offsets=offsets,
        obs_names=cells.obs_names,
        n_genes=cells.n_genes,
        report=dict(cells.report),
    )


# ----------------------------------------------------------------------------- forward


def _with_cls(tokens: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
    """(P, W) gene tokens -> (P, W + 1) ``[CLS]`` + genes, width rounded up to a multiple of 8."""
    width = -(-(tokens.shape[1] + 1) // 8) * 8
    out = np.full((tokens.shape[0], width), PAD, dtype=np.int64)
    out[:, 0] = CLS
    out[:, 1 : tokens.shape[1] + 1] = tokens
    return torch.from_numpy(out)


def _forward(
    trunk: CellTransformer, ids: torch.Tensor, amp: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (B, T, D) and pooled embeddings (B, D), as float32.

    The trunk runs in ``amp`` (bf16 on GPU); the mean pool runs in float32, because cosine
    shifts of single-gene deletions are small (often 1e-4 to 1e-2) and a bf16 sum over
    thousands of tokens would blur them.
    """
    with torch.autocast(ids.device.type, dtype=amp, enabled=amp is not None):
        hidden = trunk.encode(ids, ids.ne(PAD))  # (B, T, D)
    hidden = hidden.float()
    return hidden, trunk.pool(hidden, ids)  # (B, T, D), (B, D)


def _batches(
    pieces: list[tuple[int, np.ndarray, PerturbedCells]], max_tokens: int
) -> Iterator[list[tuple[int, np.ndarray, PerturbedCells]]]:
    """Cut per-cell row blocks into batches of at most ``max_tokens`` (rows x padded width)."""
    batch: list[tuple[int, np.ndarray, PerturbedCells]] = []
    rows = width = 0
    for cell, ids, pc in pieces:
        w = pc.tokens.shape[1] + 1
        start = 0
        while start < len(ids):
            new_width = max(width, w)
            room = max_tokens // new_width - rows
            if room <= 0 and batch:
                yield batch
                batch, rows, width = [], 0, 0
                continue
            take = min(max(room, 1), len(ids) - start)  # one row even if over the budget
            sl = slice(start, start + take)
            sub = PerturbedCells(pc.tokens[sl], pc.source[sl], pc.lengths[sl])
            batch.append((cell, ids[sl], sub))
            rows, width, start = rows + take, new_width, start + take
    if batch:
        yield batch


# ----------------------------------------------------------------------------- disk


def _manifest(model: CellModel, cells: TokenizedCells, targets, cfg: ScanConfig) -> dict:
    h = hashlib.sha256()
    h.update(np.asarray(cells.offsets).tobytes())
    h.update(np.asarray(cells.tokens).tobytes())
    th = hashlib.sha256(json.dumps(targets).encode()).hexdigest()
    settings = asdict(cfg)
    settings.pop("max_tokens")  # batching does not change the result
    settings.pop("precision")
    return {
        "format": "lifelm-perturb-scan-v1",
        "tokenizer_sha256": model.tokenizer.hash(),
        "model": str(model.folder) if model.folder else "",
        "cells_sha256": h.hexdigest(),
        "targets_sha256": th,
        "n_cells": len(cells),
        "settings": settings,
    }


def _open_folder(out_dir: Path, manifest: dict, targets) -> set[int]:
    """Create the scan folder or check it belongs to this scan; return finished cells."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != manifest:
            diff = [k for k in manifest if old.get(k) != manifest[k]]
            raise ValueError(
                f"{path}: this folder holds a different scan (differs in {diff}); "
                "use a new --out folder or delete this one to start over"
            )
    else:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, path)
        (out_dir / "targets.json").write_text(json.dumps(targets))
    done: set[int] = set()
    for part in sorted(out_dir.glob("part-*.npz")):
        with np.load(part) as z:
            done.update(z["cells"].tolist())
    return done


def _write_part(out_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    k = len(list(out_dir.glob("part-*.npz")))
    tmp = out_dir / f".part-{k:06d}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, out_dir / f"part-{k:06d}.npz")  # atomic: a killed write leaves no part


def load_scan(out_dir: str | Path) -> ScanResult:
    """Read a (finished or partial) scan folder written by :func:`scan_cells`."""
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    targets = [tuple(t) for t in json.loads((out_dir / "targets.json").read_text())]
    parts = [dict(np.load(p)) for p in sorted(out_dir.glob("part-*.npz"))]
    return _merge(parts, targets, manifest["n_cells"], manifest)


def _merge(parts: list[dict], targets, n_cells: int, info: dict) -> ScanResult:
    d = parts[0]["original"].shape[1] if parts else 0
    original = np.full((n_cells, d), np.nan, dtype=np.float32)
    for p in parts:
        original[p["cells"]] = p["original"]

    def cat(key: str, dtype) -> np.ndarray:
        return (
            np.concatenate([p[key] for p in parts]).astype(dtype) if parts else np.zeros(0, dtype)
        )

    has_emb = bool(parts) and "perturbed" in parts[0]
    has_gs = bool(parts) and "affected" in parts[0]
    res = ScanResult(
        targets=targets,
        cell=cat("row_cell", np.int64),
        target=cat("row_target", np.int64),
        shift=cat("shift", np.float32),
        original=original,
        perturbed=np.concatenate([p["perturbed"] for p in parts]) if has_emb else None,
        info=info,
    )
    if has_gs:
        res.affected = cat("affected", np.int64)
        res.gene_shift = cat("gene_shift", np.float16)
        counts = np.concatenate([np.diff(p["gs_offsets"]) for p in parts])
        res.gs_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return res


# ----------------------------------------------------------------------------- exact scan


@torch.inference_mode()
def scan_cells(
    model: CellModel,
    cells: TokenizedCells,
    targets: list[tuple[int, ...]] | None = None,
    *,
    config: ScanConfig | None = None,
    out_dir: str | Path | None = None,
    cell_targets: Sequence[np.ndarray] | None = None,
    progress: bool = True,
) -> ScanResult:
    """Exact in-silico perturbation of many cells, batched across perturbations and cells.

    Parameters
    ----------
    model
        A loaded cell model (trunk or classifier; only the trunk runs).
    cells
        Tokenized cells (``model.tokenizer.encode``).
    targets
        Perturbations as tuples of gene tokens (``(t,)`` single, ``(a, b)`` combination).
        ``None``: every single gene of the vocabulary; deletion and knock-down then scan each
        cell's expressed genes only (overexpressing every vocabulary gene is refused: pass a list).
    config
        Operation and batching (:class:`ScanConfig`).
    out_dir
        Folder for per-cell results (``manifest.json``, ``part-*.npz``). A scan re-run with the
        same folder skips the cells already there (resume after a kill).
    cell_targets
        Optional, per cell: the ids (indices into ``targets``) to scan in that cell only.
    progress
        Show a progress bar with perturbed cells/s.

    Returns
    -------
    ScanResult (all cells, including those read back from ``out_dir``).
    """
    cfg = config or ScanConfig()
    trunk = model.trunk
    trunk.eval()
    device = next(trunk.parameters()).device
    amp = autocast_dtype(device, cfg.precision)
    max_genes = trunk.config.max_length - 1
    cells = fit_context(cells, max_genes)
    if targets is None:
        if cfg.kind == "overexpress":
            raise ValueError(
                "overexpress needs an explicit gene list (every vocabulary gene in every cell "
                "is rarely what you want); pass targets or --genes"
            )
        targets = single_targets(range(N_SPECIAL, model.tokenizer.vocab_size))
    targets = [tuple(int(g) for g in t) for t in targets]
    is_single = np.array([len(t) == 1 for t in targets], dtype=bool)
    single_ids = np.flatnonzero(is_single)
    single_tokens = np.array([targets[i][0] for i in single_ids], dtype=np.int64)
    combo_ids = np.flatnonzero(~is_single)

    manifest = _manifest(model, cells, [list(t) for t in targets], cfg)
    if cell_targets is not None:
        h = hashlib.sha256()
        for ids in cell_targets:
            h.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
        manifest["cell_targets_sha256"] = h.hexdigest()
    out = Path(out_dir) if out_dir is not None else None
    done = _open_folder(out, manifest, [list(t) for t in targets]) if out is not None else set()
    parts: list[dict] = []
    lengths = cells.lengths()
    order = np.argsort(-lengths, kind="stable")  # longest first: similar widths share batches
    todo = [int(i) for i in order if lengths[i] > 0 and int(i) not in done]
    if done:
        log.info("resuming: %d cells already in %s, %d to go", len(done), out, len(todo))
    n_rows = 0
    t0 = time.perf_counter()
    with make_progress(disable=not progress) as bar:
        task = bar.add_task(f"in-silico {cfg.kind}", total=len(todo), info="")
        for start in range(0, len(todo), cfg.cells_per_part):
            group = todo[start : start + cfg.cells_per_part]
            part = _scan_group(
                trunk, cells, group, targets, single_ids, single_tokens, combo_ids, cfg, amp,
                max_genes, device, cell_targets,
            )  # fmt: skip
            n_rows += len(part["shift"])
            if out is not None:
                _write_part(out, part)
            else:
                parts.append(part)
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.update(
                task,
                completed=start + len(group),
                info=f"{n_rows / elapsed:.0f} perturbed cells/s",
            )
    elapsed = time.perf_counter() - t0
    info = {
        **manifest,
        "seconds": elapsed,
        "rows_computed": n_rows,
        "perturbed_cells_per_s": n_rows / max(elapsed, 1e-9),
    }
    if out is not None:
        res = load_scan(out)
        res.info = info
        return res
    return _merge(parts, targets, len(cells), info)


def _scan_group(
    trunk: CellTransformer,
    cells: TokenizedCells,
    group: list[int],
    targets: list[tuple[int, ...]],
    single_ids: np.ndarray,
    single_tokens: np.ndarray,
    combo_ids: np.ndarray,
    cfg: ScanConfig,
    amp: torch.dtype | None,
    max_genes: int,
    device: torch.device,
    cell_targets: Sequence[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Original and perturbed embeddings of one group of cells (one results part)."""
    # originals first: one batch per budget, kept per cell for the gene-level shifts
    orig_emb = np.zeros((len(group), trunk.config.d_model), dtype=np.float32)
    orig_hidden: list[torch.Tensor] = [torch.empty(0)] * len(group)
    seqs = [cells[i] for i in group]
    width = 1 + max(len(s) for s in seqs)
    per = max(1, cfg.max_tokens // width)
    for s in range(0, len(group), per):
        ids = pad_cells(seqs[s : s + per], trunk.config.max_length).to(device)
        hidden, emb = _forward(trunk, ids, amp)
        orig_emb[s : s + per] = emb.cpu().numpy()
        if cfg.gene_shifts:
            for k in range(ids.shape[0]):
                orig_hidden[s + k] = hidden[k, 1 : 1 + len(seqs[s + k])]  # (L, D) per gene
    pieces = []
    for local, i in enumerate(group):
        allowed = None if cell_targets is None else np.asarray(cell_targets[i], dtype=np.int64)
        ids, rows = _cell_rows(
            cells[i], targets, single_ids, single_tokens, combo_ids, cfg, max_genes, allowed
        )
        if len(ids):
            pieces.append((local, ids, rows))
    row_cell, row_target, shifts, embs = [], [], [], []
    affected, gshift, gcount = [], [], []
    for batch in _batches(pieces, cfg.max_tokens):
        width = max(pc.tokens.shape[1] for _, _, pc in batch)
        toks = np.concatenate(
            [np.pad(pc.tokens, ((0, 0), (0, width - pc.tokens.shape[1]))) for _, _, pc in batch]
        )
        lens = np.concatenate([pc.lengths for _, _, pc in batch])
        ids = _with_cls(toks, lens).to(device)
        hidden, emb = _forward(trunk, ids, amp)  # (B, T, D), (B, D)
        local = np.concatenate([np.full(len(t), c) for c, t, _ in batch])
        ref = torch.from_numpy(orig_emb[local]).to(device)
        shifts.append((1.0 - F.cosine_similarity(emb, ref, dim=-1)).cpu().numpy())
        row_cell.append(np.asarray(group)[local])
        row_target.append(np.concatenate([t for _, t, _ in batch]))
        if cfg.keep_embeddings:
            embs.append(emb.cpu().numpy())
        if cfg.gene_shifts:
            src = np.concatenate(
                [
                    np.pad(pc.source, ((0, 0), (0, width - pc.source.shape[1])), constant_values=-1)
                    for _, _, pc in batch
                ]
            )
            _gene_shifts(hidden, src, toks, local, orig_hidden, targets, row_target[-1], affected, gshift, gcount)  # fmt: skip
    part = {
        "cells": np.asarray(group, dtype=np.int64),
        "original": orig_emb,
        "row_cell": _cat(row_cell, np.int64),
        "row_target": _cat(row_target, np.int64),
        "shift": _cat(shifts, np.float32),
    }
    if cfg.keep_embeddings:
        part["perturbed"] = (
            np.concatenate(embs) if embs else np.zeros((0, trunk.config.d_model), np.float32)
        )
    if cfg.gene_shifts:
        part["affected"] = _cat(affected, np.int64)
        part["gene_shift"] = _cat(gshift, np.float16)
        part["gs_offsets"] = np.concatenate([[0], np.cumsum(_cat(gcount, np.int64))])
    return part


def _cat(xs: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(xs).astype(dtype) if xs else np.zeros(0, dtype)


def _gene_shifts(
    hidden: torch.Tensor,
    src: np.ndarray,
    toks: np.ndarray,
    local: np.ndarray,
    orig_hidden: list[torch.Tensor],
    targets: list[tuple[int, ...]],
    row_target: np.ndarray,
    affected: list,
    gshift: list,
    gcount: list,
) -> None:
    """Cosine distance of each kept gene's embedding, perturbed vs original, per row."""
    for r in range(hidden.shape[0]):
        s = src[r]
        keep = s >= 0
        hit = set(targets[row_target[r]])
        keep &= ~np.isin(toks[r], list(hit))  # the perturbed genes themselves are not responders
        pos = np.flatnonzero(keep)
        h_p = hidden[r, 1 + torch.from_numpy(pos).to(hidden.device)]  # (k, D)
        h_o = orig_hidden[local[r]][torch.from_numpy(s[pos]).to(hidden.device)]  # (k, D)
        d = (1.0 - F.cosine_similarity(h_p, h_o, dim=-1)).cpu().numpy()
        affected.append(toks[r, pos])
        gshift.append(d)
        gcount.append(np.array([len(pos)]))


# ----------------------------------------------------------------------------- first-order screen


def _gated_embed(
    trunk: CellTransformer,
    ids: torch.Tensor,
    gate: torch.Tensor,
    x0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pooled embedding with per-token gates (B, T): ``log g`` on attention keys, ``g`` in pooling.

    ``x0`` (B, T, D) is the input embedding (gene + position) before the embedding LayerNorm; pass
    it as a leaf to differentiate through it. With every gate at 1 this is exactly
    ``trunk.embed`` (checked by a test); the blocks are the trunk's own, SDPA adds the float
    mask to the attention scores.
    """
    if x0 is None:
        x0 = _input_embedding(trunk, ids)
    x = trunk.embed_norm(x0)
    bias = torch.log(gate).masked_fill(ids.eq(PAD), float("-inf"))[:, None, None, :]  # (B,1,1,T)
    for block in trunk.blocks:
        x = block(x, bias.to(x.dtype))
    hidden = trunk.final_norm(x)  # (B, T, D)
    w = gate * ids.ne(PAD)
    w = torch.cat([torch.zeros_like(w[:, :1]), w[:, 1:]], 1)  # [CLS] is not pooled
    return (hidden * w[..., None]).sum(1) / w.sum(1, keepdim=True)


def _input_embedding(trunk: CellTransformer, ids: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(ids.shape[1], device=ids.device)
    return trunk.gene_embedding(ids) + trunk.position_embedding(pos)[None]  # (B, T, D)


def screen_deletions(
    model: CellModel,
    cells: TokenizedCells,
    *,
    n_directions: int = 16,
    seed: int = 0,
    rank_shift: bool = True,
    progress: bool = True,
) -> list[np.ndarray]:
    """First-order estimate of every expressed gene's deletion shift, one backward pass per cell.

    Deleting gene ``j`` (at position ``j``) does two things, both taken to first order from the
    same backward pass: its gate goes from 1 to 0 (``-dE/dg_j``), and every gene below it moves
    up one rank, i.e. its input changes by ``pos[k-1] - pos[k]`` (the suffix sum over ``k > j`` of
    ``dE/dx_k . (pos[k-1] - pos[k])``). The score is ``|dE_perp|^2 / (2 |E|^2)``, the cosine
    distance to second order in the angle (``dE_perp`` is the change orthogonal to ``E``), sketched with ``n_directions`` random
    orthonormal directions (``>= d_model - 1`` gives the exact first-order norm).

    Returns
    -------
    Per cell, a float32 array of estimated shifts aligned with ``cells[i]`` (rank order).
    """
    trunk = model.trunk
    trunk.eval()
    device = next(trunk.parameters()).device
    d = trunk.config.d_model
    k = min(n_directions, d - 1)
    gen = torch.Generator().manual_seed(seed)
    pos_w = trunk.position_embedding.weight.detach()  # (max_length, D)
    cells = fit_context(cells, trunk.config.max_length - 1)
    out: list[np.ndarray] = []
    with make_progress(disable=not progress) as bar:
        task = bar.add_task("first-order screen", total=len(cells), info="")
        for i in range(len(cells)):
            cell = cells[i]
            n = len(cell)
            if n == 0:
                out.append(np.zeros(0, np.float32))
                bar.advance(task)
                continue
            ids = pad_cells([cell], trunk.config.max_length).to(device).expand(k, -1)
            with torch.no_grad():
                e = trunk.embed(ids[:1])[0].float()  # (D,)
                x0 = _input_embedding(trunk, ids)
            basis = torch.randn(d, k, generator=gen).to(device)
            basis -= torch.outer(e, e @ basis) / (e @ e)  # orthogonal to the embedding
            basis, _ = torch.linalg.qr(basis)  # (D, k) orthonormal
            gate = torch.ones(ids.shape, device=device, requires_grad=True)
            x0 = x0.clone().requires_grad_(True)
            emb = _gated_embed(trunk, ids, gate, x0)  # (k, D): copy m reads direction m
            (emb * basis.T).sum().backward()
            g_gate = gate.grad[:, 1 : 1 + n]  # (k, n) d(u_m . E)/d g_j
            # gene at rank r sits at position r + 1; moving up one rank: pos[r] - pos[r + 1]
            step = (pos_w[1:n] - pos_w[2 : n + 1]).to(x0.grad.dtype)  # (n - 1, D) for ranks 1..n-1
            c = (x0.grad[:, 2 : n + 1] * step[None]).sum(-1)  # (k, n - 1) per moved gene
            below = torch.zeros(k, n, device=device)
            if n > 1 and rank_shift:  # suffix sums: deleting rank j moves every rank > j
                below[:, :-1] = c.flip(1).cumsum(1).flip(1)
            delta = -g_gate + below  # (k, n) first-order change of u_m . E
            # |dE_perp|^2 / |E|^2 = sin^2 of the angle; cosine distance ~ angle^2 / 2
            est = delta.pow(2).sum(0).mul(d - 1).div(k) / e.pow(2).sum() / 2
            out.append(est.detach().cpu().numpy().astype(np.float32))
            bar.advance(task)
    return out


def fast_scan(
    model: CellModel,
    cells: TokenizedCells,
    *,
    top: int = 50,
    screen: Literal["gradient", "rank"] = "gradient",
    n_directions: int = 16,
    config: ScanConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[ScanResult, list[np.ndarray]]:
    """Screen every gene's deletion cheaply, then recompute each cell's top ``top`` exactly.

    ``screen="gradient"``: :func:`screen_deletions` (one backward pass per cell);
    ``screen="rank"``: the trivial prior that deleting a higher-ranked gene moves the cell more
    (no model call). Returns the exact scan of each cell's candidates and the screen scores
    (per cell, rank order); measure fidelity with :func:`topk_recovery` against a full scan.
    """
    cfg = config or ScanConfig()
    if cfg.kind != "delete":
        raise ValueError("the screen covers deletion; use scan_cells for other kinds")
    cells = fit_context(cells, model.trunk.config.max_length - 1)
    if screen == "gradient":
        est = screen_deletions(model, cells, n_directions=n_directions, progress=progress)
    else:
        est = [np.linspace(1.0, 0.0, len(cells[i])).astype(np.float32) for i in range(len(cells))]
    vocab = model.tokenizer.vocab_size
    # targets = every vocabulary gene (id = token - N_SPECIAL); each cell scans only its own top
    picks = [cells[i][np.argsort(-est[i], kind="stable")[:top]] for i in range(len(cells))]
    res = scan_cells(
        model, cells, single_targets(range(N_SPECIAL, vocab)), config=cfg, out_dir=out_dir,
        cell_targets=[p.astype(np.int64) - N_SPECIAL for p in picks], progress=progress,
    )  # fmt: skip
    return res, est


def topk_recovery(
    exact: ScanResult, estimates: list[np.ndarray], cells: TokenizedCells, k: int, top: int
) -> float:
    """Share of each cell's exact top-``k`` deletions found among the screen's top ``top``, averaged.

    ``exact`` must be a full scan (every expressed gene) of the same cells.
    """
    rates = []
    tok = exact.target_tokens()
    for i in range(len(cells)):
        rows = np.flatnonzero(exact.cell == i)
        if len(rows) == 0:
            continue
        true_top = set(tok[rows[np.argsort(-exact.shift[rows])[:k]]].tolist())
        screened = set(cells[i][: len(estimates[i])][np.argsort(-estimates[i])[:top]].tolist())
        rates.append(len(true_top & screened) / len(true_top))
    return float(np.mean(rates)) if rates else float("nan")


# ----------------------------------------------------------------------------- summaries and API


def gene_names(model: CellModel, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ensembl IDs and symbols of gene tokens."""
    ids = model.tokenizer.genes[np.asarray(tokens, dtype=np.int64) - N_SPECIAL]
    table = gene_table(model.tokenizer.species)  # type: ignore[arg-type]
    sym = np.array([table.id_to_symbol.get(g, g) for g in ids])
    return ids, sym


def summarize(res: ScanResult, model: CellModel) -> pd.DataFrame:
    """One row per perturbation: cells scanned, mean/median/sd cosine shift, ranked by mean shift."""
    df = pd.DataFrame({"target": res.target, "shift": res.shift})
    g = df.groupby("target")["shift"].agg(["size", "mean", "median", "std"]).reset_index()
    labels_id, labels_sym = [], []
    for t in g["target"]:
        ids, sym = gene_names(model, np.array(res.targets[t]))
        labels_id.append("+".join(ids))
        labels_sym.append("+".join(sym))
    g.insert(1, "gene_id", labels_id)
    g.insert(2, "gene", labels_sym)
    g = g.rename(
        columns={
            "size": "n_cells",
            "mean": "mean_shift",
            "median": "median_shift",
            "std": "sd_shift",
        }
    )
    return g.drop(columns="target").sort_values("mean_shift", ascending=False, ignore_index=True)


def responders(res: ScanResult, model: CellModel, target: int, *, top: int = 20) -> pd.DataFrame:
    """Genes whose own embedding moves most when perturbation ``target`` is applied (mean over cells)."""
    if res.gs_offsets is None:
        raise ValueError("the scan was run without gene_shifts=True")
    rows = np.flatnonzero(res.target == target)
    spans = [np.arange(res.gs_offsets[r], res.gs_offsets[r + 1]) for r in rows]
    if not spans:
        return pd.DataFrame(columns=["gene_id", "gene", "n_cells", "mean_shift"])
    take = np.concatenate(spans)
    df = pd.DataFrame({"tok": res.affected[take], "s": res.gene_shift[take].astype(np.float32)})
    g = df.groupby("tok")["s"].agg(["size", "mean"]).sort_values("mean", ascending=False).head(top)
    ids, sym = gene_names(model, g.index.to_numpy())
    return pd.DataFrame(
        {
            "gene_id": ids,
            "gene": sym,
            "n_cells": g["size"].to_numpy(),
            "mean_shift": g["mean"].to_numpy(),
        }
    )


def resolve_genes(model: CellModel, genes: Sequence[str]) -> list[tuple[int, ...]]:
    """Gene symbols or Ensembl IDs (``A+B`` for a combination) -> perturbation token tuples."""
    table = gene_table(model.tokenizer.species)  # type: ignore[arg-type]
    out = []
    for label in genes:
        combo = []
        for g in str(label).split("+"):
            gid = g if g in model.tokenizer.vocab else table.symbol_to_id.get(g, g)
            if gid not in model.tokenizer.vocab:
                raise KeyError(
                    f"gene {g!r} is not in the model vocabulary ({len(model.tokenizer.genes)} "
                    "genes); check the symbol or pass an Ensembl ID"
                )
            combo.append(N_SPECIAL + model.tokenizer.vocab[gid])
        out.append(tuple(combo))
    return out


def perturb(
    adata: ad.AnnData,
    model: CellModel | str | Path,
    *,
    genes: Sequence[str] | None = None,
    kind: Kind = "delete",
    fraction: float = 1.0,
    layer: str | None = None,
    method: Literal["exact", "screen"] = "exact",
    screen: Literal["gradient", "rank"] = "gradient",
    top: int = 50,
    max_tokens: int = 32_768,
    gene_shifts: bool = False,
    out_dir: str | Path | None = None,
    device: str = "auto",
    key_added: str = "lifelm_perturb",
    copy: bool = False,
    progress: bool = True,
) -> ad.AnnData | None:
    """In-silico perturbation of every cell of ``adata``.

    Parameters
    ----------
    adata
        Cells x genes with raw counts.
    model
        A cell model or its checkpoint folder.
    genes
        Genes to perturb (symbols or Ensembl IDs; ``"A+B"`` perturbs both at once). ``None``:
        every expressed gene of each cell (delete / knockdown only).
    kind
        ``delete``, ``overexpress`` or ``knockdown``.
    fraction
        Knock-down strength (share of the way to the bottom rank).
    layer
        Where the counts are, if not found automatically.
    method
        ``exact``: every perturbation recomputed; ``screen``: first-order screen of every gene,
        exact recomputation of each cell's ``top`` candidates (deletion only; the CPU fast path).
    screen
        The screen of ``method="screen"``: ``gradient`` (first order, one backward pass per cell)
        or ``rank`` (higher-ranked genes first; no model call).
    top
        Candidates per cell recomputed exactly with ``method="screen"``.
    max_tokens
        Tokens per forward batch (memory; does not change the result).
    gene_shifts
        Also measure how every other gene's embedding moves (``.uns[key_added]["responders"]``).
    out_dir
        Folder for per-cell results; a re-run resumes after the finished cells.
    device
        ``auto``, ``cpu`` or ``cuda``.
    key_added
        Keys written.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    The AnnData when ``copy=True``, else ``None``. Writes ``.obs[key_added + "_max_shift"]``
    (each cell's largest shift), ``.uns[key_added]["genes"]`` (DataFrame: per perturbation the
    cells scanned and the mean/median/sd cosine shift, ranked) and ``.uns[key_added]["info"]``.
    """
    cm = as_cell_model(model, device)
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    cells = cm.tokenizer.encode(adata, layer=layer)
    targets = resolve_genes(cm, genes) if genes is not None else None
    cfg = ScanConfig(kind=kind, fraction=fraction, max_tokens=max_tokens, gene_shifts=gene_shifts)
    if method == "screen":
        if targets is not None:
            raise ValueError("method='screen' scans every expressed gene; drop genes= or use exact")
        res, _ = fast_scan(
            cm, cells, top=top, screen=screen, config=cfg, out_dir=out_dir, progress=progress
        )
    else:
        res = scan_cells(cm, cells, targets, config=cfg, out_dir=out_dir, progress=progress)
    max_shift = np.full(adata.n_obs, np.nan, dtype=np.float32)
    if len(res.shift):
        np.fmax.at(max_shift, res.cell, res.shift)
    adata.obs[f"{key_added}_max_shift"] = max_shift
    table = summarize(res, cm)
    uns = {"genes": table, "info": {k: v for k, v in res.info.items() if k != "settings"}}
    uns["info"]["settings"] = json.dumps(res.info.get("settings", {}))
    if gene_shifts and len(table):
        top_target = int(pd.Series(res.target).value_counts().index[0])
        uns["responders"] = responders(res, cm, top_target)
    adata.uns[key_added] = uns
    return adata if copy else None
