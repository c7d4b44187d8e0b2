"""Goal-state target search on synthetic data where the answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from lifelm.tasks.cells import targets as T
from lifelm.testing.synthetic import synthetic_cells
from test_perturb import tiny_model


@pytest.fixture(scope="module")
def planted():
    """Goal cells = cells whose gene X is forced to the top rank; start cells are untouched."""
    adata = synthetic_cells(100, 60, n_types=2, seed=3)
    x = adata.X.toarray()
    x_gene = int(np.argsort((x > 0).mean(0))[10])  # a gene detected in few cells
    goal = np.arange(100) >= 50
    x[goal, x_gene] = x[goal].sum(1) * 5  # rank 1 in every goal cell
    adata.X = sp.csr_matrix(x)
    adata.obs["state"] = np.where(goal, "goal", "start")
    adata.obs["donor"] = [f"d{i % 10}" for i in range(100)]  # 10 donors, 5 cells per state
    model = tiny_model(adata, seed=2)
    symbol = adata.var["gene_symbol"].iloc[x_gene]
    return adata, model, symbol


def test_planted_target_ranks_first(planted, tmp_path: Path) -> None:
    adata, model, symbol = planted
    out = T.rank_targets(
        adata, model, label_key="state", start="start", goal="goal", kind="overexpress",
        donor_key="donor", n_cells=24, n_null=5, pairs_top=3, out_dir=tmp_path, device="cpu",
        method="insilico", copy=True, progress=False,
    )  # fmt: skip
    res = out.uns["lifelm_targets"]
    table = res["genes"]
    assert table["gene"].iloc[0] == symbol
    top = table.iloc[0]
    assert top["score"] > 0.5  # overexpressing X travels most of the way to the goal
    assert top["effect_ci_low"] > 0
    assert top["p"] == pytest.approx(1 / 1024)  # the most extreme of all 2**10 donor swaps
    assert top["p_source"] == "paired donors"
    assert top["n_units"] == 10
    assert top["rank_de"] == 1  # the planted gene is also the most up-regulated one
    assert (table["q"] >= table["p"] - 1e-12).all()  # BH never lowers a p-value
    assert (table["q"] < 0.05).mean() < 0.5
    assert (tmp_path / "manifest.json").exists()  # the resumable scan folder
    assert out.obs["lifelm_targets_scanned"].sum() == 60  # ceil(24 / 10) = 3 per donor and state
    pairs = res["pairs"]
    assert len(pairs) == 3
    assert symbol in pairs["pair"].iloc[0]
    assert {"p_cells", "q_cells"} <= set(pairs.columns)


def test_bad_labels_are_clear_errors(planted) -> None:
    from lifelm._core.errors import LifeLMError

    adata, model, _ = planted
    with pytest.raises(LifeLMError, match="no column 'nope'"):
        T.rank_targets(adata, model, label_key="nope", start="a", goal="b", device="cpu")
    with pytest.raises(LifeLMError, match="no cells labelled 'sick'"):
        T.rank_targets(adata, model, label_key="state", start="sick", goal="goal", device="cpu")


def test_cli_perturb_and_targets_write_outputs(planted, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from lifelm.cli.cells_perturb import register
    from lifelm.tasks.cells.model_io import save_cell_model

    adata, model, symbol = planted
    h5 = tmp_path / "cells.h5ad"
    adata.write_h5ad(h5)
    mdir = save_cell_model(model, tmp_path / "model")
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    r = runner.invoke(
        app,
        ["perturb", str(h5), "-m", str(mdir), "-o", str(tmp_path / "p"), "--max-cells", "3",
         "--device", "cpu"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p" / "perturb_genes.tsv").read_text().count("\n") > 10
    r = runner.invoke(
        app,
        ["targets", str(h5), "-m", str(mdir), "-o", str(tmp_path / "t"), "--label-key", "state",
         "--start", "start", "--goal", "goal", "--n-cells", "12", "--n-null", "4",
         "--device", "cpu"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    html = (tmp_path / "t" / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert symbol in html
    lines = (tmp_path / "t" / "targets.tsv").read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert any("test unit" in line and "pseudo-replicates" in line for line in header)
    assert any(line.startswith("# warning:") and "anti-conservative" in line for line in header)
    assert any("DE baseline" in line for line in header)
    body = [line for line in lines if not line.startswith("#")]
    assert body[0].split("\t")[:4] == ["gene", "gene_id", "rank", "rank_insilico"]
    ranked = {row.split("\t")[0]: row.split("\t") for row in body[1:]}
    assert symbol in ranked
    assert "Differential-expression ranking" in html
    assert "Which ranking to trust" in html
    assert "anti-conservative" in r.output
    # the run folder: manifest, and a second run into it needs --resume with the same settings
    assert (tmp_path / "t" / "manifest.json").exists()
    args = ["targets", str(h5), "-m", str(mdir), "-o", str(tmp_path / "t"), "--label-key",
            "state", "--start", "start", "--goal", "goal", "--n-cells", "12", "--n-null", "4",
            "--device", "cpu"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code != 0
    assert "--resume" in str(r.exception)
    r = runner.invoke(app, [*args[:-4], "--n-null", "5", "--device", "cpu", "--resume"])
    assert r.exit_code != 0
    assert "n_null" in str(r.exception)
    r = runner.invoke(app, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert not list((tmp_path / "t").glob(".*partial"))


def test_insilico_validation_tables_on_a_planted_knockout() -> None:
    import pandas as pd

    from lifelm.evaluation.benchmarks.insilico import genetic_validation, interferon_alpha_genes

    adata = synthetic_cells(120, 60, n_types=1, seed=5)
    x = adata.X.toarray()
    det = (x > 0).mean(0)
    targets = np.argsort(-det)[[2, 5, 9]]  # three well-detected genes
    sym = adata.var["gene_symbol"].to_numpy()
    labels = np.array(["control"] * 120, dtype=object)
    for k, j in enumerate(targets):
        rows = np.arange(30 + 30 * k, 60 + 30 * k)
        x[rows, j] = 0  # the knock-out
        labels[rows] = sym[j]
    adata.X = sp.csr_matrix(x)
    adata.var_names = sym
    adata.obs["perturbation"] = pd.Categorical(labels)
    model = tiny_model(adata, seed=4)
    per, summary = genetic_validation(adata, model, kind="delete", n_control=10)
    assert sorted(per["target"]) == sorted(sym[targets])
    assert per["rank_own_expression_measured"].eq(1).all()  # the KO gene drops most: trivial wins
    assert per["rank_insilico"].between(1, 3).all()
    assert summary["method"].tolist()[0] == "in-silico (model)"
    assert (summary["random_mean_rank"] == 2.0).all()  # 3 candidates: expected rank (3 + 1) / 2
    ifn = interferon_alpha_genes()
    assert len(ifn["genes"]) == 97
    assert "ISG15" in ifn["genes"]
    assert "gsea-msigdb" in ifn["reference"]


def test_cli_targets_start_equal_goal_is_one_error_line(planted, tmp_path: Path, capsys) -> None:
    from lifelm.cli import main
    from lifelm.tasks.cells.model_io import save_cell_model

    adata, model, _ = planted
    h5 = tmp_path / "cells.h5ad"
    adata.write_h5ad(h5)
    mdir = save_cell_model(model, tmp_path / "model")
    with pytest.raises(SystemExit) as e:
        main(["cells", "targets", str(h5), "-m", str(mdir), "-o", str(tmp_path / "t"),
              "--label-key", "state", "--start", "goal", "--goal", "goal", "--device", "cpu"])  # fmt: skip
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert "--goal" in err
    assert "Traceback" not in err
    assert not (tmp_path / "t" / "targets.tsv").exists()
    with pytest.raises(SystemExit) as e:
        main(["cells", "targets", str(h5), "-m", str(mdir), "-o", str(tmp_path / "r"),
              "--label-key", "state", "--start", "start", "--goal", "goal", "--resume"])  # fmt: skip
    assert e.value.code == 2
    assert "no manifest" in capsys.readouterr().err


def test_perturb_help_promises_only_what_it_writes() -> None:
    import typer
    from typer.testing import CliRunner

    from lifelm.cli.cells_perturb import register

    app = typer.Typer()
    register(app)
    text = CliRunner().invoke(app, ["perturb", "--help"], env={"COLUMNS": "200"}).output
    assert "perturb_genes.tsv" in text
    assert "no HTML report" in text
    assert "and the HTML report" not in text
