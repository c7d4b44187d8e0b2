"""Codon language model on real SARS-CoV-2 data, next to simple baselines (issue 3, parts 5-7).

Stages (each reads the models written by the commands in /work/briefs/g2_benchmarks.md):

1. Clade / WHO-label classification on Pango consensus genomes with a split that holds out whole
   lineage families (unaliased Pango name cut at depth 6; 20% of families held out): linear probe
   and kNN on model embeddings vs Hamming nearest neighbour and 6-mer logistic regression.
2. Per-ORF perplexity on held-out later GenBank genomes (collected 2021-01-01 or later; the
   fine-tuning set is the earlier ones) for the pretrained and the fine-tuned model, next to a
   codon-frequency (unigram) model fitted on the fine-tuning genomes, a "reference copy" model
   (the Wuhan-Hu-1 codon at each ORF position gets probability 0.999), and uniform (64).
3. Embedding throughput (genomes/min) on this machine.

Usage: python benchmarks/genome_codon_lm.py --pretrained RUN/model --finetuned RUN/model --out DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from lifelm.data.genomes.codons import encode_orfs, orf_sequence
from lifelm.evaluation.baselines.genomes import hamming_nn, kmer_logreg
from lifelm.io.fasta import read_fasta
from lifelm.tasks.genomes.codon_lm import default_orfs, load_codon_model, reference_sequence
from lifelm.tasks.genomes.embed import embed_genomes
from lifelm.tasks.genomes.lineages import LineageConfig, lineage_family_split, lineages
from lifelm.tasks.genomes.score import score_genomes

DATA = Path("/work/shared/data/genomes/sarscov2")


def _md(df: pd.DataFrame, digits: int = 3) -> str:
    """A markdown table (no extra dependency)."""
    cells = [
        [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row]
        for row in df.to_numpy()
    ]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def _scores(truth: np.ndarray, pred: np.ndarray, seen: set[str]) -> dict[str, float]:
    keep = np.array([t in seen for t in truth])
    t, p = truth[keep], pred[keep]
    return {
        "accuracy": float(accuracy_score(t, p)),
        "macro_f1": float(f1_score(t, p, average="macro", zero_division=0)),
        "n_test": int(keep.sum()),
    }


def lineage_benchmark(
    model_dir: Path, n: int, context: int, seed: int, orf_names: list[str] | None
) -> tuple[pd.DataFrame, dict]:
    labels = pd.read_csv(
        DATA / "pango_consensus/lineage_labels.tsv", sep="\t", dtype=str, keep_default_na=False
    )
    seqs = read_fasta(DATA / "pango_consensus/pango_consensus_genome_nuc.fasta.xz")
    labels = labels[labels["nextstrain_clade"] != ""]
    labels = labels.sample(n=min(n, len(labels)), random_state=seed).reset_index(drop=True)
    labels["seqName"] = labels["lineage"]
    labels["who"] = labels["who_label_filled"].replace("", "none")
    labels["clade"] = labels["nextstrain_clade"]
    train = lineage_family_split(
        labels["unaliased"].tolist(), test_fraction=0.2, depth=6, seed=seed
    )
    genomes = {name: seqs[name] for name in labels["seqName"]}
    model, _ = load_codon_model(model_dir, device="cpu")
    orfs = [o for o in default_orfs() if orf_names is None or o.name in orf_names]
    t0 = time.perf_counter()
    emb, _ = embed_genomes(model, genomes, orfs=orfs, context=context)
    embed_s = time.perf_counter() - t0
    rows = []
    names = labels["seqName"].to_numpy()
    seq_list = [genomes[s] for s in names]
    # the same ORFs the model read, cut from the aligned genomes, for a like-for-like baseline
    region = ["".join(orf_sequence(genomes[s], o) for o in orfs) for s in names]
    tr = np.flatnonzero(train)
    te = np.flatnonzero(~train)
    for col in ("clade", "who"):
        y = labels[col].to_numpy()
        seen = set(y[tr])
        for method in ("logreg", "knn"):
            out, _ = lineages(
                emb,
                labels,
                train=train,
                columns=[col],
                method="model",
                config=LineageConfig(probe=method, seed=seed),
            )
            pred = out[f"{col}_pred"].to_numpy()[te]
            rows.append(
                {"label": col, "method": f"codon LM + {method}", **_scores(y[te], pred, seen)}
            )
        pred = hamming_nn([seq_list[i] for i in tr], y[tr], [seq_list[i] for i in te])
        rows.append(
            {"label": col, "method": "Hamming 1-NN (aligned)", **_scores(y[te], pred, seen)}
        )
        pred = kmer_logreg([seq_list[i] for i in tr], y[tr], [seq_list[i] for i in te], seed=seed)
        rows.append(
            {"label": col, "method": "6-mer + logistic regression", **_scores(y[te], pred, seen)}
        )
        if orf_names is not None:
            tag = "+".join(orf_names)
            pred = hamming_nn([region[i] for i in tr], y[tr], [region[i] for i in te])
            rows.append(
                {"label": col, "method": f"Hamming 1-NN ({tag} only)", **_scores(y[te], pred, seen)}
            )
            pred = kmer_logreg([region[i] for i in tr], y[tr], [region[i] for i in te], seed=seed)
            rows.append(
                {
                    "label": col,
                    "method": f"6-mer + logreg ({tag} only)",
                    **_scores(y[te], pred, seen),
                }
            )
        major = pd.Series(y[tr]).mode()[0]
        rows.append(
            {
                "label": col,
                "method": "majority class",
                **_scores(y[te], np.full(len(te), major), seen),
            }
        )
    info = {
        "n_genomes": len(labels),
        "n_train": len(tr),
        "n_test": len(te),
        "n_test_families": len(
            {".".join(u.split(".")[:6]) for u in labels["unaliased"].to_numpy()[te]}
        ),
        "model_orfs": [o.name for o in orfs],
        "embed_seconds": embed_s,
        "genomes_per_min": len(genomes) / embed_s * 60,
    }
    return pd.DataFrame(rows), info


def perplexity_benchmark(
    models: dict[str, Path], context: int, n_held: int, seed: int
) -> tuple[pd.DataFrame, dict]:
    meta = pd.read_csv(
        DATA / "genbank_1000_lapis_silo/metadata.tsv", sep="\t", dtype=str, keep_default_na=False
    )
    seqs = read_fasta(DATA / "genbank_1000_lapis_silo/aligned.fasta.xz")
    late = meta["date"] >= "2021-01-01"
    held = meta.loc[late, "genbankAccession"].sample(frac=1.0, random_state=seed).tolist()[:n_held]
    early = meta.loc[~late & (meta["date"] != ""), "genbankAccession"].tolist()
    orfs = default_orfs()
    ref = reference_sequence()
    # codon-frequency baseline from the fine-tuning (earlier) genomes, add-one smoothed
    counts = {o.name: np.ones(69) for o in orfs}
    for name in early:
        docs, _ = encode_orfs(seqs[name], orfs)
        for o, d in zip(orfs, docs, strict=True):
            counts[o.name] += np.bincount(d[d >= 5], minlength=69)
    tables = {}
    held_genomes = {n: seqs[n] for n in held}
    for label, folder in models.items():
        model, _ = load_codon_model(folder, device="cpu")
        _, _, ot = score_genomes(model, held_genomes, context=context)
        tables[label] = ot
    base = next(iter(tables.values()))
    rows = []
    for orf in [*(o.name for o in orfs), "ALL"]:
        row = {"orf": orf}
        for label, ot in tables.items():
            sub = ot if orf == "ALL" else ot[ot["orf"] == orf]
            row[label] = float(np.exp(sub["nll"].sum() / max(sub["n_scored"].sum(), 1)))
        # unigram: score the same tokens (all codons that the model scored in each ORF)
        nll, cnt = 0.0, 0
        for name in held:
            docs, _ = encode_orfs(seqs[name], orfs)
            for o, d in zip(orfs, docs, strict=True):
                if orf not in ("ALL", o.name):
                    continue
                p = counts[o.name][5:] / counts[o.name][5:].sum()
                ids = d[1:][d[1:] >= 5]
                nll -= float(np.log(p[ids - 5]).sum())
                cnt += len(ids)
        row["codon unigram"] = float(np.exp(nll / max(cnt, 1)))
        # reference copy: p(reference codon at this ORF position) = 1 - eps, others eps / 63
        eps, same, total = 1e-3, 0, 0
        for name in held:
            for o in orfs:
                if orf not in ("ALL", o.name):
                    continue
                g, r = orf_sequence(seqs[name], o), orf_sequence(ref, o)
                for k in range(0, len(r), 3):
                    c = g[k : k + 3]
                    if set(c) <= set("ACGT"):
                        total += 1
                        same += c == r[k : k + 3]
        nll_ref = -(same * np.log(1 - eps) + (total - same) * np.log(eps / 63))
        row["reference copy"] = float(np.exp(nll_ref / max(total, 1)))
        row["uniform"] = 64.0
        row["n_codons"] = int(
            (base if orf == "ALL" else base[base["orf"] == orf])["n_scored"].sum()
        )
        rows.append(row)
    return pd.DataFrame(rows), {"n_held_out": len(held), "n_finetune_pool": len(early)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrained", type=Path, required=True)
    ap.add_argument("--finetuned", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-lineages", type=int, default=600, help="Pango consensus genomes sampled")
    ap.add_argument("--n-perplexity", type=int, default=30, help="held-out GenBank genomes scored")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--orfs", default="", help="comma-separated ORFs the model embeds (default all)"
    )
    ap.add_argument("--skip-lineages", action="store_true")
    ap.add_argument("--skip-perplexity", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    if not args.skip_perplexity:
        ppl, pinfo = perplexity_benchmark(
            {"pretrained": args.pretrained, "fine-tuned": args.finetuned},
            args.context,
            args.n_perplexity,
            args.seed,
        )
        ppl.to_csv(args.out / "perplexity_per_orf.tsv", sep="\t", index=False)
        result["perplexity"] = pinfo
        print(_md(ppl, 2))
    if not args.skip_lineages:
        orf_names = args.orfs.split(",") if args.orfs else None
        table, info = lineage_benchmark(
            args.finetuned, args.n_lineages, args.context, args.seed, orf_names
        )
        table.to_csv(args.out / "lineages.tsv", sep="\t", index=False)
        result["lineages"] = info
        print(_md(table))
    (args.out / "info.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
