"""User-facing cell functions and the CLI, end to end on small synthetic data."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import lifelm.cells as lc
from lifelm._core.errors import InputError
from lifelm.cli import app
from lifelm.io.checkpoint import CheckpointError
from lifelm.training.loop import TrainConfig

FAST = TrainConfig(
    max_steps=40,
    batch_size=16,
    lr=2e-3,
    warmup_steps=4,
    checkpoint_every=0,
    log_every=10,
    progress=False,
)


@pytest.fixture(scope="module")
def data() -> ad.AnnData:
    return lc.synthetic_cells(300, 120, n_types=3, seed=0)


@pytest.fixture(scope="module")
def model_dir(data: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    return lc.pretrain(data, out, preset="test", train_config=FAST, max_length=128).model_dir


def test_model_reloads_from_its_folder_alone(model_dir: Path) -> None:
    m = lc.load_model(model_dir)
    assert m.tokenizer.max_length == 128
    assert m.trunk.config.vocab_size == m.tokenizer.vocab_size
    cfg = (model_dir / "config.json").read_text()
    assert '"sha256"' in cfg
    assert '"split"' in cfg


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        lc.load_model(tmp_path)


def test_embed_writes_obsm_and_uns_and_is_batch_size_invariant(
    data: ad.AnnData, model_dir: Path
) -> None:
    a = data[:80].copy()
    lc.embed(a, model_dir, batch_size=7, device="cpu")
    b = lc.embed(data[:80].copy(), model_dir, batch_size=64, device="cpu", copy=True)
    assert a.obsm["X_lifelm"].shape == (80, 32)
    np.testing.assert_allclose(a.obsm["X_lifelm"], b.obsm["X_lifelm"], atol=1e-5)
    assert a.uns["lifelm"]["embed"]["tokenizer_sha256"] == lc.load_model(model_dir).tokenizer.hash()


def test_cells_without_vocabulary_genes_get_nan(data: ad.AnnData, model_dir: Path) -> None:
    a = data[:10].copy()
    x = a.X.toarray()
    x[2] = 0
    a.X = sp.csr_matrix(x)
    lc.embed(a, model_dir, device="cpu")
    assert np.isnan(a.obsm["X_lifelm"][2]).all()
    assert not np.isnan(a.obsm["X_lifelm"][[0, 1, 3]]).any()


@pytest.mark.parametrize("mode", ["knn", "finetune"])
def test_annotate_writes_labels_and_probabilities(
    data: ad.AnnData, model_dir: Path, mode: str
) -> None:
    ref, query = data[:200].copy(), data[200:].copy()
    # default fine-tuning settings (steps from the reference size, head from a probe)
    lc.annotate(
        query,
        model_dir,
        reference=ref,
        label_key="cell_type",
        mode=mode,
        method="model",
        min_confidence=0.0,
        query_label_key="cell_type",
        device="cpu",
    )
    pred = query.obs["lifelm_cell_type"]
    assert set(pred.cat.categories) == {"type_0", "type_1", "type_2", "Unassigned"}
    assert (pred.astype(str) == query.obs["lifelm_cell_type_model"].astype(str)).all()
    p = query.obs["lifelm_cell_type_probability"]
    assert ((p > 0) & (p <= 1)).all()
    info = query.uns["lifelm"]["annotate"]
    assert info["mode"] == mode
    assert info["method"] == "model"
    assert info["tokenizer_sha256"] == lc.load_model(model_dir).tokenizer.hash()
    held = info["holdout"]
    assert {"majority", "logreg_pca", "model"} <= set(held)
    assert 0 <= held["model"]["ece"] <= 1
    # synthetic types have strong markers: far better than chance (1/3) and the majority class
    assert (pred.astype(str) == query.obs["cell_type"].astype(str)).mean() > 0.6
    assert held["model"]["accuracy"] > held["majority"]["accuracy"]
    if mode == "finetune":
        assert held["model"]["training_accuracy"] > 0.6


def test_auto_uses_the_method_that_won_on_held_out_cells(data: ad.AnnData, model_dir: Path) -> None:
    ref, query = data[:200].copy(), data[200:].copy()
    lc.annotate(query, model_dir, reference=ref, mode="knn", device="cpu")
    info = query.uns["lifelm"]["annotate"]
    held = info["holdout"]
    won = "model" if held["model"]["accuracy"] > held["logreg_pca"]["accuracy"] else "baseline"
    assert info["method"] == won
    assert info["better_method"] == ("model" if won == "model" else "logreg_pca")
    col = "lifelm_cell_type_model" if won == "model" else "lifelm_cell_type_baseline"
    assert (query.obs["lifelm_cell_type"].astype(str) == query.obs[col].astype(str)).all()


def test_finetune_that_does_not_learn_stops_with_a_message(
    data: ad.AnnData, model_dir: Path
) -> None:
    from lifelm.tasks.cells.annotate import TrainingFailedError

    ref = data[:200].copy()
    # 90 % one class, labels unrelated to expression: nothing to learn beyond the majority
    rng = np.random.default_rng(0)
    ref.obs["noise"] = np.where(rng.random(ref.n_obs) < 0.9, "common", "rare")
    cfg = TrainConfig(max_steps=2, batch_size=16, lr=1e-6, warmup_steps=1, checkpoint_every=0,
                      progress=False)  # fmt: skip
    with pytest.raises(TrainingFailedError, match="does not beat the majority class"):
        lc.train_annotator(ref, model_dir, label_key="noise", train_config=cfg, device="cpu")


def test_finetune_defaults_scale_with_the_reference() -> None:
    from lifelm.tasks.cells.annotate import finetune_config

    small, large = finetune_config(100), finetune_config(10_000, lr=1e-3, batch_size=64)
    assert small.max_steps == 30  # the floor
    assert large.max_steps == 313  # 2 epochs of 10,000 cells at 64 per step
    assert large.lr == 1e-3
    assert large.warmup_steps == 31


def test_evaluate_counts_unmapped_query_classes_and_uses_the_label_map(
    data: ad.AnnData, model_dir: Path
) -> None:
    ref, query = data[:200].copy(), data[200:].copy()
    query.obs["other"] = query.obs["cell_type"].astype(str).str.replace("type_", "T")
    with pytest.raises(InputError, match="--label-map"):
        lc.evaluate(ref, model_dir, query=query, query_label_key="other", device="cpu")
    bench = lc.evaluate(
        ref,
        model_dir,
        query=query,
        query_label_key="other",
        label_map={"T0": "type_0", "T1": "type_1"},  # T2 left unmapped
        device="cpu",
    )
    n_t2 = int((query.obs["other"] == "T2").sum())
    assert bench.info["unmapped"] == {"T2": n_t2}
    assert bench.info["n_test"] == 100
    assert bench.info["n_mapped"] == 100 - n_t2
    t = bench.table
    assert (t["n"] == 100).all()
    # unmapped cells count as errors in accuracy, and are out of accuracy_mapped
    np.testing.assert_allclose(t["accuracy"], t["accuracy_mapped"] * (100 - n_t2) / 100, atol=1e-9)
    assert "have labels the reference does not have" in bench.split
    assert "T2: " in bench.split


def test_evaluate_reports_model_next_to_baselines(data: ad.AnnData, model_dir: Path) -> None:
    bench = lc.evaluate(data, model_dir, label_key="cell_type", seed=1, device="cpu")
    assert list(bench.table.index) == ["majority", "logreg_pca", "lifelm_knn", "lifelm_linear"]
    assert "stratified random split of 300 labelled cells: 240 train, 60 test" in bench.split
    assert bench.table.loc["majority", "accuracy"] < bench.table.loc["logreg_pca", "accuracy"]
    assert set(bench.embedding.index) == {"lifelm", "pca_hvg"}
    assert "| majority |" in bench.to_markdown()


def test_cli_help_for_every_command() -> None:
    runner = CliRunner()
    for cmd in (
        ["cells", "pretrain"],
        ["cells", "embed"],
        ["cells", "annotate"],
        ["cells", "evaluate"],
        ["demo"],
    ):
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0, res.output
        assert "Usage" in res.output
    text = runner.invoke(app, ["cells", "annotate", "--help"], terminal_width=200).output
    for option in ("--lr", "--batch-size", "--method", "--min-confidence", "--label-map"):
        assert option in text
    assert "--label-map" in runner.invoke(app, ["cells", "evaluate", "--help"]).output


def test_cli_embed_annotate_evaluate(data: ad.AnnData, model_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    h5 = tmp_path / "cells.h5ad"
    data.write_h5ad(h5)
    res = runner.invoke(
        app,
        [
            "cells",
            "embed",
            str(h5),
            "-m",
            str(model_dir),
            "-o",
            str(tmp_path / "e.h5ad"),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert ad.read_h5ad(tmp_path / "e.h5ad").obsm["X_lifelm"].shape == (300, 32)
    res = runner.invoke(
        app,
        [
            "cells",
            "annotate",
            str(h5),
            "-m",
            str(model_dir),
            "--reference",
            str(h5),
            "--mode",
            "knn",
            "-o",
            str(tmp_path / "a.h5ad"),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "lifelm_cell_type" in ad.read_h5ad(tmp_path / "a.h5ad").obs
    assert "held-out reference accuracy: majority" in res.output
    res = runner.invoke(
        app,
        [
            "cells",
            "evaluate",
            str(h5),
            "-m",
            str(model_dir),
            "--device",
            "cpu",
            "-o",
            str(tmp_path / "ev.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "logreg_pca" in res.output
    assert (tmp_path / "ev.json").is_file()


def test_cli_refuses_log_data_with_a_clear_message(
    data: ad.AnnData, model_dir: Path, tmp_path: Path
) -> None:
    logged = data[:20].copy()
    logged.X = sp.csr_matrix(np.log1p(logged.X.toarray() / 3.0))
    h5 = tmp_path / "log.h5ad"
    logged.write_h5ad(h5)
    res = CliRunner().invoke(
        app, ["cells", "embed", str(h5), "-m", str(model_dir), "-o", str(tmp_path / "x.h5ad")]
    )
    assert res.exit_code != 0
    assert "no raw counts found" in str(res.exception)
