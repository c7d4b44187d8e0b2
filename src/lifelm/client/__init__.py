"""Python client of the LifeLM service, over HTTP only (it never imports ``lifelm.service``).

>>> from lifelm.client import Client
>>> c = Client("http://127.0.0.1:8765", token)  # doctest: +SKIP
>>> c.upload("lab", "pbmc.h5ad", "data/pbmc.h5ad")  # doctest: +SKIP
>>> job = c.submit("lab", {"task": "genomes.qc", "dataset": "g.fa"})  # doctest: +SKIP
>>> c.wait("lab", job["id"])  # doctest: +SKIP
>>> c.fetch("lab", job["id"], "out/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx

from lifelm._core.errors import LifeLMError

TERMINAL = ("succeeded", "failed", "cancelled")


class ServiceError(LifeLMError):
    """The service refused a request; the message is its answer."""

    def __init__(self, status: int, detail: Any) -> None:
        msg = detail.get("message", detail) if isinstance(detail, dict) else detail
        super().__init__(f"HTTP {status}: {msg}")
        self.status, self.detail = status, detail


class Client:
    """A session with one LifeLM server.

    Parameters
    ----------
    url
        Base URL, e.g. ``http://127.0.0.1:8765``.
    token
        API token (``lifelm serve admin create-user`` or ``POST /v1/tokens``).
    timeout
        Seconds per request (uploads and event streams have none).
    """

    def __init__(
        self, url: str, token: str, *, timeout: float = 60.0, transport: Any = None
    ) -> None:
        kw = {"transport": transport} if transport is not None else {}
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            **kw,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ServiceError(r.status_code, detail)
        return (
            r.json()
            if r.content and r.headers.get("content-type", "").startswith("application/json")
            else r.text
        )

    # -- projects, users ------------------------------------------------------------------
    def me(self) -> dict:
        return self._json("GET", "/v1/me")

    def create_user(self, name: str, *, admin: bool = False) -> dict:
        return self._json("POST", "/v1/users", json={"name": name, "admin": admin})

    def create_project(self, name: str, *, owner: str | None = None, cpu_hours: float = 100.0,
                       gpu_hours: float = 0.0) -> dict:  # fmt: skip
        body = {"name": name, "owner": owner, "cpu_hours": cpu_hours, "gpu_hours": gpu_hours}
        return self._json("POST", "/v1/projects", json=body)

    def add_member(self, project: str, user: str, role: str = "member") -> dict:
        return self._json(
            "PUT", f"/v1/projects/{project}/members", json={"user": user, "role": role}
        )

    def projects(self) -> list[dict]:
        return self._json("GET", "/v1/projects")

    def create_token(self, *, name: str = "", days: float | None = 90) -> dict:
        return self._json("POST", "/v1/tokens", json={"name": name, "days": days})

    def ledger(self, project: str) -> dict:
        return self._json("GET", f"/v1/projects/{project}/ledger")

    # -- datasets -------------------------------------------------------------------------
    def upload(self, project: str, name: str, path: str | Path, *, source: str = "",
               licence: str = "unknown") -> dict:  # fmt: skip
        """Stream a file to the server as dataset ``name``."""

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    yield block

        return self._json(
            "PUT", f"/v1/projects/{project}/datasets/{name}", content=chunks(),
            params={"source": source, "licence": licence},
            headers={"content-type": "application/octet-stream",
                     "content-length": str(Path(path).stat().st_size)},
            timeout=None,
        )  # fmt: skip

    def datasets(self, project: str) -> list[dict]:
        return self._json("GET", f"/v1/projects/{project}/datasets")

    # -- jobs -----------------------------------------------------------------------------
    def submit(self, project: str, spec: dict, *, priority: int = 0,
               executor: str | None = None) -> dict:  # fmt: skip
        """Submit a job spec (see ``GET /openapi.json`` for every task's fields)."""
        body = {"spec": spec, "priority": priority, "executor": executor}
        return self._json("POST", f"/v1/projects/{project}/jobs", json=body)

    def job(self, project: str, job_id: int) -> dict:
        return self._json("GET", f"/v1/projects/{project}/jobs/{job_id}")

    def jobs(self, project: str) -> list[dict]:
        return self._json("GET", f"/v1/projects/{project}/jobs")

    def cancel(self, project: str, job_id: int) -> dict:
        return self._json("POST", f"/v1/projects/{project}/jobs/{job_id}/cancel")

    def retry(self, project: str, job_id: int) -> dict:
        return self._json("POST", f"/v1/projects/{project}/jobs/{job_id}/retry")

    def logs(self, project: str, job_id: int) -> str:
        return self._json("GET", f"/v1/projects/{project}/jobs/{job_id}/logs")

    def events(self, project: str, job_id: int) -> Iterator[tuple[str, Any]]:
        """Server-sent events of a job: ``("status", {...})`` and ``("log", line)``."""
        with self.http.stream(
            "GET", f"/v1/projects/{project}/jobs/{job_id}/events", timeout=None
        ) as r:
            if r.status_code >= 400:
                r.read()
                raise ServiceError(r.status_code, r.text)
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event:
                    yield event, json.loads(line[6:])

    def wait(self, project: str, job_id: int, *, progress: bool = False,
             timeout: float | None = None) -> dict:  # fmt: skip
        """Block until the job ends (following its event stream); return the job."""
        bar = None
        if progress:
            from rich.progress import Progress

            bar = Progress(transient=True)
            bar.start()
            task = bar.add_task(f"job {job_id}", total=1.0)
        start = time.monotonic()
        try:
            for event, data in self.events(project, job_id):
                if bar is not None and event == "status":
                    bar.update(task, completed=data.get("progress") or 0.0,
                               description=f"job {job_id} {data['status']}")  # fmt: skip
                if event == "status" and data["status"] in TERMINAL:
                    break
                if timeout is not None and time.monotonic() - start > timeout:
                    raise TimeoutError(f"job {job_id} still running after {timeout} s")
        finally:
            if bar is not None:
                bar.stop()
        return self.job(project, job_id)

    def artifacts(self, project: str, job_id: int) -> list[dict]:
        return self._json("GET", f"/v1/projects/{project}/jobs/{job_id}/artifacts")

    def fetch(self, project: str, job_id: int, dest: str | Path) -> list[Path]:
        """Download every artifact of a job into ``dest`` (same relative paths)."""
        dest = Path(dest)
        got = []
        for art in self.artifacts(project, job_id):
            target = (dest / art["path"]).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise ServiceError(0, f"artifact path {art['path']!r} leaves {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.http.stream(
                "GET", f"/v1/projects/{project}/jobs/{job_id}/artifacts/{art['path']}", timeout=None
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ServiceError(r.status_code, r.text)
                with open(target, "wb") as fh:
                    for block in r.iter_bytes():
                        fh.write(block)
            got.append(target)
        return got

    def models(self, project: str) -> list[dict]:
        return self._json("GET", f"/v1/projects/{project}/models")
