"""Bad inputs and faults: a clear error (file, field, fix), exit code 2, no traceback, nothing half-written.

Each case drives the real entry point, ``lifelm.cli.main([...])`` (what the ``lifelm`` script and
``python -m lifelm`` run), on small files the test makes, and checks that the command fails with
one ``error:`` message naming the file and the fix, that no traceback is printed, and that no
output (or temporary) file is left behind.
"""

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
import scipy.sparse as sp
import torch

import lifelm.cells as lc
from lifelm._core.errors import NumericalError
from lifelm.cli import main
from lifelm.data.cells.counts import NotCountsError, check_counts_block
from lifelm.data.cells.tokenizer import RankValueTokenizer
from lifelm.io.checkpoint import (
    CheckpointError,
    NonFiniteWeightsError,
    load_checkpoint,
    save_checkpoint,
)
from lifelm.io.geneformer import GeneformerImportError
from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
from lifelm.tasks.cells.model_io import CellModel, load_cell_model, save_cell_model, sidecar

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data() -> ad.AnnData:
    return lc.synthetic_cells(300, 120, n_types=3, seed=0)


@pytest.fixture(scope="module")
def model_dir(data: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained cell model folder (the errors do not depend on training)."""
    tok = RankValueTokenizer.fit(data, max_length=64)
    cfg = CellTransformerConfig.from_name("test", vocab_size=tok.vocab_size, max_length=64)
    torch.manual_seed(0)
    model = CellModel(CellTransformer(cfg), tok, sidecar(cfg, tok))
    return save_cell_model(model, tmp_path_factory.mktemp("run") / "model")


@pytest.fixture(scope="module")
def good_h5ad(data: ad.AnnData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "cells.h5ad"
    data[:40].copy().write_h5ad(path)
    return path


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``lifelm ARGS`` in-process; return (exit code, stderr) and check there is no traceback."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return int(exc.value.code or 0), err


def assert_nothing_written(folder: Path, name: str) -> None:
    """No output file and no temporary (``.NAME.*.partial``) file in ``folder``."""
    left = [p.name for p in folder.iterdir() if p.name == name or p.name.startswith(f".{name}.")]
    assert not left, left


def embed_args(data: Path, model: Path, out: Path) -> list[object]:
    return ["cells", "embed", data, "-m", model, "-o", out, "--device", "cpu"]


def write(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


# ------------------------------------------------------------------- the cells input
def log_after(data: ad.AnnData, n: int, first_log: int) -> ad.AnnData:
    """Raw counts in the first ``first_log`` rows, log1p-normalised values after them."""
    rng = np.random.default_rng(1)
    x = lc.synthetic_cells(n, 120, n_types=3, seed=0).X.toarray().astype(np.float32)
    assert (x.sum(1) > 0).all()
    tail = x[first_log:]
    x[first_log:] = np.log1p(tail / tail.sum(1, keepdims=True) * 1e4)
    del rng
    return ad.AnnData(sp.csr_matrix(x), var=data.var.copy())


def test_log_normalised_cells_after_the_first_2000_rows_are_refused(
    data: ad.AnnData, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mixed = log_after(data, 2600, 2300)
    path = write(mixed, tmp_path / "mixed.h5ad")
    out = tmp_path / "out.h5ad"
    code, err = cli(embed_args(path, model_dir, out), capsys)
    assert code == 2
    assert str(path) in err
    assert "X" in err
    assert "row 2300" in err
    assert "non-integer" in err
    assert "--layer" in err  # the fix
    assert_nothing_written(tmp_path, out.name)
    # pretraining fits the tokenizer on every row too
    code, err = cli(["cells", "pretrain", path, "-o", tmp_path / "run", "--preset", "test"], capsys)
    assert code == 2
    assert "row 2300" in err
    assert not (tmp_path / "run" / "model").exists()
    # the corpus store build streams every row as well
    code, err = cli(["cells", "corpus", "build", path, "-o", tmp_path / "store"], capsys)
    assert code == 2
    assert "row 2300" in err
    assert not (tmp_path / "store" / "corpus.json").exists()


def test_counts_check_covers_every_block_and_names_the_rows() -> None:
    good = sp.csr_matrix(np.array([[0, 2, 5], [1, 0, 0]], dtype=np.float32))
    check_counts_block(good, "f.h5ad:X", 0)
    bad = sp.csr_matrix(np.array([[0, 2, 5], [0.7, 0, 1.3]], dtype=np.float32))
    with pytest.raises(NotCountsError, match=r"f\.h5ad:X: rows 4000:4002 .* first in row 4001"):
        check_counts_block(bad, "f.h5ad:X", 4000)
    with pytest.raises(NotCountsError, match="negative"):
        check_counts_block(sp.csr_matrix(np.array([[-1, 2]], dtype=np.int32)), "f", 0)
    with pytest.raises(NotCountsError, match="NaN"):
        check_counts_block(sp.csr_matrix(np.array([[np.nan, 2.0]])), "f", 0)
    check_counts_block(sp.csr_matrix(np.array([[3, 2]], dtype=np.int64)), "f", 0)  # ints pass


def test_streaming_encode_reports_the_first_bad_block(data: ad.AnnData, model_dir: Path) -> None:
    mixed = log_after(data, 2600, 2300)
    tok = load_cell_model(model_dir).tokenizer
    with pytest.raises(NotCountsError, match=r"rows 2000:2600 .* first in row 2300"):
        tok.encode(mixed, chunk=1000)


@pytest.mark.parametrize(("case", "message"), [("no_cells", "0 cells"), ("no_genes", "0 genes")])
@pytest.mark.parametrize("command", ["embed", "pretrain"])
def test_empty_data_is_refused(
    case: str,
    message: str,
    command: str,
    data: ad.AnnData,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = data[:0].copy() if case == "no_cells" else data[:, :0].copy()
    path = write(empty, tmp_path / f"{case}.h5ad")
    if command == "embed":
        args = embed_args(path, model_dir, tmp_path / "out.h5ad")
    else:
        args = ["cells", "pretrain", path, "-o", tmp_path / "run", "--preset", "test"]
    code, err = cli(args, capsys)
    assert code == 2
    assert str(path) in err
    assert message in err
    assert "pass a dataset with" in err
    assert_nothing_written(tmp_path, "out.h5ad")
    assert not (tmp_path / "run" / "model").exists()


def test_small_gene_panel_warns_with_coverage_and_too_few_known_genes_is_an_error(
    data: ad.AnnData,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    vocab = load_cell_model(model_dir).tokenizer.genes
    panel = data[:40, data.var_names.isin(vocab[:30])].copy()
    assert panel.n_vars == 30
    path = write(panel, tmp_path / "panel.h5ad")
    out = tmp_path / "panel_out.h5ad"
    with caplog.at_level(logging.WARNING, logger="lifelm"):
        code, _ = cli(embed_args(path, model_dir, out), capsys)
    assert code == 0
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"30 of the model's {len(vocab)} vocabulary genes" in w for w in warn), warn
    report = ad.read_h5ad(out).uns["lifelm"]["embed"]
    assert report["vocab_genes_measured"] == 30
    assert report["vocab_genes"] == len(vocab)
    # most genes unknown to the model: below min_coverage (50 %) it is an error
    other = lc.synthetic_cells(40, 120, n_types=3, seed=5)
    path = write(other, tmp_path / "other.h5ad")
    code, err = cli(embed_args(path, model_dir, tmp_path / "o2.h5ad"), capsys)
    assert code == 2
    assert str(path) in err
    assert "in the model vocabulary" in err
    assert "gene_ids" in err
    assert "--gene-ids" not in err  # the hint names only what exists
    assert_nothing_written(tmp_path, "o2.h5ad")


def test_truncated_and_empty_h5ad_are_refused_naming_the_file(
    good_h5ad: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    half = tmp_path / "half.h5ad"
    raw = good_h5ad.read_bytes()
    half.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "out.h5ad"
    code, err = cli(embed_args(half, model_dir, out), capsys)
    assert code == 2
    assert str(half) in err
    assert "truncated" in err
    assert "download it again" in err
    assert_nothing_written(tmp_path, out.name)
    empty = tmp_path / "empty.h5ad"
    empty.write_bytes(b"")
    code, err = cli(embed_args(empty, model_dir, out), capsys)
    assert code == 2
    assert str(empty) in err
    assert "empty file" in err
    # pretraining reads the same files backed
    code, err = cli(["cells", "pretrain", half, "-o", tmp_path / "run", "--preset", "test"], capsys)
    assert code == 2
    assert str(half) in err
    assert "truncated" in err


def test_a_folder_given_as_data_is_refused(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "cells"
    folder.mkdir()
    code, err = cli(embed_args(folder, model_dir, tmp_path / "out.h5ad"), capsys)
    assert code == 2
    assert "cells" in err
    assert "directory" in err
    # pretrain takes a corpus store folder, so a plain folder is refused by the reader
    code, err = cli(["cells", "pretrain", folder, "-o", tmp_path / "run"], capsys)
    assert code == 2
    assert str(folder) in err
    assert "is a folder, not an .h5ad file" in err


@pytest.mark.parametrize("kind", ["folder", "under_a_file", "extension"])
def test_bad_output_paths_are_refused_before_any_work(
    kind: str,
    good_h5ad: Path,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lifelm.tasks.cells.embed as embed_mod

    calls = []
    monkeypatch.setattr(embed_mod, "embed", lambda *a, **k: calls.append(1))
    junk = tmp_path / "junk"
    junk.write_text("not a folder")
    out = {
        "folder": tmp_path,
        "under_a_file": junk / "out.h5ad",
        "extension": tmp_path / "out.csv",
    }[kind]
    code, err = cli(embed_args(good_h5ad, model_dir, out), capsys)
    assert code == 2
    assert not calls
    assert {"folder": "is a folder", "under_a_file": "is a file", "extension": ".h5ad"}[kind] in err
    assert str(out) in err
    assert junk.read_text() == "not a folder"
    assert_nothing_written(tmp_path, "out.csv")
    # the run folder of pretrain and the corpus store are checked the same way
    code, err = cli(["cells", "pretrain", good_h5ad, "-o", junk, "--preset", "test"], capsys)
    assert code == 2
    assert "junk" in err
    assert "not a folder" in err
    code, err = cli(["cells", "corpus", "build", good_h5ad, "-o", junk / "store"], capsys)
    assert code == 2
    assert "is a file" in err


@pytest.mark.parametrize("fault", ["read_only", "full"])
def test_read_only_or_full_disk_is_refused_before_the_computation(
    fault: str,
    good_h5ad: Path,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil
    from collections import namedtuple

    import lifelm._core.runfolder as rf
    import lifelm.tasks.cells.embed as embed_mod

    calls = []
    monkeypatch.setattr(embed_mod, "embed", lambda *a, **k: calls.append(1))
    if fault == "read_only":  # tests run as root, so the permission is simulated
        real = os.access
        monkeypatch.setattr(
            rf.os, "access", lambda p, m, **k: not str(p).startswith(str(tmp_path)) and real(p, m)
        )
    else:
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(rf.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    out = tmp_path / "out.h5ad"
    code, err = cli(embed_args(good_h5ad, model_dir, out), capsys)
    assert code == 2
    assert not calls
    assert str(out) in err
    assert ("not writable" if fault == "read_only" else "1 kB free") in err
    assert_nothing_written(tmp_path, out.name)
    code, err = cli(["cells", "corpus", "build", good_h5ad, "-o", tmp_path / "store"], capsys)
    assert code == 2
    assert ("not writable" if fault == "read_only" else "1 kB free") in err
    assert not (tmp_path / "store").exists()
    del shutil


def test_disk_full_while_writing_leaves_no_partial_output(
    good_h5ad: Path,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    def full(self: ad.AnnData, path: Path, **kw: object) -> None:
        Path(path).write_bytes(b"\x89HDF\r\n" + b"\0" * 100)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    out = tmp_path / "out.h5ad"
    out.write_bytes(b"previous result")
    monkeypatch.setattr(ad.AnnData, "write_h5ad", full)
    code, err = cli(embed_args(good_h5ad, model_dir, out), capsys)
    assert code == 2
    assert "No space left" in err
    assert f"error: {out}: writing failed" in err  # names the output, not the temporary file
    assert out.read_bytes() == b"previous result"  # the old output is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5ad"]


# ------------------------------------------------------------------------ checkpoints
def copy_model(model_dir: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "model"
    shutil.copytree(model_dir, dst)
    return dst


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated_weights", "model.safetensors: cannot be read as safetensors"),
        ("empty_weights", "model.safetensors: empty weights file"),
        ("no_weights", "model.safetensors: missing weights file"),
        ("empty_config", "config.json: empty file"),
        ("bad_json", "config.json: not valid JSON"),
        ("edited_config", "config.json: incomplete or edited cell-model config"),
        ("not_a_model", "is not a LifeLM cell model"),
        ("broken_hf_bert", "a Hugging Face BERT config without num_hidden_layers"),
        ("nan_weights", "hold NaN or infinite values"),
    ],
)
def test_damaged_checkpoints_are_refused_naming_the_file_and_the_fix(
    damage: str,
    message: str,
    good_h5ad: Path,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from safetensors.torch import load_file, save_file

    m = copy_model(model_dir, tmp_path)
    w, c = m / "model.safetensors", m / "config.json"
    if damage == "truncated_weights":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif damage == "empty_weights":
        w.write_bytes(b"")
    elif damage == "no_weights":
        w.unlink()
    elif damage == "empty_config":
        c.write_text("")
    elif damage == "bad_json":
        c.write_text(c.read_text()[:100])
    elif damage == "edited_config":
        cfg = json.loads(c.read_text())
        del cfg["tokenizer"]
        c.write_text(json.dumps(cfg))
    elif damage == "not_a_model":
        c.write_text(json.dumps({"model_type": "llama"}))
    elif damage == "broken_hf_bert":  # read as a Geneformer folder, but incomplete
        c.write_text(json.dumps({"model_type": "bert"}))
    elif damage == "nan_weights":
        state = load_file(str(w))
        name = next(k for k, v in state.items() if v.is_floating_point())
        state[name] = state[name].clone()
        state[name].view(-1)[0] = float("nan")
        save_file(state, str(w))
    with pytest.raises((CheckpointError, NumericalError, GeneformerImportError), match=message):
        load_cell_model(m)
    out = tmp_path / "out.h5ad"
    code, err = cli(embed_args(good_h5ad, m, out), capsys)
    assert code == 2
    assert str(m) in err
    assert message in err
    assert err.startswith(f"error: {m}")  # the message is about the model, not the data
    fixes = (
        "copy the folder again",
        "another checkpoint",
        "before training diverged",
        "pass a folder",
    )
    assert any(fix in err for fix in fixes), err
    assert_nothing_written(tmp_path, out.name)


def test_nan_weights_are_never_saved(tmp_path: Path) -> None:
    state = {"a": torch.ones(3), "b": torch.tensor([1.0, float("inf")]), "n": torch.arange(3)}
    with pytest.raises(NonFiniteWeightsError, match=r"refusing to save .* b.*lower the learning"):
        save_checkpoint(tmp_path / "ck", state, {"model_type": "x"})
    assert not (tmp_path / "ck").exists()
    save_checkpoint(tmp_path / "ok", {"a": torch.ones(3), "n": torch.arange(3)}, {"x": 1})
    state, cfg = load_checkpoint(tmp_path / "ok")
    assert cfg == {"x": 1}
    assert state["a"].sum() == 3
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


# ------------------------------------------------------------------- embedding outputs
def test_nan_or_zero_embeddings_are_refused_and_nothing_is_written(
    data: ad.AnnData, model_dir: Path
) -> None:
    a = data[:30].copy()
    m = load_cell_model(model_dir)
    with torch.no_grad():
        m.trunk.gene_embedding.weight.fill_(float("nan"))
    with pytest.raises(NumericalError, match="NaN or infinite embeddings for 30 of 30 cells"):
        lc.embed(a, m, device="cpu")
    assert "X_lifelm" not in a.obsm
    assert "lifelm" not in a.uns
    m = load_cell_model(model_dir)
    with torch.no_grad():
        for p in m.trunk.parameters():
            p.zero_()
    with pytest.raises(NumericalError, match="all-zero embeddings"):
        lc.embed(a, m, device="cpu")
    assert "X_lifelm" not in a.obsm


def test_no_cell_with_a_vocabulary_gene_is_refused_and_empty_cells_are_counted(
    data: ad.AnnData, model_dir: Path
) -> None:
    a = data[:10].copy()
    x = a.X.toarray()
    x[3] = 0
    a.X = sp.csr_matrix(x)
    lc.embed(a, model_dir, device="cpu")  # one empty cell: a NaN row, counted, the rest finite
    assert np.isnan(a.obsm["X_lifelm"][3]).all()
    assert np.isfinite(np.delete(a.obsm["X_lifelm"], 3, axis=0)).all()
    assert a.uns["lifelm"]["embed"]["empty_cells"] == 1
    # counts only in genes the model does not know (60 of 180 genes; coverage stays above 50 %)
    other = lc.synthetic_cells(10, 60, n_types=3, seed=5)
    both = ad.concat([a, other], axis=1)
    both.X = sp.hstack([sp.csr_matrix(a.shape, dtype=np.float32), other.X]).tocsr()
    with pytest.raises(NumericalError, match="none of the 10 cells has a gene"):
        lc.embed(both, model_dir, device="cpu")
    assert "X_lifelm" not in both.obsm


# ---------------------------------------------------------------------- end to end
def run_lifelm(args: list[object], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifelm", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env},
    )


@pytest.mark.slow
def test_python_m_lifelm_prints_one_error_line_and_debug_shows_the_traceback(
    good_h5ad: Path, model_dir: Path, tmp_path: Path
) -> None:
    half = tmp_path / "half.h5ad"
    raw = good_h5ad.read_bytes()
    half.write_bytes(raw[: len(raw) // 2])
    args = embed_args(half, model_dir, tmp_path / "out.h5ad")
    # as torchrun starts it: `torchrun -m lifelm …` runs `python -m lifelm` with these set
    dist = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    res = run_lifelm(args, **dist)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {half}"), res.stderr
    assert "truncated" in lines[0]
    res = run_lifelm(["--debug", *args])
    assert res.returncode != 0
    assert "Traceback" in res.stderr
    assert "H5adError" in res.stderr
    assert_nothing_written(tmp_path, "out.h5ad")
