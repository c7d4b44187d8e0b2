"""Load benchmark of ``lifelm serve`` on loopback: concurrent pollers and small submissions.

Starts a real server (uvicorn subprocess) on 127.0.0.1 with SQLite (default) or PostgreSQL
(``--database-url``), bootstraps an admin with ``lifelm serve admin create-user``, uploads a tiny
FASTA, then runs ``--clients`` concurrent clients that poll job status (``--polls`` requests
each) while ``--submissions`` small ``genomes.qc`` jobs are submitted. It waits (at most
``--wait`` seconds) for every job to end and reports p50/p99 request latency, requests/s, jobs
lost (submitted and acknowledged but absent or not finished: must be 0), failed jobs and the
server's peak RSS. Bounded: nothing leaves the machine; the server is stopped by PID.

    python benchmarks/service_load.py [--database-url postgresql+psycopg://…] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"


def _rss_mb(pid: int) -> float:
    """Resident memory of the server process (MB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--polls", type=int, default=10, help="status requests per client")
    ap.add_argument("--submissions", type=int, default=50)
    ap.add_argument("--cpu-slots", type=int, default=2)
    ap.add_argument("--wait", type=float, default=1200.0, help="seconds to wait for the jobs")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lifelm-load-"))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    db = ["--database-url", args.database_url] if args.database_url else []
    if args.database_url:  # a clean schema on the throwaway server
        from sqlalchemy import create_engine, text

        eng = create_engine(args.database_url)
        with eng.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        eng.dispose()
    base = [sys.executable, "-m", "lifelm", "serve", "--data-dir", str(tmp), *db]
    token = subprocess.run(
        [*base, "admin", "create-user", "admin", "--admin"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(tmp / "server.log", "wb") as log:
        server = subprocess.Popen(
            [*base, "--port", str(port), "--cpu-slots", str(args.cpu_slots)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], _rss_mb(server.pid))
            except OSError:
                return
            time.sleep(0.2)

    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
            for _ in range(600):
                try:
                    if c.get("/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            c.post("/v1/projects", json={"name": "lab", "cpu_hours": 1e6}).raise_for_status()
            fasta = b"".join(f">g{i}\n{'ACGT' * 80}\n".encode() for i in range(3))
            c.put("/v1/projects/lab/datasets/g.fa", content=fasta).raise_for_status()
        threading.Thread(target=sample, daemon=True).start()
        result = asyncio.run(_load(url, headers, args))
        t0 = time.monotonic()
        with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
            while time.monotonic() - t0 < args.wait:
                jobs = {j["id"]: j for j in c.get("/v1/projects/lab/jobs").json()}
                if all(jobs.get(i, {}).get("status") in ("succeeded", "failed", "cancelled")
                       for i in result["job_ids"]):  # fmt: skip
                    break
                time.sleep(2)
        statuses = [jobs.get(i, {}).get("status", "missing") for i in result["job_ids"]]
        lat = np.array(result.pop("latencies")) * 1000
        report = {
            "backend": "postgresql" if args.database_url else "sqlite",
            "clients": args.clients,
            "requests": int(lat.size),
            "request_errors": result["errors"],
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "requests_per_s": round(lat.size / result["seconds"], 1),
            "submissions": args.submissions,
            "accepted": len(result["job_ids"]),
            "jobs_lost": args.submissions - sum(s in ("succeeded", "failed") for s in statuses),
            "jobs_failed": statuses.count("failed"),
            "jobs_succeeded": statuses.count("succeeded"),
            "drain_seconds": round(time.monotonic() - t0, 1),
            "server_peak_rss_mb": round(peak[0], 1),
        }
    finally:
        stop.set()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:  # open connections keep uvicorn waiting
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


async def _load(url: str, headers: dict, args) -> dict:
    latencies: list[float] = []
    errors = 0
    job_ids: list[int] = []
    limits = httpx.Limits(max_connections=args.clients + 10)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as c:

        async def submit(i: int) -> None:
            nonlocal errors
            t = time.perf_counter()
            try:
                r = await c.post("/v1/projects/lab/jobs",
                             json={"spec": {"task": "genomes.qc", "dataset": "g.fa",
                                            "resources": {"max_hours": 0.1}}})  # fmt: skip
            except httpx.TransportError:  # counted, and the job counts as lost if it is absent
                errors += 1
                return
            latencies.append(time.perf_counter() - t)
            if r.status_code == 201:
                job_ids.append(r.json()["id"])
            else:
                errors += 1

        async def poll(i: int) -> None:
            nonlocal errors
            for k in range(args.polls):
                path = (f"/v1/projects/lab/jobs/{job_ids[(i + k) % len(job_ids)]}" if job_ids
                        else "/v1/projects/lab/jobs?status=running")  # fmt: skip
                t = time.perf_counter()
                try:
                    r = await c.get(path)
                except httpx.TransportError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(
            *(submit(i) for i in range(args.submissions)), *(poll(i) for i in range(args.clients))
        )
        seconds = time.perf_counter() - t0
    return {"latencies": latencies, "errors": errors, "job_ids": job_ids, "seconds": seconds}


if __name__ == "__main__":
    main()
