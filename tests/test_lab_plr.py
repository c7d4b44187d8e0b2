"""Rounds compiled into PyLabRobot protocols and run on its chatterbox simulators."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lifelm._core.errors import InputError
from lifelm.lab import LoopConfig, Screen, SimulatedLab, run_loop

pytest.importorskip("pylabrobot", reason="the lab extra (pylabrobot==0.2.2) is not installed")

from lifelm.lab.plr import PyLabRobotLab, plate_layout


def _screen(n: int = 300) -> Screen:
    rng = np.random.default_rng(0)
    genes = np.array([f"G{i}" for i in range(n)])
    scores = rng.normal(0, 1, n)
    return Screen(
        "toy", genes, scores, frozenset(genes[:20]), control_scores=rng.normal(0, 0.1, 30)
    )


def test_layout_puts_controls_in_column_12_and_splits_plates() -> None:
    lay = plate_layout([f"G{i}" for i in range(100)], positive_control="P")
    assert lay.plate.nunique() == 2
    assert (lay[lay.kind == "sample"].column <= 11).all()
    ctrl = lay[lay.column == 12]
    assert len(ctrl) == 16
    assert set(ctrl.kind) == {"negative_control", "positive_control"}
    assert lay[lay.kind == "sample"].content.tolist() == [f"G{i}" for i in range(100)]
    with pytest.raises(InputError, match="smaller --batch-size"):
        plate_layout([f"G{i}" for i in range(400)])


def test_round_runs_on_chatterbox_and_readings_are_the_assay() -> None:
    screen = _screen()
    genes = [f"G{i}" for i in range(30, 130)]
    lab = PyLabRobotLab(SimulatedLab(screen, seed=4), positive_control="G0")
    res = lab.run(2, genes)
    assert res.table.gene.tolist() == genes
    # the same values the simulated assay measures (noise depends on seed, round, gene only)
    expect = SimulatedLab(screen, seed=4).measure(2, genes)
    np.testing.assert_allclose(res.table.score.to_numpy(), expect)
    ops = [o["op"] for o in res.protocol["operations"]]
    assert ops.count("transfer") == 15  # 100 genes: (11 + 1 control) + (2 + 1 control) columns
    assert ops.count("read_luminescence") == 2
    assert ops.count("move_plate") == 4
    assert "Aspirating" in res.log
    assert "Dispensing" in res.log
    assert all(q["negative_control_sd"] > 0 for q in res.protocol["qc"])
    assert lab.assay.queried == genes  # the positive control is not counted as a discovery query
    json.dumps(res.protocol)  # serialisable


def test_loop_with_pylabrobot_backend_saves_protocol_per_round(tmp_path: Path) -> None:
    screen = _screen()
    cfg = LoopConfig(strategy="random", rounds=2, batch_size=6, backend="pylabrobot")
    res = run_loop(screen, tmp_path, config=cfg)
    assert res.completed
    for r in range(2):
        d = tmp_path / "rounds" / f"round_{r:03d}"
        proto = json.loads((d / "protocol.json").read_text())
        assert proto["backend"] == "pylabrobot"
        assert proto["n_experiments"] == 6
        assert "Picking up tips" in (d / "protocol.log").read_text()
    with pytest.raises(InputError, match=r"positive control .* also in the pool"):
        run_loop(
            screen,
            tmp_path / "x",
            config=LoopConfig(rounds=1, batch_size=5, backend="pylabrobot", positive_control="G1"),
        )
