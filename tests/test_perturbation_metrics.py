"""Perturbation metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lifelm.evaluation.metrics.perturbation import (
    de_overlap,
    discrimination_score,
    energy_distance,
    mse,
    noise_ceiling,
    pearson,
    score_predictions,
    top_de_genes,
)


def test_mse_and_pearson_by_hand() -> None:
    assert mse(np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 0.0])) == pytest.approx(
        (0 + 4 + 9) / 3
    )
    # x = (1, 2, 3), y = (1, 3, 2): centred (-1, 0, 1) . (-1, 1, 0) = 1; norms sqrt(2) sqrt(2)
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    assert np.isnan(pearson(np.zeros(5), np.arange(5.0)))  # a zero delta has no correlation


def test_top_de_and_overlap() -> None:
    rng = np.random.default_rng(0)
    ctrl = rng.normal(0, 1, size=(200, 10))
    pert = rng.normal(0, 1, size=(200, 10))
    pert[:, 7] += 3.0
    pert[:, 2] -= 2.0
    assert set(top_de_genes(pert, ctrl, k=2).tolist()) == {2, 7}
    # predicted top-2 by |delta| are genes 0 and 7 -> one of the two true genes
    assert de_overlap(np.array([5.0, 0, 0, 0, 0, 0, 0, -4.0, 0, 0]), np.array([2, 7])) == 0.5


def test_discrimination_by_hand() -> None:
    true = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    # a perfect prediction ranks its own perturbation first: 1 - 0/3
    assert discrimination_score(true, true).tolist() == [1.0, 1.0, 1.0]
    # prediction 0 sits on perturbation 1: one real effect is closer than its own -> 1 - 1/3
    pred = true.copy()
    pred[0] = [0.0, 1.0]
    assert discrimination_score(pred, true)[0] == pytest.approx(2 / 3)
    # halfway between perturbations 0 and 1: a tie counts half a rank -> 1 - 0.5/3
    pred[0] = [0.5, 0.5]
    assert discrimination_score(pred, true)[0] == pytest.approx(1 - 0.5 / 3)
    # leaving gene 1 out for perturbation 0: |0.5-1| = 0.5 vs |0.5-0| = 0.5, still a tie
    assert discrimination_score(pred, true, exclude=[[1], [], []])[0] == pytest.approx(1 - 0.5 / 3)
    # leaving gene 0 out, prediction (_, 0.1): own 0.1, pert 1 0.9, pert 2 4.9 -> ranked first
    pred[0] = [0.5, 0.1]
    assert discrimination_score(pred, true, exclude=[[0], [], []])[0] == pytest.approx(1.0)


def test_energy_distance_by_hand() -> None:
    x = np.array([[0.0], [2.0]])
    y = np.array([[1.0]])
    # E|X-Y| = 1, E|X-X'| (off-diagonal) = 2, E|Y-Y'| = 0 -> 2 * 1 - 2 - 0 = 0
    assert energy_distance(x, y) == pytest.approx(0.0)
    z = np.array([[10.0], [12.0]])
    # E|X-Z| = (10 + 12 + 8 + 10) / 4 = 10; within X and Z: 2 each -> 20 - 2 - 2
    assert energy_distance(x, z) == pytest.approx(16.0)


def test_score_predictions_and_ceiling() -> None:
    rng = np.random.default_rng(1)
    true = rng.normal(size=(4, 30))
    de = [np.argsort(-np.abs(t))[:5] for t in true]
    s = score_predictions(true, true, de)
    assert np.allclose(s["mse"], 0)
    assert np.allclose(s["pearson"], 1)
    assert np.allclose(s["discrimination"], 1)
    assert np.allclose(s["de_overlap"], 1)
    ctrl = [rng.normal(size=(100, 30)) for _ in range(4)]
    pert = [rng.normal(size=(100, 30)) + 2 * t for t in true]
    ceil = noise_ceiling(pert, ctrl, k=5, n_boot=3, embed=[p[:, :5] for p in pert])
    assert ceil["pearson"].min() > 0.9  # strong effects: halves agree
    assert ceil["energy"].shape == (4,)
    with pytest.raises(ValueError, match="need >= 4"):
        noise_ceiling([pert[0][:3]], [ctrl[0]])
