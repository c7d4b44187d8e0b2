"""Annotation on real PBMCs: the shared Zheng → pbmc3k cross-study case (skips without the data),
and the PBMCs bundled in the scanpy wheel that the demo falls back to."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from tests.conftest import shared_file

import lifelm.cells as lc
from lifelm.demo import PBMC_LABEL_MAP, pbmc68k_counts


@pytest.mark.data
def test_zheng_to_pbmc3k_baseline_beats_majority_and_counts_unmapped_classes() -> None:
    ref = lc.read(shared_file("singlecell/pbmc_zheng2017_sorted/zheng2017_sorted_pbmc_3500.h5ad"))
    query = lc.read(shared_file("singlecell/pbmc3k/pbmc3k_seurat_counts.h5ad"))
    lc.annotate(
        query,
        reference=ref,
        label_key="cell_type_coarse",
        method="baseline",
        label_map=PBMC_LABEL_MAP,
        query_label_key="cell_type",
    )
    info = query.uns["lifelm"]["annotate"]
    assert info["classes"] == ["B", "CD4 T", "CD8 T", "Mono", "NK"]
    q = info["query"]
    # every query cell is in the denominator; DC and platelets have no reference class
    assert q["n"] == 2638
    assert lc.as_dict(q["unmapped"]) == {"DC": 32, "Platelet": 14}
    assert q["majority"]["accuracy_mapped"] == pytest.approx(1180 / 2592)
    assert q["used"]["accuracy"] > q["majority"]["accuracy"] + 0.3
    assert info["holdout"]["logreg_pca"]["ece"] < 0.05


def test_scanpy_bundled_pbmcs_give_integer_counts_with_labels() -> None:
    pbmc = pbmc68k_counts()
    if pbmc is None:
        pytest.skip("scanpy's pbmc68k_reduced is not available")
    assert pbmc.shape == (700, 765)
    x = pbmc.X.data
    assert (x >= 1).all()
    np.testing.assert_array_equal(x, np.rint(x))
    assert pbmc.obs["cell_type"].nunique() == 10


def test_demo_prefers_shared_data_then_bundled_pbmcs(monkeypatch: pytest.MonkeyPatch) -> None:
    import lifelm.demo as demo

    monkeypatch.setattr(demo, "shared_data_dir", lambda: None)
    d = demo.demo_data(None, "cell_type", 0)
    if pbmc68k_counts() is not None:
        assert "pbmc68k_reduced" in d["source"]
        assert d["reference"].n_obs + d["query"].n_obs == 700
    monkeypatch.setattr(demo, "pbmc68k_counts", lambda: None)
    d = demo.demo_data(None, "cell_type", 0)
    assert d["source"].startswith("GENERATED cells")


@pytest.mark.slow
def test_demo_writes_a_report_that_names_the_method_to_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lifelm.demo as demo

    monkeypatch.setattr(demo, "shared_data_dir", lambda: None)  # the bundled PBMCs (or generated)
    text = demo.run_demo(tmp_path, preset="test", steps=3)
    assert "Which method to use: Use " in text
    assert "held-out reference accuracy" in text
    html = (tmp_path / "report.html").read_text()
    assert html.count("<img") == 3  # UMAP, confusion matrix, reliability
    assert (tmp_path / "report.md").read_text() == text
    assert "lifelm_cell_type_novel" in ad.read_h5ad(tmp_path / "query_annotated.h5ad").obs
