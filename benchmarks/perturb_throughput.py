"""In-silico deletion throughput: LifeLM vs a one-perturbation-per-forward loop vs Geneformer.

Same cells, same model shape (preset ``geneformer-6l`` by default: 6 layers, 256 hidden, 4 heads,
512 FFN), same machine, one run. The task is Geneformer's standard scan: delete every expressed
gene of each cell, one at a time, and measure the cosine shift of the mean-pooled cell embedding.

- **Geneformer** ``InSilicoPerturber(perturb_type="delete", genes_to_perturb="all",
  emb_mode="cell")`` on a randomly initialised ``BertForMaskedLM`` of the same shape, run in its
  own venv (``--geneformer-python``) as a subprocess; the whole ``perturb_data`` call is timed.
- **LifeLM loop**: the faithful baseline, one perturbed cell per forward pass
  (``trunk.embed`` of each perturbed token list), over the first ``--loop-genes`` genes.
- **LifeLM exact**: :func:`lifelm.tasks.cells.perturb.scan_cells`, every deletion of every cell,
  batched (fp32 on CPU; bf16 on a GPU). Checked against the loop: max |shift difference|.
- **LifeLM exact + CPU techniques** (``--techniques int8,bf16``): the same scan with
  ``ScanConfig(techniques=...)`` (what ``lifelm cells perturb --quantize int8`` runs); lossy, so
  each row also reports its distance from the fp32 scan (max |shift difference|, Spearman, top-20).
- **LifeLM screen + exact top**: :func:`~lifelm.tasks.cells.perturb.fast_scan`, a first-order
  screen of every gene (one backward pass) and exact recomputation of the top ``--top``
  candidates per cell; rate = genes covered per second; recovery = share of the exact top-k
  deletions (from the exact scan) among the screen's top ``--top``.

Usage::

    .venv/bin/python benchmarks/perturb_throughput.py \\
        --geneformer-python /work/bench/venv/bin/python --gf-dicts /work/bench/gf_dicts
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_throughput import PBMC3K, Clock, _cpu_patch, gf_dataset_and_bert, tokenize_cells


# ------------------------------------------------------------------------- Geneformer side
def worker(args: argparse.Namespace) -> None:
    """Runs in Geneformer's venv: build the BERT, write the dataset, time the perturber."""
    import logging

    logging.disable(logging.WARNING)
    _cpu_patch()
    from geneformer import InSilicoPerturber

    data_dir, model_dir = gf_dataset_and_bert(args)
    tmp = Path(args.tmp)
    out_dir = tmp / "gf_out"
    out_dir.mkdir(exist_ok=True)
    isp = InSilicoPerturber(
        perturb_type="delete",
        genes_to_perturb="all",
        model_type="Pretrained",
        emb_mode="cell",
        cell_emb_style="mean_pool",
        max_ncells=None,
        forward_batch_size=int(args.gf_batch),
        nproc=1,
        model_version="V2",  # V2 only stops it swapping in its own (LFS) V1 dictionary file
        token_dictionary_file=str(args.token_dict),
    )
    with Clock() as c:
        isp.perturb_data(str(model_dir), str(data_dir), str(out_dir), "bench")
    n_results = 0
    for p in out_dir.glob("*.pickle"):
        d = pickle.loads(p.read_bytes())
        n_results += sum(len(v) for v in d.values())
    Path(args.json).write_text(json.dumps({"perturb_data": c.times, "n_results": n_results}))


# ----------------------------------------------------------------------------- LifeLM side
def time_lifelm(tok: Any, cells: Any, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from lifelm.data.cells.datasets import pad_cells
    from lifelm.data.cells.perturb_ops import perturb_cell
    from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
    from lifelm.tasks.cells import perturb as P
    from lifelm.tasks.cells.model_io import CellModel, sidecar

    torch.manual_seed(0)
    cfg = CellTransformerConfig.from_name(args.preset, vocab_size=tok.vocab_size)
    model = CellModel(CellTransformer(cfg).eval(), tok, sidecar(cfg, tok))
    trunk = model.trunk
    out: dict[str, Any] = {}
    # faithful loop: one perturbed cell per forward pass
    cell = cells[0]
    genes = cell[: args.loop_genes]
    rows = perturb_cell(cell, genes, "delete")
    loop_shift = []
    with torch.inference_mode(), Clock() as c:
        e0 = trunk.embed(pad_cells([cell], cfg.max_length))[0]
        for i in range(len(genes)):
            e = trunk.embed(pad_cells([rows.row(i)], cfg.max_length))[0]
            loop_shift.append(1 - torch.cosine_similarity(e, e0, dim=0).item())
    out["loop"] = {"times": c.times, "n": len(genes)}
    scan_cfg = P.ScanConfig(max_tokens=args.max_tokens)
    with Clock() as c:
        exact = P.scan_cells(model, cells, config=scan_cfg, progress=False)
    out["exact"] = {"times": c.times, "n": len(exact.shift)}
    r0 = np.flatnonzero(exact.cell == 0)[np.argsort(exact.target_tokens()[exact.cell == 0])]
    order = {int(t): j for j, t in enumerate(genes)}
    ours = {int(t): s for t, s in zip(exact.target_tokens()[r0], exact.shift[r0], strict=True)}
    out["max_abs_diff_vs_loop"] = float(
        max(abs(ours[int(t)] - loop_shift[order[int(t)]]) for t in genes)
    )
    from scipy.stats import spearmanr

    from lifelm.tasks.cells.cpu_techniques import CpuTechniques, resolve

    for name in [t for t in args.techniques.split(",") if t]:
        req = {"int8": CpuTechniques(quantize="int8"), "bf16": CpuTechniques(precision="bf16"),
               "compile": CpuTechniques(compile=True)}[name]  # fmt: skip
        tech, notes = resolve(req, torch.device("cpu"))
        cfg_t = P.ScanConfig(max_tokens=args.max_tokens, techniques=tech)
        with Clock() as c:
            res = P.scan_cells(model, cells, config=cfg_t, progress=False)
        if not (np.array_equal(res.cell, exact.cell) and np.array_equal(res.target, exact.target)):
            raise RuntimeError(f"{name} scan rows differ from the fp32 scan")
        top = set(np.argsort(-exact.shift)[:20]) & set(np.argsort(-res.shift)[:20])
        out[f"exact_{name}"] = {
            "times": c.times,
            "n": len(res.shift),
            "notes": notes,
            "max_abs_diff_vs_fp32": float(np.abs(res.shift - exact.shift).max()),
            "max_fp32_shift": float(exact.shift.max()),
            "spearman_vs_fp32": float(spearmanr(res.shift, exact.shift).statistic),
            "top20_overlap": len(top),
        }
    for screen in ("gradient", "rank"):
        with Clock() as c:
            fast, est = P.fast_scan(
                model, cells, top=args.top, screen=screen, n_directions=args.directions,
                config=scan_cfg, progress=False,
            )  # fmt: skip
        out[f"screen_{screen}"] = {
            "times": c.times,
            "n": int(cells.lengths().sum()),
            "exact_rows": len(fast.shift),
            "recovery": {
                f"top{k}_in_top{args.top}": P.topk_recovery(exact, est, cells, k=k, top=args.top)
                for k in (1, 5, 10, 20)
            },
        }
    return out


def time_geneformer(args: argparse.Namespace, npz: Path, tmp: Path) -> dict[str, Any]:
    js = tmp / "gf.json"
    cmd = [args.geneformer_python, __file__, "--worker", "--preset", args.preset]
    cmd += ["--tokens", str(npz), "--tmp", str(tmp), "--json", str(js)]
    cmd += ["--token-dict", str(args.gf_dicts / "token_dictionary_gc30M.pkl")]
    cmd += ["--gf-batch", str(args.gf_batch), "--threads", str(args.threads)]
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(f"Geneformer worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(js.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--geneformer-python", help="python of the venv where geneformer is installed")
    ap.add_argument("--gf-dicts", type=Path, help="folder with Geneformer's V1 .pkl dictionaries")
    ap.add_argument("--data", type=Path, default=PBMC3K, help="source .h5ad (pbmc3k counts)")
    ap.add_argument("--cells", type=int, default=1, help="cells to scan (seeded subset)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the cell subset")
    ap.add_argument("--preset", default="geneformer-6l", help="model shape")
    ap.add_argument("--gf-batch", type=int, default=100, help="Geneformer forward_batch_size")
    ap.add_argument("--max-tokens", type=int, default=32_768, help="LifeLM tokens per batch")
    ap.add_argument("--loop-genes", type=int, default=100, help="genes timed in the loop baseline")
    ap.add_argument("--top", type=int, default=50, help="screen candidates recomputed per cell")
    ap.add_argument("--directions", type=int, default=16, help="screen sketch directions")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    ap.add_argument("--skip-geneformer", action="store_true", help="LifeLM only")
    ap.add_argument(
        "--techniques",
        default="",
        help="also time the exact scan with these CPU techniques (comma-separated: int8,bf16,compile)",
    )
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--tokens", "--tmp", "--json", "--token-dict"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.gf_dicts or (not args.geneformer_python and not args.skip_geneformer):
        ap.error("--gf-dicts and --geneformer-python are required")
    import torch

    torch.set_num_threads(args.threads)
    tok, cells = tokenize_cells(args.data, args.gf_dicts, args.cells, args.seed)
    n_genes = int(cells.lengths().sum())
    print(f"{len(cells)} cells, {n_genes} deletions ({cells.lengths().tolist()} genes)", flush=True)
    with tempfile.TemporaryDirectory(prefix="lifelm_perturbbench_") as tmp_name:
        tmp = Path(tmp_name)
        npz = tmp / "tokens.npz"
        np.savez(npz, genes=tok.genes[cells.tokens - 3], offsets=cells.offsets)
        lif = time_lifelm(tok, cells, args)
        gf = None if args.skip_geneformer else time_geneformer(args, npz, tmp)
    rows = []

    def add(name: str, times: list[float], n: int) -> None:
        rows.append((name, times[0], times[1], n / times[0], n / times[1]))

    if gf:
        add(f"Geneformer InSilicoPerturber (batch {args.gf_batch})", gf["perturb_data"], n_genes)
    add("LifeLM loop, 1 perturbation / forward", lif["loop"]["times"], lif["loop"]["n"])
    add("LifeLM exact batched scan", lif["exact"]["times"], lif["exact"]["n"])
    for name in [t for t in args.techniques.split(",") if t]:
        r = lif[f"exact_{name}"]
        add(f"LifeLM batched scan, {name}", r["times"], r["n"])
    for screen in ("gradient", "rank"):
        r = lif[f"screen_{screen}"]
        add(f"LifeLM {screen} screen + exact top {args.top}", r["times"], r["n"])
    print(
        f"\n{args.preset}, {len(cells)} pbmc3k cell(s), {n_genes} deletions, {args.threads} threads"
    )
    print(
        "| method | wall s | CPU s | perturbed cells/s | per CPU-s | × Geneformer (wall) | × (CPU) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = rows[0] if gf else None
    for name, w, c, rate, crate in rows:
        rel = f"{rate / base[3]:.1f} | {crate / base[4]:.1f}" if base else "- | -"
        print(f"| {name} | {w:.1f} | {c:.1f} | {rate:.1f} | {crate:.1f} | {rel} |")
    print(f"\nexact vs loop: max |shift difference| = {lif['max_abs_diff_vs_loop']:.2e}")
    for name in [t for t in args.techniques.split(",") if t]:
        r = lif[f"exact_{name}"]
        print(
            f"{name} vs fp32 scan: max |shift difference| {r['max_abs_diff_vs_fp32']:.2e} "
            f"(largest fp32 shift {r['max_fp32_shift']:.2e}), Spearman {r['spearman_vs_fp32']:.4f}, "
            f"top-20 overlap {r['top20_overlap']}/20 {r['notes']}"
        )
    for screen in ("gradient", "rank"):
        rec = json.dumps(lif[f"screen_{screen}"]["recovery"])
        print(f"{screen} screen: recovery of the exact top-k = {rec}")
    if gf:
        print(f"Geneformer results written: {gf['n_results']}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "lifelm": lif, "geneformer": gf}, indent=2))


if __name__ == "__main__":
    main()
