"""Tokenizer throughput, end to end (h5ad in, tokens out): LifeLM vs Geneformer's TranscriptomeTokenizer.

pbmc3k (2,638 cells) is replicated ``--replicate`` times (default 10: 26,380 cells) into a temporary
``.h5ad`` laid out as Geneformer asks (``obs['n_counts']``, ``var['ensembl_id']``). Then, on the
same file and machine, one after another and ``--repeats`` times each:

- LifeLM: ``read_h5ad`` + ``RankValueTokenizer.encode`` (in memory, and backed);
- Geneformer V1 settings (2,048 tokens, no special tokens, V1 Genecorpus-30M dictionaries);
- Geneformer V2 settings (4,096 tokens, ``<cls>``/``<eos>``, ``collapse_gene_ids=True``), once
  with a mapping dictionary that merges no gene and once with one that merges the data's
  duplicated genes (its ``sum_ensembl_ids`` collapse path).

Geneformer runs in its own virtual environment (``--geneformer-python``): this file is started
there again with ``--worker`` and imports nothing from LifeLM in that role. Both tokenizers use
the same vocabulary and gene medians (Geneformer's V1 dictionaries), and the script checks that
their tokens agree. The normalise-and-rank step is also timed alone (file already read, genes
already mapped).

Geneformer's repository keeps its dictionaries in Git LFS. ``--gf-dicts`` names a folder with the
two real V1 pickles (``gene_median_dictionary_gc30M.pkl``, ``token_dictionary_gc30M.pkl``); the
V1 Ensembl mapping dictionary and all three V2 dictionaries are rebuilt from them here (see
``build_dictionaries``), because their LFS objects cannot be fetched.

Usage::

    .venv/bin/python benchmarks/tokenizer_throughput.py \\
        --geneformer-python /work/bench/venv/bin/python --gf-dicts /work/bench/gf_dicts [--out X.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PBMC3K = Path(__file__).resolve().parents[2] / (
    "shared/data/singlecell/pbmc3k/pbmc3k_seurat_counts.h5ad"
)
V2_SPECIALS = {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}


class Clock:
    """Wall-clock and process CPU seconds of a ``with`` block (CPU time is less hurt by a busy box)."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.times = [time.perf_counter() - self._wall, time.process_time() - self._cpu]


# --------------------------------------------------------------------------- data preparation
def prepare_h5ad(src: Path, dest: Path, replicate: int) -> dict[str, Any]:
    """Write ``src`` replicated ``replicate`` times to ``dest`` with Geneformer's columns.

    ``var['ensembl_id']`` holds the file's own Ensembl IDs (``gene_ids``) and the symbol where there
    is none; LifeLM's gene mapping (IDs, then GENCODE symbols) is kept in ``var['lifelm_id']``.
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from lifelm.data.cells.genes import map_genes

    a = ad.read_h5ad(src)
    mapping = map_genes(a.var)
    X = sp.vstack([sp.csr_matrix(a.X)] * replicate, format="csr")  # (n * r, genes) int32
    obs = pd.DataFrame(
        {"n_counts": np.asarray(X.sum(axis=1)).ravel().astype(np.float64)},
        index=[f"{c}-r{r}" for r in range(replicate) for c in a.obs_names],
    )
    gene_ids = a.var["gene_ids"].astype(object)
    var = pd.DataFrame(
        {
            "gene_symbol": a.var["gene_symbol"].astype(str).to_numpy(),
            "gene_ids": gene_ids.to_numpy(),
            "ensembl_id": gene_ids.where(gene_ids.notna(), a.var_names.to_series()).to_numpy(),
            "lifelm_id": mapping.ids,
        },
        index=a.var_names,
    )
    ad.AnnData(X=X, obs=obs, var=var).write_h5ad(dest)
    return {
        "n_cells": int(X.shape[0]),
        "n_genes": int(X.shape[1]),
        "genes_per_cell": float(np.diff(X.indptr).mean()),
        "with_gene_id": int(gene_ids.notna().sum()),
        "lifelm_mapped": int((mapping.ids != "").sum()),
    }


def build_dictionaries(gf_dicts: Path, h5ad: Path, dest: Path) -> dict[str, Any]:
    """The dictionary files each Geneformer setting reads, written to ``dest``.

    - V1: the real Genecorpus-30M medians and token dictionary; the V1 mapping dictionary (an
      LFS object) is rebuilt as identity over the vocabulary.
    - V2: the V2 LFS objects cannot be fetched, so the V1 medians and genes are reused with V2's
      special tokens (``<pad> <mask> <cls> <eos>``) in front. Two mapping dictionaries:
      ``nomerge`` (identity over the vocabulary) and ``merge``, which also maps the symbols of
      this file's genes without an ID to the Ensembl ID LifeLM finds for them (as the real V2
      dictionary maps alternative IDs to one); where that ID is already another column, the two
      columns are merged by Geneformer's collapse path and summed by LifeLM.
    """
    import anndata as ad

    medians = pickle.loads((gf_dicts / "gene_median_dictionary_gc30M.pkl").read_bytes())
    tokens_v1 = pickle.loads((gf_dicts / "token_dictionary_gc30M.pkl").read_bytes())
    genes = [g for g in tokens_v1 if g.startswith("ENS")]
    var = ad.read_h5ad(h5ad, backed="r").var
    sym = var["gene_ids"].isna() & (var["lifelm_id"] != "") & var["lifelm_id"].isin(set(genes))
    merged = dict(
        zip(var.loc[sym, "gene_symbol"].str.upper(), var.loc[sym, "lifelm_id"], strict=True)
    )
    tokens_v2 = {**V2_SPECIALS, **{g: i + len(V2_SPECIALS) for i, g in enumerate(genes)}}
    files = {
        "v1_median": medians,
        "v1_token": tokens_v1,
        "v1_mapping": {g: g for g in genes},
        "v2_median": {g: medians[g] for g in genes},
        "v2_token": tokens_v2,
        "v2_mapping_nomerge": {g: g for g in genes},
        "v2_mapping_merge": {**{g: g for g in genes}, **merged},
    }
    dest.mkdir(parents=True, exist_ok=True)
    for name, obj in files.items():
        (dest / f"{name}.pkl").write_bytes(pickle.dumps(obj))
    hits = [
        files["v2_mapping_merge"][g.upper()]
        for g in var["ensembl_id"]
        if g.upper() in files["v2_mapping_merge"]
    ]
    return {
        "vocab_genes": len(genes),
        "symbol_entries_in_merge_dict": len(merged),
        "v2_merge_columns_merged": len(hits) - len(set(hits)),
    }


# ----------------------------------------------------------------------------- LifeLM side
def lifelm_tokenizer(dicts: Path) -> Any:
    from lifelm.data.cells.tokenizer import RankValueTokenizer

    medians = pickle.loads((dicts / "v1_median.pkl").read_bytes())
    genes = [g for g in pickle.loads((dicts / "v1_token.pkl").read_bytes()) if g.startswith("ENS")]
    return RankValueTokenizer(
        genes=np.array(genes), medians=np.array([medians[g] for g in genes]), max_length=2048
    )


def vocab_matrix(h5ad: Path, tok: Any) -> Any:
    """(cells, vocab) counts of ``h5ad`` in LifeLM's vocabulary order, duplicated genes summed.

    Built from ``var['lifelm_id']`` with plain scipy, not LifeLM's internals, so that the check
    of the tokens does not reuse the code it checks.
    """
    import anndata as ad
    import scipy.sparse as sp

    a = ad.read_h5ad(h5ad)
    col = np.array([tok.vocab.get(g, -1) for g in a.var["lifelm_id"]])
    rows = np.flatnonzero(col >= 0)
    to_vocab = sp.csr_matrix(
        (np.ones(len(rows)), (rows, col[rows])), shape=(a.n_vars, len(tok.genes))
    )
    return (sp.csr_matrix(a.X) @ to_vocab).tocsr()


def time_lifelm(h5ad: Path, dicts: Path, repeats: int) -> dict[str, Any]:
    """End-to-end and in-memory timings of LifeLM's tokenizer (``[wall, cpu]`` per repeat)."""
    from lifelm.io.h5ad import read_h5ad

    out: dict[str, Any] = {"memory": [], "backed": [], "loaded": []}
    cells = None
    # warm-up outside the clock: compiled kernels (numba caches them on disk after the first run)
    warm = read_h5ad(h5ad, backed=True)
    with Clock() as c:
        lifelm_tokenizer(dicts).encode(warm[:64].to_memory())
    out["first_call_64_cells"] = c.times
    warm.file.close()
    for _ in range(repeats):
        for mode in ("memory", "backed"):
            with Clock() as c:
                tok = lifelm_tokenizer(dicts)
                adata = read_h5ad(h5ad, backed=mode == "backed")
                cells = tok.encode(adata)
            out[mode].append(c.times)
            if mode == "backed":
                adata.file.close()
    # normalise-and-rank alone: the file is already read (gene mapping and ranking are timed)
    tok = lifelm_tokenizer(dicts)
    adata = read_h5ad(h5ad)
    for _ in range(repeats):
        with Clock() as c:
            tok.encode(adata)
        out["loaded"].append(c.times)
    out["cells"] = cells
    return out


# ------------------------------------------------------------------------- Geneformer side
def worker(args: argparse.Namespace) -> None:
    """Runs in Geneformer's venv: time one setting and save its tokens (no LifeLM import here)."""
    import logging

    logging.disable(logging.WARNING)
    import geneformer.tokenizer as gft
    from geneformer import TranscriptomeTokenizer

    d = Path(args.dicts)
    if args.variant == "V1":
        kw = {
            "model_input_size": 2048,
            "special_token": False,
            "gene_median_file": d / "v1_median.pkl",
            "token_dictionary_file": d / "v1_token.pkl",
            "gene_mapping_file": d / "v1_mapping.pkl",
        }
    else:
        kw = {
            "model_input_size": 4096,
            "special_token": True,
            "gene_median_file": d / "v2_median.pkl",
            "token_dictionary_file": d / "v2_token.pkl",
            "gene_mapping_file": d / f"v2_mapping_{args.variant.split('-')[1]}.pkl",
        }
    folder = Path(args.h5ad).parent
    times, rank_times = [], []
    cells = None
    for _ in range(args.repeats):
        with Clock() as c:
            # model_version="V2" only stops the class from swapping in its own (LFS) V1 files; the
            # V1 settings are the ones it would set: 2,048 tokens, no special tokens, V1 files.
            tk = TranscriptomeTokenizer(nproc=1, model_version="V2", **kw)
            cells, meta, counts = tk.tokenize_files(folder, "h5ad")
            dataset = tk.create_dataset(cells, meta, counts)
        times.append(c.times)
    n_out = len(dataset)
    # normalise-and-rank alone: the file is read and its genes mapped once, outside the clock
    ready = gft.sum_ensembl_ids(
        Path(args.h5ad),
        tk.collapse_gene_ids,
        tk.gene_mapping_dict,
        tk.gene_token_dict,
        None,
        False,
        "h5ad",
        tk.chunk_size,
    )
    gft.sum_ensembl_ids = lambda *a, **k: ready
    for _ in range(args.repeats):
        with Clock() as c:
            tk.tokenize_anndata(Path(args.h5ad))
        rank_times.append(c.times)
    inv = {v: k for k, v in tk.gene_token_dict.items()}
    np.savez(
        args.tokens,
        genes=np.array([inv[t] for c in cells for t in c]),
        offsets=np.concatenate([[0], np.cumsum([len(c) for c in cells])]),
    )
    Path(args.json).write_text(
        json.dumps(
            {"times": times, "rank_only": rank_times, "n_out": n_out, "n_ready_genes": ready.n_vars}
        )
    )


def time_geneformer(
    python: str, variant: str, h5ad: Path, dicts: Path, repeats: int, tmp: Path
) -> dict[str, Any]:
    js, npz = tmp / f"gf_{variant}.json", tmp / f"gf_{variant}.npz"
    cmd = [
        python,
        __file__,
        "--worker",
        "--variant",
        variant,
        "--h5ad",
        str(h5ad),
        "--dicts",
        str(dicts),
        "--repeats",
        str(repeats),
        "--json",
        str(js),
        "--tokens",
        str(npz),
    ]
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(f"Geneformer worker {variant} failed:\n{proc.stderr[-4000:]}")
    res = json.loads(js.read_text())
    tok = np.load(npz)
    res["genes"], res["offsets"] = tok["genes"], tok["offsets"]
    return res


# ---------------------------------------------------------------------------- agreement
def agreement(
    cells: Any, gf: dict[str, Any], tok: Any, h5ad: Path, keep: set[str]
) -> dict[str, float]:
    """How often LifeLM's and Geneformer's rank orders agree, cell by cell.

    LifeLM's list is first restricted to ``keep`` (the genes Geneformer could identify in this
    setting); dropping genes does not change the order of the others. ``identical``: the same
    token list. ``tie_aware``: the same list of normalised values position by position up to
    float32 rounding, i.e. the lists differ at most in the order of genes whose values are equal
    in float32 (LifeLM ranks on float32 keys and breaks ties by vocabulary order; Geneformer
    sorts float64 values with an unstable ``argsort``).
    """
    mapped = vocab_matrix(h5ad, tok)  # (cells, vocab)
    inv_median = 1.0 / tok.medians
    keep_mask = np.isin(tok.genes, list(keep))
    n = len(cells)
    if gf["n_out"] != n:
        raise RuntimeError(f"Geneformer returned {gf['n_out']} cells for {n}")
    identical = tie_aware = same_len = pos_equal = pos_total = 0
    for i in range(n):
        ours_col = cells[i] - 3  # token id -> vocabulary column
        ours_col = ours_col[keep_mask[ours_col]]
        ours = tok.genes[ours_col]
        theirs = gf["genes"][gf["offsets"][i] : gf["offsets"][i + 1]]
        if cells.n_genes[i] > tok.max_length - 1:
            # LifeLM kept its first 2,047 genes (+ [CLS]); Geneformer's untruncated list is
            # compared over the same top genes
            theirs = theirs[: len(ours)]
        m = min(len(ours), len(theirs))
        pos_equal += int((ours[:m] == theirs[:m]).sum())
        pos_total += max(len(ours), len(theirs))
        if len(ours) != len(theirs):
            continue
        same_len += 1
        if (ours == theirs).all():
            identical += 1
            tie_aware += 1
            continue
        row = mapped[i]
        value = dict(zip(tok.genes[row.indices], row.data * inv_median[row.indices], strict=True))
        v_ours = np.array([value[g] for g in ours])
        v_theirs = np.array([value.get(g, np.nan) for g in theirs])
        tie_aware += bool(np.allclose(v_ours, v_theirs, rtol=2.5e-7, atol=0))
    return {
        "cells_identical": identical / n,
        "cells_tie_aware_equal": tie_aware / n,
        "cells_same_length": same_len / n,
        "positions_equal": pos_equal / max(pos_total, 1),
    }


# -------------------------------------------------------------------------------- report
def summary(times: list[list[float]], n_cells: int) -> dict[str, float]:
    """Best and median of ``[wall, cpu]`` pairs, and cells per wall / CPU second at the best."""
    wall, cpu = [t[0] for t in times], [t[1] for t in times]
    return {
        "best_s": min(wall),
        "median_s": statistics.median(wall),
        "best_cpu_s": min(cpu),
        "cells_per_s_best": n_cells / min(wall),
        "cells_per_s_median": n_cells / statistics.median(wall),
        "cells_per_cpu_s_best": n_cells / min(cpu),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--geneformer-python", help="python of the venv where geneformer is installed")
    ap.add_argument(
        "--gf-dicts", type=Path, help="folder with Geneformer's real V1 .pkl dictionaries"
    )
    ap.add_argument("--data", type=Path, default=PBMC3K, help="source .h5ad (pbmc3k counts)")
    ap.add_argument("--replicate", type=int, default=10, help="copies of the source cells")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of each tokenizer")
    ap.add_argument(
        "--variants", default="V1,V2-nomerge,V2-merge", help="Geneformer settings to run"
    )
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    # worker role (inside Geneformer's venv)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--variant", "--h5ad", "--dicts", "--json", "--tokens"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.repeats = int(args.repeats)
        worker(args)
        return
    if not args.geneformer_python or not args.gf_dicts:
        ap.error("--geneformer-python and --gf-dicts are required")

    import lifelm.data.cells.tokenizer as lifelm_tok

    # the tokenizer source this run imports (the file may change while a long run goes on)
    tokenizer_sha = hashlib.sha256(Path(lifelm_tok.__file__).read_bytes()).hexdigest()
    with tempfile.TemporaryDirectory(prefix="lifelm_tokbench_") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "data").mkdir()
        h5ad = tmp / "data" / "pbmc3k_x.h5ad"
        data = prepare_h5ad(args.data, h5ad, args.replicate)
        dicts = tmp / "dicts"
        dict_info = build_dictionaries(args.gf_dicts, h5ad, dicts)
        n = data["n_cells"]
        print(f"data: {data}\ndictionaries: {dict_info}", flush=True)

        lif = time_lifelm(h5ad, dicts, args.repeats)
        cells = lif.pop("cells")
        tok = lifelm_tokenizer(dicts)
        rows: dict[str, dict[str, float]] = {
            "LifeLM encode (in memory)": summary(lif["memory"], n),
            "LifeLM encode (backed)": summary(lif["backed"], n),
        }
        rank_rows = {"LifeLM encode (AnnData already read)": summary(lif["loaded"], n)}
        agree: dict[str, Any] = {}
        import anndata as ad

        var = ad.read_h5ad(h5ad, backed="r").var
        for variant in args.variants.split(","):
            print(f"Geneformer {variant} ...", flush=True)
            gf = time_geneformer(args.geneformer_python, variant, h5ad, dicts, args.repeats, tmp)
            label = {"V1": "V1", "V2-nomerge": "V2 (no merged IDs)", "V2-merge": "V2 (merged IDs)"}[
                variant
            ]
            rows[f"Geneformer {label}"] = summary(gf["times"], n)
            rank_rows[f"Geneformer {label} normalise+rank"] = summary(gf["rank_only"], n)
            # genes Geneformer could identify: the file's IDs, plus merged symbols for V2-merge
            keep = set(var["gene_ids"].dropna())
            if variant == "V2-merge":
                keep |= set(var.loc[var["gene_ids"].isna(), "lifelm_id"]) - {""}
            agree[variant] = agreement(cells, gf, tok, h5ad, keep)

    base = rows["LifeLM encode (in memory)"]
    print(f"\n{n:,} cells ({data['genes_per_cell']:.0f} genes/cell), {args.repeats} repeats\n")
    print(
        "| tokenizer (h5ad in, tokens out) | best s | median s | CPU s | cells/s (best) "
        "| cells per CPU-s | LifeLM × faster (wall) | LifeLM × faster (CPU) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(
            f"| {name} | {r['best_s']:.2f} | {r['median_s']:.2f} | {r['best_cpu_s']:.2f} | "
            f"{r['cells_per_s_best']:,.0f} | {r['cells_per_cpu_s_best']:,.0f} | "
            f"{base['cells_per_s_best'] / r['cells_per_s_best']:.1f} | "
            f"{base['cells_per_cpu_s_best'] / r['cells_per_cpu_s_best']:.1f} |"
        )
    rbase = rank_rows["LifeLM encode (AnnData already read)"]
    print(
        "\n| normalise + rank only | best s | CPU s | cells/s (best) | LifeLM × faster (wall / CPU) |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rank_rows.items():
        print(
            f"| {name} | {r['best_s']:.2f} | {r['best_cpu_s']:.2f} | {r['cells_per_s_best']:,.0f} | "
            f"{rbase['cells_per_s_best'] / r['cells_per_s_best']:.1f} / "
            f"{rbase['cells_per_cpu_s_best'] / r['cells_per_cpu_s_best']:.1f} |"
        )
    print("\n| LifeLM vs | cells identical | tie-aware equal | same length | positions equal |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, a in agree.items():
        print(
            f"| Geneformer {name} | {a['cells_identical']:.2%} | {a['cells_tie_aware_equal']:.2%} | "
            f"{a['cells_same_length']:.2%} | {a['positions_equal']:.4%} |"
        )
    if args.out:
        result = {
            "data": data,
            "dictionaries": dict_info,
            "repeats": args.repeats,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "load": os.getloadavg(),
            },
            "python": sys.version.split()[0],
            "lifelm_tokenizer_sha256": tokenizer_sha,
            "end_to_end": rows,
            "normalise_rank": rank_rows,
            "agreement": agree,
        }
        args.out.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
