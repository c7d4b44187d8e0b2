"""kill -9 of the server and its workers mid-job, then a restart: nothing lost, nothing run twice.

A real ``lifelm serve`` (uvicorn) runs on 127.0.0.1 in a subprocess, bootstrapped with
``lifelm serve admin create-user``; the client SDK drives it over HTTP. A short pretraining job is
killed (server and worker process group, SIGKILL) after its first checkpoint; after the restart it
is re-queued, resumes from the checkpoint (its log says so), finishes once, registers one model,
and the ledger holds one charge per attempt. A genomes job that finished before the kill keeps
its artifacts. The registered model then embeds cells through the same client.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from service_helpers import free_port, healthy, lifelm, serve, wait_for, write_cells, write_fasta

pytest.importorskip("uvicorn")


_port, _lifelm, _serve, _healthy = free_port, lifelm, serve, healthy


@pytest.mark.slow
def test_kill_9_server_and_workers_mid_job_then_restart(tmp_path: Path) -> None:
    from lifelm.client import Client

    data, port, log = tmp_path / "srv", _port(), tmp_path / "server.log"
    token = _lifelm("serve", "--data-dir", str(data), "admin", "create-user", "admin", "--admin")
    token = token.stdout.strip()
    assert token.startswith("llm_")
    url = f"http://127.0.0.1:{port}"
    server = _serve(data, port, log)
    try:
        c = Client(url, token, timeout=30)
        wait_for(lambda: _healthy(c), timeout=120)
        c.create_project("lab", cpu_hours=20)
        c.upload("lab", "cells.h5ad", write_cells(tmp_path / "cells.h5ad", n_cells=80))
        c.upload("lab", "g.fa", write_fasta(tmp_path / "g.fa"))
        qc = c.submit("lab", {"task": "genomes.qc", "dataset": "g.fa"})
        spec = {"task": "cells.pretrain", "datasets": ["cells.h5ad"], "model_name": "tiny",
                "preset": "test", "steps": 24, "batch_size": 4, "max_length": 32,
                "checkpoint_every": 4, "warmup": 2, "licence": "CC0"}  # fmt: skip
        job = c.submit("lab", spec)
        assert c.wait("lab", qc["id"], timeout=300)["status"] == "succeeded"
        qc_tsv = (data / "projects/1/jobs" / str(qc["id"]) / "out/qc.tsv").read_bytes()
        run = data / "projects/1/jobs" / str(job["id"]) / "out/run"
        wait_for(lambda: list((run / "checkpoints").glob("step_*")) if (run / "checkpoints").is_dir()
                 else None, timeout=300, every=0.2)  # fmt: skip
        assert c.job("lab", job["id"])["status"] == "running"
    finally:  # kill -9: the server, then the worker's whole process group
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    with sqlite3.connect(data / "lifelm.db") as db:
        (external,) = db.execute("select external_id from jobs where id=?", (job["id"],)).fetchone()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(external.split(":")[0]), signal.SIGKILL)
    ledger_before = _ledger_rows(data)

    server = _serve(data, port, log)
    try:
        c = Client(url, token, timeout=30)
        wait_for(lambda: _healthy(c), timeout=120)
        done = c.wait("lab", job["id"], timeout=400)
        logs = c.logs("lab", job["id"])
        assert done["status"] == "succeeded", logs
        assert done["attempt"] == 2
        assert "resuming from" in logs
        assert "--- attempt 2" in logs
        assert json.loads((run.parent.parent / "result.json").read_text())["attempt"] == 2
        models = c.models("lab")
        assert [(m["name"], m["version"], m["job_id"]) for m in models] == [("tiny", 1, job["id"])]
        card = models[0]["card"]
        assert card["parameters"] > 0
        assert card["training"]["steps"] == 24
        assert card["training_data"][0]["sha256"] == c.datasets("lab")[0]["sha256"]
        assert card["metrics"]["baseline_uniform_guess_loss"] > 0
        # the job that finished before the kill: untouched, charged once
        assert c.job("lab", qc["id"])["status"] == "succeeded"
        assert (data / "projects/1/jobs" / str(qc["id"]) / "out/qc.tsv").read_bytes() == qc_tsv
        rows = _ledger_rows(data)
        assert [r for r in rows if r[0] == qc["id"]] == [
            r for r in ledger_before if r[0] == qc["id"]
        ]
        assert sorted(r[1] for r in rows if r[0] == job["id"]) == [1, 2]
        assert all(r[2] > 0 for r in rows)
        # the registered model embeds cells through the same client
        emb = c.submit("lab", {"task": "cells.embed", "dataset": "cells.h5ad", "model": "tiny:1"})
        assert c.wait("lab", emb["id"], timeout=300)["status"] == "succeeded"
        fetched = _lifelm("remote", "fetch", str(emb["id"]), "--url", url, "--token", token,
                          "-p", "lab", "-o", str(tmp_path / "fetched"))  # fmt: skip
        assert fetched.stdout.strip().endswith("embedded.h5ad")
        import anndata as ad

        adata = ad.read_h5ad(tmp_path / "fetched" / "embedded.h5ad")
        assert adata.obsm["X_lifelm"].shape == (80, 32)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    assert token not in log.read_text()  # the access log never shows a token


def _ledger_rows(data: Path) -> list[tuple]:
    with sqlite3.connect(data / "lifelm.db") as db:
        return db.execute("select job_id, attempt, seconds from ledger order by id").fetchall()
