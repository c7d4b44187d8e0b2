"""Genome scoring speed: genomes scored per minute for each shipped codon-model preset, and
generation tokens/s with and without the key/value cache.

Each preset (``models/presets.py``: test, tiny, small, genslm-25m) is built with random weights
(speed does not depend on training) and scores ``--n`` SARS-CoV-2 genomes: Wuhan-Hu-1 with 20
random substitutions each (seeded), in reference coordinates, so no alignment time is counted.
Two modes: ``orf`` (12 ORF documents, windows of 1,024 tokens) and ``genome`` (one document of
~9,900 tokens, the whole context when the preset's ``max_length`` allows it, else windows of
``max_length`` overlapping by half). Threads are set with ``--threads`` (default 2, the shared
machine's cores). The machine's load average is recorded: on a shared machine it moves the
numbers a lot.

Usage::

    python benchmarks/genome_throughput.py [--presets test tiny small genslm-25m] [--n 4] \
        [--threads 2] [--out runs/genome_throughput.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lifelm.data.genomes.align import Reference
from lifelm.models.codon_transformer import CodonTransformer, CodonTransformerConfig
from lifelm.tasks.genomes.generate import generate
from lifelm.tasks.genomes.score import score_genomes


def _genomes(n: int, seed: int = 0) -> dict[str, str]:
    ref = Reference.sarscov2().sequence
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        s = bytearray(ref.encode())
        for p in rng.choice(np.arange(300, len(ref) - 300), 20, replace=False):
            s[p] = ord("ACGT"[(("ACGT".index(chr(s[p]))) + 1) % 4])
        out[f"g{i}"] = s.decode()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["test", "tiny", "small", "genslm-25m"])
    ap.add_argument("--n", type=int, default=4, help="genomes per preset and mode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen-codons", type=int, default=200, help="codons generated per row")
    ap.add_argument("--out", default="runs/genome_throughput.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    genomes = _genomes(args.n)
    rows = []
    for preset in args.presets:
        torch.manual_seed(0)
        model = CodonTransformer(CodonTransformerConfig.from_name(preset)).eval()
        n_params = sum(p.numel() for p in model.parameters())
        for mode in ("orf", "genome"):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            gt, _, _ = score_genomes(model, genomes, mode=mode, progress=False)
            sec = time.perf_counter() - t0
            row = {
                "preset": preset,
                "params": n_params,
                "mode": mode,
                "context": 1024 if mode == "orf" else model.cfg.max_length,
                "genomes": len(gt),
                "seconds": round(sec, 2),
                "genomes_per_min": round(60 * len(gt) / sec, 2),
                "codons_per_s": round(float(gt["n_scored"].sum()) / sec),
                "load_before": round(load, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        for cache in (True, False):
            t0 = time.perf_counter()
            g = generate(
                model,
                4,
                top_k=1,
                min_codons=args.gen_codons,
                max_codons=args.gen_codons,
                use_cache=cache,
            )
            sec = time.perf_counter() - t0
            tokens = int(g["n_codons"].sum()) - 4  # the prompt codon is not generated
            row = {
                "preset": preset,
                "generate": "kv_cache" if cache else "no_cache",
                "rows": 4,
                "tokens": tokens,
                "seconds": round(sec, 2),
                "tokens_per_s": round(tokens / sec, 1),
                "load_before": round(os.getloadavg()[0], 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpus_visible": os.cpu_count(),
        "gpu": torch.cuda.is_available(),
        "loadavg_end": os.getloadavg(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
