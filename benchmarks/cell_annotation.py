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

``--finetune-vs-baselines`` runs the same cross-study case (Zheng sorted -> pbmc3k, 5 classes, the
same held-out split) for ``lifelm cells annotate --mode finetune`` with each ``--model`` (comma-
separated ``NAME=FOLDER``) next to the majority class, logistic regression on PCA (annotate's own
baseline) and a CellTypist-style logistic regression on all log-normalised genes (see
:func:`celltypist_style`). ``--random-geneformer OUT --gf-dicts DIR`` first writes a randomly
initialised ``BertForMaskedLM`` in Geneformer's V1 layout with the real V1 dictionaries (needs
``transformers``) and imports it as a pipeline check: with random weights it is expected to sit at or
below the baselines::

    python benchmarks/cell_annotation.py --finetune-vs-baselines --data ../shared/data \
        --model tiny=runs/pbmc_tiny/checkpoints/step_100 --random-geneformer /tmp/gf_rand \
        --gf-dicts DIR_WITH_token_dictionary_gc30M.pkl --out results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

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
    parser.add_argument(
        "--model",
        required=True,
        help="cell model folder (NAME=FOLDER,... with --finetune-vs-baselines)",
    )
    parser.add_argument("--data", default=Path("../shared/data"), type=Path)
    parser.add_argument("--finetune-steps", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write all tables as JSON here")
    parser.add_argument("--cross-study", action="store_true", help="Zheng -> pbmc3k annotate")
    parser.add_argument("--modes", default="knn,finetune", help="annotate modes for --cross-study")
    parser.add_argument(
        "--finetune-vs-baselines",
        action="store_true",
        help="Zheng -> pbmc3k: annotate --mode finetune per model next to PCA+logreg and a "
        "CellTypist-style logistic regression",
    )
    parser.add_argument("--random-geneformer", type=Path, default=None, help="write + import here")
    parser.add_argument("--gf-dicts", type=Path, default=None, help="real Geneformer V1 pickles")
    parser.add_argument(
        "--gf-shape",
        default="2,64,4,128,256",
        help="random Geneformer layers,hidden,heads,ffn,positions (V1 layout, ReLU)",
    )
    args = parser.parse_args()
    if args.finetune_vs_baselines:
        finetune_vs_baselines(args)
        return
    args.model = Path(args.model)
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


def random_geneformer(out: Path, gf_dicts: Path, shape: str) -> Path:
    """A random ``BertForMaskedLM`` in Geneformer's V1 layout (real V1 dictionaries), imported.

    The weights are transformers' initialisation (seed 0): a pipeline check, not a model. Cells
    keep their top ``positions`` genes (Geneformer V1 keeps 2,048; fewer here to fit a CPU).
    Returns the LifeLM checkpoint folder ``out / "lifelm"``.
    """
    import shutil

    import torch
    import transformers

    from lifelm.tasks.cells.import_model import import_geneformer

    layers, hidden, heads, ffn, positions = (int(v) for v in shape.split(","))
    hf_dir = out / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    for name in ("token_dictionary_gc30M.pkl", "gene_median_dictionary_gc30M.pkl"):
        shutil.copy(gf_dicts / name, hf_dir / name)
    import pickle

    vocab = len(pickle.loads((gf_dicts / "token_dictionary_gc30M.pkl").read_bytes()))
    cfg = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=positions,
        hidden_act="relu",
        pad_token_id=0,
    )
    torch.manual_seed(0)
    transformers.BertForMaskedLM(cfg).save_pretrained(hf_dir)
    # the last layer (Geneformer's emb_layer=0), so fine-tuning trains every layer, as
    # Geneformer's own classifier (BertForSequenceClassification) does
    return import_geneformer(hf_dir, out / "lifelm", dictionaries=hf_dir, output_layer=layers)


def celltypist_style(
    ref: ad.AnnData, y: np.ndarray, tr: np.ndarray, ho: np.ndarray, query: ad.AnnData, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str], float, int]:
    """CellTypist-style baseline: log1p CP10k of every gene shared by reference and query,
    scaled (zero mean, unit variance, clipped at 10), multinomial ``LogisticRegression`` (lbfgs).

    CellTypist's ``train`` does the same normalisation and scaling and, by default, fits sklearn's
    ``LogisticRegression`` too (one-vs-rest); its published models use mini-batch
    ``SGDClassifier`` with a feature-selection round, which is not reproduced here. Returns
    held-out and query probabilities, the class order, the fit seconds and the gene count.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from lifelm.data.cells.genes import map_genes
    from lifelm.evaluation.baselines.annotation import log_normalized

    shared = sorted(set(map_genes(ref.var).unique_ids()) & set(map_genes(query.var).unique_ids()))
    genes = {g: i for i, g in enumerate(shared)}
    t0 = time.perf_counter()
    x = log_normalized(ref, genes).toarray()
    scaler = StandardScaler().fit(x[tr])

    def prep(m: np.ndarray) -> np.ndarray:
        return np.clip(scaler.transform(m), -10, 10)

    clf = LogisticRegression(max_iter=1000, C=1.0, random_state=seed).fit(prep(x[tr]), y[tr])
    p_ho = clf.predict_proba(prep(x[ho]))
    p_q = clf.predict_proba(prep(log_normalized(query, genes).toarray()))
    return p_ho, p_q, [str(c) for c in clf.classes_], time.perf_counter() - t0, len(shared)


def finetune_vs_baselines(args: argparse.Namespace) -> None:
    """Zheng sorted -> pbmc3k: annotate --mode finetune per model, next to three baselines."""
    from lifelm.cells import _holdout_split, _query_scores
    from lifelm.demo import PBMC_LABEL_MAP
    from lifelm.evaluation.benchmarks.annotation import harmonise_labels
    from lifelm.tasks.cells.annotate import TrainingFailedError

    sc = args.data / "singlecell"
    ref = lc.read(sc / "pbmc_zheng2017_sorted/zheng2017_sorted_pbmc_3500.h5ad")
    query = lc.read(sc / "pbmc3k/pbmc3k_seurat_counts.h5ad")
    models = dict(item.split("=", 1) for item in args.model.split(",") if item)
    if args.random_geneformer is not None:
        if args.gf_dicts is None:
            raise SystemExit("--random-geneformer needs --gf-dicts")
        models["Geneformer-format, random weights"] = str(
            random_geneformer(args.random_geneformer, args.gf_dicts, args.gf_shape)
        )
    # the baselines on annotate's own split (same labels, same stratified 20 % held out, seed 0)
    labelled = ref.obs["cell_type_coarse"].notna().to_numpy()
    ref_l = ref[labelled].copy()
    y = harmonise_labels(ref_l.obs["cell_type_coarse"], PBMC_LABEL_MAP)
    classes = sorted(np.unique(y).tolist())
    tr, ho = _holdout_split(y, 0.2, 0)
    p_ho, p_q, ct_classes, ct_s, n_genes = celltypist_style(ref_l, y, tr, ho, query, 0)
    pred_ho = np.asarray(ct_classes)[p_ho.argmax(1)]
    pred_q = np.asarray(ct_classes)[p_q.argmax(1)]
    truth_q = query.obs["cell_type"].astype(str).to_numpy()
    ct_query = _query_scores(truth_q, PBMC_LABEL_MAP, classes, {"ct": pred_q})["ct"]
    # annotate's own baseline and the majority class on the same split, printed before any model
    # trains (fine-tuning takes minutes; these are what every model row is read against)
    from lifelm.evaluation.baselines.annotation import PcaLogReg

    pca = PcaLogReg.fit(ref_l[tr].copy(), y[tr], seed=0)
    base = _query_scores(truth_q, PBMC_LABEL_MAP, classes, {"pca": pca.predict(query)})["pca"]
    majority = pd.Series(y[tr]).value_counts().index[0]
    print(
        f"baselines on annotate's split ({len(tr)} train / {len(ho)} held-out reference cells):\n"
        f"  majority ({majority}): held-out {(y[ho] == majority).mean():.3f}\n"
        f"  PCA + logreg: held-out {(pca.predict(ref_l[ho].copy()) == y[ho]).mean():.3f}, "
        f"query {base['accuracy']:.3f} (all) / {base['accuracy_mapped']:.3f} (mapped)\n"
        f"  CellTypist-style logreg ({n_genes} genes, {ct_s:.0f} s): held-out "
        f"{(pred_ho == y[ho]).mean():.3f}, query {ct_query['accuracy']:.3f} (all) / "
        f"{ct_query['accuracy_mapped']:.3f} (mapped)",
        flush=True,
    )
    rows: list[dict] = []
    results: dict = {
        "celltypist_style": {
            "holdout_accuracy": float((pred_ho == y[ho]).mean()),
            "query": ct_query,
            "seconds": ct_s,
            "genes": n_genes,
        },
        "models": {},
    }
    base_done = False
    for name, folder in models.items():
        t0, c0 = time.perf_counter(), time.process_time()
        q = query.copy()
        try:
            lc.annotate(
                q, folder, reference=ref, label_key="cell_type_coarse", mode="finetune",
                label_map=PBMC_LABEL_MAP, query_label_key="cell_type", device="cpu",
            )  # fmt: skip
        except TrainingFailedError as e:
            print(f"{name}: fine-tuning stopped: {e}", flush=True)
            results["models"][name] = {"stopped": str(e)}
            rows.append({"method": f"LifeLM finetune: {name}", "stopped": str(e)})
            continue
        info = q.uns["lifelm"]["annotate"]
        held, qq = info["holdout"], info["query"]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not base_done:
            rows.append({"method": "majority class", "held": held["majority"]["accuracy"],
                         "q": qq["majority"]["accuracy"], "qm": qq["majority"]["accuracy_mapped"]})  # fmt: skip
            rows.append({"method": "PCA + logistic regression (annotate's baseline)",
                         "held": held["logreg_pca"]["accuracy"], "f1": held["logreg_pca"].get("macro_f1"),
                         "q": qq["baseline"]["accuracy"], "qm": qq["baseline"]["accuracy_mapped"]})  # fmt: skip
            rows.append({"method": f"CellTypist-style logistic regression ({n_genes} genes)",
                         "held": results["celltypist_style"]["holdout_accuracy"],
                         "q": ct_query["accuracy"], "qm": ct_query["accuracy_mapped"], "cpu": None,
                         "wall": ct_s})  # fmt: skip
            base_done = True
        rows.append({"method": f"LifeLM finetune: {name}", "held": held["model"]["accuracy"],
                     "f1": held["model"].get("macro_f1"), "q": qq["model"]["accuracy"],
                     "qm": qq["model"]["accuracy_mapped"], "wall": wall, "cpu": cpu,
                     "train_acc": held["model"].get("training_accuracy"),
                     "written": info["method"]})  # fmt: skip
        results["models"][name] = {"folder": folder, "wall_s": wall, "cpu_s": cpu, **info}
        print(
            "\n".join(lc.annotation_summary(info)), f"({wall:.0f} s, {cpu:.0f} CPU-s)", flush=True
        )
    print("\n| method | held-out ref acc (700) | query acc, all 2,638 | query acc, 2,592 with a "
          "reference class | training acc | wall s / CPU s |\n|---|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        if "stopped" in r:
            print(f"| {r['method']} | stopped: {r['stopped'][:120]} | | | | |")
            continue
        t = r.get("train_acc")
        secs = f"{r['wall']:.0f} / {r['cpu']:.0f}" if r.get("cpu") else (
            f"{r['wall']:.1f} (fit + predict)" if r.get("wall") else "")  # fmt: skip
        print(f"| {r['method']} | {r['held']:.3f} | {r['q']:.3f} | {r['qm']:.3f} | "
              f"{'' if t is None else f'{t:.3f}'} | {secs} |")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, **results}, indent=2, default=str))


if __name__ == "__main__":
    main()
