"""Embedding throughput: LifeLM ``embed_tokens`` vs Geneformer's ``EmbExtractor`` at the same model shape.

The same ``--cells`` pbmc3k cells (a seeded random subset) are tokenized once with Geneformer's V1
vocabulary and medians (LifeLM's tokenizer; the tokenizer benchmark shows the two agree), then
embedded by two randomly initialised models of the same shape (preset ``geneformer-6l``: 6
layers, 256 hidden, 4 heads, 512 FFN, 2,048 tokens; ``geneformer-12l``: 12/512/8/1,024):

- LifeLM: :class:`~lifelm.models.cell_transformer.CellTransformer` through
  :func:`~lifelm.tasks.cells.embed.embed_tokens` (mean over gene tokens of the last layer, no
  prediction head), at LifeLM's default batch size and at Geneformer's;
- Geneformer: a transformers ``BertForMaskedLM`` of the same shape (ReLU, as Geneformer V1),
  saved to a temporary folder and read back by ``EmbExtractor(emb_mode="cell")`` from a
  tokenized ``.dataset``, ``forward_batch_size`` 16 by default. Timed twice: the whole
  ``extract_embs`` call (load model and data, embed, write the CSV) and its ``get_embs`` loop
  alone (model and data already loaded).

Geneformer runs in its own virtual environment (``--geneformer-python``): this file is started
there with ``--worker`` and imports nothing from LifeLM in that role. Geneformer's extractor
hard-codes ``"cuda"``; on a machine without a GPU the worker maps those calls to the CPU (a
runtime patch of ``torch.tensor``/``Tensor.to``; Geneformer's files are not edited).

Usage::

    .venv/bin/python benchmarks/embed_throughput.py \\
        --geneformer-python /work/bench/venv/bin/python --gf-dicts /work/bench/gf_dicts [--out X.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenizer_throughput import PBMC3K, Clock, summary

SHAPES = {  # the BertConfig that matches each LifeLM preset (Geneformer V1 style)
    "geneformer-6l": {
        "num_hidden_layers": 6,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "intermediate_size": 512,
    },
    "geneformer-12l": {
        "num_hidden_layers": 12,
        "hidden_size": 512,
        "num_attention_heads": 8,
        "intermediate_size": 1024,
    },
}


# ------------------------------------------------------------------------- Geneformer side
def _cpu_patch() -> None:
    """Send Geneformer's hard-coded ``"cuda"`` to the CPU when there is no GPU."""
    import torch

    if torch.cuda.is_available():
        return
    tensor, to = torch.tensor, torch.Tensor.to

    def cpu_tensor(*a: Any, device: Any = None, **k: Any) -> Any:
        return tensor(*a, device="cpu" if device == "cuda" else device, **k)

    def cpu_to(self: Any, *a: Any, **k: Any) -> Any:
        if a and a[0] == "cuda":
            a = ("cpu", *a[1:])
        return to(self, *a, **k)

    torch.tensor = cpu_tensor
    torch.Tensor.to = cpu_to


def gf_dataset_and_bert(args: argparse.Namespace) -> tuple[Path, Path]:
    """Geneformer side (its venv): the cells as a ``datasets`` folder, a random BERT of the preset's shape."""
    import torch
    from datasets import Dataset
    from transformers import BertConfig, BertForMaskedLM

    tmp = Path(args.tmp)
    token_dict = pickle.loads(Path(args.token_dict).read_bytes())
    toks = np.load(args.tokens)
    genes, offsets = toks["genes"], toks["offsets"]
    ids = [
        [int(token_dict[g]) for g in genes[offsets[i] : offsets[i + 1]]]
        for i in range(len(offsets) - 1)
    ]
    data_dir = tmp / "cells.dataset"
    Dataset.from_dict({"input_ids": ids, "length": [len(c) for c in ids]}).save_to_disk(
        str(data_dir)
    )
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(token_dict),
        max_position_embeddings=2048,
        hidden_act="relu",
        hidden_dropout_prob=0.02,
        attention_probs_dropout_prob=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=token_dict["<pad>"],
        **SHAPES[args.preset],
    )
    model_dir = tmp / f"bert_{args.preset}"
    BertForMaskedLM(cfg).save_pretrained(model_dir)
    torch.set_num_threads(int(args.threads))
    return data_dir, model_dir


def worker(args: argparse.Namespace) -> None:
    """Runs in Geneformer's venv: build the BERT, write the dataset, time the extractor."""
    import logging

    logging.disable(logging.WARNING)
    _cpu_patch()
    import geneformer.emb_extractor as gfe
    import geneformer.perturber_utils as pu
    from geneformer import EmbExtractor

    data_dir, model_dir = gf_dataset_and_bert(args)
    tmp = Path(args.tmp)

    def extractor() -> Any:
        return EmbExtractor(
            model_type="Pretrained",
            emb_mode="cell",
            max_ncells=None,
            emb_layer=-1,
            forward_batch_size=int(args.gf_batch),
            nproc=1,
            model_version="V2",  # V2 only stops it swapping in its own (LFS) V1 dictionary file
            token_dictionary_file=str(args.token_dict),
        )

    full, loop = [], []
    shape = None
    for _ in range(int(args.repeats)):
        with Clock() as c:
            embs = extractor().extract_embs(str(model_dir), str(data_dir), str(tmp), "gf_embs")
        full.append(c.times)
        shape = list(embs.shape)
    model = pu.load_model("Pretrained", 0, str(model_dir), mode="eval")
    if args.gf_loop:  # the forward loop alone, model and data already loaded
        ex = extractor()
        data = pu.downsample_and_sort(pu.load_and_filter(None, 1, str(data_dir)), None)
        layer = pu.quant_layers(model) + ex.emb_layer
        for _ in range(int(args.repeats)):
            with Clock() as c:
                gfe.get_embs(
                    model, data, "cell", layer, ex.pad_token_id, ex.forward_batch_size,
                    ex.token_gene_dict, silent=True,
                )  # fmt: skip
            loop.append(c.times)
    n_params = sum(p.numel() for p in model.parameters())
    Path(args.json).write_text(
        json.dumps({"extract_embs": full, "get_embs": loop, "shape": shape, "params": n_params})
    )


# ----------------------------------------------------------------------------- LifeLM side
def tokenize_cells(data: Path, gf_dicts: Path, n_cells: int, seed: int) -> tuple[Any, Any]:
    """A seeded subset of ``data``'s cells, tokenized with Geneformer's V1 vocabulary and medians."""
    from lifelm.data.cells.tokenizer import RankValueTokenizer
    from lifelm.io.h5ad import read_h5ad

    medians = pickle.loads((gf_dicts / "gene_median_dictionary_gc30M.pkl").read_bytes())
    tokens = pickle.loads((gf_dicts / "token_dictionary_gc30M.pkl").read_bytes())
    genes = np.array([g for g in tokens if g.startswith("ENS")])
    tok = RankValueTokenizer(genes=genes, medians=np.array([medians[g] for g in genes]))
    adata = read_h5ad(data)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(adata.n_obs, size=min(n_cells, adata.n_obs), replace=False))
    return tok, tok.encode(adata[pick].copy())


def time_lifelm(
    tok: Any, cells: Any, preset: str, batches: list[int], repeats: int, tmp: Path
) -> dict[str, Any]:
    """``[wall, cpu]`` seconds per repeat of ``embed_tokens`` (model in memory); folder load time."""
    import torch

    from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
    from lifelm.tasks.cells.embed import as_cell_model, embed_tokens
    from lifelm.tasks.cells.model_io import CellModel, save_cell_model, sidecar

    torch.manual_seed(0)
    cfg = CellTransformerConfig.from_name(preset, vocab_size=tok.vocab_size)
    model = CellModel(CellTransformer(cfg).eval(), tok, sidecar(cfg, tok))
    folder = save_cell_model(model, tmp / f"lifelm_{preset}")
    embed_tokens(model, cells.subset(np.arange(min(8, len(cells)))), progress=False)  # warm-up
    out: dict[str, Any] = {"params": sum(p.numel() for p in model.network.parameters())}
    for b in batches:
        out[f"embed_tokens@{b}"] = []
        for _ in range(repeats):
            with Clock() as c:
                emb = embed_tokens(model, cells, batch_size=b, progress=False)
            out[f"embed_tokens@{b}"].append(c.times)
        out["finite"] = bool(np.isfinite(emb).all())
    with Clock() as c:
        as_cell_model(folder, device="cpu")
    out["load_folder"] = c.times
    return out


def _remap(cells: Any, src_genes: np.ndarray, tokenizer: Any) -> Any:
    """The same cells in another tokenizer's ids (same genes, same order)."""
    from dataclasses import replace

    from lifelm.data.cells.tokenizer import N_SPECIAL

    ids = np.array([tokenizer.vocab[g] for g in src_genes[cells.tokens - N_SPECIAL]]) + N_SPECIAL
    return replace(cells, tokens=ids.astype(cells.tokens.dtype))


def time_techniques(
    tok: Any,
    cells: Any,
    preset: str,
    batch: int,
    repeats: int,
    techniques: list[str],
    bert_dir: Path | None,
    gf_dicts: Path,
) -> dict[str, Any]:
    """``embed_tokens`` with each CPU technique, on LifeLM's preset and (``bert_dir``) on
    Geneformer's own random BERT imported (the same weights the extractor ran)."""
    import torch

    from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
    from lifelm.tasks.cells.cpu_techniques import CpuTechniques, resolve
    from lifelm.tasks.cells.embed import embed_tokens
    from lifelm.tasks.cells.model_io import CellModel, load_cell_model, sidecar

    torch.manual_seed(0)
    cfg = CellTransformerConfig.from_name(preset, vocab_size=tok.vocab_size)
    models = {
        "LifeLM preset": (CellModel(CellTransformer(cfg).eval(), tok, sidecar(cfg, tok)), cells)
    }
    if bert_dir is not None:
        bert = load_cell_model(bert_dir, dictionaries=gf_dicts, device="cpu")
        models["Geneformer's BERT imported"] = (bert, _remap(cells, tok.genes, bert.tokenizer))
    out: dict[str, Any] = {}
    for label, (model, tc) in models.items():
        ref = None
        for name in ["fp32", *techniques]:
            req = {"fp32": CpuTechniques(), "int8": CpuTechniques(quantize="int8"),
                   "bf16": CpuTechniques(precision="bf16"),
                   "compile": CpuTechniques(compile=True)}[name]  # fmt: skip
            tech, notes = resolve(req, torch.device("cpu"))
            embed_tokens(model, tc.subset(np.arange(min(8, len(tc)))), progress=False,
                         batch_size=batch, techniques=tech)  # warm-up (compiles)  # fmt: skip
            times = []
            for _ in range(repeats):
                with Clock() as c:
                    emb = embed_tokens(model, tc, batch_size=batch, progress=False, techniques=tech)
                times.append(c.times)
            if ref is None:
                ref = emb
            cen = emb - ref.mean(0)
            rc = ref - ref.mean(0)
            cos = (cen * rc).sum(1) / np.linalg.norm(cen, axis=1) / np.linalg.norm(rc, axis=1)
            out[f"{label}, {name}"] = {"times": times, "notes": notes,
                                       "centred_cos_min": float(cos.min())}  # fmt: skip
    return out


def time_geneformer(
    args: argparse.Namespace, preset: str, tokens_npz: Path, tmp: Path
) -> dict[str, Any]:
    js = tmp / f"gf_{preset}.json"
    cmd = [args.geneformer_python, __file__, "--worker", "--preset", preset]
    cmd += ["--tokens", str(tokens_npz), "--tmp", str(tmp), "--json", str(js)]
    cmd += ["--token-dict", str(args.gf_dicts / "token_dictionary_gc30M.pkl")]
    cmd += ["--gf-batch", str(args.gf_batch), "--repeats", str(args.gf_repeats)]
    cmd += ["--threads", str(args.threads)] + (["--gf-loop"] if args.gf_loop else [])
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(f"Geneformer worker {preset} failed:\n{proc.stderr[-4000:]}")
    return json.loads(js.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--geneformer-python", help="python of the venv where geneformer is installed")
    ap.add_argument("--gf-dicts", type=Path, help="folder with Geneformer's real V1 .pkl files")
    ap.add_argument("--data", type=Path, default=PBMC3K, help="source .h5ad (pbmc3k counts)")
    ap.add_argument("--cells", type=int, default=128, help="cells to embed (seeded subset)")
    ap.add_argument("--presets", default="geneformer-6l", help="comma-separated model shapes")
    ap.add_argument("--gf-batch", type=int, default=16, help="Geneformer forward_batch_size")
    ap.add_argument("--lifelm-batch", type=int, default=64, help="LifeLM batch size")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats (LifeLM)")
    ap.add_argument("--gf-repeats", type=int, default=1, help="timed repeats (Geneformer, slow)")
    ap.add_argument("--gf-loop", action="store_true", help="also time Geneformer's loop alone")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    ap.add_argument("--seed", type=int, default=0, help="seed of the cell subset")
    ap.add_argument(
        "--techniques",
        default="",
        help="also time LifeLM with these CPU techniques (comma-separated: int8,bf16,compile), "
        "on its preset and on Geneformer's own BERT imported",
    )
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--preset", "--tokens", "--tmp", "--json", "--token-dict"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.geneformer_python or not args.gf_dicts:
        ap.error("--geneformer-python and --gf-dicts are required")
    import torch

    torch.set_num_threads(args.threads)
    tok, cells = tokenize_cells(args.data, args.gf_dicts, args.cells, args.seed)
    n = len(cells)
    lengths = cells.lengths()
    print(f"{n} cells, {lengths.mean():.0f} genes/cell (max {lengths.max()})", flush=True)
    presets = args.presets.split(",")
    batches = list(dict.fromkeys([args.lifelm_batch, args.gf_batch]))
    rows: dict[str, dict[str, Any]] = {}
    raw: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lifelm_embbench_") as tmp_name:
        tmp = Path(tmp_name)
        npz = tmp / "tokens.npz"
        np.savez(npz, genes=tok.genes[cells.tokens - 3], offsets=cells.offsets)
        for preset in presets:
            print(f"{preset}: LifeLM ...", flush=True)
            lif = time_lifelm(tok, cells, preset, batches, args.repeats, tmp)
            print(f"{preset}: Geneformer ...", flush=True)
            gf = time_geneformer(args, preset, npz, tmp)
            raw[preset] = {"lifelm": lif, "geneformer": gf}
            if args.techniques:
                print(f"{preset}: LifeLM CPU techniques ...", flush=True)
                bert_dir = tmp / f"bert_{preset}"
                tt = time_techniques(
                    tok, cells, preset, args.gf_batch, args.repeats,
                    args.techniques.split(","), bert_dir if bert_dir.is_dir() else None,
                    args.gf_dicts,
                )  # fmt: skip
                raw[preset]["techniques"] = tt
                for name, r in tt.items():
                    rows[f"{preset} | {name}, batch {args.gf_batch}"] = summary(r["times"], n)
            for b in batches:
                rows[f"{preset} | LifeLM embed_tokens, batch {b}"] = summary(
                    lif[f"embed_tokens@{b}"], n
                )
            if gf["get_embs"]:
                rows[f"{preset} | Geneformer get_embs loop, batch {args.gf_batch}"] = summary(
                    gf["get_embs"], n
                )
            rows[f"{preset} | Geneformer EmbExtractor.extract_embs, batch {args.gf_batch}"] = (
                summary(gf["extract_embs"], n)
            )
    print(
        f"\n{n} pbmc3k cells, {lengths.mean():.0f} genes/cell, {args.threads} threads; "
        f"best of {args.repeats} (LifeLM) / {args.gf_repeats} (Geneformer)\n"
    )
    print(
        "| model | what is timed | best s | median s | CPU s | cells/s (best) | cells per CPU-s |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        shape, what = name.split(" | ")
        print(
            f"| {shape} | {what} | {r['best_s']:.2f} | {r['median_s']:.2f} | {r['best_cpu_s']:.2f} "
            f"| {r['cells_per_s_best']:,.2f} | {r['cells_per_cpu_s_best']:,.2f} |"
        )
    print("\n| model | LifeLM embed_tokens / Geneformer extract_embs | × (wall) | × (CPU) |")
    print("| --- | --- | ---: | ---: |")
    for preset in presets:
        theirs = rows[f"{preset} | Geneformer EmbExtractor.extract_embs, batch {args.gf_batch}"]
        mine = [
            (f"LifeLM batch {b}", f"{preset} | LifeLM embed_tokens, batch {b}") for b in batches
        ]
        mine += [(k.split(" | ")[1], k) for k in rows if k.startswith(f"{preset} | ") and
                 ", batch " in k and ("preset, " in k or "imported, " in k)]  # fmt: skip
        for label, key in mine:
            ours = rows[key]
            print(
                f"| {preset} | {label} / Geneformer batch {args.gf_batch} | "
                f"{ours['cells_per_s_best'] / theirs['cells_per_s_best']:.1f} | "
                f"{ours['cells_per_cpu_s_best'] / theirs['cells_per_cpu_s_best']:.1f} |"
            )
    for preset in presets:
        for name, r in raw[preset].get("techniques", {}).items():
            print(
                f"{preset} {name}: centred cosine to fp32 (min) {r['centred_cos_min']:.4f} {r['notes']}"
            )
    if args.out:
        result = {
            "cells": n,
            "genes_per_cell": float(lengths.mean()),
            "threads": args.threads,
            "repeats": args.repeats,
            "gf_repeats": args.gf_repeats,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "load": os.getloadavg(),
            },
            "rows": rows,
            "raw": raw,
        }
        args.out.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
