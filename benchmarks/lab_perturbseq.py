"""Lab in the loop, Perturb-seq setting: experiments needed to find the strongest perturbations and
Norman's synergistic pairs, and the response model's accuracy on the untested pool, per strategy.

Protocol (fixed here, so any Perturb-seq file of the same format runs unchanged):

* pools: ``norman19`` = the Norman et al. 2019 K562 CRISPRa cells of the PerturBench devel file
  (``dataset == norman19``; 18 singles + 15 pairs = 33 perturbations, 500 HVGs), synergistic pairs
  from Norman's GI map (``processed_emap.csv``: GI score in the map's lower 10 %, 6 of the 15
  pairs); ``papalexi21`` = Papalexi et al. 2021 THP-1 ECCITE-seq knock-outs (25 targets, 299 genes);
* split: by perturbation; the pool is every perturbation of the file, tested in ``BATCH``-sized
  rounds until the pool is spent (norman19 11 × 3, papalexi21 5 × 5), so every curve reaches 100 %
  and "experiments needed" is always observed; round 1 is the same random batch for every
  strategy (paired by seed); seeds 0..``SEEDS``-1;
* hits: the strongest 10 % of the pool by the L2 norm of the full-data mean expression shift vs
  control (targets left out): 4 of 33 and 3 of 25;
* oracle: each experiment reveals the mean shift of a bootstrap of the perturbation's cells minus
  a bootstrap of the control cells (the data's own cell noise);
* features: the number of targets and the ``response`` source (the response model's predicted
  magnitude, refitted each round on the read-outs); papalexi21 also runs with the targets'
  co-expression in PBMC 3k (``+pbmc``, monocytes are the nearest cells in shared data);
* response accuracy: after each round, the baselines of ``lifelm bench perturbation`` refitted on
  the read-outs, scored on the untested pool against the full data (mean Pearson of the deltas,
  all genes, and top-20 DE genes), next to the mean-shift baseline.

GI-map pair screen (``--gi-screen``): every pair of Norman's GI map (112 genes, 6,216 pairs) is a
candidate, an experiment reveals its GI score, the hits are the 622 synergistic pairs (GI in the
map's lower 10 %); 5 rounds × 128 pairs (10 % of the map), seeds 0..4; features: the singles'
growth phenotypes and the per-round GI profiles of the two genes (:mod:`lifelm.lab.gimap`).

Run: ``PYTHONPATH=src python benchmarks/lab_perturbseq.py --data ../shared/data --out runs/lab_ps``
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import pandas as pd

from lifelm.lab import LoopConfig, expression_features, run_loop
from lifelm.lab.features import ALL_SOURCES
from lifelm.lab.perturbseq import load_perturbseq, perturbation_features
from lifelm.lab.strategies import STRATEGIES

SEEDS = 10
DATASETS = {
    "norman19": {
        "path": "singlecell/perturbation/perturbench_devel_norman2019_mcfaline2023_500hvg.h5ad",
        "subset": {"dataset": "norman19"},
        "gi_map": "screens/norman2019_gi/processed_emap.csv",
        "batch": 3,
        "expression": None,
    },
    "papalexi21": {
        "path": "singlecell/perturbation/papalexi2021_eccite_thp1_sceptre_299genes.h5ad",
        "subset": None,
        "gi_map": None,
        "batch": 5,
        "expression": None,
    },
    "papalexi21+pbmc": {
        "path": "singlecell/perturbation/papalexi2021_eccite_thp1_sceptre_299genes.h5ad",
        "subset": None,
        "gi_map": None,
        "batch": 5,
        "expression": "singlecell/pbmc3k/pbmc3k_seurat_counts.h5ad",
    },
}


def needed(curve: pd.DataFrame, found: str, total: str, share: float = 1.0) -> int:
    """Experiments until ``share`` of the set is found (the pool is always spent, so it exists)."""
    goal = math.ceil(share * curve[total].iloc[0])
    return int(curve.loc[curve[found] >= goal, "n_tested"].iloc[0])


def run(
    data: Path,
    out: Path,
    *,
    datasets: list[str],
    seeds: int,
    strategies: tuple[str, ...],
    surrogates: tuple[str, ...],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    import anndata as ad

    summary, curves, accs = [], [], []
    for name in datasets:
        spec = DATASETS[name]
        screen = load_perturbseq(
            data / spec["path"],
            subset=spec["subset"],
            gi_map=data / spec["gi_map"] if spec["gi_map"] else None,
        )
        gene_feats = None
        if spec["expression"]:
            targets = sorted({g for p in screen.genes for g in p.split("+")})
            gene_feats = expression_features(targets, ad.read_h5ad(data / spec["expression"]))
        feats = perturbation_features(screen, gene_feats)
        batch = spec["batch"]
        rounds = len(screen.genes) // batch
        print(f"{name}: {len(screen.genes)} perturbations, {len(screen.hits)} hits "
              f"({sorted(screen.hits)}), {screen.notes}, {rounds} rounds × {batch}", flush=True)  # fmt: skip
        for surrogate in surrogates:
            for strategy in strategies:
                if surrogate != "forest" and strategy == "random":
                    continue
                for seed in range(seeds):
                    cfg = LoopConfig(strategy=strategy, rounds=rounds, batch_size=batch, seed=seed,
                                     feature_sources=ALL_SOURCES, surrogate=surrogate)  # fmt: skip
                    t0 = time.time()
                    with tempfile.TemporaryDirectory() as tmp:
                        res = run_loop(screen, tmp, config=cfg, features=feats)
                        acc = pd.read_csv(Path(tmp) / "response_accuracy.csv")
                    key = {
                        "dataset": name,
                        "strategy": strategy,
                        "surrogate": surrogate,
                        "seed": seed,
                    }
                    c = res.curve
                    row = {**key, "pool": len(screen.genes), "hits": len(screen.hits),
                           "to_all_hits": needed(c, "hits_found", "hits_in_pool"),
                           "to_half_hits": needed(c, "hits_found", "hits_in_pool", 0.5)}  # fmt: skip
                    if "synergy_found" in c:
                        row["synergy"] = int(c.synergy_in_pool.iloc[0])
                        row["to_all_synergy"] = needed(c, "synergy_found", "synergy_in_pool")
                        row["to_half_synergy"] = needed(c, "synergy_found", "synergy_in_pool", 0.5)
                    summary.append(row)
                    curves.append(c.assign(**key))
                    accs.append(acc.assign(**key))
                    print(f"{name} {strategy}/{surrogate} seed {seed}: all hits after "
                          f"{row['to_all_hits']}{', all synergy after ' + str(row['to_all_synergy']) if 'to_all_synergy' in row else ''}"
                          f" ({time.time() - t0:.1f}s)", flush=True)  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(summary).to_csv(out / "summary.csv", index=False)
        pd.concat(curves).to_csv(out / "curves.csv", index=False)
        pd.concat(accs).to_csv(out / "response_accuracy.csv", index=False)
    return pd.DataFrame(summary), pd.concat(curves), pd.concat(accs)


GI_MAP = "screens/norman2019_gi/processed_emap.csv"
GI_SINGLES = "screens/norman2019_gi/single_fitnesses.csv"
GI_ROUNDS, GI_BATCH, GI_SEEDS = 5, 128, 5


def run_gi(data: Path, out: Path, *, seeds: int, strategies: tuple[str, ...]) -> pd.DataFrame:
    """The GI-map pair screen: hit ratio (synergistic pairs found) per round and strategy."""
    from lifelm.lab.gimap import (
        PairProfileLearner,
        load_gi_screen,
        pair_features,
        read_single_phenotypes,
    )

    screen = load_gi_screen(data / GI_MAP)
    feats = pair_features(screen, read_single_phenotypes(data / GI_SINGLES))
    print(f"GI map: {len(screen.genes)} pairs, {len(screen.hits)} hits; {screen.hit_source}")
    rows = []
    for strategy in strategies:
        for seed in range(seeds):
            cfg = LoopConfig(strategy=strategy, rounds=GI_ROUNDS, batch_size=GI_BATCH, seed=seed,
                             feature_sources=ALL_SOURCES)  # fmt: skip
            t0 = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                res = run_loop(
                    screen, tmp, config=cfg, features=feats, learner=PairProfileLearner()
                )
            rows += [
                {"strategy": strategy, "seed": seed, **r} for r in res.curve.to_dict("records")
            ]
            print(f"GI {strategy} seed {seed}: {res.curve.hit_ratio.iloc[-1]:.3f} "
                  f"({time.time() - t0:.1f}s)", flush=True)  # fmt: skip
    df = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "gi_screen.csv", index=False)
    return df


def gi_table(df: pd.DataFrame) -> str:
    n_hits = int(df.hits_in_pool.iloc[0])
    lines = [f"\n### Norman GI map, all 6,216 pairs: synergistic pairs found (% of {n_hits}) after "
             f"each round of {GI_BATCH}, mean ± sd over {df.seed.nunique()} seeds\n",
             "| strategy | " + " | ".join(f"round {r + 1} ({(r + 1) * GI_BATCH})" for r in range(GI_ROUNDS))
             + " | final − random (sd of diff) |", "|---" * (GI_ROUNDS + 2) + "|"]  # fmt: skip
    last = df[df["round"] == GI_ROUNDS - 1].set_index(["strategy", "seed"]).hit_ratio
    for strat, g in df.groupby("strategy", sort=False):
        cells = [f"{100 * g[g['round'] == r].hit_ratio.mean():.2f} ± "
                 f"{100 * g[g['round'] == r].hit_ratio.std(ddof=1):.2f}" for r in range(GI_ROUNDS)]  # fmt: skip
        d = 100 * (last.loc[strat] - last.loc["random"])
        cells.append("—" if strat == "random" else f"{d.mean():+.2f} ({d.std(ddof=1):.2f})")
        lines.append(f"| {strat} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(v: pd.Series) -> str:
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def tables(summary: pd.DataFrame, acc: pd.DataFrame) -> str:
    lines = []
    for name, g in summary.groupby("dataset", sort=False):
        n, k = int(g.pool.iloc[0]), int(g.hits.iloc[0])
        cols = [
            ("to_all_hits", f"all {k} hits"),
            ("to_half_hits", f"{math.ceil(k / 2)} of {k} hits"),
        ]
        ref = [f"{k * (n + 1) / (k + 1):.1f}", f"{_expected_kth(n, k, math.ceil(k / 2)):.1f}"]
        if "to_all_synergy" in g and g.to_all_synergy.notna().any():
            s = int(g.synergy.iloc[0])
            cols += [("to_all_synergy", f"all {s} synergistic pairs"),
                     ("to_half_synergy", f"{math.ceil(s / 2)} of {s} synergistic")]  # fmt: skip
            ref += [f"{s * (n + 1) / (s + 1):.1f}", f"{_expected_kth(n, s, math.ceil(s / 2)):.1f}"]
        lines.append(f"\n### {name}: experiments needed (of {n}), mean ± sd over {g.seed.nunique()} seeds; "
                     "last column: paired difference to random for all hits, mean (sd)\n")  # fmt: skip
        lines.append(
            "| strategy | surrogate | " + " | ".join(c[1] for c in cols) + " | all hits − random |"
        )
        lines.append("|---" * (len(cols) + 3) + "|")
        lines.append("| random, expected (no model) | — | " + " | ".join(ref) + " | — |")
        rand = g[g.strategy == "random"].set_index("seed")
        for (strat, sur), s in g.groupby(["strategy", "surrogate"], sort=False):
            cells = [_ms(s[c]) for c, _ in cols]
            d = s.set_index("seed").to_all_hits - rand.to_all_hits
            diff = "—" if strat == "random" else f"{d.mean():+.1f} ({d.std(ddof=1):.1f})"
            lines.append(f"| {strat} | {sur} | " + " | ".join(cells) + f" | {diff} |")
        a = acc[(acc.dataset == name) & (acc.surrogate == "forest")]
        for strat in ("random", "greedy"):
            b = a[a.strategy == strat]
            if b.empty:
                continue
            lines.append(f"\n{name}, strategy {strat}: response model on the untested pool after each round "
                         "(mean Pearson of predicted vs measured delta, all genes / top-20 DE; mean ± sd over seeds)\n")  # fmt: skip
            methods = [
                m for m in ("mean_shift", "linear", "additive", "lab_model") if m in set(b.method)
            ]
            lines.append("| round | tested | " + " | ".join(methods) + " |")
            lines.append("|---" * (len(methods) + 2) + "|")
            for r, br in b.groupby("round"):
                cells = []
                for m in methods:
                    x = br[br.method == m]
                    if x.empty:
                        cells.append("—")
                        continue
                    extra = f" (n={x.n_scored.mean():.1f})" if m == "additive" else ""
                    cells.append(f"{x.pearson.mean():.3f} ± {x.pearson.std(ddof=1):.3f} / "
                                 f"{x.pearson_de.mean():.3f}{extra}")  # fmt: skip
                lines.append(
                    f"| {r + 1} | {int(br.n_tested.iloc[0])} | " + " | ".join(cells) + " |"
                )
    return "\n".join(lines)


def _expected_kth(n: int, k: int, j: int) -> float:
    """Expected position of the j-th of k marked items in a random order of n: j(n+1)/(k+1)."""
    return j * (n + 1) / (k + 1)


def plot(curves: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(curves.dataset))
    sets = [("hit_ratio", "strongest 10 %")] + (
        [("synergy_ratio", "synergistic pairs")] if "synergy_ratio" in curves else []
    )
    fig, axes = plt.subplots(
        len(sets), len(names), figsize=(4.2 * len(names), 3.4 * len(sets)), squeeze=False
    )
    for j, name in enumerate(names):
        for i, (col, label) in enumerate(sets):
            ax = axes[i, j]
            c = curves[curves.dataset == name]
            if col not in c or c[col].isna().all():
                ax.axis("off")
                continue
            for (strat, sur), g in c.groupby(["strategy", "surrogate"], sort=False):
                m = g.groupby("n_tested")[col].agg(["mean", "std"])
                ax.plot(m.index, 100 * m["mean"], label=f"{strat}/{sur}")
                ax.fill_between(
                    m.index, 100 * (m["mean"] - m["std"]), 100 * (m["mean"] + m["std"]), alpha=0.12
                )
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xlabel("perturbations tested")
            ax.set_ylabel("% found (mean ± sd)")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="shared/data folder")
    p.add_argument("--out", type=Path, default=Path("runs/lab_perturbseq"))
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", type=int, default=SEEDS)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--surrogates", nargs="+", default=["forest"], choices=["forest", "mc_dropout"])
    p.add_argument("--gi-screen", action="store_true", help="run only the GI-map pair screen")
    a = p.parse_args()
    if a.gi_screen:
        text = gi_table(
            run_gi(a.data, a.out, seeds=min(a.seeds, GI_SEEDS), strategies=tuple(a.strategies))
        )
        (a.out / "gi_table.md").write_text(text)
        print(text)
        return
    summary, curves, acc = run(a.data, a.out, datasets=a.datasets, seeds=a.seeds,
                               strategies=tuple(a.strategies), surrogates=tuple(a.surrogates))  # fmt: skip
    text = tables(summary, acc)
    (a.out / "table.md").write_text(text)
    plot(curves, a.out / "curves.png")
    print(text)


if __name__ == "__main__":
    main()
