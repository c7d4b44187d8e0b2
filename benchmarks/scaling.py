"""Scaling figures for the corpus store: build time, store size, loader and training cells/s.

For each corpus size N (default 10k, 100k, 1M cells) this script

1. writes N cells by resampling real pbmc3k cells (binomially thinned copies, gzip h5ad files of
   50k cells, as the shared data are written) with :func:`synthesize_corpus`;
2. builds a store from them (``build_corpus``: streaming medians + shards) in a child process and
   records wall time and peak RSS (the child's and its worker processes');
3. reads random batches three ways, side by side on the same cells: the store's block-shuffled
   :class:`StoreLoader`, AnnData backed random access (``adata.X[i]`` + rank encoding per cell),
   and a plain in-memory loader (all tokens in RAM; N ≤ 100k only);
4. trains the ``tiny`` CellTransformer (max_length 256, batch 32) from the store for a few steps
   and records training cells/s.

Usage::

    .venv/bin/python benchmarks/scaling.py --cells 10000 100000 1000000 --work /tmp/scaling \\
        --workers 2 --out benchmarks/results/scaling.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SOURCE = (
    Path(__file__).resolve().parents[2] / "shared/data/singlecell/pbmc3k/pbmc3k_seurat_counts.h5ad"
)


def _rss_mb() -> dict[str, float]:
    """Peak RSS of this process (VmHWM: reset at exec, unlike ru_maxrss, which a child inherits
    from the forking parent) and the largest of its worker processes (ru_maxrss: an upper bound)."""
    status = Path("/proc/self/status").read_text()
    own = int(status.split("VmHWM:")[1].split()[0]) / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": round(own, 1), "peak_rss_workers_mb": round(kids, 1)}


def phase_build(files: list[str], store: str, workers: int) -> dict[str, object]:
    from lifelm.data.store.build import CorpusConfig, build_corpus
    from lifelm.data.store.store import CorpusStore

    t = time.perf_counter()
    build_corpus(files, store, config=CorpusConfig(workers=workers))
    info = CorpusStore(store).info
    return {
        "build_s": round(time.perf_counter() - t, 1),
        "n_cells": info["n_cells"],
        "store_mb": round(info["store_bytes"] / 1e6, 1),
        "source_mb": round(info["source_bytes"] / 1e6, 1),
        "disk_ratio": round(info["store_bytes"] / info["source_bytes"], 3),
        **_rss_mb(),
    }


def phase_loaders(
    files: list[str], store_path: str, n_batches: int, in_memory: bool
) -> dict[str, object]:
    """Random batches of 64 cells three ways; read time and read + masked-gene collate time."""
    import torch

    from lifelm.data.cells.datasets import CellTokens, MaskedGeneCollator
    from lifelm.data.cells.tokenizer import rank_block
    from lifelm.data.store.store import CorpusStore, StoreLoader
    from lifelm.io.h5ad import read_h5ad

    store = CorpusStore(store_path)
    tok = store.tokenizer()
    collate = MaskedGeneCollator(tok.vocab_size, 2048)
    bs = 64
    gen = torch.Generator().manual_seed(0)
    out: dict[str, object] = {}

    def timed(batches: list[np.ndarray], read: object) -> tuple[float, float]:
        t, t_read, n = time.perf_counter(), 0.0, 0
        for idx in batches:
            t0 = time.perf_counter()
            items = read(idx)  # type: ignore[operator]
            t_read += time.perf_counter() - t0
            collate(items, gen)
            n += len(idx)
        return n / t_read, n / (time.perf_counter() - t)

    loader = StoreLoader(store, batch_size=bs, collate_fn=collate, seed=0, rank=0, world_size=1)
    batches = [loader.rank_indices(0, s) for s in range(min(n_batches, len(loader)))]
    # AnnData backed random access: one row at a time, then the same rank encoding
    adata = read_h5ad(files[0], backed=True)
    mapping = tok.map_dataset(adata)
    col = np.array([tok.vocab.get(g, -1) for g in mapping.ids], dtype=np.int64)
    inv = 1.0 / tok.medians
    rng = np.random.default_rng(0)
    rand = [rng.integers(0, adata.n_obs, bs) for _ in range(2)]
    methods = {
        "store": (batches, lambda idx: [(c, -1) for c in store.read(idx)]),
        "anndata_backed": (
            rand,
            lambda idx: [(rank_block(adata.X[int(i)], col, inv, 2047)[0], -1) for i in idx],
        ),
    }
    if in_memory:
        ds = CellTokens(tok.encode(read_h5ad(files[0])))
        order = rng.permutation(len(ds))
        mem = [order[b * bs : (b + 1) * bs] for b in range(n_batches)]
        methods["in_memory"] = (mem, lambda idx: [ds[int(i)] for i in idx])
    # three interleaved rounds, median of each: a shared machine's load spikes hit all methods
    runs: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    for _ in range(3):
        for m, (bat, read) in methods.items():
            runs[m].append(timed(bat, read))
    for m, rs in runs.items():
        out[f"{m}_read_cells_s"] = round(float(np.median([r for r, _ in rs])), 1)
        out[f"{m}_cells_s"] = round(float(np.median([e for _, e in rs])), 1)
    out.update(_rss_mb())
    return out


def phase_train(store_path: str, out_dir: str, steps: int) -> dict[str, object]:
    from lifelm.data.cells.datasets import MaskedGeneCollator
    from lifelm.data.store.store import CorpusStore
    from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
    from lifelm.training.loop import TrainConfig, train

    store = CorpusStore(store_path)
    v = store.tokenizer().vocab_size
    mcfg = CellTransformerConfig.from_name("tiny", vocab_size=v, max_length=256)
    cfg = TrainConfig(
        max_steps=steps,
        batch_size=32,
        warmup_steps=2,
        log_every=steps,
        checkpoint_every=0,
        progress=False,
        device="cpu",
    )
    t = time.perf_counter()
    r = train(
        CellTransformer(mcfg),
        store,
        config=cfg,
        out_dir=out_dir,
        collate_fn=MaskedGeneCollator(v, 256),
        sidecar={"model": mcfg.to_dict()},
    )
    return {
        "train_cells_s": round(steps * 32 / (time.perf_counter() - t), 1),
        "train_loss": round(r.final_loss, 3),
        **_rss_mb(),
    }


def _child(phase: str, extra: list[str], **kw: object) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--args", json.dumps(kw), *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--work", default="/tmp/lifelm_scaling")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--out", default="")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each phase")
    p.add_argument("--phase", default="")
    p.add_argument("--args", default="{}")
    a = p.parse_args()
    if a.phase:
        import torch

        torch.set_num_threads(a.threads)  # the machine may be shared: no oversubscription
        fn = {"build": phase_build, "loaders": phase_loaders, "train": phase_train}[a.phase]
        print(json.dumps(fn(**json.loads(a.args))))
        return
    from lifelm.data.store.synthetic import synthesize_corpus

    rows = []
    th = ["--threads", str(a.threads)]
    for n in a.cells:
        work = Path(a.work) / f"n{n}"
        t = time.perf_counter()
        files = [
            str(f)
            for f in synthesize_corpus([SOURCE], work / "h5ad", n, cells_per_file=min(n, 50_000))
        ]
        row: dict[str, object] = {"cells": n, "synth_s": round(time.perf_counter() - t, 1)}
        row["build"] = _child(
            "build", th, files=files, store=str(work / "store"), workers=a.workers
        )
        row["loaders"] = _child(
            "loaders",
            th,
            files=files,
            store_path=str(work / "store"),
            n_batches=50,
            in_memory=n <= 100_000,
        )
        row["train"] = _child(
            "train",
            th,
            store_path=str(work / "store"),
            out_dir=str(work / "run"),
            steps=a.train_steps,
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
