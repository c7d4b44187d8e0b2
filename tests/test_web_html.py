"""The web page at the HTML level (no browser, so these run without Chromium): sessions and
their cookie, CSRF refusal, trailing slashes, roles, and isolation between projects that
matches the API's 404 exactly; the launch forms are the job specs."""

from __future__ import annotations

import hashlib
import re
import typing
from html import unescape
from typing import Literal

import pytest

from service_helpers import write_cells
from web_helpers import hidden, make_service

pytest.importorskip("fastapi")
pytest.importorskip("jinja2")
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web_html")
    from lifelm.cli.serve import describe_options

    app, _settings, tokens = make_service(tmp, run_scheduler=False, cli_options=describe_options)
    from lifelm.service.db import Model, Project

    with app.state.sessions() as s:  # a registry record (the pages read only its card)
        lab_a = s.query(Project).filter_by(name="lab_a").one()
        for v in (1, 2):
            s.add(
                Model(
                    project_id=lab_a.id,
                    name="m",
                    version=v,
                    path=str(tmp),
                    card={
                        "architecture": "cell_transformer",
                        "parameters": 1000 * v,
                        "metrics": {
                            "eval_masked_gene_loss": 4.0 + v,
                            "baseline_uniform_guess_loss": 5.3,
                        },
                        "training_data": [{"dataset": "cells.h5ad", "sha256": "ab"}],
                        "licence": "CC0",
                    },
                )
            )
        s.commit()
    clients = {who: sign_in(app, tokens[who]) for who in tokens}
    alice = clients["alice"]
    cells = write_cells(tmp / "cells.h5ad")
    r = alice.post("/web/projects/lab_a/upload?name=cells.h5ad", content=cells.read_bytes(),
                   headers={"X-CSRF-Token": csrf(alice)})  # fmt: skip
    assert r.status_code == 201, r.text
    r = alice.post("/web/projects/lab_a/launch/cells.pretrain", follow_redirects=False,
                   data={"csrf": csrf(alice), "datasets": "cells.h5ad", "model_name": "t",
                         "resources.max_hours": "0.5"})  # fmt: skip
    assert r.status_code == 303, r.text
    job = int(r.headers["location"].rsplit("/", 1)[1])
    return {"app": app, "tokens": tokens, "c": clients, "tmp": tmp, "job": job}


def sign_in(app, token: str) -> TestClient:
    c = TestClient(app)
    page = c.get("/web/signin")
    r = c.post("/web/signin", data={"nonce": hidden(page.text, "nonce"), "token": token,
                                    "next": "/web/projects"}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 303, r.text
    return c


def csrf(c: TestClient) -> str:
    return hidden(c.get("/web/projects").text, "csrf")


def test_session_cookie_is_httponly_strict_and_sign_out_revokes_it(env) -> None:
    app, token = env["app"], env["tokens"]["alice"]
    c = TestClient(app)
    page = c.get("/web/signin")
    assert "HttpOnly" in page.headers["set-cookie"]  # the sign-in form's double-submit cookie
    r = c.post("/web/signin", data={"nonce": hidden(page.text, "nonce"), "token": token,
                                    "next": "/web/projects/lab_a"}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 303
    assert r.headers["location"] == "/web/projects/lab_a"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("lifelm_session="))
    flags = [f.strip().lower() for f in cookie.split(";")]
    assert "httponly" in flags
    assert "samesite=strict" in flags
    assert "path=/web" in flags
    secret = cookie.split(";")[0].split("=", 1)[1]
    assert secret != token, "the browser gets its own session, not the user's API token"
    from lifelm.service.db import Token

    with app.state.sessions() as s:
        row = s.query(Token).filter_by(digest=hashlib.sha256(secret.encode()).hexdigest()).one()
        assert row.name == "web session"
        assert not row.revoked
        assert row.expires is not None
    assert c.get("/web/projects").status_code == 200
    # a foreign redirect target is not followed after sign-in
    page = c.get("/web/signin")
    r = c.post("/web/signin", data={"nonce": hidden(page.text, "nonce"), "token": token,
                                    "next": "//evil.example/x"}, follow_redirects=False)  # fmt: skip
    assert r.headers["location"] == "/web/projects"
    second = c.cookies.get("lifelm_session")
    assert second != secret
    r = c.post("/web/signout", data={"csrf": csrf(c)}, follow_redirects=False)
    assert r.status_code == 303
    with app.state.sessions() as s:  # signing in again ended the first session, out the second
        for sec in (secret, second):
            digest = hashlib.sha256(sec.encode()).hexdigest()
            assert s.query(Token).filter_by(digest=digest).one().revoked
    c.cookies.set("lifelm_session", secret, path="/web")
    r = c.get("/web/projects/lab_a", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/web/signin?next=")
    bad = TestClient(app)
    page = bad.get("/web/signin")
    r = bad.post("/web/signin", data={"nonce": hidden(page.text, "nonce"), "token": "llm_wrong"})
    assert r.status_code == 401
    assert "not valid" in r.text
    assert "lifelm_session" not in bad.cookies


def test_posts_without_the_csrf_token_are_refused(env) -> None:
    alice, bob = env["c"]["alice"], env["c"]["bob"]
    n_jobs = len(_jobs(env))
    spec = {"datasets": "cells.h5ad", "model_name": "t2"}
    for token in ("", "0" * 64, csrf(bob)):  # none, made up, another session's
        r = alice.post("/web/projects/lab_a/launch/cells.pretrain", data={"csrf": token, **spec})
        assert r.status_code == 403, token
        r = alice.post(f"/web/projects/lab_a/jobs/{env['job']}/cancel", data={"csrf": token})
        assert r.status_code == 403
        r = alice.post("/web/projects/lab_a/upload?name=x.fa", content=b">a\nACGT\n",
                       headers={"X-CSRF-Token": token} if token else {})  # fmt: skip
        assert r.status_code == 403
    assert len(_jobs(env)) == n_jobs
    assert "x.fa" not in alice.get("/web/projects/lab_a").text
    r = alice.post("/web/signout", data={"csrf": ""})
    assert r.status_code == 403
    assert alice.get("/web/projects").status_code == 200  # still signed in
    fresh = TestClient(env["app"])
    r = fresh.post("/web/signin", data={"token": env["tokens"]["alice"]})  # no nonce
    assert r.status_code == 403


def _jobs(env) -> list:
    h = {"Authorization": f"Bearer {env['tokens']['alice']}"}
    return TestClient(env["app"]).get("/v1/projects/lab_a/jobs", headers=h).json()


def _pages(env) -> list[str]:
    j = env["job"]
    return ["/web/projects", "/web/projects/lab_a", "/web/projects/lab_a/upload",
            "/web/projects/lab_a/launch", "/web/projects/lab_a/launch/cells.embed",
            "/web/projects/lab_a/launch/genomes.qc", f"/web/projects/lab_a/jobs/{j}",
            f"/web/projects/lab_a/jobs/{j}/results", "/web/projects/lab_a/models",
            "/web/projects/lab_a/models/m/1", "/web/projects/lab_a/models/compare",
            "/web/projects/lab_a/budget.svg"]  # fmt: skip


def test_every_page_answers_with_and_without_a_trailing_slash(env) -> None:
    alice = env["c"]["alice"]
    for path in _pages(env):
        r = alice.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        assert "default-src 'self'" in r.headers["content-security-policy"]
        slashed = alice.get(path + "/")
        assert slashed.status_code == 200, path
        assert slashed.url.path == path
        if path.endswith(".svg"):
            assert r.text.lstrip().startswith("<?xml")
        else:
            assert '<html lang="en">' in r.text
    r = alice.get("/web/projects/lab_a/models/compare?a=m:1&b=m:2")
    assert "parameters" in r.text
    assert r.text.count('class="differs"') >= 2  # parameters and held-out loss differ
    assert "are comparable" in r.text  # same training data checksums


def test_every_input_has_a_label(env) -> None:
    alice = env["c"]["alice"]
    for path in _pages(env):
        if path.endswith(".svg"):
            continue
        html = alice.get(path).text
        for tag in re.findall(r"<(?:input|select|textarea)\b[^>]*>", html):
            if 'type="hidden"' in tag:
                continue
            m = re.search(r'id="([^"]+)"', tag)
            assert m, f"{path}: an input without an id: {tag}"
            assert f'<label for="{m.group(1)}"' in html, f"{path}: no label for {m.group(1)}"


def test_launch_forms_are_the_job_specs(env) -> None:
    from pydantic import BaseModel

    from lifelm.cli.serve import describe_options
    from lifelm.service import specs
    from lifelm.service.web import forms

    alice = env["c"]["alice"]
    models = forms.spec_models()
    assert tuple(models) == specs.TASKS
    for task, model in models.items():
        html = alice.get(f"/web/projects/lab_a/launch/{task}").text
        names = set(re.findall(r'<(?:input|select)[^>]*name="([^"]+)"', html)) - {
            "csrf",
            "priority",
        }
        expected = set()
        for name, info in model.model_fields.items():
            tp = info.annotation
            if name == "task":
                continue
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                expected |= {f"{name}.{sub}" for sub in tp.model_fields}
            else:
                expected.add(name)
        assert names == expected, task
        for f in forms.form_fields(task, describe_options):
            if f.kind in ("int", "float", "text") and f.default not in (None, []):
                assert re.search(rf'name="{re.escape(f.name)}"[^>]*value="{re.escape(str(f.default))}"',
                                 html), (task, f.name)  # fmt: skip
            if f.kind == "choice":
                info = model.model_fields[f.name]
                if info.annotation is bool:
                    assert f.choices == ("true", "false")
                elif typing.get_origin(info.annotation) is Literal:
                    assert f.choices == tuple(typing.get_args(info.annotation))
                else:  # a plain string the CLI parser checks: the form offers the CLI's choices
                    flag = "--" + f.name.replace("_", "-")
                    assert f.choices == describe_options(tuple(task.split(".")))[flag]["choices"]
                assert f'<option value="{f.value}" selected>' in html
    # choices and help texts of plain options come from the CLI itself
    annotate = alice.get("/web/projects/lab_a/launch/cells.annotate").text
    assert re.search(r'<select id="f-method" name="method"', annotate)
    cli_help = describe_options(("cells", "annotate"))["--label-key"]["help"]
    assert cli_help
    assert cli_help in unescape(annotate)
    # help texts come from the spec's descriptions
    assert specs.Resources.model_fields["max_hours"].description in alice.get(
        "/web/projects/lab_a/launch/genomes.qc").text  # fmt: skip
    # a form left at its defaults submits exactly the spec's defaults
    job = next(j for j in _jobs(env) if j["id"] == env["job"])
    want = specs.CellsPretrain(task="cells.pretrain", datasets=["cells.h5ad"], model_name="t",
                               resources=specs.Resources(max_hours=0.5)).model_dump(mode="json")  # fmt: skip
    assert job["spec"] == want


def test_over_budget_and_invalid_forms_show_the_apis_answer(env) -> None:
    alice = env["c"]["alice"]
    r = alice.post("/web/projects/lab_a/launch/cells.pretrain", data={
        "csrf": csrf(alice), "datasets": "cells.h5ad", "model_name": "big",
        "resources.cpus": "4", "resources.max_hours": "2"})  # fmt: skip
    assert r.status_code == 402
    alert = re.search(r'role="alert">([^<]+)<', r.text).group(1)
    assert "over budget" in alert
    assert "8 CPU h" in alert
    assert 'value="big"' in r.text  # the form keeps what was typed
    assert "does not fit the budget" in r.text  # the estimate said so before submission
    r = alice.post("/web/projects/lab_a/launch/cells.pretrain", data={
        "csrf": csrf(alice), "datasets": "cells.h5ad", "model_name": "x", "steps": "0"})  # fmt: skip
    assert r.status_code == 422
    assert "steps: Input should be greater than or equal to 1" in r.text
    bad = write_cells(env["tmp"] / "log.h5ad", log=True)
    r = alice.post("/web/projects/lab_a/upload?name=log.h5ad", content=bad.read_bytes(),
                   headers={"X-CSRF-Token": csrf(alice)})  # fmt: skip
    assert r.status_code == 422
    assert "no raw counts found" in r.json()["message"]
    assert str(env["tmp"]) not in r.json()["message"]


def test_a_viewer_sees_no_controls_and_every_write_is_refused(env) -> None:
    vera = env["c"]["vera"]
    j = env["job"]
    for path in ("/web/projects/lab_a", f"/web/projects/lab_a/jobs/{j}"):
        html = vera.get(path).text
        assert "/upload" not in html
        assert "/launch" not in html
        assert "/cancel" not in html
        assert "Cancel job" not in html
    assert "Cancel job" in env["c"]["alice"].get(f"/web/projects/lab_a/jobs/{j}").text
    for path in ("/web/projects/lab_a/upload", "/web/projects/lab_a/launch",
                 "/web/projects/lab_a/launch/cells.embed"):  # fmt: skip
        assert vera.get(path).status_code == 403, path
    token = csrf(vera)
    assert vera.post("/web/projects/lab_a/launch/genomes.qc",
                     data={"csrf": token, "dataset": "cells.h5ad"}).status_code == 403  # fmt: skip
    assert (
        vera.post(f"/web/projects/lab_a/jobs/{j}/cancel", data={"csrf": token}).status_code == 403
    )
    assert vera.post(f"/web/projects/lab_a/jobs/{j}/retry", data={"csrf": token}).status_code == 403
    r = vera.post("/web/projects/lab_a/upload?name=v.fa", content=b">a\nACGT\n",
                  headers={"X-CSRF-Token": token})  # fmt: skip
    assert r.status_code == 403
    assert "viewer" in r.json()["message"] or "member" in r.json()["message"]


def test_another_projects_user_gets_the_same_404_as_for_no_project(env) -> None:
    """Bob (lab_b) asks for every web route of lab_a, GET and POST with his own valid session
    and CSRF token: 404 each time, the page identical to the one for a project that does not
    exist, and nothing of lab_a in it."""
    from lifelm.service.web.routes import router

    bob = env["c"]["bob"]
    token = csrf(bob)
    fill = {"{job_id}": str(env["job"]), "{name}": "m", "{version}": "1", "{task}": "cells.embed",
            "{path:path}": "run/metrics.jsonl"}  # fmt: skip
    checked = 0
    for route in router.routes:
        path = getattr(route, "path", "")
        if not path.startswith("/web/projects/{project}"):
            continue
        url = path.replace("{project}", "lab_a")
        for k, v in fill.items():
            url = url.replace(k, v)
        for method in sorted(route.methods - {"HEAD"}):
            kw: dict = {"data": {"csrf": token}} if method == "POST" else {}
            if url.endswith("/upload") and method == "POST":
                kw = {"content": b">a\nACGT\n", "headers": {"X-CSRF-Token": token}}
            r = bob.request(method, url, **kw)
            r2 = bob.request(method, url.replace("lab_a", "no_such_lab", 1), **kw)
            assert r.status_code == 404, (method, url, r.status_code, r.text[:300])
            assert r2.status_code == 404
            assert r.text.replace("lab_a", "X") == r2.text.replace("no_such_lab", "X"), url
            assert "cells.h5ad" not in r.text
            checked += 1
    assert checked >= 20
    assert "lab_a" not in bob.get("/web/projects").text


def test_ranked_targets_and_their_report_are_shown_sandboxed(env) -> None:
    """Whatever job writes a ranked ``targets.tsv`` and a ``report.html`` (the files
    ``lifelm cells targets`` writes) gets them on its results page: the table with its '#'
    header lines, and the report served with a sandbox policy (no script runs)."""
    alice, j = env["c"]["alice"], env["job"]
    from lifelm.service.db import Job

    with env["app"].state.sessions() as s:
        folder = env["app"].state.scheduler.job_dir(s.get(Job, j)) / "out" / "targets"
    folder.mkdir(parents=True)
    (folder / "targets.tsv").write_text(
        "# test: label permutation, 1000 permutations\n# verdict: 2 genes at FDR 0.1\n"
        "rank\tgene\tscore\tp_value\tq_value\n1\tCD3E\t2.5\t0.001\t0.01\n2\tMS4A1\t1.9\t0.004\t0.02\n"
    )  # fmt: skip
    (folder / "report.html").write_text("<html><body><h1>Targets</h1><script>alert(1)</script>")
    html = alice.get(f"/web/projects/lab_a/jobs/{j}/results").text
    assert "label permutation, 1000 permutations" in html
    assert "<td>CD3E</td>" in html
    assert 'sandbox src="/web/projects/lab_a/jobs/' in html
    r = alice.get(f"/web/projects/lab_a/jobs/{j}/report/targets/report.html")
    assert r.status_code == 200
    assert r.headers["content-security-policy"].startswith("sandbox")
    assert "script-src" not in r.headers["content-security-policy"]  # default-src 'none'
    assert alice.get(f"/web/projects/lab_a/jobs/{j}/report/targets/targets.tsv").status_code == 404
    assert alice.get(f"/web/projects/lab_a/jobs/{j}/report/../job.json").status_code == 404
    r = alice.get(f"/web/projects/lab_a/jobs/{j}/files/targets/targets.tsv")
    assert r.status_code == 200
    assert "CD3E" in r.text


def test_cancel_and_retry_from_the_job_page(env) -> None:
    alice, j = env["c"]["alice"], env["job"]
    page = f"/web/projects/lab_a/jobs/{j}"
    assert ">queued<" in alice.get(page).text  # no scheduler runs in this module
    r = alice.post(page + "/cancel", data={"csrf": csrf(alice)}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == page
    html = alice.get(page).text
    assert ">cancelled<" in html
    assert "Retry job" in html
    assert "Cancel job" not in html
    alice.post(page + "/retry", data={"csrf": csrf(alice)})
    assert ">queued<" in alice.get(page).text
    r = alice.post(page + "/retry", data={"csrf": csrf(alice)})
    assert r.status_code == 409  # the API's answer, shown on the error page
    assert "only failed or cancelled jobs retry" in r.text
