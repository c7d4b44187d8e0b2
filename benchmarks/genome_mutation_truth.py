"""Check the mutation caller against external truth: Nextclade's lineage-defining mutations.

Each Pango consensus genome (``sarscov2/pango_consensus``) is ungapped, as a raw genome would
arrive, re-aligned to Wuhan-Hu-1 with minimap2 and its mutations called; the calls are compared
with the cumulative mutations of the tip of the same name in the Nextclade reference tree
(``lineages/nextclade_lineage_mutations.tsv.gz``). Reported: precision and recall of nucleotide
substitutions, deleted positions and amino-acid substitutions/deletions, pooled over lineages
(micro) and per lineage (share of lineages with an exact match, worst lineages listed).

Usage::

    python benchmarks/genome_mutation_truth.py [--data ../shared/data] [--n 0] [--jobs 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from lifelm.data.genomes.align import Reference, call_many
from lifelm.io.fasta import iter_fasta


def _expand(ranges: str) -> set[int]:
    out: set[int] = set()
    for item in filter(None, ranges.split(",")):
        a, _, b = item.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def _pr(tp: int, n_called: int, n_true: int) -> tuple[float, float]:
    return (tp / n_called if n_called else 1.0, tp / n_true if n_true else 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--n", type=int, default=0, help="random subset of lineages (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the subset")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument(
        "--out", default="benchmarks/results/genome_mutation_truth", help="output folder"
    )
    args = ap.parse_args()
    root = Path(args.data) / "genomes"
    truth = pd.read_csv(
        root / "lineages/nextclade_lineage_mutations.tsv.gz",
        sep="\t",
        dtype=str,
        keep_default_na=False,
    ).set_index("lineage")
    gapped = {
        r.name: r.sequence
        for r in iter_fasta(root / "sarscov2/pango_consensus/pango_consensus_genome_nuc.fasta.xz")
        if r.name in truth.index
    }
    ref = Reference.sarscov2().sequence
    records = [(name, seq.replace("-", "")) for name, seq in gapped.items()]
    n_fasta = sum(
        1 for _ in iter_fasta(root / "sarscov2/pango_consensus/pango_consensus_genome_nuc.fasta.xz")
    )
    if args.n:
        records = random.Random(args.seed).sample(records, min(args.n, len(records)))
    t0 = time.perf_counter()
    rows = []
    kinds = ("nuc_sub", "nuc_sub_vs_input", "nuc_del_pos", "aa_sub", "aa_del")
    absent = Counter()  # truth substitutions the consensus genome itself does not carry
    totals = {k: Counter() for k in kinds}
    misses = {k: Counter() for k in kinds}
    extras = {k: Counter() for k in kinds}
    for name, _aln, m in call_many(records, n_jobs=args.jobs, chunksize=16):
        t = truth.loc[name]
        true_aa = set(filter(None, t.aa_mutations.split(",")))
        g = gapped[name]
        called_subs = {f"{r}{p}{a}" for p, r, a in m.substitutions}
        true_subs = set(filter(None, t.nuc_substitutions.split(",")))
        absent.update(x for x in true_subs - called_subs if g[int(x[1:-1]) - 1] != x[-1])
        in_input = {f"{ref[i]}{i + 1}{c}" for i, c in enumerate(g) if c in "ACGT" and c != ref[i]}
        sets = {
            "nuc_sub": (true_subs, called_subs),
            "nuc_sub_vs_input": (in_input, called_subs),
            "nuc_del_pos": (
                _expand(t.nuc_deletions),
                {p for a, b in m.deletions for p in range(a, b + 1)},
            ),
            "aa_sub": (
                {x for x in true_aa if not x.endswith("-")},
                {str(x) for x in m.aa_substitutions},
            ),
            "aa_del": ({x for x in true_aa if x.endswith("-")}, {str(x) for x in m.aa_deletions}),
        }
        row = {"lineage": name, "frameshifts": len(m.frameshifts)}
        for k, (true, called) in sets.items():
            tp = len(true & called)
            totals[k].update(tp=tp, called=len(called), true=len(true))
            misses[k].update(true - called)
            extras[k].update(called - true)
            row[f"{k}_tp"], row[f"{k}_fp"], row[f"{k}_fn"] = (
                tp,
                len(called - true),
                len(true - called),
            )
        rows.append(row)
    elapsed = time.perf_counter() - t0
    per = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per.to_csv(out / "per_lineage.tsv", sep="\t", index=False)
    lines = [
        f"lineages compared: {len(per)} (of {n_fasta} consensus genomes; the rest are newer than the tree)",
        f"time: {elapsed:.1f} s with {args.jobs} process(es), {len(per) / elapsed * 60:.0f} genomes/min",
        "",
        "| call | truth | called | TP | precision | recall | lineages exact |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for k in kinds:
        c = totals[k]
        p, r = _pr(c["tp"], c["called"], c["true"])
        exact = ((per[f"{k}_fp"] == 0) & (per[f"{k}_fn"] == 0)).mean()
        lines.append(
            f"| {k} | {c['true']} | {c['called']} | {c['tp']} | {p:.4f} | {r:.4f} | {exact:.3f} |"
        )
    lines.append("")
    lines.append(
        f"nuc_sub misses whose alt base is not in the consensus genome itself (truth/input mismatch, "
        f"not a caller error): {sum(absent.values())} of {totals['nuc_sub']['true'] - totals['nuc_sub']['tp']}; "
        f"most frequent {absent.most_common(5)}"
    )
    for k in kinds:
        lines.append(f"most frequent misses ({k}): {misses[k].most_common(8)}")
        lines.append(f"most frequent extra calls ({k}): {extras[k].most_common(8)}")
    per["errors"] = sum(per[f"{k}_fp"] + per[f"{k}_fn"] for k in kinds)
    worst = per.sort_values("errors", ascending=False).head(10)
    lines.append("")
    lines.append(
        "worst lineages (fp+fn over all kinds): "
        + ", ".join(f"{r.lineage} ({r.errors})" for r in worst.itertuples())
    )
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
