"""The shared training loop: learning, exact resume after a kill, and DDP under torchrun."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dist_worker import ToyData, ToyModel, toy_collate
from lifelm._core.errors import LifeLMError
from lifelm._core.runfolder import FolderLockedError, ManifestMismatchError, lock_folder
from lifelm.data.cells.datasets import CellTokens, MaskedGeneCollator
from lifelm.data.cells.tokenizer import RankValueTokenizer
from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
from lifelm.tasks.cells.pretrain import pretrain
from lifelm.testing.synthetic import synthetic_cells
from lifelm.training.loop import (
    ItemStream,
    NoCheckpointError,
    TrainConfig,
    latest_checkpoint,
    lr_at,
    train,
)


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)


def test_item_stream_is_a_permutation_per_epoch_and_seeded() -> None:
    s = ItemStream(10, seed=1)
    first = s.indices(0, 10)
    assert sorted(first) == list(range(10))
    assert s.indices(10, 10) != first  # a new permutation each epoch
    assert ItemStream(10, seed=1).indices(3, 12) == s.indices(3, 12)


def test_loss_goes_down_and_folder_reloads(tmp_path: Path) -> None:
    a = synthetic_cells(200, 100, n_types=3, seed=0)
    tok = RankValueTokenizer.fit(a, max_length=128)
    cells = tok.encode(a)
    cfg = CellTransformerConfig.from_name("test", vocab_size=tok.vocab_size, max_length=128)
    model = CellTransformer(cfg)
    result = train(
        model,
        CellTokens(cells),
        config=TrainConfig(
            max_steps=60, batch_size=16, lr=3e-3, warmup_steps=5, log_every=10, progress=False
        ),
        out_dir=tmp_path,
        collate_fn=MaskedGeneCollator(tok.vocab_size, 128),
        sidecar={"model": cfg.to_dict()},
    )
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] - 0.1, losses  # uniform guessing is ln(103) = 4.63
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert (result.model_dir / "model.safetensors").is_file()


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifelm", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.fixture(scope="module")
def tiny_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cells.h5ad"
    synthetic_cells(160, 80, n_types=3, seed=0).write_h5ad(path)
    return path


def _pretrain_args(data: Path, out: Path) -> list[str]:
    return [
        "cells",
        "pretrain",
        str(data),
        "--out",
        str(out),
        "--preset",
        "test",
        "--steps",
        "8",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "3",
        "--warmup",
        "2",
        "--max-length",
        "64",
        "--device",
        "cpu",
    ]


def _pretrain(data: Path, out: Path, **kw: object):
    cfg = TrainConfig(
        max_steps=8, batch_size=8, checkpoint_every=3, warmup_steps=2, device="cpu", progress=False,
        **kw.pop("train", {}),  # type: ignore[arg-type]
    )  # fmt: skip
    return pretrain(data, out, preset="test", max_length=64, train_config=cfg, **kw)  # type: ignore[arg-type]


def _same_weights(a: Path, b: Path) -> None:
    wa = load_file(a / "model" / "model.safetensors")
    wb = load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_kill_and_resume_ends_with_the_same_weights(
    tmp_path: Path, tiny_h5ad: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _pretrain(tiny_h5ad, tmp_path / "a")
    killed = _pretrain(tiny_h5ad, tmp_path / "b", stop_after=5)  # "killed" after step 5
    assert killed.stopped
    assert latest_checkpoint(tmp_path / "b").name == "step_3"
    assert not (tmp_path / "b" / "model").exists()
    with caplog.at_level(logging.INFO, logger="lifelm"):
        resumed = _pretrain(tiny_h5ad, tmp_path / "b", resume=True)  # same inputs: works
    assert not resumed.stopped
    assert "resuming from" in caplog.text
    _same_weights(tmp_path / "a", tmp_path / "b")
    # keeps only the newest checkpoints
    assert len(list((tmp_path / "a" / "checkpoints").glob("step_*"))) == 2
    # the rows logged after the checkpoint were replaced, not repeated
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps))


def test_resume_refuses_other_data_other_settings_and_no_checkpoint(
    tmp_path: Path, tiny_h5ad: Path
) -> None:
    run = tmp_path / "run"
    with pytest.raises(NoCheckpointError, match="holds no checkpoint") as err:
        _pretrain(tiny_h5ad, run, resume=True)
    assert isinstance(err.value, LifeLMError)
    _pretrain(tiny_h5ad, run, stop_after=3)
    other = tmp_path / "other.h5ad"
    ad.read_h5ad(tiny_h5ad)[:150].copy().write_h5ad(other)  # the same genes, fewer cells
    with pytest.raises(ManifestMismatchError, match=r"input data\[0\]: .*other\.h5ad"):
        _pretrain(other, run, resume=True)
    with pytest.raises(ManifestMismatchError, match=r"setting train\.lr: 0\.0003 → 0\.001"):
        _pretrain(tiny_h5ad, run, resume=True, train={"lr": 1e-3})
    assert latest_checkpoint(run).name == "step_3"  # refusals changed nothing


def test_a_second_writer_is_refused(tmp_path: Path, tiny_h5ad: Path) -> None:
    with lock_folder(tmp_path / "run"), pytest.raises(FolderLockedError, match="another LifeLM"):
        _pretrain(tiny_h5ad, tmp_path / "run")
    assert not (tmp_path / "run" / "tokenizer.json").exists()  # refused before writing anything
    with lock_folder(tmp_path / "toy"), pytest.raises(FolderLockedError):
        _toy(tmp_path / "toy")  # the loop itself locks too (genome runs go through it)


def _toy(out: Path, **kw: object):
    cfg = {"max_steps": 6, "batch_size": 8, "lr": 1e-2, "warmup_steps": 2, "log_every": 2}
    cfg.update(kw.pop("cfg", {}))  # type: ignore[arg-type]
    return train(
        ToyModel(),
        ToyData(),
        config=TrainConfig(checkpoint_every=2, progress=False, device="cpu", **cfg),  # type: ignore[arg-type]
        out_dir=out,
        collate_fn=toy_collate,
        sidecar={"model": "toy"},
        **kw,  # type: ignore[arg-type]
    )


def test_eval_every_fires_on_steps_that_do_not_log(tmp_path: Path) -> None:
    res = _toy(tmp_path, eval_dataset=ToyData(16), cfg={"log_every": 4, "eval_every": 3})
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 4, 6]
    assert "eval_loss" in rows[0]
    assert "loss" not in rows[0]  # step 3: evaluation only
    assert "eval_loss" not in rows[1]
    assert "loss" in rows[1]
    assert np.isfinite([rows[0]["eval_loss"], rows[2]["eval_loss"], rows[2]["loss"]]).all()
    assert res.final_loss == rows[2]["loss"]


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda c: _truncate(c / "model.safetensors"), "model.safetensors"),
        (lambda c: (c / "model.safetensors").write_bytes(b""), "model.safetensors"),
        (lambda c: (c / "config.json").write_text("{not json"), "config.json"),
        (lambda c: (c / "trainer_state.pt").unlink(), "trainer_state.pt"),
    ],
    ids=["truncated-weights", "empty-weights", "bad-json", "no-trainer-state"],
)
def test_damaged_newest_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage, named: str
) -> None:
    _toy(tmp_path / "a")
    assert _toy(tmp_path / "b", stop_after=5).stopped  # checkpoints at steps 2 and 4
    damage(tmp_path / "b" / "checkpoints" / "step_4")
    with caplog.at_level(logging.WARNING, logger="lifelm"):
        _toy(tmp_path / "b", resume=True)
    warning = next(r.getMessage() for r in caplog.records if "damaged" in r.getMessage())
    assert "step_4" in warning
    assert named in warning
    assert "resuming from" not in warning
    _same_weights(tmp_path / "a", tmp_path / "b")  # resumed from step 2, same end point


@pytest.mark.slow
@pytest.mark.distributed
def test_pretrain_runs_unchanged_under_torchrun_gloo(tmp_path: Path, tiny_h5ad: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "lifelm",
        *_pretrain_args(tiny_h5ad, tmp_path / "ddp"),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines() if line]
    assert rows, "rank 0 wrote no metrics"
    assert np.isfinite([float(r.split('"loss": ')[1].split(",")[0]) for r in rows]).all()
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()
