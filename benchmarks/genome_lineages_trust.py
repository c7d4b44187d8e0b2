"""``lineages`` on the GenBank 1,000: held-out accuracy next to the baselines, abstention, novelty.

Genomes: ``sarscov2/genbank_1000_lapis_silo/aligned.fasta.xz`` (Nextclade-aligned) with labels
from ``metadata.tsv``. Embeddings come from a codon model given with ``--model``; without one, a
randomly initialised ``test``-preset model (seed 0) is used, which has learned nothing: the run then
shows what a user sees when the model is worse than the simple baselines.

Three experiments:

1. ``whoClade`` (972 of 1,000 empty): empty labels kept as the class ``(none)``; the 2020 19B
   genomes (the issue's example) must not be called a variant;
2. ``nextstrainClade``: held-out accuracy of model, Hamming-NN and 6-mer logistic regression;
3. novelty: every genome of one clade (default ``20B``) is removed from the reference and
   classified as a query; reported: how many are called ``novel`` or ``unassigned`` rather than
   forced into another clade.

Usage::

    python benchmarks/genome_lineages_trust.py [--data /work/shared/data] [--model DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lifelm.io.fasta import iter_fasta
from lifelm.models.codon_transformer import CodonTransformer, CodonTransformerConfig
from lifelm.tasks.genomes.embed import embed_genomes
from lifelm.tasks.genomes.lineages import LineageConfig, lineages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument(
        "--model", default=None, help="codon model folder (default: random test preset)"
    )
    ap.add_argument("--novel-clade", default="20B")
    ap.add_argument(
        "--cache", default=None, help=".npy file to keep the embeddings in (reused when present)"
    )
    ap.add_argument("--out", default="benchmarks/results/genome_lineages_trust.json")
    args = ap.parse_args()
    folder = Path(args.data) / "genomes/sarscov2/genbank_1000_lapis_silo"
    meta = pd.read_csv(folder / "metadata.tsv", sep="\t", dtype=str, keep_default_na=False)
    seqs = {r.name: r.sequence for r in iter_fasta(folder / "aligned.fasta.xz")}
    meta = meta[meta["genbankAccession"].isin(seqs)].reset_index(drop=True)
    names = meta["genbankAccession"].tolist()
    aligned = [seqs[n] for n in names]
    t0 = time.perf_counter()
    cache = Path(args.cache) if args.cache else None
    if args.model:
        from lifelm.tasks.genomes.codon_lm import load_codon_model

        model, _ = load_codon_model(args.model, device="cpu")
        model_name = str(args.model)
    else:
        torch.manual_seed(0)
        model = CodonTransformer(CodonTransformerConfig.from_name("test")).eval()
        model_name = "random-init test preset (untrained, seed 0)"
    if cache is not None and cache.is_file():
        emb = np.load(cache)
    else:
        emb, _ = embed_genomes(model, dict(zip(names, aligned, strict=True)), context=1024)
        if cache is not None:
            np.save(cache, emb)
    t_embed = time.perf_counter() - t0
    table = meta.rename(columns={"genbankAccession": "seqName"})
    report: dict[str, object] = {"model": model_name, "embed_seconds": round(t_embed, 1)}

    # 1. whoClade with empty labels as a class
    out, summary = lineages(emb, table, columns=["whoClade"], sequences=aligned)
    b19 = out[(table["nextstrainClade"] == "19B").to_numpy()]
    report["whoClade"] = {
        "summary": summary["columns"]["whoClade"],
        "19B_genomes": len(b19),
        "19B_called": b19["whoClade_call"].value_counts().to_dict(),
        "19B_max_prob_of_a_variant": float(
            b19.loc[b19["whoClade_pred"] != "(none)", "whoClade_prob"].max()
            if (b19["whoClade_pred"] != "(none)").any()
            else 0.0
        ),
        "held_out_calls": out.loc[out["split"] == "held_out", "whoClade_call"]
        .value_counts()
        .to_dict(),
    }
    # 2. nextstrainClade
    out, summary = lineages(emb, table, columns=["nextstrainClade"], sequences=aligned)
    report["nextstrainClade"] = {"summary": summary["columns"]["nextstrainClade"]}
    # 3. novelty: one clade out of the reference
    is_new = (table["nextstrainClade"] == args.novel_clade).to_numpy()
    res = {}
    for method in ("auto", "model", "hamming_nn", "kmer_logreg"):
        out, summary = lineages(
            emb,
            table,
            train=~is_new,
            columns=["nextstrainClade"],
            sequences=aligned,
            method=method,
            config=LineageConfig(),
        )
        q = out[is_new]
        held = out[out["split"] == "held_out"]
        res[method] = {
            "method_used": summary["columns"]["nextstrainClade"]["method"],
            "query_calls": q["nextstrainClade_status"].value_counts().to_dict(),
            "query_forced_into_a_known_clade": round(
                float((q["nextstrainClade_status"] == "assigned").mean()), 4
            ),
            "held_out_known_status": held["nextstrainClade_status"].value_counts().to_dict(),
        }
    report["novelty"] = {"clade_left_out": args.novel_clade, "n": int(is_new.sum()), **res}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, indent=1, default=str)[:6000])


if __name__ == "__main__":
    main()
