"""Agreement of ``lifelm genomes qc`` with Nextclade's recorded QC on the GenBank 1,000.

The 1,000 unaligned GenBank genomes (``sarscov2/genbank_1000_lapis_silo/sequences.fasta.xz``) are
aligned with minimap2 and scored by :func:`lifelm.data.genomes.qc.evaluate_qc`; the statuses are
compared with the ones Nextclade's recorded scores give (``metadata.tsv``: overall score and the
missing-data, mixed-sites, private-mutations, SNP-clusters, frame-shift and stop-codon scores,
graded good < 30 <= mediocre < 100 <= bad). Three settings are scored from one alignment:

* ``no_tree``: the private-mutation and SNP-cluster rules are not run (no reference tree);
* ``tree``: genomes placed on Nextclade's 2025-04-01 SARS-CoV-2 reference tree
  (``lineages/nextclade_sars-cov-2_wuhan-hu-1_orfs_2025-04-01_tree.json.xz``); the metadata was
  made with an older tree and Nextclade's own label list, so this is the closest honest version;
* ``nextclade_only``: as ``tree`` without LifeLM's two added sanity rules.

Usage::

    python benchmarks/genome_qc_agreement.py [--data /work/shared/data] [--n 0] [--jobs 1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from lifelm.data.genomes.align import Reference, call_many
from lifelm.data.genomes.qc import QcConfig, ReferenceTree, evaluate_qc, grade, sequence_stats
from lifelm.io.fasta import iter_fasta

#: Nextclade metadata column of each rule's score (the mixed-sites score is in ``nextcladeQcMixedSites``).
NEXTCLADE_SCORE = {
    "missingData": "nextcladeQcMissingDataScore",
    "mixedSites": "nextcladeQcMixedSites",
    "privateMutations": "nextcladeQcPrivateMutationsScore",
    "snpClusters": "nextcladeQcSnpClustersScore",
    "frameShifts": "nextcladeQcFrameShiftsScore",
    "stopCodons": "nextcladeQcStopCodonsScore",
}


def nextclade_statuses(meta: pd.DataFrame) -> pd.DataFrame:
    """Per-genome statuses (overall and per rule) from Nextclade's recorded scores."""
    out = pd.DataFrame(index=meta.index)
    score = pd.to_numeric(meta["nextcladeQcOverallScore"], errors="coerce").fillna(0)
    out["overall"] = [grade(s) for s in score]
    for rule, col in NEXTCLADE_SCORE.items():
        out[rule] = [grade(s) for s in pd.to_numeric(meta[col], errors="coerce").fillna(0)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--n", type=int, default=0, help="first N genomes only (0: all)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/genome_qc_agreement.json")
    args = ap.parse_args()
    root = Path(args.data) / "genomes"
    folder = root / "sarscov2/genbank_1000_lapis_silo"
    meta = pd.read_csv(folder / "metadata.tsv", sep="\t", dtype=str, keep_default_na=False)
    meta = meta.set_index("genbankAccession")
    truth = nextclade_statuses(meta)
    ref = Reference.sarscov2()
    t0 = time.perf_counter()
    tree = ReferenceTree.from_auspice(
        root / "lineages/nextclade_sars-cov-2_wuhan-hu-1_orfs_2025-04-01_tree.json.xz",
        ref.sequence,
    )
    t_tree = time.perf_counter() - t0
    recs = [(r.name, r.sequence) for r in iter_fasta(folder / "sequences.fasta.xz")]
    if args.n:
        recs = recs[: args.n]
    stats = {n: sequence_stats(s) for n, s in recs}
    t0 = time.perf_counter()
    calls = list(call_many(recs, reference=ref, n_jobs=args.jobs))
    t_align = time.perf_counter() - t0
    settings = {
        "no_tree": (QcConfig(), None),
        "tree": (QcConfig(), tree),
        "nextclade_only": (
            replace(QcConfig(), max_length_ratio=None, min_span_bad=None, min_span_mediocre=None),
            tree,
        ),
    }
    report: dict[str, object] = {
        "n_genomes": len(recs),
        "align_seconds": round(t_align, 1),
        "tree_nodes": len(tree),
        "tree_load_seconds": round(t_tree, 1),
        "nextclade_overall_counts": truth.loc[[n for n, _ in recs], "overall"]
        .value_counts()
        .to_dict(),
    }
    for key, (cfg, tr) in settings.items():
        rows = {}
        pm_scores = {}
        t0 = time.perf_counter()
        for name, aln, muts in calls:
            q = evaluate_qc(
                stats[name], muts if aln.is_aligned else None, len(ref.sequence), cfg, tree=tr
            )
            rows[name] = {"overall": q.status, **{r: q.rules.get(r, "") for r in NEXTCLADE_SCORE}}
            pm_scores[name] = q.scores.get("privateMutations", float("nan"))
        t_qc = time.perf_counter() - t0
        ours = pd.DataFrame.from_dict(rows, orient="index")
        t = truth.loc[ours.index]
        res: dict[str, object] = {"qc_seconds": round(t_qc, 1)}
        for col in ["overall", *NEXTCLADE_SCORE]:
            run = ours[col] != ""
            if not run.any():
                res[col] = {"agreement": None, "note": "rule not run"}
                continue
            agree = (ours.loc[run, col] == t.loc[run, col]).to_numpy()
            per_status = {
                s: round(float((ours.loc[run & (t[col] == s), col] == s).mean()), 4)
                for s in ("good", "mediocre", "bad")
                if (run & (t[col] == s)).any()
            }
            res[col] = {
                "agreement": round(float(agree.mean()), 4),
                "n": int(run.sum()),
                "recall_per_nextclade_status": per_status,
                "confusion_nextclade_to_lifelm": pd.crosstab(
                    t.loc[run, col], ours.loc[run, col]
                ).to_dict(orient="index"),
            }
        if tr is not None:
            nc = pd.to_numeric(meta.loc[ours.index, NEXTCLADE_SCORE["privateMutations"]]).fillna(0)
            ps = pd.Series(pm_scores)
            res["privateMutations_score_exact"] = round(float((abs(ps - nc) < 1e-3).mean()), 4)
            res["privateMutations_score_spearman"] = round(float(ps.corr(nc, method="spearman")), 4)
        disagree = ours.index[ours["overall"] != t["overall"]]
        res["overall_disagreements"] = {
            n: f"nextclade {t.loc[n, 'overall']} ({float(meta.loc[n, 'nextcladeQcOverallScore']):.1f}), "
            f"lifelm {ours.loc[n, 'overall']}"
            for n in disagree[:20]
        }
        report[key] = res
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            report, indent=1, default=lambda o: int(o) if isinstance(o, np.integer) else str(o)
        )
    )
    for key in settings:
        r = report[key]
        assert isinstance(r, dict)
        print(
            key,
            "overall",
            r["overall"]["agreement"],
            {c: r[c]["agreement"] for c in NEXTCLADE_SCORE},
        )
    print(f"aligned {len(recs)} genomes in {t_align:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
