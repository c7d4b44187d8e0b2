"""Zero-shot mutation scores of the codon model against measured fitness, next to simple baselines.

Truth (``shared/data/genomes/fitness``, README section 5):

* ``nt_fitness``: Bloom & Neher's nucleotide mutation fitness from natural counts (all genes);
  a random subset of ``--n-nt`` coding substitutions of Wuhan-Hu-1 (seeded).
* ``neher_aa``: R. Neher's amino-acid fitness (spike numbering: sites 1..1273, insertion site
  214a dropped), joined to the amino-acid view of a scan of Wuhan-Hu-1's S.
* ``starr_rbd``: yeast-display DMS of the RBD, ``effect`` column (ACE2 binding), Wuhan-Hu-1
  background, joined to the same S scan.
* ``dadonaite_ba1``: pseudovirus DMS of BA.1 spike, ``effect`` (cell entry), joined to an S
  scan of the BA.1 consensus genome (``--lineage BA.1`` in the CLI's terms).

Amino-acid sets only contain changes one nucleotide away from the reference codon (the scan's
amino-acid view scores each by its best single-nucleotide path); the others are counted as
"unreachable" and left out for every method alike.

Methods (higher = more tolerated for all): the codon model's ``llr`` (log-likelihood ratio of
the mutant window, ``--context`` codons on each side) and ``llr_left`` (the changed codon's own
term); baselines ``codon_matrix`` (Schneider 2005 empirical codon matrix), ``blosum62``,
``conservation`` (how often the new base occurs among the Pango consensus genomes designated
before ``--as-of``) and ``mutation_prior`` (log neutral rate of the nucleotide change class).
Every method is evaluated on the same rows (those where all have a value).

Metrics: Spearman correlation with the measured value, and AUROC for "deleterious vs
tolerated" with deleterious = measured value below a threshold: ``fitness < -3`` for the
natural-count fitness (fewer than e^-3 ~ 5% of the expected count; synonymous changes, which
are mostly neutral, rarely fall below it: the share is printed), the lowest quarter for Neher's
amino-acid fitness (its scale, 2.1 to 9.5, has no neutral zero), and ``effect < -1`` for the
DMS (a 10-fold loss of ACE2 binding in log10 Kd units; for cell entry the published log-scale
effect of -1 is where mutations start to lose entry clearly). AUROC is for predicting
deleterious from ``-score``; 0.5 is chance.

Usage::

    python benchmarks/genome_mutation_scores.py -m runs/sc2_tiny/model --out runs/bench_mutscore \
        [--data ../shared/data] [--context 16] [--n-nt 10000] [--as-of 2021-12-31]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from lifelm.data.genomes.align import Reference
from lifelm.io.fasta import read_fasta
from lifelm.tasks.genomes.codon_lm import load_codon_model
from lifelm.tasks.genomes.mutscore import (
    aa_table,
    add_baselines,
    all_substitutions,
    per_substitution,
    substitution_table,
)

METHODS = ("llr", "llr_left", "codon_matrix", "blosum62", "conservation", "mutation_prior")


def _metrics(df: pd.DataFrame, truth: str, threshold: float, name: str) -> list[dict]:
    keep = df[[truth, *METHODS]].notna().all(axis=1)
    d = df[keep]
    y = (d[truth] < threshold).to_numpy()
    rows = []
    for m in METHODS:
        rho = spearmanr(d[m], d[truth]).statistic
        auc = roc_auc_score(y, -d[m]) if 0 < y.sum() < len(y) else float("nan")
        rows.append(
            {
                "truth": name,
                "method": m,
                "n": len(d),
                "n_deleterious": int(y.sum()),
                "spearman": float(rho),
                "auroc": float(auc),
            }
        )
    return rows


def _md(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for row in df.itertuples(index=False):
        lines.append(
            "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
        )
    return "\n".join(lines)


def _scan(model, ref, subs, consensus, rates, context, label: str) -> pd.DataFrame:
    t0 = time.perf_counter()
    table = substitution_table(model, ref, subs, context_codons=context)
    table = add_baselines(table, consensus=consensus, rates=rates)
    print(
        f"{label}: scored {len(subs)} substitutions in {time.perf_counter() - t0:.0f} s", flush=True
    )
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True, help="codon model folder")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--out", default="runs/bench_mutscore")
    ap.add_argument("--context", type=int, default=16, help="codons of context each side")
    ap.add_argument("--n-nt", type=int, default=10_000, help="nt-fitness rows scored (0: all)")
    ap.add_argument(
        "--as-of", default="2021-12-31", help="conservation: lineages designated before"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root = Path(args.data) / "genomes"
    fit = root / "fitness"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, _ = load_codon_model(args.model, device="cpu")
    ref = Reference.sarscov2().sequence
    cons = read_fasta(root / "sarscov2/pango_consensus/pango_consensus_genome_nuc.fasta.xz")
    labels = pd.read_csv(
        root / "sarscov2/pango_consensus/lineage_labels.tsv",
        sep="\t",
        dtype=str,
        keep_default_na=False,
    )
    when = pd.to_datetime(labels["designation_date"], errors="coerce")
    known = set(labels.loc[when < pd.Timestamp(args.as_of), "lineage"])
    consensus = [s for k, s in cons.items() if k in known]
    rates = pd.read_csv(fit / "synonymous_rates_by_clade.csv")
    results: list[dict] = []
    t_start = time.perf_counter()

    # 1. nucleotide fitness (natural counts)
    nt = pd.read_csv(fit / "nt_fitness_public_2024-11-06.csv")
    nt = nt[nt["expected_count"] >= 10]
    nt["substitution"] = [
        f"{ref[p - 1]}{p}{a}" for p, a in zip(nt["nt_site"], nt["nt"], strict=True)
    ]
    nt = nt[nt["substitution"].str[0] != nt["substitution"].str[-1]]
    coding = set(all_substitutions(ref))
    nt = nt[nt["substitution"].isin(coding)]
    if args.n_nt and len(nt) > args.n_nt:
        nt = nt.sample(args.n_nt, random_state=args.seed)
    table = _scan(
        model, ref, nt["substitution"].tolist(), consensus, rates, args.context, "nt_fitness"
    )
    scored = per_substitution(table)
    scored["fitness"] = nt["fitness"].to_numpy()
    syn = scored["synonymous"].astype(bool)
    print(
        f"nt_fitness: share of synonymous changes with fitness < -3: "
        f"{(scored.loc[syn, 'fitness'] < -3).mean():.3f}; of nonsynonymous: "
        f"{(scored.loc[~syn, 'fitness'] < -3).mean():.3f}"
    )
    results += _metrics(scored, "fitness", -3.0, "nt_fitness (all)")
    results += _metrics(scored[~syn], "fitness", -3.0, "nt_fitness (non-synonymous)")

    # 2. amino-acid sets on S: Wuhan-Hu-1 background, then BA.1
    s_orf = Reference.sarscov2().orf("S")
    s_subs = all_substitutions(ref, region=(s_orf.start, s_orf.end))
    aa_wu = aa_table(
        _scan(model, ref, s_subs, consensus, rates, args.context, "S scan (Wuhan-Hu-1)")
    )
    aa_wu = aa_wu[aa_wu["orf"] == "S"].set_index(["codon", "alt_aa"])

    neher = pd.read_csv(fit / "Neher_aa_fitness.csv")
    parts = neher["mutation"].str.extract(r"^([A-Z*])(\d+)([A-Z*])$").dropna()
    neher = (
        neher.loc[parts.index]
        .assign(wt=parts[0], site=parts[1].astype(int), mut=parts[2])
        .dropna(subset=["aa_fitness"])
    )
    neher = neher[neher["wt"] != neher["mut"]]
    starr = pd.read_csv(fit / "dms_starr_rbd_processed.csv")
    starr = starr[starr["wildtype"] != starr["mutant"]]

    def join(df, site, mut, table) -> tuple[pd.DataFrame, int]:
        idx = pd.MultiIndex.from_arrays([df[site].astype(int), df[mut]])
        hit = idx.isin(table.index)
        joined = pd.concat(
            [df[hit].reset_index(drop=True), table.loc[idx[hit]].reset_index()], axis=1
        )
        return joined, int((~hit).sum())

    j, miss = join(neher, "site", "mut", aa_wu)
    print(f"neher_aa: {len(j)} joined, {miss} not one nucleotide away (left out)")
    # Neher's scale has no zero (2.1 .. 9.5, no stop codons): deleterious = its lowest quarter
    q25 = float(j["aa_fitness"].quantile(0.25))
    print(f"neher_aa: deleterious = aa_fitness < {q25:.2f} (the lowest quarter)")
    results += _metrics(j, "aa_fitness", q25, "Neher aa fitness (S), lowest 25%")
    j, miss = join(starr, "site", "mutant", aa_wu)
    wt_ok = (j["wildtype"] == j["ref_aa"]).mean()
    print(f"starr_rbd: {len(j)} joined, {miss} unreachable; wildtype agrees {wt_ok:.3f}")
    results += _metrics(j, "effect", -1.0, "Starr RBD ACE2 binding")

    ba1 = cons["BA.1"]
    ba1_subs = all_substitutions(ba1, region=(s_orf.start, s_orf.end))
    aa_ba1 = aa_table(_scan(model, ba1, ba1_subs, consensus, rates, args.context, "S scan (BA.1)"))
    aa_ba1 = aa_ba1[aa_ba1["orf"] == "S"].set_index(["codon", "alt_aa"])
    dad = pd.read_csv(fit / "dms_dadonaite_ba1_spike_processed.csv")
    dad = dad[dad["wildtype"] != dad["mutant"]]
    dad = dad[pd.to_numeric(dad["site"], errors="coerce").notna()]
    j, miss = join(dad, "site", "mutant", aa_ba1)
    wt_ok = (j["wildtype"] == j["ref_aa"]).mean()
    print(f"dadonaite_ba1: {len(j)} joined, {miss} unreachable; wildtype agrees {wt_ok:.3f}")
    results += _metrics(j, "effect", -1.0, "Dadonaite BA.1 cell entry")

    res = pd.DataFrame(results)
    (out / "results.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "n_consensus_genomes": len(consensus),
                "seconds": time.perf_counter() - t_start,
                "results": results,
            },
            indent=1,
        )
    )
    md = _md(res)
    (out / "table.md").write_text(md + "\n")
    print(md)
    print(f"conservation from {len(consensus)} consensus genomes designated before {args.as_of}")


if __name__ == "__main__":
    main()
