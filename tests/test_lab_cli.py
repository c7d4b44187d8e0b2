"""``lifelm lab run``: files in, loop folders and an HTML report out; clear errors; a real screen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lifelm.cli import main


def _files(tmp_path: Path, n: int = 120) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(n)]
    scores = rng.normal(0, 1, n)
    screen = tmp_path / "screen.csv"
    pd.DataFrame({"Gene": genes, "Score": scores}).to_csv(screen, index=False)
    hits = tmp_path / "hits.txt"
    hits.write_text("\n".join(np.array(genes)[np.argsort(-np.abs(scores))[:12]]))
    return screen, hits


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(args)
    return int(e.value.code)


def test_cli_runs_resumes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    screen, hits = _files(tmp_path)
    out = tmp_path / "run"
    base = ["lab", "run", str(screen), "--hits", str(hits), "-o", str(out), "--rounds", "3",
            "--batch-size", "10", "--strategy", "random", "--strategy", "greedy"]  # fmt: skip
    assert _run([*base, "--stop-after", "1"]) == 0
    assert "stopped after 1 rounds" in capsys.readouterr().out
    assert _run([*base, "--resume"]) == 0
    text = capsys.readouterr().out
    assert "random: 30 tested" in text
    assert "greedy: 30 tested" in text
    report = (out / "report.html").read_text()
    assert "Discovery curves" in report
    assert "data:image/png;base64," in report
    assert "Final ranking" in report
    state = json.loads((out / "greedy" / "state.json").read_text())
    assert state["rounds_done"] == 3
    assert len(state["curve"]) == 3
    ranking = pd.read_csv(out / "greedy" / "ranking.csv")
    assert len(ranking) == 120
    assert ranking["score:prior_hits"].notna().sum() == 30


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    screen, hits = _files(tmp_path)
    pool = tmp_path / "pool.txt"
    pool.write_text("G1\nG2\nNOT_A_GENE\n")
    code = _run(["lab", "run", str(screen), "--hits", str(hits), "--pool", str(pool),
                 "-o", str(tmp_path / "o"), "--rounds", "1", "--batch-size", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error:")
    assert "NOT_A_GENE" in err
    assert "Traceback" not in err
    code = _run(["lab", "run", str(screen), "--hits", str(hits), "-o", str(tmp_path / "o2"),
                 "--rounds", "20", "--batch-size", "10"])  # fmt: skip
    assert code == 2
    assert "larger than the pool of 120 genes" in capsys.readouterr().err
    code = _run(["lab", "run", str(screen), "-o", str(tmp_path / "o3")])
    assert code == 2
    assert "no control rows" in capsys.readouterr().err


@pytest.mark.data
def test_real_screen_loop_with_coexpression_features(shared_data: Path, tmp_path: Path) -> None:
    """IFN-γ screen (Schmidt 2022), PBMC co-expression features, PyLabRobot backend, 3 short rounds."""
    d = shared_data / "screens" / "biodiscoveryagent"
    expr = shared_data / "singlecell" / "pbmc3k" / "pbmc3k_seurat_counts.h5ad"
    if not (d / "ground_truth_IFNG.csv").is_file() or not expr.is_file():
        pytest.skip("IFNG screen or PBMC 3k data absent")
    pytest.importorskip("pylabrobot")
    out = tmp_path / "ifng"
    code = _run(["lab", "run", str(d / "ground_truth_IFNG.csv"), "--hits", str(d / "topmovers_IFNG.npy"),
                 "--expression", str(expr), "-o", str(out), "--rounds", "3", "--batch-size", "24",
                 "--strategy", "ucb_thompson", "--backend", "pylabrobot"])  # fmt: skip
    assert code == 0
    curve = pd.read_csv(out / "ucb_thompson" / "curve.csv")
    assert curve.n_tested.tolist() == [24, 48, 72]
    assert curve.hits_in_pool.iloc[0] == 920
    proto = json.loads(
        (out / "ucb_thompson" / "rounds" / "round_002" / "protocol.json").read_text()
    )
    assert proto["backend"] == "pylabrobot"
    assert any(o["op"] == "transfer" for o in proto["operations"])
    batch = json.loads((out / "ucb_thompson" / "rounds" / "round_002" / "batch.json").read_text())
    assert "random forest" in batch["model"]
    assert "21 features" in batch["model"]
