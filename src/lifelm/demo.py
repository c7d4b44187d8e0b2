"""The end-to-end demo: real cells → pretrain → annotate with calibration, abstention and the
baseline → an HTML report that says which method to believe.

Data, first found wins:

1. the shared PBMC data (``../shared/data`` beside the repository, or ``$LIFELM_SHARED_DATA``):
   a cross-study annotation, Zheng 2017 FACS-sorted PBMCs as the reference and pbmc3k as the
   query, on 5 harmonised classes (B, CD4 T, CD8 T, Mono, NK; pbmc3k's DC and platelets have no
   reference class and are counted, not dropped);
2. scanpy's bundled ``pbmc68k_reduced`` (700 real PBMCs, 765 genes; shipped in the scanpy wheel,
   no download): its ``.raw`` holds log-normalised values, from which integer counts are
   recovered as ``expm1(x) / min_nonzero(expm1(x))`` per cell, rounded (the stored log values
   are rounded, < 1 % relative error); split in halves;
3. generated cells (``lifelm.testing.synthetic_cells``), said so in the report.

Or any labelled raw-count h5ad (``h5ad=``), split in halves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

import anndata as ad
import numpy as np
import scipy.sparse as sp

from lifelm._core.choices import one_of
from lifelm._core.runtime import get_logger
from lifelm.cells import annotate, annotation_summary
from lifelm.evaluation.benchmarks.annotation import harmonise_labels
from lifelm.io.h5ad import read_h5ad
from lifelm.reports.annotation import verdict, write_annotation_report
from lifelm.tasks.cells.annotate import Mode
from lifelm.tasks.cells.pretrain import pretrain
from lifelm.testing.synthetic import synthetic_cells
from lifelm.training.loop import TrainConfig

log = get_logger("lifelm.demo")

ZHENG = "singlecell/pbmc_zheng2017_sorted/zheng2017_sorted_pbmc_3500.h5ad"
PBMC3K = "singlecell/pbmc3k/pbmc3k_seurat_counts.h5ad"
# one harmonisation table for both studies (Zheng's cell_type_coarse and pbmc3k's cell_type)
PBMC_LABEL_MAP = {
    "CD4TN": "CD4 T",
    "CD4TCM": "CD4 T",
    "CD4Treg": "CD4 T",
    "CD8TN": "CD8 T",
    "Monocyte": "Mono",
    "Naive CD4 T": "CD4 T",
    "Memory CD4 T": "CD4 T",
    "CD14+ Mono": "Mono",
    "FCGR3A+ Mono": "Mono",
}


def shared_data_dir() -> Path | None:
    """``$LIFELM_SHARED_DATA``, else ``../shared/data`` beside the repository or the working dir."""
    env = os.environ.get("LIFELM_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates += [
        Path(__file__).resolve().parents[2].parent / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
    ]
    for c in candidates:
        if (c / ZHENG).is_file() and (c / PBMC3K).is_file():
            return c
    return None


def pbmc68k_counts() -> ad.AnnData | None:
    """scanpy's bundled pbmc68k_reduced with integer counts recovered from ``.raw`` (or None)."""
    try:
        import scanpy as sc

        src = sc.datasets.pbmc68k_reduced()
    except Exception as e:
        log.info("scanpy's pbmc68k_reduced is not available (%s)", e)
        return None
    x = sp.csr_matrix(src.raw.X, dtype=np.float64)
    x.data = np.expm1(x.data)
    mins = np.array([x.data[a:b].min() if b > a else 1.0 for a, b in zip(x.indptr[:-1], x.indptr[1:], strict=True)])  # fmt: skip
    x = sp.diags(1.0 / mins) @ x
    counts = np.rint(x.data)
    # the file stores rounded log values: allow 1 % relative error before rounding to integers
    if (np.abs(x.data - counts) / np.maximum(counts, 1)).max() > 1e-2:
        log.info("pbmc68k_reduced: values are not integer multiples of the smallest; not used")
        return None
    x.data = counts
    out = ad.AnnData(
        sp.csr_matrix(x, dtype=np.float32),
        obs=src.obs[["bulk_labels"]].rename(columns={"bulk_labels": "cell_type"}).copy(),
        var=src.raw.var[[]].copy(),
    )
    out.obsm["X_umap"] = np.asarray(src.obsm["X_umap"])
    out.obs["cell_type"] = out.obs["cell_type"].astype(str)
    return out


def _halves(adata: ad.AnnData, seed: int) -> tuple[ad.AnnData, ad.AnnData]:
    idx = np.random.default_rng(seed).permutation(adata.n_obs)
    half = adata.n_obs // 2
    return adata[np.sort(idx[:half])].copy(), adata[np.sort(idx[half:])].copy()


def demo_data(h5ad: str | Path | None, label_key: str, seed: int) -> dict[str, Any]:
    """Reference, query, label keys, label map and a sentence on where they came from."""
    if h5ad is not None:
        ref, query = _halves(read_h5ad(h5ad), seed)
        return {"reference": ref, "query": query, "label_key": label_key,
                "query_label_key": label_key, "label_map": {},
                "source": f"{h5ad}, split in halves (seed {seed})"}  # fmt: skip
    shared = shared_data_dir()
    if shared is not None:
        return {
            "reference": read_h5ad(shared / ZHENG),
            "query": read_h5ad(shared / PBMC3K),
            "label_key": "cell_type_coarse",
            "query_label_key": "cell_type",
            "label_map": PBMC_LABEL_MAP,
            "source": (
                f"real data, cross-study: Zheng 2017 FACS-sorted PBMCs ({shared / ZHENG}) as "
                f"reference, pbmc3k ({shared / PBMC3K}) as query, 5 harmonised classes"
            ),
        }
    pbmc = pbmc68k_counts()
    if pbmc is not None:
        ref, query = _halves(pbmc, seed)
        return {"reference": ref, "query": query, "label_key": "cell_type",
                "query_label_key": "cell_type", "label_map": {},
                "source": ("real data: scanpy's bundled pbmc68k_reduced (700 PBMCs, 765 genes, "
                           "counts recovered from .raw), split in halves")}  # fmt: skip
    adata = synthetic_cells(n_cells=1500, n_genes=600, n_types=6, seed=seed)
    ref, query = _halves(adata, seed)
    return {"reference": ref, "query": query, "label_key": "cell_type",
            "query_label_key": "cell_type", "label_map": {},
            "source": ("GENERATED cells (lifelm.testing.synthetic_cells: 1,500 cells, 600 genes, "
                       "6 types): no real data was found, so these numbers say nothing about "
                       "real biology")}  # fmt: skip


def run_demo(
    out: str | Path = "runs/demo",
    *,
    h5ad: str | Path | None = None,
    label_key: str = "cell_type",
    preset: str = "tiny",
    steps: int = 150,
    mode: str = "knn",
    seed: int = 0,
) -> str:
    """Run the whole cell workflow, write ``report.html`` and ``report.md``, return the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = demo_data(h5ad, label_key, seed)
    log.info("data: %s", d["source"])
    cfg = TrainConfig(
        max_steps=steps,
        batch_size=32,
        lr=2e-3,
        warmup_steps=max(1, steps // 10),
        checkpoint_every=max(1, steps // 3),
        log_every=max(1, steps // 15),
        seed=seed,
        progress=False,
    )
    result = pretrain(
        [d["reference"], d["query"]], out / "pretrain", preset=preset, train_config=cfg,
        max_length=256,
    )  # fmt: skip
    log.info("pretrained: train loss %.3f, eval loss %s", result.final_loss, result.eval_loss)
    query = d["query"]
    annotate(
        query,
        result.model_dir,
        reference=d["reference"],
        label_key=d["label_key"],
        query_label_key=d["query_label_key"],
        label_map=d["label_map"],
        mode=one_of(mode, get_args(Mode), what="mode"),
        seed=seed,
        out_dir=out / "annotator",
    )
    info = query.uns["lifelm"]["annotate"]
    truth_key = d["query_label_key"]
    if d["label_map"]:  # true labels in the reference's vocabulary, for the UMAP and the h5ad
        truth_key = f"{truth_key}_harmonised"
        query.obs[truth_key] = harmonise_labels(query.obs[d["query_label_key"]], d["label_map"])
    query.write_h5ad(out / "query_annotated.h5ad", compression="gzip")
    umap = None
    if "X_umap" not in query.obsm:
        umap = _umap(query)
    notes = [
        f"Data: {d['source']}.",
        f"Model: {result.model_dir} ({preset}, 256 tokens, pretrained {steps} steps on the "
        f"reference and query cells without labels; annotation mode {mode}).",
    ]
    write_annotation_report(
        query, out / "report.html", truth_key=truth_key, umap=umap, notes=notes,
        title="LifeLM demo: cell-type annotation",
    )  # fmt: skip
    lines = [*notes, "", *annotation_summary(info), "", f"Which method to use: {verdict(info)}",
             f"Report: {out / 'report.html'}"]  # fmt: skip
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def _umap(adata: ad.AnnData) -> np.ndarray:
    """UMAP of log-normalised counts (scanpy), for the report when the data bring none."""
    import scanpy as sc

    from lifelm.data.cells.counts import find_counts

    src = find_counts(adata, None)
    tmp = ad.AnnData(sp.vstack([b for _, b in src.chunks()]).tocsr().astype(np.float32))
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.pp.pca(tmp, n_comps=min(30, tmp.n_vars - 1, tmp.n_obs - 1))
    sc.pp.neighbors(tmp, random_state=0)
    sc.tl.umap(tmp, random_state=0)
    return np.asarray(tmp.obsm["X_umap"])
