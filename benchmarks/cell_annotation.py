"""Cell-type annotation and embedding quality on the shared PBMC datasets, model next to baselines.

Runs ``lifelm.cells.evaluate`` on:

- within-study stratified 80/20 splits (seed 0) of pbmc3k, Zheng 2017 sorted PBMCs and Kang 2018 controls;
- cross-technology: Ding 2020 Drop-seq cells as reference, inDrops cells as query;
- cross-study: pbmc3k as reference, Kang 2018 controls as query, on harmonised coarse labels
  (the map below; labels outside it are left out and counted).

Usage::

    python benchmarks/cell_annotation.py --model runs/pbmc_tiny/model --data ../shared/data [--finetune-steps 300]

``--cross-study`` instead runs ``lifelm.cells.annotate`` (the user-facing command, with calibration,
abstention and the baseline on held-out reference cells) from Zheng 2017 sorted PBMCs to pbmc3k on 5
harmonised classes, once per ``--modes`` (knn, finetune), and prints model vs majority vs PCA+logreg on
the held-out reference and on the query, with ECE and abstention rates::

    python benchmarks/cell_annotation.py --model runs/pbmc_tiny/model --data ../shared/data --cross-study
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad

import lifelm.cells as lc
from lifelm.training.loop import TrainConfig

# coarse labels shared by pbmc3k (Seurat tutorial) and Kang 2018 (GEO annotation)
COARSE = {
    "Naive CD4 T": "CD4 T",
    "Memory CD4 T": "CD4 T",
    "CD4 T cells": "CD4 T",
    "CD8 T": "CD8 T",
    "CD8 T cells": "CD8 T",
    "B": "B",
    "B cells": "B",
    "NK": "NK",
    "NK cells": "NK",
    "CD14+ Mono": "CD14 Mono",
    "CD14+ Monocytes": "CD14 Mono",
    "FCGR3A+ Mono": "FCGR3A Mono",
    "FCGR3A+ Monocytes": "FCGR3A Mono",
    "DC": "DC",
    "Dendritic cells": "DC",
}


def _coarse(adata: ad.AnnData, key: str) -> ad.AnnData:
    adata = adata[adata.obs[key].astype(str).isin(list(COARSE))].copy()
    adata.obs["coarse"] = adata.obs[key].astype(str).map(COARSE)
    return adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="cell model folder")
    parser.add_argument("--data", default=Path("../shared/data"), type=Path)
    parser.add_argument("--finetune-steps", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write all tables as JSON here")
    parser.add_argument("--cross-study", action="store_true", help="Zheng -> pbmc3k annotate")
    parser.add_argument("--modes", default="knn,finetune", help="annotate modes for --cross-study")
    args = parser.parse_args()
    if args.cross_study:
        cross_study(args)
        return
    sc = args.data / "singlecell"
    ft = (
        TrainConfig(
            max_steps=args.finetune_steps,
            batch_size=32,
            lr=1e-4,
            warmup_steps=20,
            checkpoint_every=0,
        )
        if args.finetune_steps
        else None
    )
    runs: list[tuple[str, dict]] = []
    for name, path in [
        ("pbmc3k", "pbmc3k/pbmc3k_seurat_counts.h5ad"),
        ("zheng2017_sorted", "pbmc_zheng2017_sorted/zheng2017_sorted_pbmc_3500.h5ad"),
        ("kang2018_ctrl", "kang2018/kang2018_ctrl_12k_muscat.h5ad"),
    ]:
        runs.append((name, {"adata": lc.read(sc / path), "label_key": "cell_type"}))
    ding = lc.read(sc / "pbmc_ding2020_dropseq_indrops/ding2020_pbmc_dropseq_indrops_2000hvg.h5ad")
    runs.append(
        (
            "ding2020 Drop-seq → inDrops",
            {
                "adata": ding[ding.obs["technology"] == "Drop-seq"].copy(),
                "query": ding[ding.obs["technology"] == "inDrops"].copy(),
                "label_key": "cell_type",
            },
        )
    )
    runs.append(
        (
            "pbmc3k → kang2018_ctrl (coarse labels)",
            {
                "adata": _coarse(lc.read(sc / "pbmc3k/pbmc3k_seurat_counts.h5ad"), "cell_type"),
                "query": _coarse(
                    lc.read(sc / "kang2018/kang2018_ctrl_12k_muscat.h5ad"), "cell_type"
                ),
                "label_key": "coarse",
            },
        )
    )
    results = {}
    for name, kw in runs:
        t0 = time.perf_counter()
        bench = lc.evaluate(model=args.model, finetune=ft, seed=0, device="cpu", **kw)
        print(
            f"\n### {name}  ({time.perf_counter() - t0:.0f} s)\n\n{bench.to_markdown()}", flush=True
        )
        results[name] = {
            "split": bench.split,
            "table": bench.table.reset_index().to_dict("records"),
            "embedding": bench.embedding.reset_index().to_dict("records"),
        }
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def cross_study(args: argparse.Namespace) -> None:
    """Zheng sorted (reference) -> pbmc3k (query), 5 harmonised classes, through lc.annotate."""
    from lifelm.demo import PBMC_LABEL_MAP
    from lifelm.tasks.cells.annotate import TrainingFailedError

    sc = args.data / "singlecell"
    ref = lc.read(sc / "pbmc_zheng2017_sorted/zheng2017_sorted_pbmc_3500.h5ad")
    query = lc.read(sc / "pbmc3k/pbmc3k_seurat_counts.h5ad")
    rows, results = [], {}
    for mode in args.modes.split(","):
        t0 = time.perf_counter()
        q = query.copy()
        try:
            lc.annotate(
                q, args.model, reference=ref, label_key="cell_type_coarse", mode=mode,
                label_map=PBMC_LABEL_MAP, query_label_key="cell_type", device="cpu",
            )  # fmt: skip
        except TrainingFailedError as e:
            print(f"{mode}: stopped: {e}", flush=True)
            results[mode] = {"stopped": str(e)}
            continue
        info = q.uns["lifelm"]["annotate"]
        held, qq = info["holdout"], info["query"]
        for name, hkey, qkey in (("majority", "majority", "majority"),
                                 ("PCA+logreg", "logreg_pca", "baseline"),
                                 (f"LifeLM {mode}", "model", "model"),
                                 (f"written ({info['method']}, auto)", None, "used")):  # fmt: skip
            h = held.get(hkey, {}) if hkey else {}
            rows.append(
                f"| {name} | {h.get('accuracy', float('nan')):.3f} | "
                f"{h.get('ece_before', float('nan')):.3f} / {h.get('ece', float('nan')):.3f} | "
                f"{qq[qkey]['accuracy']:.3f} | {qq[qkey]['accuracy_mapped']:.3f} | "
                f"{qq[qkey]['unassigned_fraction']:.3f} |"
            )
        print(
            "\n".join(lc.annotation_summary(info)),
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        results[mode] = info
    print("\n| method | held-out ref acc | ECE before / after | query acc (all 2638) | "
          "query acc (mapped 2592) | Unassigned |\n|---|---|---|---|---|---|")  # fmt: skip
    print("\n".join(rows))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
