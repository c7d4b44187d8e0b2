"""lifelm.cells.annotate with the baseline only (no model): abstention, novelty, label maps,
query scoring, the run record, the CLI and the HTML report, on small generated data."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from typer.testing import CliRunner

import lifelm.cells as lc
from lifelm._core.errors import InputError
from lifelm.cli import app
from lifelm.reports.annotation import write_annotation_report


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    # 4 types; the reference gets types 0-2 only, the query all four
    return lc.synthetic_cells(480, 150, n_types=4, seed=3)


def _ref_query(cells: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    half = np.arange(cells.n_obs) % 2 == 0
    known = cells.obs["cell_type"].astype(str) != "type_3"
    return cells[half & known.to_numpy()].copy(), cells[~half].copy()


def test_baseline_labels_calibration_record_and_novel_cells(cells: ad.AnnData) -> None:
    ref, query = _ref_query(cells)
    lc.annotate(query, reference=ref, label_key="cell_type", method="baseline", seed=0)
    info = query.uns["lifelm"]["annotate"]
    obs = query.obs
    truth = obs["cell_type"].astype(str)
    new = (truth == "type_3").to_numpy()
    # a class the reference lacks is flagged novel, cells like the reference mostly are not
    assert obs["lifelm_cell_type_novel"][new].mean() > 0.8
    # (1 % expected; the threshold comes from only ~36 held-out cells here)
    assert obs["lifelm_cell_type_novel"][~new].mean() < 0.2
    assert info["novel_cells"] == int(obs["lifelm_cell_type_novel"].sum())
    # known types are labelled right
    pred = obs["lifelm_cell_type"].astype(str)
    assert (pred[~new] == truth[~new]).mean() > 0.9
    assert "Unassigned" in list(obs["lifelm_cell_type"].cat.categories)
    p = obs["lifelm_cell_type_probability"]
    assert ((p >= 1 / 3 - 1e-9) & (p <= 1)).all()
    # the run record: method, held-out comparison with calibration, split, settings
    assert info["method"] == "baseline"
    assert info["method_requested"] == "baseline"
    held = info["holdout"]
    assert held["logreg_pca"]["accuracy"] > held["majority"]["accuracy"]
    for k in ("ece_before", "ece", "temperature", "reliability", "reliability_before"):
        assert k in held["logreg_pca"]
    assert sum(held["logreg_pca"]["reliability"]["count"]) == held["logreg_pca"]["n"]
    assert "stratified hold-out" in info["split"]
    assert info["reference"]["n_obs"] == ref.n_obs
    assert info["settings"]["min_confidence"] == 0.5
    assert "model" not in held


def test_the_record_survives_an_h5ad_round_trip(cells: ad.AnnData, tmp_path: Path) -> None:
    ref, query = _ref_query(cells)
    # labels with '/' (as Zheng's "CD4+/CD25 T Reg") must not become h5ad keys
    slash = {"type_0": "CD4+/CD25 T"}
    ref.obs["cell_type"] = ref.obs["cell_type"].astype(str).replace(slash)
    query.obs["cell_type"] = query.obs["cell_type"].astype(str).replace(slash)
    lc.annotate(query, reference=ref, method="baseline", query_label_key="cell_type",
                label_map={"a/b": "type_1"})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        query.write_h5ad(tmp_path / "q.h5ad")
    back = ad.read_h5ad(tmp_path / "q.h5ad").uns["lifelm"]["annotate"]
    assert back["method"] == "baseline"
    assert back["holdout"]["logreg_pca"]["accuracy"] > 0.9


def test_min_confidence_controls_abstention(cells: ad.AnnData) -> None:
    ref, query = _ref_query(cells)
    low = lc.annotate(query, reference=ref, method="baseline", min_confidence=0.0, copy=True)
    high = lc.annotate(query, reference=ref, method="baseline", min_confidence=1.0, copy=True)
    assert low is not None
    assert high is not None
    assert low.uns["lifelm"]["annotate"]["unassigned_cells"] == 0
    un_high = (high.obs["lifelm_cell_type"] == "Unassigned").sum()
    assert un_high == high.uns["lifelm"]["annotate"]["unassigned_cells"]
    # exactly the cells whose calibrated probability is below the threshold abstain
    p = low.obs["lifelm_cell_type_probability"].to_numpy()
    assert un_high == int((p < 1.0).sum())
    assert un_high > 0
    assert "lifelm_cell_type" not in query.obs  # copy=True left the input alone


def test_label_map_and_unmapped_query_classes_are_counted(cells: ad.AnnData) -> None:
    ref, query = _ref_query(cells)
    rename = {"type_0": "T zero", "type_1": "T one", "type_2": "T two", "type_3": "T three"}
    query.obs["study_label"] = query.obs["cell_type"].astype(str).map(rename)
    back = {"T zero": "type_0", "T one": "type_1", "T two": "type_2"}  # T three has no class
    lc.annotate(
        query, reference=ref, method="baseline", label_map=back, query_label_key="study_label"
    )
    q = query.uns["lifelm"]["annotate"]["query"]
    n_three = int((query.obs["study_label"] == "T three").sum())
    assert lc.as_dict(q["unmapped"]) == {"T three": n_three}
    assert q["n"] == query.n_obs
    assert q["n_mapped"] == query.n_obs - n_three
    used = q["used"]
    # unmapped cells stay in the denominator of 'accuracy'
    assert used["accuracy"] == pytest.approx(used["accuracy_mapped"] * q["n_mapped"] / q["n"])
    assert used["accuracy_mapped"] > 0.85
    assert q["majority"]["accuracy"] < 0.5
    assert np.asarray(q["confusion"]["counts"]).sum() == query.n_obs


def test_bad_arguments_are_clear_errors(cells: ad.AnnData) -> None:
    ref, query = _ref_query(cells)
    with pytest.raises(InputError, match="needs reference="):
        lc.annotate(query)
    with pytest.raises(InputError, match="method must be"):
        lc.annotate(query, reference=ref, method="best")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="needs a model"):
        lc.annotate(query, reference=ref, method="model")
    with pytest.raises(InputError, match="no label column 'nope'"):
        lc.annotate(query, reference=ref, method="baseline", label_key="nope")
    one = ref.copy()
    one.obs["cell_type"] = "x"
    with pytest.raises(InputError, match="need 2 or more"):
        lc.annotate(query, reference=one, method="baseline")


def test_cli_annotate_baseline_with_label_map_and_json(cells: ad.AnnData, tmp_path: Path) -> None:
    ref, query = _ref_query(cells)
    query.obs["study_label"] = query.obs["cell_type"].astype(str).str.replace("type_", "T")
    ref.write_h5ad(tmp_path / "ref.h5ad")
    query.write_h5ad(tmp_path / "q.h5ad")
    (tmp_path / "map.csv").write_text("T0,type_0\nT1,type_1\nT2,type_2\n")
    res = CliRunner().invoke(
        app,
        [
            "cells", "annotate", str(tmp_path / "q.h5ad"), "--reference", str(tmp_path / "ref.h5ad"),
            "--method", "baseline", "--label-map", str(tmp_path / "map.csv"),
            "--query-label-key", "study_label", "--min-confidence", "0.6",
            "-o", str(tmp_path / "out.h5ad"), "--summary", str(tmp_path / "run.json"),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "labelled by baseline" in res.output
    assert "held-out reference accuracy" in res.output
    assert "query classes the reference lacks (counted as errors): T3:" in res.output
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert {"lifelm_cell_type", "lifelm_cell_type_novel"} <= set(out.obs)
    import json

    run = json.loads((tmp_path / "run.json").read_text())
    assert run["settings"]["min_confidence"] == 0.6
    assert run["query"]["unmapped"] == {
        "label": ["T3"],
        "cells": [int((query.obs["study_label"] == "T3").sum())],
    }


def test_cli_annotate_refuses_a_folder_as_output(cells: ad.AnnData, tmp_path: Path) -> None:
    ref, _ = _ref_query(cells)
    ref.write_h5ad(tmp_path / "ref.h5ad")
    from lifelm.cli import main

    args = ["cells", "annotate", str(tmp_path / "ref.h5ad"), "--reference",
            str(tmp_path / "ref.h5ad"), "--method", "baseline", "-o", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2


def test_html_report_has_the_verdict_and_figures(cells: ad.AnnData, tmp_path: Path) -> None:
    ref, query = _ref_query(cells)
    lc.annotate(query, reference=ref, method="baseline", query_label_key="cell_type")
    rng = np.random.default_rng(0)
    path = write_annotation_report(
        query, tmp_path / "r.html", truth_key="cell_type", umap=rng.normal(size=(query.n_obs, 2))
    )
    text = path.read_text()
    assert "Use logistic regression on PCA" in text
    assert text.count("<img") == 3  # UMAP, confusion matrix, reliability
    assert "Query classes the reference does not have" in text
    assert "type_3" in text
