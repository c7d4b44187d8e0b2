"""Checksums of store shards: recorded when a shard is written, checked on resume and on load.

Each shard records ``{"files": {name: {"bytes": n, "sha256": hex}}}`` for its data files. On
open, a store compares every shard file's size with the record (cheap: catches truncated and
missing files); the SHA-256 of a shard is checked the first time it is read (catches changed
bytes), and a resumed build checks every finished shard before keeping it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lifelm._core.errors import LifeLMError
from lifelm._core.runfolder import file_digest


class ShardDamagedError(LifeLMError, ValueError):
    """A store shard does not match the checksums recorded when it was written."""


def shard_checksums(folder: str | Path, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Sizes and SHA-256 of the data files ``names`` of one shard folder."""
    folder = Path(folder)
    return {
        n: {"bytes": (folder / n).stat().st_size, "sha256": file_digest(folder / n)} for n in names
    }


class HashingWriter:
    """A binary file writer that hashes what it writes (no second read of a large file)."""

    def __init__(self, path: str | Path) -> None:
        self._f = open(path, "wb")  # noqa: SIM115 - closed by close()/__exit__
        self._h = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self._h.update(data)
        self.bytes += len(data)

    def close(self) -> None:
        self._f.close()

    def record(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "sha256": self._h.hexdigest()}

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_problems(
    folder: str | Path, files: dict[str, dict[str, Any]], *, full: bool
) -> list[str]:
    """What is wrong with a shard folder against its recorded ``files`` (empty when intact).

    ``full=False`` checks presence and sizes only; ``full=True`` also the SHA-256 of each file.
    """
    folder = Path(folder)
    problems = []
    for name, rec in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != rec["bytes"]:
            problems.append(f"{name} has {size} bytes, {rec['bytes']} were written")
        elif full and file_digest(path) != rec["sha256"]:
            problems.append(f"{name} differs from what was written (SHA-256 mismatch)")
    return problems


def damaged(store: str | Path, shard: str, problems: list[str], fix: str) -> ShardDamagedError:
    """The error for a damaged shard: which shard, what is wrong and the fix."""
    return ShardDamagedError(
        f"{Path(store) / 'shards' / shard}: damaged store shard ({'; '.join(problems)}). {fix}"
    )
