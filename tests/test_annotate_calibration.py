"""Calibration, abstention and novelty pieces of annotation (pure functions, no model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lifelm._core.errors import InputError
from lifelm.cells import annotation_summary
from lifelm.evaluation.benchmarks.annotation import harmonise_labels, read_label_map
from lifelm.evaluation.metrics.classification import (
    confusion,
    expected_calibration_error,
    reliability,
)
from lifelm.tasks.cells.annotate import (
    UNASSIGNED,
    NoveltyFlagger,
    apply_temperature,
    call_labels,
    fit_temperature,
)


def _overconfident(n: int = 3000, k: int = 4, t_true: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z); the model reports softmax(z * t_true): overconfident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    p_true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=p) for p in p_true])
    zs = z * t_true
    reported = np.exp(zs - zs.max(1, keepdims=True))
    return reported / reported.sum(1, keepdims=True), y


def test_temperature_scaling_recovers_the_overconfidence_and_lowers_ece() -> None:
    proba, y = _overconfident()
    t = fit_temperature(proba, y)
    assert 2.4 < t < 3.6  # the planted factor is 3
    correct = proba.argmax(1) == y
    before = expected_calibration_error(proba.max(1), correct)
    after = expected_calibration_error(apply_temperature(proba, t).max(1), correct)
    assert before > 0.15
    assert after < 0.04
    # scaling never changes the predicted class
    assert (apply_temperature(proba, t).argmax(1) == proba.argmax(1)).all()


def test_temperature_of_a_calibrated_model_stays_near_one() -> None:
    proba, y = _overconfident(t_true=1.0, seed=1)
    assert 0.85 < fit_temperature(proba, y) < 1.15


def test_reliability_and_ece_on_hand_computed_values() -> None:
    conf = np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55, np.nan])
    correct = np.array([1, 1, 1, 0, 1, 0, 1], dtype=bool)
    r = reliability(conf, correct, n_bins=10)
    assert sum(r["count"]) == 6  # the NaN row is skipped
    assert r["count"][9] == 4
    assert r["accuracy"][9] == pytest.approx(0.75)
    assert r["count"][5] == 2
    assert r["accuracy"][5] == pytest.approx(0.5)
    # 4/6 * |0.75 - 0.95| + 2/6 * |0.5 - 0.55|
    assert expected_calibration_error(conf, correct) == pytest.approx(4 / 6 * 0.2 + 2 / 6 * 0.05)
    assert np.isnan(expected_calibration_error([np.nan], [True]))


def test_call_labels_abstains_below_the_threshold_and_for_unscored_cells() -> None:
    proba = np.array([[0.9, 0.1], [0.55, 0.45], [np.nan, np.nan]])
    labels, conf = call_labels(proba, ["a", "b"], min_confidence=0.6)
    assert labels.tolist() == ["a", UNASSIGNED, UNASSIGNED]
    assert conf[0] == pytest.approx(0.9)
    assert np.isnan(conf[2])
    labels, _ = call_labels(proba, ["a", "b"], min_confidence=0.0)
    assert labels.tolist() == ["a", "a", UNASSIGNED]


def test_novelty_flags_far_cells_and_few_cells_like_the_reference() -> None:
    rng = np.random.default_rng(0)
    train, holdout, same = (
        rng.normal(0, 1, (800, 5)),
        rng.normal(0, 1, (400, 5)),
        rng.normal(0, 1, (400, 5)),
    )
    far = rng.normal(6, 1, (50, 5))
    nov = NoveltyFlagger.fit(train, holdout, quantile=0.99)
    assert nov.flag(far)[1].all()
    assert nov.flag(same)[1].mean() < 0.05
    d, flag = nov.flag(np.array([[np.nan] * 5]))
    assert np.isnan(d[0])
    assert not flag[0]


def test_confusion_counts_rows_true_columns_predicted() -> None:
    c = confusion(["a", "a", "b", "b"], ["a", "b", "b", UNASSIGNED])
    assert c["true"] == ["a", "b"]
    assert c["predicted"] == ["a", "b", UNASSIGNED]
    assert c["counts"] == [[1, 1, 0], [0, 1, 1]]


@pytest.mark.parametrize("fmt", ["tsv", "csv", "json"])
def test_label_map_files(tmp_path: Path, fmt: str) -> None:
    m = {"Naive CD4 T": "CD4 T", "CD14+ Mono": "Mono"}
    path = tmp_path / f"map.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(m))
    else:
        sep = "\t" if fmt == "tsv" else ","
        path.write_text(f"query{sep}reference\n" + "".join(f"{k}{sep}{v}\n" for k, v in m.items()))
    assert read_label_map(path) == m
    assert harmonise_labels(["Naive CD4 T", "B"], m).tolist() == ["CD4 T", "B"]


def test_bad_label_map_files_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\tc\n")
    with pytest.raises(InputError, match=r"line 1: expected 2 columns"):
        read_label_map(bad)
    js = tmp_path / "bad.json"
    js.write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON object"):
        read_label_map(js)
    with pytest.raises(InputError, match="not a file"):
        read_label_map(tmp_path)


def _info(model_acc: float, base_acc: float) -> dict:
    h = {"ece_before": 0.2, "ece": 0.05}
    return {
        "n_cells": 10,
        "method": "baseline",
        "method_requested": "auto",
        "settings": {"min_confidence": 0.5},
        "unassigned_cells": 2,
        "unassigned_fraction": 0.2,
        "novel_cells": 0,
        "novel_fraction": 0.0,
        "novelty_expected_fraction": 0.01,
        "holdout": {
            "majority": {"accuracy": 0.4},
            "logreg_pca": {"accuracy": base_acc, **h},
            "model": {"accuracy": model_acc, **h},
        },
        "better_method": "model" if model_acc > base_acc else "logreg_pca",
    }


def test_summary_says_when_the_model_loses_and_names_the_better_method() -> None:
    lines = annotation_summary(_info(0.6, 0.9))
    loses = [ln for ln in lines if "loses" in ln]
    assert len(loses) == 1
    assert "--method baseline" in loses[0]
    assert "0.600 vs 0.900" in loses[0]
    assert not [ln for ln in annotation_summary(_info(0.95, 0.9)) if "loses" in ln]
    worse = annotation_summary(_info(0.3, 0.35))
    assert any("no method beats the majority class" in ln for ln in worse)


def test_held_out_calibration_is_cross_fitted_and_never_makes_ece_worse() -> None:
    from lifelm.cells import _calibration

    proba, y = _overconfident(n=1000)
    c = _calibration(proba, y, seed=0)
    assert c["temperature_applied"]
    assert c["ece"] == c["ece_scaled"] < c["ece_before"]
    assert c["temperature"] == c["temperature_fitted"] > 2
    # vote fractions of a kNN (0, 1/3, 2/3, 1) that are already calibrated: scaling is not kept
    rng = np.random.default_rng(1)
    votes = rng.integers(0, 4, 600) / 3
    proba = np.stack([votes, 1 - votes], 1)
    y = (rng.random(600) > votes).astype(int)
    c = _calibration(proba, y, seed=0)
    assert c["ece"] <= c["ece_before"]
    if not c["temperature_applied"]:
        assert c["temperature"] == 1.0
