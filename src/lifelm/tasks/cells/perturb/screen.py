"""The first-order deletion screen (the CPU fast path) and how well it recovers the exact top-k.

Each gene gets a gate ``g`` that scales its attention weight (``log g`` added to its attention
key) and its pooling weight (``CellTransformer.encode(..., gate=)``); ``g = 1`` is the cell,
``g = 0`` removes the gene. One backward pass through a few copies of the cell (random
directions orthogonal to the embedding) estimates the embedding shift of deleting every gene at
once; :func:`fast_scan` then recomputes the top candidates exactly and :func:`topk_recovery`
measures how often the exact top-k was found. A second, trivial screen (``screen="rank"``)
takes each cell's highest-ranked genes. Both are candidate generators: the first-order term
linearises a large change (a gate from 1 to 0, a one-rank move of every lower gene), so its
candidates are recomputed exactly and its recovery of the exact top-k is measured
(``benchmarks/perturb_throughput.py``), not assumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lifelm._core.progress import make_progress
from lifelm.data.cells.datasets import pad_cells
from lifelm.data.cells.tokenizer import N_SPECIAL, TokenizedCells
from lifelm.models.bert_encoder import BertEncoder
from lifelm.models.cell_transformer import CellTransformer
from lifelm.tasks.cells.model_io import CellModel
from lifelm.tasks.cells.perturb.scan import ScanConfig, scan_cells, single_targets
from lifelm.tasks.cells.perturb.store import ScanResult


def _cell_screen(
    trunk: CellTransformer | BertEncoder,
    cell: np.ndarray,
    k: int,
    gen: torch.Generator,
    rank_shift: bool,
) -> np.ndarray:
    """First-order deletion shift of every gene of one cell (rank order), from one backward pass."""
    device = next(trunk.parameters()).device
    d, n = trunk.config.d_model, len(cell)
    ids = pad_cells([cell], trunk.config.max_length).to(device).expand(k, -1)
    with torch.no_grad():
        e = trunk.embed(ids[:1])[0].float()  # (D,)
        x0 = trunk.input_embedding(ids)
    basis = torch.randn(d, k, generator=gen).to(device)
    basis -= torch.outer(e, e @ basis) / (e @ e)  # orthogonal to the embedding
    basis, _ = torch.linalg.qr(basis)  # (D, k) orthonormal
    gate = torch.ones(ids.shape, device=device, requires_grad=True)
    x0 = x0.clone().requires_grad_(True)
    emb = trunk.embed(ids, inputs_embeds=x0, gate=gate)  # (k, D): copy m reads direction m
    (emb * basis.T).sum().backward()
    if gate.grad is None or x0.grad is None:
        raise RuntimeError("deletion screen: no gradient reached the gate or the input embeddings")
    g_gate = gate.grad[:, 1 : 1 + n]  # (k, n) d(u_m . E)/d g_j
    # gene at rank r sits at position r + 1; moving up one rank changes its input by
    # pos[r] - pos[r + 1], for ranks 1..n-1
    step = trunk.position_shift(1, n).detach().to(x0.grad.dtype)  # (n - 1, D)
    c = (x0.grad[:, 2 : n + 1] * step[None]).sum(-1)  # (k, n - 1) per moved gene
    below = torch.zeros(k, n, device=device)
    if n > 1 and rank_shift:  # suffix sums: deleting rank j moves every rank > j
        below[:, :-1] = c.flip(1).cumsum(1).flip(1)
    delta = -g_gate + below  # (k, n) first-order change of u_m . E
    # |dE_perp|^2 / |E|^2 = sin^2 of the angle; cosine distance ~ angle^2 / 2
    est = delta.pow(2).sum(0).mul(d - 1).div(k) / e.pow(2).sum() / 2
    return est.detach().cpu().numpy().astype(np.float32)


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
    distance to second order in the angle (``dE_perp`` is the change orthogonal to ``E``),
    sketched with ``n_directions`` random orthonormal directions (``>= d_model - 1`` gives the
    exact first-order norm).

    Returns
    -------
    Per cell, a float32 array of estimated shifts aligned with ``cells[i]`` (rank order).
    """
    trunk = model.trunk
    trunk.eval()
    k = min(n_directions, trunk.config.d_model - 1)
    gen = torch.Generator().manual_seed(seed)
    cells = cells.truncate(trunk.config.max_length - 1)
    out: list[np.ndarray] = []
    with make_progress(disable=not progress) as bar:
        task = bar.add_task("first-order screen", total=len(cells), info="")
        for i in range(len(cells)):
            cell = cells[i]
            out.append(
                _cell_screen(trunk, cell, k, gen, rank_shift)
                if len(cell)
                else np.zeros(0, np.float32)
            )
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
    cells = cells.truncate(model.trunk.config.max_length - 1)
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
