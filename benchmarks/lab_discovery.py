"""Lab-in-the-loop discovery on real genome-wide CRISPR screens: every strategy next to random.

Protocol (fixed here, so any screen file of the same format runs unchanged):

* screens: BioDiscoveryAgent's tables in ``shared/data/screens/biodiscoveryagent`` (gene scores and
  the authors' hit lists); the direction sought is fixed per screen below;
* pool: every gene of the screen; ``ROUNDS`` = 5 rounds of ``BATCH`` = 128 genes (BioDiscoveryAgent's
  batch size; 640 of ~18,000 genes, 3.5 % of the screen); seeds 0..``SEEDS``-1 (a seed fixes the shared random first round,
  the forest and the Thompson draws);
* measure: hit ratio after each round = share of the authors' hits found so far;
* features: ``expression``/``coexpression`` from PBMC 3k (10x, 2,638 cells, the T-cell screens'
  nearest cells in shared data) and the ``neighbours`` source (earlier rounds' outcomes);
  no cell-model embeddings (no pretrained LifeLM checkpoint in shared data);
* ablation: the ``greedy`` strategy with each feature source left out;
* surrogate: the random-forest ensemble (default) or, with ``--surrogates mc_dropout``, the
  MC-dropout MLP (dropout kept on at prediction, 32 passes); rows carry a ``surrogate`` column.

Run: ``PYTHONPATH=src python benchmarks/lab_discovery.py --data ../shared/data --out runs/lab_bench``
(prints Markdown tables of mean ± sd over seeds and writes ``results.csv``, ``table.md``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lifelm.lab import LoopConfig, expression_features, load_screen, run_loop
from lifelm.lab.strategies import STRATEGIES

ROUNDS = 5
BATCH = 128
SEEDS = 5
SCREENS = {
    "IFNG": "both",
    "IL2": "both",
    "Carnevale22_Adenosine": "both",
    "Steinhart_crispra_GD2_D22": "up",
    "Scharenberg22": "up",  # 1,061-gene library: 5 × 128 is most of it, not a default screen
}
DEFAULT_SCREENS = ["IFNG", "IL2", "Carnevale22_Adenosine", "Steinhart_crispra_GD2_D22"]
EXPRESSION = "singlecell/pbmc3k/pbmc3k_seurat_counts.h5ad"
FULL_SOURCES = ("expression", "coexpression", "neighbours")


def run(
    data: Path,
    out: Path,
    *,
    screens: list[str],
    seeds: int,
    ablation: bool,
    strategies: tuple[str, ...] = STRATEGIES,
    surrogates: tuple[str, ...] = ("forest",),
) -> pd.DataFrame:
    import anndata as ad

    adata = ad.read_h5ad(data / EXPRESSION)
    ceg_file = data / "screens" / "biodiscoveryagent" / "CEGv2.txt"
    essential = set(pd.read_csv(ceg_file, sep="\t").iloc[:, 0].astype(str))
    rows = []
    for name in screens:
        d = data / "screens" / "biodiscoveryagent"
        screen = load_screen(
            d / f"ground_truth_{name}.csv",
            hits=d / f"topmovers_{name}.npy",
            direction=SCREENS[name],
        )
        feats = expression_features(screen.genes, adata)
        runs = [(s, FULL_SOURCES, sur) for sur in surrogates for s in strategies]
        runs = [r for r in runs if r[2] == "forest" or r[0] != "random"]
        if "random" in strategies and "forest" not in surrogates:  # random has no surrogate
            runs.insert(0, ("random", FULL_SOURCES, "forest"))
        if ablation:
            runs += [
                ("greedy", tuple(x for x in FULL_SOURCES if x != drop), "forest")
                for drop in FULL_SOURCES
            ]
        for strategy, sources, surrogate in runs:
            for seed in range(seeds):
                cfg = LoopConfig(
                    strategy=strategy,
                    rounds=ROUNDS,
                    batch_size=BATCH,
                    seed=seed,
                    feature_sources=sources,
                    surrogate=surrogate,
                )
                t0 = time.time()
                with tempfile.TemporaryDirectory() as tmp:
                    res = run_loop(screen, tmp, config=cfg, features=feats)
                left_out = ",".join(sorted(set(FULL_SOURCES) - set(sources))) or "-"
                # Hart's core-essential genes confound screens: the share of non-essential hits found
                ne_total = len(screen.hits - essential)
                ne_hit = res.results.hit & ~res.results.gene.isin(essential)
                ne_found = ne_hit.groupby(res.results["round"]).sum().cumsum()
                for rec in res.curve.to_dict(orient="records"):
                    rows.append(
                        {
                            "screen": name,
                            "strategy": strategy,
                            "surrogate": surrogate,
                            "left_out": left_out,
                            "seed": seed,
                            **rec,
                            "hit_ratio_nonessential": ne_found.loc[rec["round"]] / ne_total,
                        }
                    )
                out.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows).to_csv(out / "results.partial.csv", index=False)
                print(
                    f"{name} {strategy}/{surrogate} -{left_out} seed {seed}: {res.curve.hit_ratio.iloc[-1]:.3f} ({time.time() - t0:.1f}s)",
                    flush=True,
                )
    df = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "results.csv", index=False)
    return df


def tables(df: pd.DataFrame) -> str:
    lines = []
    for name, g in df.groupby("screen", sort=False):
        full = g[g.left_out == "-"]
        lines.append(
            f"\n### {name}: hit ratio (% of the authors' hits found) after each round, mean ± sd over {full.seed.nunique()} seeds\n"
        )
        lines.append(
            "| strategy | "
            + " | ".join(f"round {r + 1} ({(r + 1) * BATCH} genes)" for r in range(ROUNDS))
            + " | final − random (sd of diff) |"
        )
        lines.append("|---" * (ROUNDS + 2) + "|")
        rand = full[full.strategy == "random"].set_index(["seed", "round"]).hit_ratio
        if "surrogate" in full:
            full = full.assign(
                strategy=np.where(
                    full.surrogate == "forest",
                    full.strategy,
                    full.strategy + " (" + full.surrogate + ")",
                )
            )
        for strat, s in full.groupby("strategy", sort=False):
            cells = []
            for r in range(ROUNDS):
                v = 100 * s[s["round"] == r].hit_ratio
                cells.append(f"{v.mean():.2f} ± {v.std(ddof=1):.2f}")
            last = s[s["round"] == ROUNDS - 1].set_index("seed").hit_ratio
            diff = 100 * (last - rand.xs(ROUNDS - 1, level="round"))
            cells.append(f"{diff.mean():+.2f} ({diff.std(ddof=1):.2f})")
            lines.append(f"| {strat} | " + " | ".join(cells) + " |")
        if "hit_ratio_nonessential" in full:
            lines.append(
                f"\n{name}: final hit ratio (%) counting only hits outside Hart's core-essential genes (CEGv2)\n"
            )
            lines.append("| strategy | final non-essential hit ratio |")
            lines.append("|---|---|")
            for strat, s in full[full["round"] == ROUNDS - 1].groupby("strategy", sort=False):
                v = 100 * s.hit_ratio_nonessential
                lines.append(f"| {strat} | {v.mean():.2f} ± {v.std(ddof=1):.2f} |")
        abl = (
            g[(g.strategy == "greedy") & (g.surrogate == "forest")]
            if "surrogate" in g
            else g[g.strategy == "greedy"]
        )
        if abl.left_out.nunique() > 1:
            lines.append(
                f"\n{name}, greedy, final hit ratio (%) with one feature source left out:\n"
            )
            lines.append("| left out | final hit ratio |")
            lines.append("|---|---|")
            for lo, s in abl[abl["round"] == ROUNDS - 1].groupby("left_out"):
                v = 100 * s.hit_ratio
                lines.append(
                    f"| {lo if lo != '-' else 'none (all sources)'} | {v.mean():.2f} ± {v.std(ddof=1):.2f} |"
                )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="shared/data folder")
    p.add_argument("--out", type=Path, default=Path("runs/lab_bench"))
    p.add_argument("--screens", nargs="+", default=DEFAULT_SCREENS, choices=list(SCREENS))
    p.add_argument("--seeds", type=int, default=SEEDS)
    p.add_argument("--no-ablation", action="store_true")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--surrogates", nargs="+", default=["forest"], choices=["forest", "mc_dropout"])
    a = p.parse_args()
    df = run(
        a.data,
        a.out,
        screens=a.screens,
        seeds=a.seeds,
        ablation=not a.no_ablation,
        strategies=tuple(a.strategies),
        surrogates=tuple(a.surrogates),
    )
    text = tables(df)
    (a.out / "table.md").write_text(text)
    print(text)
    print(
        "\nfinal hit ratio over all screens and seeds:",
        np.round(
            df[df["round"] == ROUNDS - 1].groupby("strategy").hit_ratio.mean() * 100, 2
        ).to_dict(),
    )


if __name__ == "__main__":
    main()
