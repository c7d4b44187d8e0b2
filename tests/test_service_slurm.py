"""The SLURM executor against a real single-node cluster (.ci/services.sh starts one).

Skipped with the reason when ``sbatch`` is not installed or no cluster answers.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from service_helpers import wait_for, write_fasta

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

    from lifelm.service import auth
    from lifelm.service.app import Settings, create_app
    from lifelm.service.db import Membership, Project, User

    tmp = tmp_path_factory.mktemp("slurm")
    app = create_app(Settings(data_dir=tmp / "data", tick=0.3, cpu_slots=2))
    with app.state.sessions() as s:
        u, p = User(name="u"), Project(name="lab", cpu_hours=50)
        s.add_all([u, p])
        s.flush()
        s.add(Membership(user_id=u.id, project_id=p.id, role="owner"))
        _, secret = auth.issue(s, u)
        s.commit()
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
