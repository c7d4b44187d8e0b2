"""``lifelm cells targets`` on Kang 2018 (ctrl -> IFN-beta): FDR under shuffled labels, and biology.

Data: ``singlecell/kang2018/kang2018_ifnb_scgen_valid_counts.h5ad`` (1,975 PBMC, ctrl / stim,
scGen's cell types; no donor column, so the test unit is cell pseudo-replicates and the run says
so). Two checks:

1. **Calibration**: the ``condition`` labels are shuffled ``--permutations`` times (cell level,
   seeded); for each shuffle, the share of candidate genes at BH FDR < 0.05 of the in-silico
   ranking and of the DE baseline. It must stay at or below 5 % (the cell-level t-test of the
   previous version called 126 of 200 genes under shuffled labels).
2. **Biology**: with the real labels, AUROC and precision@20 of each ranking for the MSigDB
   Hallmark IFN-alpha response genes (``lifelm/resources/hallmark_interferon_alpha_response.json``),
   the number of genes at FDR < 0.05, the held-out agreement of both rankings and the method
   ``--method auto`` picks.

The model is ``--model DIR`` or, without it, a ``--preset`` model pretrained here for ``--steps``
steps on the same file (masked-gene prediction; labels unused), or an untrained one
(``--steps 0``: calibration concerns the labels, not the model, so it must hold for any model).

Usage::

    PYTHONPATH=src python benchmarks/targets_calibration.py --data /work/shared/data \\
        --steps 300 --permutations 5 --n-cells 50 --candidates 200 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

KANG = "singlecell/kang2018/kang2018_ifnb_scgen_valid_counts.h5ad"


def ifn_genes() -> set[str]:
    from importlib import resources

    d = json.loads(
        (
            resources.files("lifelm.resources") / "hallmark_interferon_alpha_response.json"
        ).read_text()
    )
    return set(d["genes"])


def biology(table: pd.DataFrame, ifn: set[str]) -> dict:
    y = table["gene"].isin(ifn).to_numpy()
    out = {"n_candidates": len(table), "ifn_in_candidates": int(y.sum())}
    for name, col in (("insilico", "effect"), ("de", "de_score")):
        s = table[col].to_numpy(dtype=float)
        s = np.nan_to_num(s, nan=np.nanmin(s) if np.isfinite(s).any() else 0.0)
        out[f"auroc_{name}"] = float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else np.nan
        top = np.argsort(-s, kind="stable")[:20]
        out[f"precision20_{name}"] = float(y[top].mean())
    out["fdr05_insilico"] = int((table["q"] < 0.05).sum())
    out["fdr05_de"] = int((table["de_q"] < 0.05).sum())
    return out


def md(df: pd.DataFrame) -> str:
    """A markdown table (3 significant digits)."""

    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    rows = [" | ".join(map(str, df.columns)), " | ".join("---" for _ in df.columns)]
    rows += [" | ".join(fmt(v) for v in r) for r in df.itertuples(index=False)]
    return "\n".join(f"| {r} |" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=300, help="0 = untrained (random) model")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--permutations", type=int, default=5)
    ap.add_argument("--n-cells", type=int, default=50, help="cells scanned per state")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--cell-type", default=None, help="keep one cell type (e.g. CD4T)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()

    from lifelm.tasks.cells.embed import as_cell_model
    from lifelm.tasks.cells.targets import rank_targets

    adata = ad.read_h5ad(args.data / KANG)
    if args.cell_type:
        adata = adata[adata.obs["cell_type"].astype(str) == args.cell_type].copy()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.model is not None:
        model = as_cell_model(args.model, args.device)
        model_name = str(args.model)
    elif args.steps == 0:  # untrained: calibration does not depend on the model
        import torch

        from lifelm.data.cells.tokenizer import RankValueTokenizer
        from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
        from lifelm.tasks.cells.model_io import CellModel, sidecar

        tok = RankValueTokenizer.fit(adata, max_length=args.max_length)
        torch.manual_seed(0)
        cfg = CellTransformerConfig.from_name(
            args.preset, vocab_size=tok.vocab_size, max_length=args.max_length
        )
        model = CellModel(CellTransformer(cfg).eval(), tok, sidecar(cfg, tok))
        model_name = (
            f"untrained {args.preset} (random weights, seed 0, max_length {args.max_length})"
        )
    else:
        from lifelm.tasks.cells.pretrain import pretrain
        from lifelm.training.loop import TrainConfig

        res = pretrain(
            adata,
            args.out / "targets_kang_model",
            preset=args.preset,
            max_length=args.max_length,
            train_config=TrainConfig(
                max_steps=args.steps, batch_size=32, warmup_steps=max(1, args.steps // 10),
                checkpoint_every=10**9, device=args.device, progress=False,
            ),
        )  # fmt: skip
        model = as_cell_model(res.model_dir, args.device)
        model_name = (
            f"{args.preset} pretrained here for {res.step} steps (loss {res.final_loss:.3f})"
        )
        print(model_name, flush=True)
    train_s = time.time() - t0
    ifn = ifn_genes()
    common = {
        "label_key": "condition", "start": "ctrl", "goal": "stim", "kind": "overexpress",
        "n_cells": args.n_cells, "max_candidates": args.candidates, "n_null": 20,
        "progress": False, "copy": True,
    }  # fmt: skip
    t1 = time.time()
    real = rank_targets(adata, model, seed=0, **common).uns["lifelm_targets"]
    real_s = time.time() - t1
    bio = biology(real["genes"], ifn)
    bio.update(
        agreement_insilico=real["agreement_insilico"],
        agreement_de=real["agreement_de"],
        winner=real["winner"],
        method_auto=real["method"],
        test=next(iter(real["design"].values()))["description"],
    )
    perms = []
    rng = np.random.default_rng(12345)
    for k in range(args.permutations):
        shuf = adata.copy()
        shuf.obs["condition"] = rng.permutation(shuf.obs["condition"].astype(str).to_numpy())
        r = rank_targets(shuf, model, seed=k + 1, **common).uns["lifelm_targets"]
        g = r["genes"]
        perms.append(
            {
                "permutation": k + 1,
                "n_candidates": len(g),
                "fdr05_insilico": int((g["q"] < 0.05).sum()),
                "fdr05_de": int((g["de_q"] < 0.05).sum()),
                "frac_fdr05_insilico": float((g["q"] < 0.05).mean()),
                "frac_fdr05_de": float((g["de_q"] < 0.05).mean()),
                "frac_p05_insilico": float((g["p"] < 0.05).mean()),
            }
        )
        print(perms[-1], flush=True)
    perms_df = pd.DataFrame(perms)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node(),
        "uptime": uptime,
        "data": KANG + (f" ({args.cell_type} only)" if args.cell_type else ""),
        "n_cells_data": int(adata.n_obs),
        "model": model_name,
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds_model": round(train_s, 1),
        "seconds_real_run": round(real_s, 1),
        "real_labels": bio,
        "shuffled_labels": perms,
        "shuffled_mean_frac_fdr05_insilico": float(perms_df["frac_fdr05_insilico"].mean())
        if len(perms_df)
        else np.nan,
        "shuffled_mean_frac_fdr05_de": float(perms_df["frac_fdr05_de"].mean())
        if len(perms_df)
        else np.nan,
        "warnings": real["warnings"],
        "verdict": real["verdict"],
    }
    path = args.out / "targets_calibration.json"
    path.write_text(json.dumps(result, indent=2, default=float))
    top = real["genes"].head(20)[["gene", "rank_insilico", "rank_de", "effect", "q", "de_log2fc",
                                  "de_q"]]  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k != "shuffled_labels"}, indent=2,
                     default=float))  # fmt: skip
    print(md(perms_df))
    print(md(top.assign(ifn_alpha=top["gene"].isin(ifn))))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
