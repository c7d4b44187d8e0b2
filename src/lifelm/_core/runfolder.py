"""Output folders and files that are safe to write: one writer, a manifest, atomic renames.

* :func:`lock_folder` takes an exclusive ``flock`` on ``FOLDER/.lifelm.lock``; a second
  writer on the same folder is refused with the first writer's pid and command. The lock is
  released by the kernel when the process dies, so a killed run never leaves a stale lock.
* :func:`ensure_manifest` writes ``FOLDER/manifest.json`` (content hashes of the inputs and
  the settings of a resumable job) on a fresh start and, on ``resume=True``, refuses to go on
  when the data, weights or settings differ, naming each difference.
* :func:`atomic_output` yields a temporary path beside the target and renames it into place
  only when the block finishes, so an interrupted command leaves nothing half-written.
* :func:`check_output_path` checks ``-o`` before a long computation: not a folder where a
  file is meant, parent creatable and writable, enough free space.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lifelm._core.errors import InputError, LifeLMError, OutputError

LOCK_NAME = ".lifelm.lock"
MANIFEST_NAME = "manifest.json"
_CHUNK = 1 << 20


class FolderLockedError(LifeLMError):
    """Another process writes to this output folder."""


class ManifestMismatchError(LifeLMError):
    """A resume was asked with other data, weights or settings than the run started with."""


@contextlib.contextmanager
def lock_folder(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the block.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, lock_folder(d) as f:
    ...     (f / ".lifelm.lock").exists()
    True
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder; give -o/--out a folder path.")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise FolderLockedError(
                f"{folder}: another LifeLM process is writing here ({holder}). "
                "Wait for it to finish or choose another -o/--out folder; two writers never "
                "share an output folder."
            ) from None
        info = f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)[:300]}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        yield folder
    finally:
        os.close(fd)  # closing releases the flock


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, sorted).

    Lock files, manifests and hidden temporaries inside a folder are left out.
    """
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = f.relative_to(path).as_posix()
            if any(part.startswith(".") for part in f.relative_to(path).parts):
                continue
            if rel == MANIFEST_NAME:
                continue
            h.update(rel.encode() + b"\0" + file_digest(f).encode())
        return h.hexdigest()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def build_manifest(
    job: str, inputs: Mapping[str, str | Path | None], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """The manifest of a job: its kind, each input's path and content hash, and its settings."""
    return {
        "job": job,
        "inputs": {
            name: None if p is None else {"path": str(p), "sha256": file_digest(p)}
            for name, p in inputs.items()
        },
        "settings": _jsonable(dict(settings)),
    }


def manifest_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two manifests (empty when they agree)."""
    diffs: list[str] = []
    if old.get("job") != new.get("job"):
        diffs.append(f"job: {old.get('job')!r} → {new.get('job')!r}")
    o_in, n_in = old.get("inputs", {}), new.get("inputs", {})
    for name in sorted(set(o_in) | set(n_in)):
        a, b = o_in.get(name), n_in.get(name)
        ha = a and a.get("sha256")
        hb = b and b.get("sha256")
        if ha != hb:
            pa = a["path"] if a else "none"
            pb = b["path"] if b else "none"
            diffs.append(
                f"input {name}: {pa} (sha256 {str(ha)[:12]}) → {pb} (sha256 {str(hb)[:12]})"
            )
    o_s, n_s = old.get("settings", {}), new.get("settings", {})
    for key in sorted(set(o_s) | set(n_s)):
        if o_s.get(key) != n_s.get(key):
            diffs.append(f"setting {key}: {o_s.get(key)!r} → {n_s.get(key)!r}")
    return diffs


def ensure_manifest(
    folder: str | Path,
    *,
    job: str,
    inputs: Mapping[str, str | Path | None],
    settings: Mapping[str, Any],
    resume: bool,
) -> dict[str, Any]:
    """Write the manifest of a fresh run, or check it on resume.

    On ``resume=False`` the manifest is (over)written. On ``resume=True`` a missing manifest,
    or one that differs in job, input hashes or settings, raises
    :class:`ManifestMismatchError` naming every difference.
    """
    folder = Path(folder)
    new = build_manifest(job, inputs, settings)
    path = folder / MANIFEST_NAME
    if resume:
        if not path.is_file():
            raise ManifestMismatchError(
                f"{path}: no manifest, so this folder holds no run to resume. "
                "Start a fresh run (without --resume) or point -o/--out at the run's folder."
            )
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestMismatchError(
                f"{path}: damaged manifest ({e}); start a fresh run."
            ) from None
        diffs = manifest_differences(old, new)
        if diffs:
            raise ManifestMismatchError(
                f"{folder}: --resume refused, the run was started with other inputs or settings:\n  "
                + "\n  ".join(diffs)
                + "\nResume with the original ones, or start a fresh run in another folder."
            )
        return old
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(new, indent=2, sort_keys=True))
    return new


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    On an exception (or a kill) the temporary file or folder is removed, and ``path`` keeps
    whatever it held before. Works for files and for folders written at the yielded path.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with atomic_output(d / "x.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "x.txt").read_text()
    'done'
    """
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()
    try:
        try:
            yield tmp
        except OSError as e:
            if isinstance(e, LifeLMError) or e.errno is None:
                raise
            raise OutputError(
                f"{path}: writing failed ({e.strerror or e}); nothing was written and any previous "
                f"{path.name} is unchanged. Free space or choose another -o/--out."
            ) from e
        if not tmp.exists():
            raise OutputError(f"{path}: nothing was written.")
        if tmp.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def check_output_path(
    path: str | Path, *, kind: str = "file", need_bytes: int = 0, suffixes: tuple[str, ...] = ()
) -> Path:
    """Check an output path before a long computation and return it.

    ``kind="file"``: the path must not be a folder, its parent must be creatable and writable.
    ``kind="folder"``: the path must not be a file. ``suffixes`` restricts a file's extension
    (e.g. ``(".h5ad",)``). ``need_bytes`` is checked against the free space of the file system.
    """
    path = Path(path)
    if kind == "file":
        if path.is_dir():
            raise OutputError(
                f"{path}: is a folder; -o/--out needs a file path here, e.g. {path / 'out'}"
                + (suffixes[0] if suffixes else "")
            )
        if suffixes and path.suffix.lower() not in suffixes:
            raise InputError(
                f"{path}: -o/--out must end in {' or '.join(suffixes)} (got {path.suffix or 'no extension'!r})."
            )
    elif path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder; give -o/--out a folder path.")
    parent = path.parent if kind == "file" else path
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{path}: {probe} is a file, so no folder can be made under it.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: {probe} is not writable; choose another -o/--out.")
    if need_bytes:
        free = shutil.disk_usage(probe).free
        if free < need_bytes:
            raise OutputError(
                f"{path}: {_human(free)} free on its disk, about {_human(need_bytes)} needed; "
                "free space or choose another -o/--out."
            )
    return path


def _human(n: int) -> str:
    """A byte count for a message: ``512 B``, ``3.2 MB``, ``41 GB``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"
