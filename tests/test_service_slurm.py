"""The SLURM executor against a real single-node cluster (.ci/services.sh starts one).

Skipped with the reason when ``sbatch`` is not installed or no cluster answers.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from service_helpers import owner_token, wait_for, write_fasta

pytest.importorskip("fastapi")
from lifelm.service.executors import SlurmExecutor


def _slurm_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (apt-get install slurmctld slurmd slurm-client munge)"
    try:
        res = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed: {e}"
    if res.returncode != 0 or not res.stdout.strip():
        return f"no SLURM cluster answers (set SLURM_CONF; .ci/services.sh starts one): {res.stderr.strip()}"
    return None


pytestmark = pytest.mark.skipif(_slurm_reason() is not None, reason=str(_slurm_reason()))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from fastapi.testclient import TestClient

    from lifelm.service.app import Settings, create_app

    tmp = tmp_path_factory.mktemp("slurm")
    from lifelm.cli.serve import check_argv

    app = create_app(Settings(data_dir=tmp / "data", tick=0.3, cpu_slots=2, argv_check=check_argv))
    secret = owner_token(app, cpu_hours=50)
    with TestClient(app) as http:
        http.headers["Authorization"] = f"Bearer {secret}"
        f = write_fasta(tmp / "g.fa", n=4)
        assert http.put("/v1/projects/lab/datasets/g.fa", content=f.read_bytes()).status_code == 201
        yield http, app


def _done(http, job_id: int):
    j = http.get(f"/v1/projects/lab/jobs/{job_id}").json()
    return j if j["status"] in ("succeeded", "failed", "cancelled") else None


def test_same_spec_local_and_slurm_give_identical_artifacts(served) -> None:
    http, app = served
    spec = {"task": "genomes.qc", "dataset": "g.fa", "resources": {"max_hours": 0.25}}
    ids = {}
    for executor in ("local", "slurm"):
        r = http.post("/v1/projects/lab/jobs", json={"spec": spec, "executor": executor})
        assert r.status_code == 201, r.text
        ids[executor] = r.json()["id"]
    jobs = {e: wait_for(lambda i=i: _done(http, i), timeout=300) for e, i in ids.items()}
    for e, j in jobs.items():
        assert j["status"] == "succeeded", (
            e,
            http.get(f"/v1/projects/lab/jobs/{j['id']}/logs").text,
        )
    from lifelm.service.db import Job

    with app.state.sessions() as s:
        slurm_job = s.get(Job, ids["slurm"])
    assert slurm_job.external_id
    assert slurm_job.external_id.isdigit()
    assert SlurmExecutor.state(slurm_job.external_id) == "COMPLETED"
    script = (app.state.scheduler.job_dir(slurm_job) / "job.sbatch").read_text()
    assert "--cpus-per-task=1" in script
    assert "--time=15" in script
    arts = {e: http.get(f"/v1/projects/lab/jobs/{i}/artifacts").json() for e, i in ids.items()}
    assert [a["path"] for a in arts["local"]] == [a["path"] for a in arts["slurm"]] == ["qc.tsv"]
    a = http.get(f"/v1/projects/lab/jobs/{ids['local']}/artifacts/qc.tsv").content
    b = http.get(f"/v1/projects/lab/jobs/{ids['slurm']}/artifacts/qc.tsv").content
    assert a == b
    assert len(a.splitlines()) == 5


def test_cancel_reaches_slurm(served) -> None:
    http, app = served
    spec = {"task": "genomes.mutations", "dataset": "g.fa", "resources": {"max_hours": 0.25}}
    job = http.post("/v1/projects/lab/jobs", json={"spec": spec, "executor": "slurm"}).json()
    from lifelm.service.db import Job

    def external():
        with app.state.sessions() as s:
            return s.get(Job, job["id"]).external_id

    slurm_id = wait_for(external, timeout=60)
    assert http.post(f"/v1/projects/lab/jobs/{job['id']}/cancel").status_code == 200
    j = wait_for(lambda: _done(http, job["id"]), timeout=60)
    assert j["status"] == "cancelled"

    def ended():
        state = SlurmExecutor.state(slurm_id)
        return state if state not in (None, "RUNNING", "PENDING", "COMPLETING") else None

    assert wait_for(ended, timeout=60) == "CANCELLED"


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_training_runs_as_srun_torchrun(served, tmp_path: Path) -> None:
    """A pretraining spec with processes=2 runs as ``srun torchrun --nproc_per_node 2`` inside
    the SLURM allocation (2 gloo processes) and registers its model."""
    http, app = served
    from service_helpers import write_cells

    cells = write_cells(tmp_path / "c.h5ad", n_cells=60)
    assert (
        http.put("/v1/projects/lab/datasets/c.h5ad", content=cells.read_bytes()).status_code == 201
    )
    spec = {"task": "cells.pretrain", "datasets": ["c.h5ad"], "model_name": "ddp", "preset": "test",
            "steps": 4, "batch_size": 4, "max_length": 32, "checkpoint_every": 2, "warmup": 1,
            "processes": 2, "resources": {"cpus": 2, "max_hours": 0.5}}  # fmt: skip
    job = http.post("/v1/projects/lab/jobs", json={"spec": spec, "executor": "slurm"}).json()
    done = wait_for(lambda: _done(http, job["id"]), timeout=600)
    logs = http.get(f"/v1/projects/lab/jobs/{job['id']}/logs", params={"tail": 400}).text
    assert done["status"] == "succeeded", logs
    assert logs.count("lifelm.tokenizer: vocabulary") == 2  # one per torchrun process
    folder = app.state.scheduler.job_dir(type("J", (), {"project_id": 1, "id": job["id"]})())
    payload = __import__("json").loads((folder / "job.json").read_text())
    assert payload["processes"] == 2
    assert payload["launcher"] == "srun"
    from lifelm.service.runner import build_command

    cmd = build_command(payload)
    assert cmd[0] == "srun"
    assert "--nproc_per_node=2" in cmd
    models = http.get("/v1/projects/lab/models").json()
    assert [(m["name"], m["version"]) for m in models] == [("ddp", 1)]
    assert models[0]["card"]["training"]["steps"] == 4


def _slurm_jobs_in(folder: Path) -> list[str]:
    """SLURM job ids (still remembered: MinJobAge) whose working folder is ``folder``."""
    res = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    ids = []
    for line in res.stdout.splitlines():
        if f"WorkDir={folder} " in line or line.endswith(f"WorkDir={folder}"):
            ids.append(line.split()[0].removeprefix("JobId="))
    return ids


@pytest.mark.slow
def test_kill_9_server_while_a_slurm_job_runs_reattaches(tmp_path: Path) -> None:
    """SIGKILL the server while its SLURM job trains; the job runs on under slurmd. After the
    restart the server re-attaches (same SLURM job id, no second sbatch), the job finishes once,
    registers one model, and the ledger holds one charge."""
    import os
    import signal
    import sqlite3

    from lifelm.client import Client
    from service_helpers import free_port, healthy, lifelm, serve, write_cells

    data, port, log = tmp_path / "srv", free_port(), tmp_path / "server.log"
    token = lifelm("serve", "--data-dir", str(data), "admin", "create-user", "a", "--admin")
    token = token.stdout.strip()
    url = f"http://127.0.0.1:{port}"
    server = serve(data, port, log, "--executor", "slurm")
    try:
        c = Client(url, token, timeout=30)
        wait_for(lambda: healthy(c), timeout=120)
        c.create_project("lab", cpu_hours=20)
        c.upload("lab", "cells.h5ad", write_cells(tmp_path / "cells.h5ad", n_cells=60))
        spec = {"task": "cells.pretrain", "datasets": ["cells.h5ad"], "model_name": "tiny",
                "preset": "test", "steps": 60, "batch_size": 4, "max_length": 32,
                "checkpoint_every": 20, "warmup": 2, "resources": {"max_hours": 0.5}}  # fmt: skip
        job = c.submit("lab", spec)
        folder = data / "projects/1/jobs" / str(job["id"])
        metrics = folder / "out/run/metrics.jsonl"
        wait_for(lambda: metrics.is_file() and metrics.stat().st_size > 0, timeout=300, every=0.2)
        assert c.job("lab", job["id"])["status"] == "running"
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    with sqlite3.connect(data / "lifelm.db") as db:
        (slurm_id,) = db.execute("select external_id from jobs where id=?", (job["id"],)).fetchone()
    assert slurm_id.isdigit()
    # the server is gone; the job is not (it belongs to slurmd, not to the server's group)
    assert SlurmExecutor.state(slurm_id) == "RUNNING"
    server = serve(data, port, log, "--executor", "slurm")
    try:
        c = Client(url, token, timeout=30)
        wait_for(lambda: healthy(c), timeout=120)
        done = c.wait("lab", job["id"], timeout=400)
        logs = c.logs("lab", job["id"])
        assert done["status"] == "succeeded", logs
        assert done["attempt"] == 1
        assert logs.count("--- attempt") == 1
        assert logs.count("--- exit code 0") == 1
        with sqlite3.connect(data / "lifelm.db") as db:
            (after,) = db.execute(
                "select external_id from jobs where id=?", (job["id"],)
            ).fetchone()
        assert after == slurm_id
        assert _slurm_jobs_in(folder) == [slurm_id]  # one sbatch, ever
        assert SlurmExecutor.state(slurm_id) == "COMPLETED"
        models = c.models("lab")
        assert [(m["name"], m["version"], m["job_id"]) for m in models] == [("tiny", 1, job["id"])]
        assert models[0]["card"]["training"]["steps"] == 60
        ledger = c.ledger("lab")["entries"]
        assert [(e["job"], e["attempt"]) for e in ledger] == [(job["id"], 1)]
        assert ledger[0]["seconds"] > 0
        assert len(list((folder / "out/run/model").glob("model.safetensors"))) == 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def test_a_slurm_job_cancelled_outside_ends_cancelled(served, tmp_path: Path) -> None:
    """``scancel`` by someone else (not through the service): the job ends as cancelled with a
    message saying so, is not re-queued, and is charged once."""
    http, app = served
    from service_helpers import write_cells

    cells = write_cells(tmp_path / "c.h5ad", n_cells=60)
    r = http.put("/v1/projects/lab/datasets/outside.h5ad", content=cells.read_bytes())
    assert r.status_code in (201, 409)
    spec = {"task": "cells.pretrain", "datasets": ["outside.h5ad"], "model_name": "gone",
            "preset": "test", "steps": 400, "batch_size": 4, "max_length": 32,
            "checkpoint_every": 50, "warmup": 2, "resources": {"max_hours": 0.5}}  # fmt: skip
    job = http.post("/v1/projects/lab/jobs", json={"spec": spec, "executor": "slurm"}).json()
    from lifelm.service.db import Job

    def running_id():
        with app.state.sessions() as s:
            j = s.get(Job, job["id"])
            return (
                j.external_id
                if j.external_id and SlurmExecutor.state(j.external_id) == "RUNNING"
                else None
            )

    slurm_id = wait_for(running_id, timeout=120)
    subprocess.run(["scancel", slurm_id], check=True, timeout=60)
    j = wait_for(lambda: _done(http, job["id"]), timeout=120)
    assert j["status"] == "cancelled"
    assert "cancelled outside the service" in j["error"]
    assert slurm_id in j["error"]
    assert j["attempt"] == 1
    ledger = http.get("/v1/projects/lab/ledger").json()["entries"]
    assert [e["attempt"] for e in ledger if e["job"] == job["id"]] == [1]
    assert not [m for m in http.get("/v1/projects/lab/models").json() if m["name"] == "gone"]
