"""The service API on SQLite and on PostgreSQL: tenancy, tokens, datasets, jobs, budgets.

The same tests run on both backends (``backend`` fixture); PostgreSQL is skipped with the reason
when ``LIFELM_TEST_POSTGRES_URL`` is unset (``.ci/services.sh`` starts a server and sets it).
One app per backend serves the whole module (its scheduler runs real worker subprocesses).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from service_helpers import backend_url, wait_for, write_cells, write_fasta

pytest.importorskip("fastapi")
pytest.importorskip("alembic")
from fastapi.testclient import TestClient

from lifelm.cli.serve import check_argv
from lifelm.service.app import Settings, create_app


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def env(request, tmp_path_factory):
    """A running app with an admin, two projects (lab_a, lab_b) and their members."""
    tmp = tmp_path_factory.mktemp(f"svc_{request.param}")
    url = backend_url(request.param, tmp)
    settings = Settings(
        data_dir=tmp / "data", database_url=url, max_upload_bytes=2_000_000, cpu_slots=2,
        tick=0.2, argv_check=check_argv,
    )  # fmt: skip
    app = create_app(settings)
    from lifelm.service import auth
    from lifelm.service.db import User

    with app.state.sessions() as s:
        admin = User(name="admin", is_admin=True)
        s.add(admin)
        s.flush()
        _, admin_token = auth.issue(s, admin)
        s.commit()
    with TestClient(app) as http:
        h_admin = {"Authorization": f"Bearer {admin_token}"}
        tokens = {"admin": admin_token}
        for name in ("alice", "bob", "vera"):
            r = http.post("/v1/users", json={"name": name}, headers=h_admin)
            assert r.status_code == 201, r.text
            tokens[name] = r.json()["token"]["token"]
        for proj, owner in (("lab_a", "alice"), ("lab_b", "bob")):
            r = http.post("/v1/projects", json={"name": proj, "owner": owner, "cpu_hours": 5},
                          headers=h_admin)  # fmt: skip
            assert r.status_code == 201, r.text
        r = http.put("/v1/projects/lab_a/members", json={"user": "vera", "role": "viewer"},
                     headers={"Authorization": f"Bearer {tokens['alice']}"})  # fmt: skip
        assert r.status_code == 200, r.text
        yield {"http": http, "tokens": tokens, "app": app, "tmp": tmp, "settings": settings}


def H(env, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {env['tokens'][who]}"}


def test_tokens_are_hashed_revocable_and_expire(env) -> None:
    http = env["http"]
    assert http.get("/v1/me", headers=H(env, "alice")).json()["name"] == "alice"
    assert http.get("/v1/me").status_code == 401
    assert http.get("/v1/me", headers={"Authorization": "Bearer llm_nope"}).status_code == 401
    r = http.post("/v1/tokens", json={"name": "ci", "days": 1}, headers=H(env, "alice"))
    new = r.json()
    assert r.status_code == 201
    assert new["token"].startswith("llm_")
    assert len(new["token"]) > 40
    from lifelm.service.db import Token

    with env["app"].state.sessions() as s:
        stored = s.get(Token, new["id"])
        assert stored.digest == hashlib.sha256(new["token"].encode()).hexdigest()
        assert new["token"] not in json.dumps([stored.digest, stored.prefix, stored.name])
    listed = http.get("/v1/tokens", headers=H(env, "alice")).json()
    assert all("token" not in t for t in listed)
    h_new = {"Authorization": f"Bearer {new['token']}"}
    assert http.get("/v1/me", headers=h_new).status_code == 200
    assert http.delete(f"/v1/tokens/{new['id']}", headers=H(env, "alice")).status_code == 204
    assert http.get("/v1/me", headers=h_new).status_code == 401
    short = http.post("/v1/tokens", json={"days": 1e-7}, headers=H(env, "alice")).json()
    wait_for(lambda: http.get("/v1/me", headers={"Authorization": f"Bearer {short['token']}"})
             .status_code == 401, timeout=5)  # fmt: skip
    # only an admin creates users and projects
    assert http.post("/v1/users", json={"name": "eve"}, headers=H(env, "alice")).status_code == 403
    assert http.post("/v1/projects", json={"name": "x"}, headers=H(env, "bob")).status_code == 403


def _fill(path: str) -> str:
    return (
        path.replace("{project}", "lab_a").replace("{job_id}", "1").replace("{name}", "d.fa")
        .replace("{version}", "1").replace("{path:path}", "qc.tsv").replace("{path}", "qc.tsv")
    )  # fmt: skip


def test_another_projects_member_gets_404_on_every_route(env) -> None:
    """Bob (lab_b) asks for everything of lab_a: every route answers 404, as for a project that
    does not exist; Alice (lab_a) gets something else than 404 on the project itself."""
    http, app = env["http"], env["app"]
    write = write_fasta(env["tmp"] / "d.fa")
    assert http.put("/v1/projects/lab_a/datasets/d.fa", content=write.read_bytes(),
                    headers=H(env, "alice")).status_code in (201, 409)  # fmt: skip
    checked = 0
    for route in app.routes:
        path = getattr(route, "path", "")
        if "{project}" not in path:
            continue
        for method in route.methods - {"HEAD", "OPTIONS"}:
            url = _fill(path)
            body = {"content": b">x\nACGT\n"} if method == "PUT" and "datasets" in path else {
                "json": {}}  # fmt: skip
            if method in ("GET", "DELETE"):
                body = {}
            r = http.request(method, url, headers=H(env, "bob"), **body)
            assert r.status_code == 404, (method, url, r.status_code, r.text)
            r2 = http.request(method, url.replace("lab_a", "no_such_lab", 1), headers=H(env, "bob"),
                              **body)  # fmt: skip
            assert r2.status_code == 404
            assert r.json()["detail"].replace("lab_a", "X") == r2.json()["detail"].replace(
                "no_such_lab", "X"
            ), "the answer must not reveal that lab_a exists"
            checked += 1
    assert checked >= 15
    assert http.get("/v1/projects/lab_a/datasets/d.fa", headers=H(env, "alice")).status_code == 200
    assert [p["name"] for p in http.get("/v1/projects", headers=H(env, "bob")).json()] == ["lab_b"]


def test_roles_viewer_reads_but_cannot_write(env) -> None:
    http = env["http"]
    assert http.get("/v1/projects/lab_a/datasets", headers=H(env, "vera")).status_code == 200
    r = http.put("/v1/projects/lab_a/datasets/v.fa", content=b">a\nACGT\n", headers=H(env, "vera"))
    assert r.status_code == 403
    r = http.post("/v1/projects/lab_a/jobs", json={"spec": {"task": "genomes.qc", "dataset": "d.fa"}},
                  headers=H(env, "vera"))  # fmt: skip
    assert r.status_code == 403
    r = http.put("/v1/projects/lab_a/members", json={"user": "bob", "role": "owner"},
                 headers=H(env, "vera"))  # fmt: skip
    assert r.status_code == 403


def test_upload_validates_with_lifelm_readers(env) -> None:
    http, tmp = env["http"], env["tmp"]
    good = write_cells(tmp / "cells.h5ad")
    r = http.put("/v1/projects/lab_a/datasets/cells.h5ad?source=synthetic&licence=CC0",
                 content=good.read_bytes(), headers=H(env, "alice"))  # fmt: skip
    assert r.status_code == 201, r.text
    card = r.json()
    assert card["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert card["card"]["cells"] == 120
    assert card["card"]["genes"] == 200
    assert card["card"]["licence"] == "CC0"
    assert card["card"]["checksum"] == f"sha256:{card['sha256']}"
    stored = Path(env["settings"].data_dir) / "projects"
    assert len(list(stored.rglob(f"{card['sha256']}.h5ad"))) == 1

    # log-normalised: refused with the message the CLI's reader gives
    bad = write_cells(tmp / "log.h5ad", log=True)
    import anndata as ad

    from lifelm.data.cells.counts import NotCountsError, find_counts

    with pytest.raises(NotCountsError) as cli:
        find_counts(ad.read_h5ad(bad))
    r = http.put("/v1/projects/lab_a/datasets/log.h5ad", content=bad.read_bytes(),
                 headers=H(env, "alice"))  # fmt: skip
    assert r.status_code == 422
    assert r.json()["detail"] == str(cli.value)

    for name in ("g.fa.gz", "g.fasta.xz", "g.fna"):
        f = write_fasta(tmp / name)
        r = http.put(f"/v1/projects/lab_a/datasets/{name}", content=f.read_bytes(),
                     headers=H(env, "alice"))  # fmt: skip
        assert r.status_code == 201, r.text
        assert r.json()["card"]["genomes"] == 3
        assert r.json()["kind"] == "fasta"
    f = write_fasta(tmp / "bad.fa", bad=True)
    r = http.put(
        "/v1/projects/lab_a/datasets/bad.fa", content=f.read_bytes(), headers=H(env, "alice")
    )
    assert r.status_code == 422
    assert "outside the IUPAC nucleotide alphabet" in r.json()["detail"]
    assert "bad.fa" in r.json()["detail"]
    assert "/tmp" not in r.json()["detail"].split("bad.fa")[0]
    r = http.put("/v1/projects/lab_a/datasets/x.docx", content=b"hello", headers=H(env, "alice"))
    assert r.status_code == 422
    # nothing half-written: no temporary file, no record of the refused ones
    assert not list((Path(env["settings"].data_dir) / "tmp").iterdir())
    names = {
        d["name"] for d in http.get("/v1/projects/lab_a/datasets", headers=H(env, "alice")).json()
    }
    assert {"cells.h5ad", "g.fa.gz"} <= names
    assert not names & {"log.h5ad", "bad.fa", "x.docx"}


@pytest.mark.parametrize("name", ["..", "a..b.fa", ".hidden.fa", "a b.fa", "x" * 200 + ".fa"])
def test_dataset_names_that_are_paths_are_refused(env, name: str) -> None:
    r = env["http"].put(f"/v1/projects/lab_a/datasets/{name}", content=b">a\nACGT\n",
                        headers=H(env, "alice"))  # fmt: skip
    assert r.status_code in (404, 405, 422), r.text  # ".." is resolved away by the URL
    assert not list(Path(env["settings"].data_dir).rglob("*hidden*"))


def test_upload_size_limit(env) -> None:
    big = b">a\n" + b"ACGT" * 600_000 + b"\n"  # 2.4 MB > the 2 MB limit
    r = env["http"].put("/v1/projects/lab_a/datasets/big.fa", content=big, headers=H(env, "alice"))
    assert r.status_code == 413
    # without a Content-Length the stream is cut while reading (see also the unit test below)
    r = env["http"].put("/v1/projects/lab_a/datasets/big2.fa", content=iter([big[:1_000_000]] * 3),
                        headers=H(env, "alice"))  # fmt: skip
    assert r.status_code == 413
    assert not list((Path(env["settings"].data_dir) / "tmp").iterdir())


def test_submission_checks_and_budget(env) -> None:
    http = env["http"]
    post = lambda spec, **kw: http.post(  # noqa: E731
        "/v1/projects/lab_a/jobs", json={"spec": spec, **kw}, headers=H(env, "alice")
    )
    assert post({"task": "genomes.qc", "dataset": "nope.fa"}).status_code == 422
    assert post({"task": "genomes.qc", "dataset": "cells.h5ad"}).status_code == 422  # wrong kind
    assert post({"task": "cells.embed", "dataset": "cells.h5ad", "model": "m:1"}).status_code == 422
    assert post({"task": "cells.pretrain", "datasets": ["cells.h5ad"], "model_name": "m",
                 "preset": "huge"}).status_code == 422  # fmt: skip
    assert post({"task": "genomes.qc", "dataset": "g.fna", "jobs": 0}).status_code == 422
    assert post({"task": "nope", "dataset": "g.fna"}).status_code == 422
    r = post({"task": "genomes.qc", "dataset": "g.fna", "resources": {"cpus": 2, "max_hours": 3}})
    assert r.status_code == 402
    detail = r.json()["detail"]
    assert detail["cpu_hours_left"] <= 5
    assert "left" in detail["message"]


def test_job_runs_streams_events_and_charges_the_ledger(env) -> None:
    http = env["http"]
    spec = {"task": "genomes.qc", "dataset": "g.fna", "resources": {"max_hours": 0.5}}
    r = http.post("/v1/projects/lab_a/jobs", json={"spec": spec}, headers=H(env, "alice"))
    assert r.status_code == 201, r.text
    job = r.json()
    # a second job, cancelled at once
    r2 = http.post("/v1/projects/lab_a/jobs", json={"spec": spec}, headers=H(env, "alice")).json()
    c = http.post(f"/v1/projects/lab_a/jobs/{r2['id']}/cancel", headers=H(env, "alice")).json()
    assert c["status"] in ("cancelled", "cancelling")
    events = []
    with http.stream("GET", f"/v1/projects/lab_a/jobs/{job['id']}/events",
                     headers=H(env, "alice")) as s:  # fmt: skip
        ev = None
        for line in s.iter_lines():
            if line.startswith("event: "):
                ev = line[7:]
            elif line.startswith("data: "):
                events.append((ev, json.loads(line[6:])))
    statuses = [d["status"] for e, d in events if e == "status"]
    assert statuses[-1] == "succeeded", http.get(f"/v1/projects/lab_a/jobs/{job['id']}/logs",
                                                 headers=H(env, "alice")).text  # fmt: skip
    assert any(e == "log" and "lifelm genomes qc" in d for e, d in events)
    arts = http.get(
        f"/v1/projects/lab_a/jobs/{job['id']}/artifacts", headers=H(env, "alice")
    ).json()
    assert [a["path"] for a in arts] == ["qc.tsv"]
    tsv = http.get(f"/v1/projects/lab_a/jobs/{job['id']}/artifacts/qc.tsv", headers=H(env, "alice"))
    rows = tsv.text.strip().splitlines()
    assert len(rows) == 4
    assert "qc.overallStatus" in rows[0]
    for bad in ("../job.json", "../../../../lifelm.db", "..%2Fjob.json", "%2e%2e/job.json"):
        r = http.get(
            f"/v1/projects/lab_a/jobs/{job['id']}/artifacts/{bad}", headers=H(env, "alice")
        )
        assert r.status_code == 404, bad
    ledger = http.get("/v1/projects/lab_a/ledger", headers=H(env, "alice")).json()
    mine = [e for e in ledger["entries"] if e["job"] == job["id"]]
    assert len(mine) == 1
    assert mine[0]["seconds"] > 0
    assert mine[0]["cpu_hours"] == pytest.approx(mine[0]["seconds"] / 3600)
    assert ledger["budget"]["cpu_hours_used"] == pytest.approx(
        sum(e["cpu_hours"] for e in ledger["entries"]), rel=1e-4, abs=2e-6
    )  # the API rounds hours to 6 decimals
    assert http.post(f"/v1/projects/lab_a/jobs/{job['id']}/retry",
                     headers=H(env, "alice")).status_code == 409  # fmt: skip
    wait_for(lambda: http.get(f"/v1/projects/lab_a/jobs/{r2['id']}", headers=H(env, "alice"))
             .json()["status"] == "cancelled", timeout=120)  # fmt: skip


def test_tokens_never_reach_the_logs(env, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    http = env["http"]
    http.get("/v1/me", headers=H(env, "alice"))
    http.get("/v1/me", headers={"Authorization": "Bearer llm_wrong-secret-value"})
    new = http.post("/v1/tokens", json={}, headers=H(env, "alice")).json()["token"]
    text = caplog.text
    assert env["tokens"]["alice"] not in text
    assert new not in text
    assert "llm_wrong-secret-value" not in text


def test_wrong_tokens_are_rate_limited(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, run_scheduler=False, auth_failure_limit=3))
    from lifelm.service import auth
    from lifelm.service.db import User

    with app.state.sessions() as s:
        u = User(name="u")
        s.add(u)
        s.flush()
        _, secret = auth.issue(s, u)
        s.commit()
    with TestClient(app) as http:
        codes = [http.get("/v1/me", headers={"Authorization": f"Bearer bad{i}"}).status_code
                 for i in range(5)]  # fmt: skip
        assert codes == [401, 401, 401, 429, 429]
        r = http.get("/v1/me", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) > 0


def test_fair_share_puts_the_less_used_project_first(tmp_path: Path) -> None:
    """Project A has used its budget heavily and queued three jobs; B's single job goes first,
    then A's by priority."""
    from lifelm.service.db import (
        Job,
        LedgerEntry,
        Project,
        User,
        make_engine,
        session_factory,
        upgrade,
    )
    from lifelm.service.scheduler import fair_order

    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    with session_factory(make_engine(url))() as s:
        u = User(name="u")
        a, b = Project(name="a", cpu_hours=10), Project(name="b", cpu_hours=10)
        s.add_all([u, a, b])
        s.flush()
        done = Job(project_id=a.id, user_id=u.id, task="genomes.qc", spec={}, status="succeeded")
        s.add(done)
        s.flush()
        s.add(LedgerEntry(project_id=a.id, job_id=done.id, attempt=1, seconds=3600 * 5,
                          cpu_hours=5, gpu_hours=0))  # fmt: skip
        jobs = [Job(project_id=a.id, user_id=u.id, task="genomes.qc", spec={}, priority=p)
                for p in (0, 5, 1)]  # fmt: skip
        jobs.append(Job(project_id=b.id, user_id=u.id, task="genomes.qc", spec={}, priority=0))
        s.add_all(jobs)
        s.commit()
        order = [(j.project_id, j.priority) for j in fair_order(s)]
        assert order == [(b.id, 0), (a.id, 5), (a.id, 1), (a.id, 0)]


def test_upload_stops_reading_at_the_limit(tmp_path: Path) -> None:
    """The limit is enforced while streaming: reading stops at the first chunk past it."""
    import asyncio

    from lifelm.service.datasets import UploadError, receive

    pulled = []

    async def chunks():
        for i in range(100):
            pulled.append(i)
            yield b"x" * 1000

    tmp = tmp_path / "up.fa"
    with pytest.raises(UploadError) as e:
        asyncio.run(receive(chunks(), tmp, 5_500))
    assert e.value.status == 413
    assert len(pulled) == 6
    assert not tmp.exists()
