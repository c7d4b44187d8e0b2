"""The shared training loop: learning, exact resume after a kill, and DDP under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lifelm.data.cells.datasets import CellTokens, MaskedGeneCollator
from lifelm.data.cells.tokenizer import RankValueTokenizer
from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
from lifelm.testing.synthetic import synthetic_cells
from lifelm.training.loop import FAULT_ENV, ItemStream, TrainConfig, latest_checkpoint, lr_at, train


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


@pytest.mark.slow
def test_kill_and_resume_ends_with_the_same_weights(tmp_path: Path, tiny_h5ad: Path) -> None:
    straight = _cli(_pretrain_args(tiny_h5ad, tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _cli(_pretrain_args(tiny_h5ad, tmp_path / "b"), env={FAULT_ENV: "5"})
    assert killed.returncode == 17, killed.stderr[
        -2000:
    ]  # died after step 5, last checkpoint step 3
    assert latest_checkpoint(tmp_path / "b").name == "step_3"
    assert not (tmp_path / "b" / "model").exists()
    resumed = _cli([*_pretrain_args(tiny_h5ad, tmp_path / "b"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    wa = load_file(tmp_path / "a" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    # keeps only the newest checkpoints
    assert len(list((tmp_path / "a" / "checkpoints").glob("step_*"))) == 2


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
