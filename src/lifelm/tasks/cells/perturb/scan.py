"""The exact batched scan: every perturbation of every cell is a row of a padded batch.

Rows of one or many cells are packed into padded batches under a token budget (``max_tokens`` =
rows x width, which sets memory), longest cells first so padding is small. Padding keys are
masked, so a row's result does not depend on its batch-mates (a test checks one batch = many
batches). Deletion and knock-down skip genes the cell does not express. On a GPU the trunk runs
in bf16; no masked-LM head runs. Results are written per group of cells
(:mod:`~lifelm.tasks.cells.perturb.store`), so a killed scan resumes after its finished cells.

The pieces: :class:`Targets` (the perturbations, singles and combinations apart),
:class:`ScanPlan` (everything a group of cells needs), :func:`_scan_group` (one group: originals,
perturbed rows, batches) and :func:`scan_cells` (groups, progress, the folder).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from lifelm._core.progress import make_progress
from lifelm._core.runfolder import lock_folder
from lifelm._core.runtime import autocast_dtype, get_logger
from lifelm.data.cells.datasets import pad_cells
from lifelm.data.cells.perturb_ops import (
    Kind,
    PerturbedCells,
    applicable,
    pack_rows,
    perturb_cell,
    perturb_combination,
)
from lifelm.data.cells.tokenizer import CLS, N_SPECIAL, PAD, TokenizedCells
from lifelm.models.bert_encoder import BertEncoder
from lifelm.models.cell_transformer import CellTransformer
from lifelm.tasks.cells.cpu_techniques import (
    CpuTechniques,
    prepare,
    resolve,
    run_pinned,
    technique_fn,
)
from lifelm.tasks.cells.model_io import CellModel
from lifelm.tasks.cells.perturb.store import (
    ScanResult,
    load_scan,
    merge_parts,
    open_scan_folder,
    result_part,
    scan_settings,
    write_part,
)

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
    # CPU techniques (int8, bf16, compile, pinned workers; lifelm.tasks.cells.cpu_techniques),
    # the same switches as embedding; a precision set here overrides ``precision`` above
    techniques: CpuTechniques = field(default_factory=CpuTechniques)


def single_targets(tokens: Sequence[int] | np.ndarray) -> list[tuple[int, ...]]:
    """Single-gene perturbations from gene tokens."""
    return [(int(t),) for t in tokens]


@dataclass(frozen=True, eq=False)
class Targets:
    """The perturbations of a scan; singles are built vectorised, combinations one by one."""

    targets: list[tuple[int, ...]]  # perturbation id -> gene tokens
    single_ids: np.ndarray  # ids of the single-gene perturbations
    single_tokens: np.ndarray  # their gene tokens
    combo_ids: np.ndarray  # ids of the combinations

    @classmethod
    def of(cls, targets: Sequence[Sequence[int]]) -> Targets:
        tt = [tuple(int(g) for g in t) for t in targets]
        is_single = np.array([len(t) == 1 for t in tt], dtype=bool)
        single_ids = np.flatnonzero(is_single)
        return cls(
            targets=tt,
            single_ids=single_ids,
            single_tokens=np.array([tt[i][0] for i in single_ids], dtype=np.int64),
            combo_ids=np.flatnonzero(~is_single),
        )


@dataclass(frozen=True, eq=False)
class ScanPlan:
    """Everything the scan of one group of cells needs."""

    trunk: CellTransformer | BertEncoder
    cells: TokenizedCells  # already cut to the context
    targets: Targets
    config: ScanConfig
    amp: torch.dtype | None  # autocast dtype of the trunk, None = fp32
    device: torch.device
    cell_targets: Sequence[np.ndarray] | None = None  # per cell: the only ids to scan there
    techniques: CpuTechniques = field(default_factory=CpuTechniques)  # as resolved
    technique_notes: tuple[str, ...] = ()  # why a requested technique was dropped
    # hidden states (B, T, D) of ids: the trunk's encode under the techniques (set by _prepare)
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def max_genes(self) -> int:
        return self.trunk.config.max_length - 1


class Piece(NamedTuple):
    """Perturbed rows of one cell of the group (or a slice of them, inside a batch)."""

    local: int  # the cell's position in the group
    ids: np.ndarray  # perturbation ids of the rows
    rows: PerturbedCells


# ----------------------------------------------------------------------------- rows


def cell_rows(plan: ScanPlan, cell: np.ndarray, allowed: np.ndarray | None) -> Piece | None:
    """Perturbation ids that apply to this cell (and are ``allowed``) and their perturbed rows."""
    tg, cfg = plan.targets, plan.config
    parts: list[tuple[np.ndarray, PerturbedCells]] = []
    if len(tg.single_tokens):
        ok = applicable(cell, tg.single_tokens, cfg.kind)
        if allowed is not None:
            ok &= np.isin(tg.single_ids, allowed)
        if ok.any():
            rows = perturb_cell(
                cell,
                tg.single_tokens[ok],
                cfg.kind,
                fraction=cfg.fraction,
                max_genes=plan.max_genes,
            )
            parts.append((tg.single_ids[ok], rows))
    combo_ids = tg.combo_ids if allowed is None else tg.combo_ids[np.isin(tg.combo_ids, allowed)]
    ok_ids, combos = [], []
    for t in combo_ids:
        genes = np.array(tg.targets[t], dtype=np.int64)
        if applicable(cell, genes, cfg.kind).all():
            ok_ids.append(t)
            combos.append(
                perturb_combination(
                    cell, genes, cfg.kind, fraction=cfg.fraction, max_genes=plan.max_genes
                )
            )
    if ok_ids:
        parts.append((np.array(ok_ids, dtype=np.int64), pack_rows(combos)))
    if not parts:
        return None
    if len(parts) == 1:
        return Piece(-1, *parts[0])
    merged = pack_rows(
        [(p.row(i), p.source[i, : p.lengths[i]]) for _, p in parts for i in range(len(p))]
    )
    return Piece(-1, np.concatenate([ids for ids, _ in parts]), merged)


def batches(pieces: list[Piece], max_tokens: int) -> Iterator[list[Piece]]:
    """Cut per-cell row blocks into batches of at most ``max_tokens`` (rows x padded width)."""
    batch: list[Piece] = []
    rows = width = 0
    for piece in pieces:
        pc = piece.rows
        w = pc.tokens.shape[1] + 1
        start = 0
        while start < len(piece.ids):
            new_width = max(width, w)
            room = max_tokens // new_width - rows
            if room <= 0 and batch:
                yield batch
                batch, rows, width = [], 0, 0
                continue
            take = min(max(room, 1), len(piece.ids) - start)  # one row even if over the budget
            sl = slice(start, start + take)
            sub = PerturbedCells(pc.tokens[sl], pc.source[sl], pc.lengths[sl])
            batch.append(Piece(piece.local, piece.ids[sl], sub))
            rows, width, start = rows + take, new_width, start + take
    if batch:
        yield batch


# ----------------------------------------------------------------------------- forward


def _with_cls(tokens: np.ndarray) -> torch.Tensor:
    """(P, W) gene tokens -> (P, W + 1) ``[CLS]`` + genes, width rounded up to a multiple of 8."""
    width = -(-(tokens.shape[1] + 1) // 8) * 8
    out = np.full((tokens.shape[0], width), PAD, dtype=np.int64)
    out[:, 0] = CLS
    out[:, 1 : tokens.shape[1] + 1] = tokens
    return torch.from_numpy(out)


def _prepare(plan: ScanPlan) -> ScanPlan:
    """The plan with its techniques applied: the (int8) network and its (bf16, compiled) encode.

    Runs in the process that scans (in each worker with ``jobs > 1``), so no quantised network
    is pickled.
    """
    if plan.encode is not None:
        return plan
    trunk = prepare(plan.trunk, plan.techniques)
    tech = plan.techniques
    if tech.precision == "auto":  # the scan's own precision (bf16 on a GPU that has it)
        tech = replace(tech, precision="bf16" if plan.amp == torch.bfloat16 else "fp32")
    encode = technique_fn(lambda ids: trunk.encode(ids, ids.ne(PAD)), tech, plan.device)
    return replace(plan, trunk=trunk, encode=encode)


def _forward(plan: ScanPlan, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (B, T, D) and pooled embeddings (B, D), as float32.

    The trunk runs under the plan's techniques (bf16 on GPU); the mean pool runs in float32,
    because cosine shifts of single-gene deletions are small (often 1e-4 to 1e-2) and a bf16
    sum over thousands of tokens would blur them.
    """
    if plan.encode is None:
        raise RuntimeError("scan plan used before _prepare")
    hidden = plan.encode(ids).float()  # (B, T, D)
    return hidden, plan.trunk.pool(hidden, ids)  # (B, T, D), (B, D)


def _originals(plan: ScanPlan, group: list[int]) -> tuple[np.ndarray, list[torch.Tensor]]:
    """Original embeddings (G, D) of the group and, for gene shifts, each gene's hidden state."""
    trunk = plan.trunk
    emb = np.zeros((len(group), trunk.config.d_model), dtype=np.float32)
    per_gene: list[torch.Tensor] = [torch.empty(0)] * len(group)
    seqs = [plan.cells[i] for i in group]
    per = max(1, plan.config.max_tokens // (1 + max(len(s) for s in seqs)))
    for s in range(0, len(group), per):
        ids = pad_cells(seqs[s : s + per], trunk.config.max_length).to(plan.device)
        hidden, e = _forward(plan, ids)
        emb[s : s + per] = e.cpu().numpy()
        if plan.config.gene_shifts:
            for k in range(ids.shape[0]):
                per_gene[s + k] = hidden[k, 1 : 1 + len(seqs[s + k])]  # (L, D) per gene
    return emb, per_gene


def _gene_shifts(
    hidden: torch.Tensor,
    src: np.ndarray,
    toks: np.ndarray,
    local: np.ndarray,
    orig_hidden: list[torch.Tensor],
    hits: list[tuple[int, ...]],
) -> dict[str, np.ndarray]:
    """Cosine distance of each kept gene's embedding, perturbed vs original, per row.

    ``hits[r]`` are row ``r``'s perturbed genes, which are not counted as responders.
    """
    affected, shifts, counts = [], [], []
    for r in range(hidden.shape[0]):
        s = src[r]
        keep = (s >= 0) & ~np.isin(toks[r], list(hits[r]))
        pos = np.flatnonzero(keep)
        h_p = hidden[r, 1 + torch.from_numpy(pos).to(hidden.device)]  # (k, D)
        h_o = orig_hidden[local[r]][torch.from_numpy(s[pos]).to(hidden.device)]  # (k, D)
        shifts.append((1.0 - F.cosine_similarity(h_p, h_o, dim=-1)).cpu().numpy())
        affected.append(toks[r, pos])
        counts.append(len(pos))
    return {
        "affected": np.concatenate(affected) if affected else np.zeros(0, np.int64),
        "gene_shift": np.concatenate(shifts) if shifts else np.zeros(0, np.float32),
        "gs_count": np.array(counts, dtype=np.int64),
    }


def _scan_batch(
    plan: ScanPlan,
    batch: list[Piece],
    group: np.ndarray,
    orig_emb: np.ndarray,
    orig_hidden: list[torch.Tensor],
) -> dict[str, np.ndarray]:
    """Perturbed embeddings of one padded batch and their shifts from the originals."""
    width = max(p.rows.tokens.shape[1] for p in batch)
    toks = np.concatenate([np.pad(p.rows.tokens, ((0, 0), (0, width - p.rows.tokens.shape[1]))) for p in batch])  # fmt: skip
    hidden, emb = _forward(plan, _with_cls(toks).to(plan.device))  # (B, T, D), (B, D)
    local = np.concatenate([np.full(len(p.ids), p.local) for p in batch])
    ref = torch.from_numpy(orig_emb[local]).to(plan.device)
    row_target = np.concatenate([p.ids for p in batch])
    out = {
        "row_cell": group[local],
        "row_target": row_target,
        "shift": (1.0 - F.cosine_similarity(emb, ref, dim=-1)).cpu().numpy(),
    }
    if plan.config.keep_embeddings:
        out["perturbed"] = emb.cpu().numpy()
    if plan.config.gene_shifts:
        src = np.concatenate(
            [np.pad(p.rows.source, ((0, 0), (0, width - p.rows.source.shape[1])), constant_values=-1) for p in batch]
        )  # fmt: skip
        hits = [plan.targets.targets[t] for t in row_target]
        out.update(_gene_shifts(hidden, src, toks, local, orig_hidden, hits))
    return out


def _scan_group(plan: ScanPlan, group: list[int]) -> dict[str, np.ndarray]:
    """Original and perturbed embeddings of one group of cells (one results part)."""
    orig_emb, orig_hidden = _originals(plan, group)
    pieces = []
    for local, i in enumerate(group):
        allowed = None if plan.cell_targets is None else np.asarray(plan.cell_targets[i], np.int64)
        piece = cell_rows(plan, plan.cells[i], allowed)
        if piece is not None:
            pieces.append(piece._replace(local=local))
    group_arr = np.asarray(group, dtype=np.int64)
    outs = [
        _scan_batch(plan, b, group_arr, orig_emb, orig_hidden)
        for b in batches(pieces, plan.config.max_tokens)
    ]
    return result_part(
        group_arr,
        orig_emb,
        outs,
        d_model=plan.trunk.config.d_model,
        keep_embeddings=plan.config.keep_embeddings,
        gene_shifts=plan.config.gene_shifts,
    )


# ----------------------------------------------------------------------------- the scan


def _plan(
    model: CellModel,
    cells: TokenizedCells,
    targets: list[tuple[int, ...]] | None,
    cfg: ScanConfig,
    cell_targets: Sequence[np.ndarray] | None,
) -> ScanPlan:
    trunk = model.trunk
    trunk.eval()
    device = next(trunk.parameters()).device
    if targets is None:
        if cfg.kind == "overexpress":
            raise ValueError(
                "overexpress needs an explicit gene list (every vocabulary gene in every cell "
                "is rarely what you want); pass targets or --genes"
            )
        targets = single_targets(range(N_SPECIAL, model.tokenizer.vocab_size))
    tech, notes = resolve(cfg.techniques, device)  # a dropped technique is noted (and logged)
    precision = cfg.precision if tech.precision == "auto" else tech.precision
    return ScanPlan(
        trunk=trunk,
        cells=cells.truncate(trunk.config.max_length - 1),
        targets=Targets.of(targets),
        config=cfg,
        amp=autocast_dtype(device, precision),
        device=device,
        cell_targets=cell_targets,
        techniques=tech,
        technique_notes=tuple(notes),
    )


def _scan_setup(plan: ScanPlan) -> Callable[[list[int]], dict[str, np.ndarray]]:
    """Worker setup of a parallel scan: apply the techniques once, then scan groups."""
    ready = _prepare(plan)
    return lambda group: _scan_group(ready, group)


def _groups(plan: ScanPlan, todo: list[int]) -> list[list[int]]:
    """Groups of ``cells_per_part`` cells; smaller with workers, so each has some (same results)."""
    step = plan.config.cells_per_part
    if plan.techniques.jobs > 1:
        step = max(1, min(step, -(-len(todo) // plan.techniques.jobs)))
    return [todo[s : s + step] for s in range(0, len(todo), step)]


def _run_groups(
    plan: ScanPlan, todo: list[int], out: Path | None, progress: bool
) -> tuple[list[dict[str, np.ndarray]], int, float]:
    """Scan ``todo`` group by group; parts go to ``out`` when given, else they are returned.

    With ``techniques.jobs > 1`` the groups go to pinned worker processes (longest cells
    first, as ``todo`` is ordered) and each finished part is written as it arrives.
    """
    parts: list[tuple[int, dict[str, np.ndarray]]] = []
    n_rows, n_cells, t0 = 0, 0, time.perf_counter()
    groups = _groups(plan, todo)
    if plan.techniques.jobs > 1:
        worker_plan = replace(plan, techniques=replace(plan.techniques, jobs=1), encode=None)
        done: Iterator[tuple[int, dict[str, np.ndarray]]] = run_pinned(
            _scan_setup, worker_plan, groups, plan.techniques.jobs
        )
    else:
        ready = _prepare(plan)
        done = ((k, _scan_group(ready, g)) for k, g in enumerate(groups))
    with make_progress(disable=not progress) as bar:
        task = bar.add_task(f"in-silico {plan.config.kind}", total=len(todo), info="")
        for k, part in done:
            n_rows += len(part["shift"])
            n_cells += len(groups[k])
            if out is not None:
                write_part(out, part)
            else:
                parts.append((k, part))
            rate = n_rows / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, completed=n_cells, info=f"{rate:.0f} perturbed cells/s")
    parts.sort(key=lambda kp: kp[0])  # workers finish out of order; keep the group order
    return [p for _, p in parts], n_rows, time.perf_counter() - t0


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
        same folder skips the cells already there (resume after a kill); the folder is locked
        while the scan runs, and a re-run with other cells, targets, weights or settings is
        refused, naming the difference.
    cell_targets
        Optional, per cell: the ids (indices into ``targets``) to scan in that cell only.
    progress
        Show a progress bar with perturbed cells/s.

    Returns
    -------
    ScanResult (all cells, including those read back from ``out_dir``).
    """
    plan = _plan(model, cells, targets, config or ScanConfig(), cell_targets)
    resolved = replace(plan.config, techniques=plan.techniques)  # as run (bf16 may be skipped)
    settings = scan_settings(model, plan.cells, plan.targets.targets, resolved, cell_targets)
    lengths = plan.cells.lengths()
    order = np.argsort(-lengths, kind="stable")  # longest first: similar widths share batches
    if out_dir is None:
        todo = [int(i) for i in order if lengths[i] > 0]
        parts, n_rows, elapsed = _run_groups(plan, todo, None, progress)
        res = merge_parts(parts, plan.targets.targets, len(plan.cells), {})
    else:
        out = Path(out_dir)
        with lock_folder(out):
            done = open_scan_folder(out, model, settings, plan.targets.targets)
            todo = [int(i) for i in order if lengths[i] > 0 and int(i) not in done]
            if done:
                log.info("resuming: %d cells already in %s, %d to go", len(done), out, len(todo))
            _, n_rows, elapsed = _run_groups(plan, todo, out, progress)
            res = load_scan(out)
    res.info = {
        **settings,
        "techniques": {**plan.techniques.to_dict(), "notes": list(plan.technique_notes)},
        "seconds": elapsed,
        "rows_computed": n_rows,
        "perturbed_cells_per_s": n_rows / max(elapsed, 1e-9),
    }
    return res
