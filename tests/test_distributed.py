"""Two gloo processes on CPU: DDP matches one process; FSDP2 + sharded checkpoints resume exactly.

The two ranks are forked from the test process with the torchrun environment set (RANK,
WORLD_SIZE, MASTER_ADDR…), which skips two interpreter start-ups per run; launching through
``torchrun`` itself is covered by tests/test_training.py.

Tolerance: the 2-process loss curve (all-reduced mean) equals the 1-process curve at the same
global batch within 1e-5 relative; the toy loss is a mean over items, so only float summation
order differs. Resumed FSDP weights must equal the uninterrupted run's bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dist_worker import ToyData, ToyModel, run_forked, toy_collate, toy_config
from lifelm._core.runtime import seed_everything
from lifelm.data.store.build import CorpusConfig, build_corpus
from lifelm.testing.synthetic import synthetic_cells
from lifelm.training.loop import latest_checkpoint, train


def _two_ranks(args: list[str], env: dict[str, str] | None = None) -> list[int]:
    return run_forked(args, world=2, env={"OMP_NUM_THREADS": "1", **(env or {})})


def _losses(run: Path) -> np.ndarray:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    return np.array([r["loss"] for r in rows])


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ddp_processes_follow_the_single_process_loss_curve(tmp_path: Path) -> None:
    seed_everything(0)
    train(
        ToyModel(),
        ToyData(),
        config=toy_config(8, 8, "auto", 0),  # one process, global batch 8
        out_dir=tmp_path / "one",
        collate_fn=toy_collate,
        sidecar={},
    )
    codes = _two_ranks(["--task", "toy", "--out", str(tmp_path / "two"), "--steps", "8"])  # 2 × 4
    assert codes == [0, 0]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    assert one[-1] < one[0]
    np.testing.assert_allclose(two, one, rtol=1e-5)
    w1 = load_file(tmp_path / "one" / "model" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    src = tmp_path / "cells.h5ad"
    synthetic_cells(120, 60, n_types=3, seed=0).write_h5ad(src)
    build_corpus([src], tmp_path / "store", config=CorpusConfig(max_length=64, min_genes=5))
    common = ["--task", "cells", "--store", str(tmp_path / "store"), "--strategy", "fsdp"]
    common += ["--steps", "6", "--batch-size", "8", "--checkpoint-every", "2"]
    assert _two_ranks([*common, "--out", str(tmp_path / "a")]) == [0, 0]
    killed = _two_ranks([*common, "--out", str(tmp_path / "b"), "--stop-after", "3"])
    assert killed == [17, 17]  # both ranks died after step 3 (epoch of 7 steps, mid-epoch)
    ckpt = latest_checkpoint(tmp_path / "b")
    assert ckpt is not None
    assert ckpt.name == "step_2"
    assert sorted(p.name for p in (ckpt / "dcp").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert _two_ranks([*common, "--out", str(tmp_path / "b"), "--resume"]) == [0, 0]
    wa = load_file(tmp_path / "a" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert len(wa) > 10
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=0)
    np.testing.assert_array_equal(_losses(tmp_path / "a")[-3:], _losses(tmp_path / "b")[-3:])
