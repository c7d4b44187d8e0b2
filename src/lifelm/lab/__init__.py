"""Closed-loop experiment design: a strategy picks the next perturbations, a lab runs them.

Python API::

    from lifelm.lab import LoopConfig, load_screen, expression_features, run_loop
    screen = load_screen("ground_truth_IFNG.csv", hits="topmovers_IFNG.npy")
    feats = expression_features(screen.genes, adata)          # co-expression in single-cell data
    result = run_loop(screen, "runs/ifng", config=LoopConfig(strategy="ucb_thompson"), features=feats)

Modules: :mod:`~lifelm.lab.screens` (screen tables, hits, controls), :mod:`~lifelm.lab.features`
(gene features), :mod:`~lifelm.lab.strategies`, :mod:`~lifelm.lab.backends` (the simulated assay),
:mod:`~lifelm.lab.plr` (PyLabRobot protocols), :mod:`~lifelm.lab.loop` (rounds, state, resume),
:mod:`~lifelm.lab.evidence` (evidence-integration ranking), :mod:`~lifelm.lab.perturbseq` (the
Perturb-seq setting: a bootstrap-of-cells oracle and the response model as learner),
:mod:`~lifelm.lab.gimap` (Norman's GI map as a pair screen).
"""

from __future__ import annotations

from lifelm.lab.backends import Lab, RoundResult, SimulatedLab
from lifelm.lab.features import GeneFeatures, combine, embedding_features, expression_features
from lifelm.lab.loop import LoopConfig, LoopResult, load_run, make_lab, run_loop
from lifelm.lab.screens import Screen, load_screen
from lifelm.lab.strategies import STRATEGIES, Observations, select_batch

__all__ = [
    "STRATEGIES",
    "GeneFeatures",
    "Lab",
    "LoopConfig",
    "LoopResult",
    "Observations",
    "RoundResult",
    "Screen",
    "SimulatedLab",
    "combine",
    "embedding_features",
    "expression_features",
    "load_run",
    "load_screen",
    "make_lab",
    "run_loop",
    "select_batch",
]
