"""``lifelm wetware`` commands and the MEA presets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lifelm.cli import app, main
from lifelm.wetware import Neuroplatform, preset
from lifelm.wetware.electrodes import site_electrodes


def test_presets_and_pong_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["wetware", "presets"])
    assert out.exit_code == 0
    assert "finalspark-4x8: 4 site(s) x 8 electrodes" in out.output
    path = tmp_path / "pong.json"
    out = runner.invoke(
        app,
        [
            "wetware",
            "pong",
            "--neurons",
            "80",
            "--duration",
            "4",
            "--window",
            "2",
            "--out",
            str(path),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "hit rate" in out.output
    data = json.loads(path.read_text())
    assert data["config"]["feedback"] == "fep"
    assert len(data["curve"]) == 2


def test_bad_feedback_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["wetware", "pong", "--feedback", "reward", "--duration", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "feedback='reward'" in err
    assert "Traceback" not in err


def test_mea_geometries() -> None:
    grid = site_electrodes(8, "grid", 250.0, 120.0)
    assert grid.shape == (8, 3)
    assert len({tuple(p) for p in grid}) == 8
    assert np.allclose(grid[:, 2], 0.0)
    line = site_electrodes(32, "line", 400.0, 120.0)
    assert np.allclose(line[:, 1], 0.0)
    assert np.all(np.diff(line[:, 0]) > 0)
    plat = Neuroplatform(preset("line-1x32", n_neurons=200), seed=0)
    assert plat.cfg.n_electrodes == 32
    tok = plat.book(list(range(32))).token
    plat.start(tok)
    res = plat.record(tok, 200)
    assert res.counts.shape == (32,)
