"""The AnnData API of in-silico perturbation and its summaries: gene names, per-gene tables,
responders, gene lists resolved to tokens, and :func:`perturb` (``adata`` in, keys written)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd

from lifelm.data.cells.genes import gene_table
from lifelm.data.cells.perturb_ops import Kind
from lifelm.data.cells.tokenizer import N_SPECIAL
from lifelm.tasks.cells.cpu_techniques import CpuTechniques
from lifelm.tasks.cells.embed import as_cell_model
from lifelm.tasks.cells.model_io import CellModel
from lifelm.tasks.cells.perturb.scan import ScanConfig, scan_cells
from lifelm.tasks.cells.perturb.screen import fast_scan
from lifelm.tasks.cells.perturb.store import ScanResult


def gene_names(model: CellModel, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ensembl IDs and symbols of gene tokens."""
    ids = model.tokenizer.genes[np.asarray(tokens, dtype=np.int64) - N_SPECIAL]
    table = gene_table(model.tokenizer.species)
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
    if res.gs_offsets is None or res.affected is None or res.gene_shift is None:
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
    table = gene_table(model.tokenizer.species)
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


# Over 80 lines because of its numpydoc docstring; the body is about 30 lines.
# Long only because of its docstring and signature; the body is under 80 lines.
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
    techniques: CpuTechniques | None = None,
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
    techniques
        CPU techniques of the exact scan (int8, bf16, compile, pinned worker processes; see
        :mod:`lifelm.tasks.cells.cpu_techniques`), as for embedding. The gradient screen itself
        runs in fp32; the techniques apply to the exact recomputation.
    key_added
        Keys written.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    The AnnData when ``copy=True``, else ``None``. Writes ``.obs[key_added + "_max_shift"]``
    (each cell's largest shift), ``.uns[key_added]["genes"]`` (DataFrame: per perturbation the
    cells scanned and the mean/median/sd cosine shift, ranked), ``.uns[key_added]["info"]`` and
    the run metadata ``.uns["lifelm"]["perturb"]`` (model, tokenizer hash, method, settings).
    """
    cm = as_cell_model(model, device)
    if copy:
        adata = adata.to_memory() if adata.isbacked else adata.copy()
    cells = cm.tokenizer.encode(adata, layer=layer)
    targets = resolve_genes(cm, genes) if genes is not None else None
    cfg = ScanConfig(
        kind=kind,
        fraction=fraction,
        max_tokens=max_tokens,
        gene_shifts=gene_shifts,
        techniques=techniques or CpuTechniques(),
    )
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
    skip = ("settings", "techniques")  # nested: kept as JSON text (h5ad-writable)
    uns = {"genes": table, "info": {k: v for k, v in res.info.items() if k not in skip}}
    uns["info"]["settings"] = json.dumps(res.info.get("settings", {}))
    uns["info"]["techniques"] = json.dumps(res.info.get("techniques", {}))
    if gene_shifts and len(table):
        top_target = int(pd.Series(res.target).value_counts().index[0])
        uns["responders"] = responders(res, cm, top_target)
    adata.uns[key_added] = uns
    adata.uns.setdefault("lifelm", {})["perturb"] = {  # run metadata, as every task writes
        "model": str(cm.folder) if cm.folder else "",
        "tokenizer_sha256": cm.tokenizer.hash(),
        "key_added": key_added,
        "method": method,
        "screen": screen if method == "screen" else "",
        "settings": uns["info"]["settings"],
        "n_cells": int(adata.n_obs),
        "out_dir": str(out_dir) if out_dir is not None else "",
        "techniques": uns["info"]["techniques"],
    }
    return adata if copy else None
