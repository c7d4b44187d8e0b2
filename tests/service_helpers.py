"""Fixtures and helpers shared by the service tests (tests/test_service_*.py)."""

from __future__ import annotations

import gzip
import lzma
import os
import time
from pathlib import Path

import pytest

POSTGRES_ENV = "LIFELM_TEST_POSTGRES_URL"


def backend_url(backend: str, tmp: Path) -> str:
    """A fresh database URL for ``backend`` (PostgreSQL: the test server's, schema emptied)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'lifelm.db'}"
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against "
            "(.ci/services.sh starts one and sets it)"
        )
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    except Exception as e:
        pytest.skip(f"PostgreSQL at {POSTGRES_ENV} is not reachable: {e}")
    return url


def owner_token(app, *, project: str = "lab", cpu_hours: float = 50, user: str = "u") -> str:
    """Create ``user`` as the owner of a new ``project`` in ``app``'s database; return a token."""
    from lifelm.service import auth
    from lifelm.service.db import Membership, Project, User

    with app.state.sessions() as s:
        u, p = User(name=user), Project(name=project, cpu_hours=cpu_hours)
        s.add_all([u, p])
        s.flush()
        s.add(Membership(user_id=u.id, project_id=p.id, role="owner"))
        _, secret = auth.issue(s, u)
        s.commit()
    return secret


def write_fasta(path: Path, n: int = 3, *, bad: bool = False) -> Path:
    """A tiny FASTA (plain, .gz or .xz by suffix); ``bad`` puts a digit in a sequence."""
    import random

    rng = random.Random(0)
    recs = []
    for i in range(n):
        seq = "".join(rng.choice("ACGT") for _ in range(300))
        if bad and i == 1:
            seq = seq[:50] + "7" + seq[51:]
        recs.append(f">g{i}\n{seq}\n")
    data = "".join(recs).encode()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".xz":
        data = lzma.compress(data)
    path.write_bytes(data)
    return path


def write_cells(path: Path, *, log: bool = False, n_cells: int = 120, seed: int = 0) -> Path:
    """A synthetic raw-count h5ad (``log=True``: log1p-normalised, which must be refused)."""
    import numpy as np

    from lifelm.testing.synthetic import synthetic_cells

    adata = synthetic_cells(n_cells, 200, 3, seed=seed)
    if log:
        x = adata.X.toarray().astype("float32")
        x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
        adata.X = x
    adata.write_h5ad(path)
    return path


def wait_for(fn, timeout: float = 240.0, every: float = 0.3):
    """Poll ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    """A free TCP port on the loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def lifelm(*args: str, **kw):
    """Run ``python -m lifelm ARGS`` (this checkout) and return the completed process."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "lifelm", *args], env=_env(),
                          capture_output=True, text=True, check=True, **kw)  # fmt: skip


def serve(data: Path, port: int, log: Path, *extra: str):
    """Start ``lifelm serve`` (uvicorn) on 127.0.0.1 in its own process group."""
    import subprocess
    import sys

    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "lifelm", "serve", "--data-dir", str(data), "--port", str(port),
             "--cpu-slots", "2", *extra],
            env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def healthy(c) -> bool:
    """Whether the server behind client ``c`` answers."""
    try:
        return c.http.get("/v1/health").status_code == 200
    except Exception:
        return False
