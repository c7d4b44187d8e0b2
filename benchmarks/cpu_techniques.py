"""CPU techniques for embedding, each on its own against plain fp32 (same model, same cells).

The model is an imported Geneformer-format checkpoint: a ``transformers`` ``BertForMaskedLM`` of
the Geneformer V1 6-layer shape (256 hidden, 4 heads, 512 FFN, ReLU, 2,048 positions) with random
weights, saved with ``save_pretrained`` next to V1-layout dictionary pickles, then read by
``load_cell_model`` (the same path a user's Geneformer folder takes). ``--model`` uses a real
folder instead (a Geneformer HF folder with its pickles, or a LifeLM checkpoint folder).

Cells: synthetic raw counts over real GENCODE genes (``lifelm.testing.synthetic``), or ``--h5ad``.
Each technique embeds the same tokenized cells through ``embed_tokens``:

- ``fp32``: the plain path (reference);
- ``int8``: dynamic int8 linear layers; also the in-silico deletion scan of one cell, Spearman and
  top-10 overlap of its gene ranking against fp32;
- ``bf16``: bf16 autocast (only where the CPU has AVX-512 BF16 / AMX; otherwise reported skipped);
- ``compile``: ``torch.compile`` (inductor);
- ``jobs2``: two worker processes pinned to disjoint cores, one thread each (their start-up, a
  spawned interpreter importing torch and LifeLM each, is inside the timing).

Every technique but ``jobs2`` first embeds 8 cells untimed-in-the-total (``first_call_*``: for
``compile`` that is the compilation), so one-off start-up costs do not fall on the timed run.

Reported per technique: wall seconds, CPU seconds (this process + finished children), cells per
wall second and per CPU second, cosine of each cell embedding to fp32 (min / median), also after
subtracting the fp32 mean embedding (random weights make all cells alike, so the raw cosine is
near 1 for any pair; the centred one shows whether cell-to-cell differences survive).
Timings only mean something on an idle machine: the script prints ``uptime`` before and after.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/cpu_techniques.py --cells 64 [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def write_random_geneformer(folder: Path, genes: list[str], seed: int) -> None:
    """A Geneformer V1-shaped BertForMaskedLM with random weights + V1-layout dictionaries."""
    import transformers

    rng = np.random.default_rng(seed)
    token_dict = {"<pad>": 0, "<mask>": 1, **{g: 2 + i for i, g in enumerate(genes)}}
    medians = {g: float(rng.lognormal(0.0, 1.0)) for g in genes}
    (folder / "token_dictionary_gc30M.pkl").write_bytes(pickle.dumps(token_dict))
    (folder / "gene_median_dictionary_gc30M.pkl").write_bytes(pickle.dumps(medians))
    cfg = transformers.BertConfig(
        vocab_size=len(token_dict),
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=2048,
        hidden_act="relu",
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    transformers.BertForMaskedLM(cfg).save_pretrained(folder)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--genes", type=int, default=1000, help="synthetic genes (vocabulary size)")
    ap.add_argument("--h5ad", type=Path, help="real cells instead of synthetic ones")
    ap.add_argument("--model", type=Path, help="Geneformer HF folder or LifeLM checkpoint")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--techniques", default="fp32,int8,bf16,compile,jobs2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scan-genes", type=int, default=200, help="int8 deletion scan: cell size")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from lifelm.tasks.cells import cpu_techniques as ct
    from lifelm.tasks.cells.embed import embed_tokens
    from lifelm.tasks.cells.model_io import CellModel, load_cell_model
    from lifelm.tasks.cells.perturb import scan_cells
    from lifelm.testing.synthetic import synthetic_cells

    torch.set_num_threads(args.threads)
    if args.h5ad:
        import anndata as ad

        adata = ad.read_h5ad(args.h5ad)
        adata = adata[np.random.default_rng(args.seed).permutation(adata.n_obs)[: args.cells]]
    else:
        adata = synthetic_cells(
            n_cells=args.cells, n_genes=args.genes, mean_library=3000.0, seed=args.seed
        )
    tmp = tempfile.TemporaryDirectory()
    folder = args.model
    if folder is None:
        folder = Path(tmp.name)
        write_random_geneformer(folder, list(adata.var_names), args.seed)
    cm = load_cell_model(folder)
    cells = cm.tokenizer.encode(adata)
    report: dict = {
        "uptime_before": uptime(),
        "model": str(args.model or "random Geneformer V1 6-layer shape"),
        "cells": len(cells),
        "median_genes": float(np.median(cells.lengths())),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "cpu_bf16": ct.cpu_bf16_support()[1],
        "torch": torch.__version__,
        "rows": [],
    }
    print(
        report["uptime_before"], f"| {len(cells)} cells, median {report['median_genes']:.0f} genes"
    )
    ref = None
    runs = {
        "fp32": None,
        "int8": ct.CpuTechniques(quantize="int8"),
        "bf16": ct.CpuTechniques(precision="bf16"),
        "compile": ct.CpuTechniques(compile=True),
        "jobs2": ct.CpuTechniques(jobs=2),
    }
    for name in args.techniques.split(","):
        tech = runs[name]
        row: dict = {"technique": name}
        if name == "bf16" and not ct.cpu_bf16_support()[0]:
            row["skipped"] = ct.cpu_bf16_support()[1]
            report["rows"].append(row)
            print(name, "skipped:", row["skipped"])
            continue
        if name != "jobs2":  # warm-up on a small slice (for compile: the compilation), timed apart
            t0, c0 = time.perf_counter(), cpu_seconds()
            embed_tokens(
                cm, cells.subset(np.arange(min(8, len(cells)))), progress=False, techniques=tech
            )
            row["first_call_wall_s"] = time.perf_counter() - t0
            row["first_call_cpu_s"] = cpu_seconds() - c0
        t0, c0 = time.perf_counter(), cpu_seconds()
        emb = embed_tokens(cm, cells, batch_size=args.batch_size, progress=False, techniques=tech)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        if ref is None:
            ref = emb
        cos = cosines(ref, emb)
        # random weights make every cell's embedding alike (cosine ~1 for any pair); the
        # cosine after removing the fp32 mean tests whether the cell-to-cell differences survive
        mu = ref.mean(0)
        cos_c = cosines(ref - mu, emb - mu)
        row.update(
            wall_s=wall,
            cpu_s=cpu,
            cells_per_s=len(cells) / wall,
            cells_per_cpu_s=len(cells) / cpu,
            cos_min=float(cos.min()),
            cos_median=float(np.median(cos)),
            cos_centered_min=float(cos_c.min()),
            cos_centered_median=float(np.median(cos_c)),
        )
        report["rows"].append(row)
        print(json.dumps(row))
    if "int8" in args.techniques:
        from scipy.stats import spearmanr

        pick = int(np.argmin(np.abs(cells.lengths() - args.scan_genes)))  # a cell of ~N genes
        one = cells.subset(np.array([pick]))
        t0 = time.perf_counter()
        fp = scan_cells(cm, one, progress=False).shift
        t_fp = time.perf_counter() - t0
        qm = CellModel(ct.quantize_int8(cm.trunk), cm.tokenizer, cm.config)
        t0 = time.perf_counter()
        i8 = scan_cells(qm, one, progress=False).shift
        t_i8 = time.perf_counter() - t0
        report["int8_deletion_scan"] = {
            "genes": len(fp),
            "spearman": float(spearmanr(fp, i8).statistic),
            "top10_overlap": len(set(np.argsort(-fp)[:10]) & set(np.argsort(-i8)[:10])),
            "fp32_wall_s": t_fp,
            "int8_wall_s": t_i8,
        }
        print(json.dumps(report["int8_deletion_scan"]))
    report["uptime_after"] = uptime()
    print(report["uptime_after"])
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.exit(main())
