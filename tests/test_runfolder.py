"""Run folders: one writer, manifests that refuse a mismatched resume, atomic outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifelm._core.errors import InputError, OutputError
from lifelm._core.runfolder import (
    FolderLockedError,
    ManifestMismatchError,
    atomic_output,
    check_output_path,
    ensure_manifest,
    file_digest,
    lock_folder,
)


def test_a_second_writer_is_refused_and_the_lock_is_released_after(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with lock_folder(run):
        with (
            pytest.raises(FolderLockedError, match="another LifeLM process") as e,
            lock_folder(run),
        ):
            pass
        assert str(run) in str(e.value)
    with lock_folder(run):  # released: a later writer gets it
        pass


def test_lock_refuses_a_file_given_as_folder(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_text("junk")
    with pytest.raises(OutputError, match="not a folder"), lock_folder(f):
        pass


def _inputs(tmp_path: Path, data: bytes = b"cells") -> dict[str, Path]:
    (tmp_path / "data.h5ad").write_bytes(data)
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "model.safetensors").write_bytes(b"weights")
    return {"data": tmp_path / "data.h5ad", "model": model}


def test_manifest_resume_checks_data_weights_and_settings(tmp_path: Path) -> None:
    run = tmp_path / "run"
    inputs = _inputs(tmp_path)
    ensure_manifest(
        run, job="cells.perturb", inputs=inputs, settings={"kind": "delete"}, resume=False
    )
    saved = json.loads((run / "manifest.json").read_text())
    assert saved["inputs"]["data"]["sha256"] == file_digest(inputs["data"])
    # the same inputs resume
    ensure_manifest(
        run, job="cells.perturb", inputs=inputs, settings={"kind": "delete"}, resume=True
    )
    # other settings: refused, the setting named
    with pytest.raises(ManifestMismatchError, match=r"setting kind: 'delete' → 'overexpress'"):
        ensure_manifest(
            run, job="cells.perturb", inputs=inputs, settings={"kind": "overexpress"}, resume=True
        )
    # other data: refused, the input named
    (tmp_path / "data.h5ad").write_bytes(b"other cells")
    with pytest.raises(ManifestMismatchError, match="input data"):
        ensure_manifest(
            run, job="cells.perturb", inputs=inputs, settings={"kind": "delete"}, resume=True
        )
    # other weights: refused
    _inputs(tmp_path)
    (inputs["model"] / "model.safetensors").write_bytes(b"new weights")
    with pytest.raises(ManifestMismatchError, match="input model"):
        ensure_manifest(
            run, job="cells.perturb", inputs=inputs, settings={"kind": "delete"}, resume=True
        )


def test_resume_without_a_manifest_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestMismatchError, match="no run to resume"):
        ensure_manifest(tmp_path, job="x", inputs={}, settings={}, resume=True)


def test_atomic_output_leaves_nothing_on_failure_and_keeps_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "out.tsv"
    out.write_text("old")

    def killed_midway() -> None:
        with atomic_output(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        killed_midway()
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tsv"]
    with atomic_output(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tsv"]


def test_atomic_output_replaces_a_folder(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "a").write_text("old")
    with atomic_output(out) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_check_output_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(OutputError, match="is a folder"):
        check_output_path(tmp_path, kind="file")
    junk = tmp_path / "junk"
    junk.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output_path(junk / "out.h5ad", kind="file")
    with pytest.raises(OutputError, match="not a folder"):
        check_output_path(junk, kind="folder")
    with pytest.raises(InputError, match=r"must end in \.h5ad"):
        check_output_path(tmp_path / "out.csv", suffixes=(".h5ad",))
    assert check_output_path(tmp_path / "new" / "deeper" / "out.h5ad", suffixes=(".h5ad",))

    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OutputError, match="0 B free on its disk, about 1 MB needed"):
        check_output_path(tmp_path / "out.h5ad", need_bytes=1_000_000)
