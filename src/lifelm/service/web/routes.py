"""Routes of the web page (mounted by :func:`mount` under ``/web``).

Sessions: signing in with an API token issues a new, separate token for the browser (named
``web session``, 12 hours, stored as its SHA-256 like every token) and puts it in an HttpOnly,
SameSite=Strict cookie; signing out revokes it. Every form that changes something carries a
CSRF token, an HMAC of the session under a key kept in the data folder; the upload script sends
it as ``X-CSRF-Token``. The sign-in form uses a double-submit cookie.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from lifelm.service import auth
from lifelm.service.db import Job, Token, User
from lifelm.service.web import bridge, forms, plots

HERE = Path(__file__).resolve().parent
COOKIE = "lifelm_session"
SIGNIN_COOKIE = "lifelm_signin"
SESSION_DAYS = 0.5
TERMINAL = ("succeeded", "failed", "cancelled")
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-src 'self'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'; object-src 'none'"
)
# a job's HTML report is shown as a document of its own: no script, no network, no forms
REPORT_CSP = (
    "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
)

env = Environment(
    loader=FileSystemLoader(str(HERE / "templates")),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["q"] = lambda s: quote(str(s), safe="")
env.globals["finite"] = plots.finite


# how the annotation's held-out comparison is shown (the keys lifelm.cells.annotate writes)
METHOD_NAMES = {
    "majority": "majority class (baseline)",
    "logreg_pca": "PCA + logistic regression (baseline)",
    "baseline": "PCA + logistic regression (baseline)",
    "model": "LifeLM model",
}
HELD_OUT_METRICS = ("accuracy", "macro_f1", "ece_before", "ece", "temperature", "n")
env.filters["method"] = lambda m: METHOD_NAMES.get(str(m), str(m))


class WebError(Exception):
    """An error page: ``status`` and the message shown (the API's own message where it has one)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SignInNeeded(Exception):
    """No valid session: go to the sign-in page, then back to ``next``."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


router = APIRouter(prefix="/web", include_in_schema=False)


# ------------------------------------------------------------------------------ plumbing
def _key(request: Request) -> bytes:
    key: bytes = request.app.state.web_key
    return key


def csrf_token(request: Request) -> str:
    """The CSRF token of the request's session (empty without a session)."""
    session = request.cookies.get(COOKIE, "")
    if not session:
        return ""
    return hmac.new(_key(request), b"csrf:" + session.encode(), hashlib.sha256).hexdigest()


def _bearer(request: Request) -> str | None:
    """A script's ``Authorization: Bearer`` token, used only when there is no session cookie
    (a browser never sends that header across sites, so such requests need no CSRF token)."""
    if request.cookies.get(COOKIE):
        return None
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" and secret.strip() else None


def _check_csrf(request: Request, sent: str | None) -> None:
    if _bearer(request):
        return
    want = csrf_token(request)
    if not want or not sent or not hmac.compare_digest(want, sent):
        raise WebError(
            403, "the form's security token is missing or stale: reload the page and try again"
        )


def _client(request: Request) -> tuple[str, int]:
    c = request.client
    return (c.host, c.port) if c else ("web", 0)


async def api(request: Request, method: str, path: str, **kw: Any) -> bridge.Answer:
    """Ask the API as the signed-in user; no or a dead session sends the browser to sign in."""
    token = request.cookies.get(COOKIE) or _bearer(request)
    if not token:
        raise SignInNeeded(_here(request))
    answer = await bridge.call(
        request.app, method, path, token=token, client=_client(request), **kw
    )
    if answer.status == 401:
        raise SignInNeeded(_here(request))
    return answer


def _here(request: Request) -> str:
    if request.method != "GET":
        return "/web/projects"
    q = request.url.query
    return request.url.path + (f"?{q}" if q else "")


def _ok(answer: bridge.Answer) -> Any:
    if answer.status >= 400:
        raise WebError(answer.status, answer.detail())
    return answer.json()


def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def render(request: Request, template: str, status: int = 200, **ctx: Any) -> Response:
    """A page from ``templates/`` with the security headers."""
    html = env.get_template(template).render(
        request=request, csrf=csrf_token(request), signed_in=bool(request.cookies.get(COOKIE)),
        **ctx,
    )  # fmt: skip
    return _headers(HTMLResponse(html, status_code=status))


async def _form(request: Request) -> dict[str, list[str]]:
    body = await request.body()
    if len(body) > 1_000_000:
        raise WebError(413, "form too large")
    return parse_qs(body.decode(errors="replace"), keep_blank_values=True)


async def _project(request: Request, project: str) -> dict[str, Any]:
    proj: dict[str, Any] = _ok(await api(request, "GET", bridge.path("v1", "projects", project)))
    proj["can_write"] = auth.role_at_least(proj["role"], "member")
    return proj


def _need_write(proj: dict[str, Any]) -> None:
    if not proj["can_write"]:
        raise WebError(
            403, f"needs the member role in project {proj['name']}; you are a {proj['role']}"
        )


def _job_folder(request: Request, job_id: int) -> Path:
    """The folder of a job the API has already shown to this user."""
    with request.app.state.sessions() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise WebError(404, f"no job {job_id}")
        folder: Path = request.app.state.scheduler.job_dir(job)
        return folder


# --------------------------------------------------------------------------- sign in/out
@router.get("")
async def home() -> Response:
    return RedirectResponse("/web/projects", status_code=303)


def _safe_next(url: str | None) -> str:
    if url and url.startswith("/web/") and not url.startswith("//") and "\\" not in url:
        return url
    return "/web/projects"


@router.get("/signin")
async def signin_page(request: Request, next: str = "/web/projects") -> Response:
    nonce = secrets.token_urlsafe(24)
    r = render(request, "signin.html", next=_safe_next(next), nonce=nonce, error=None)
    r.set_cookie(SIGNIN_COOKIE, nonce, httponly=True, samesite="strict", path="/web",
                 secure=request.url.scheme == "https", max_age=3600)  # fmt: skip
    return r


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await _form(request)
    nonce = (form.get("nonce") or [""])[0]
    cookie = request.cookies.get(SIGNIN_COOKIE, "")
    next_url = _safe_next((form.get("next") or [""])[0])
    if not nonce or not cookie or not hmac.compare_digest(nonce, cookie):
        raise WebError(
            403, "the sign-in form's security token is missing or stale: reload the page"
        )
    token = (form.get("token") or [""])[0].strip()
    me = await bridge.call(
        request.app, "GET", "/v1/me", token=token or "-", client=_client(request)
    )
    if me.status != 200:
        fresh = secrets.token_urlsafe(24)
        msg = (
            me.detail()
            if me.status == 429
            else "that token is not valid (unknown, expired or revoked)"
        )
        r = render(request, "signin.html", status=me.status, next=next_url, nonce=fresh, error=msg)
        r.set_cookie(SIGNIN_COOKIE, fresh, httponly=True, samesite="strict", path="/web",
                     secure=request.url.scheme == "https", max_age=3600)  # fmt: skip
        return r
    user_id = int(me.json()["id"])
    previous = request.cookies.get(COOKIE, "")

    def issue() -> str:
        if previous:  # one browser, one session: signing in again ends the old one
            _revoke(request, previous)
        with request.app.state.sessions() as s:
            user = s.get(User, user_id)
            if user is None:
                raise WebError(401, "this user no longer exists")
            _, secret = auth.issue(s, user, name="web session", days=SESSION_DAYS)
            s.commit()
            return secret

    secret = await run_in_threadpool(issue)
    r = RedirectResponse(next_url, status_code=303)
    r.set_cookie(COOKIE, secret, httponly=True, samesite="strict", path="/web",
                 secure=request.url.scheme == "https", max_age=int(SESSION_DAYS * 86400))  # fmt: skip
    r.delete_cookie(SIGNIN_COOKIE, path="/web")
    return _headers(r)


def _revoke(request: Request, secret: str) -> None:
    """Revoke a browser session token (never a user's own API token)."""
    with request.app.state.sessions() as s:
        tok = s.scalars(select(Token).where(Token.digest == auth.digest(secret))).first()
        if tok is not None and tok.name == "web session":
            tok.revoked = True
            s.commit()


@router.post("/signout")
async def signout(request: Request) -> Response:
    form = await _form(request)
    _check_csrf(request, (form.get("csrf") or [""])[0])
    await run_in_threadpool(_revoke, request, request.cookies.get(COOKIE, ""))
    r = RedirectResponse("/web/signin", status_code=303)
    r.delete_cookie(COOKIE, path="/web")
    return _headers(r)


# ------------------------------------------------------------------------------ projects
@router.get("/projects")
async def projects(request: Request) -> Response:
    me = _ok(await api(request, "GET", "/v1/me"))
    rows = _ok(await api(request, "GET", "/v1/projects"))
    return render(request, "projects.html", me=me, projects=rows)


@router.get("/projects/{project}")
async def dashboard(request: Request, project: str) -> Response:
    proj = await _project(request, project)
    base = bridge.path("v1", "projects", project)
    data = _ok(await api(request, "GET", base + "/datasets"))
    jobs = _ok(await api(request, "GET", base + "/jobs"))
    ledger = _ok(await api(request, "GET", base + "/ledger"))
    models = _ok(await api(request, "GET", base + "/models"))
    active = [j for j in jobs if j["status"] not in TERMINAL]
    done = [j for j in jobs if j["status"] in TERMINAL]
    return render(request, "dashboard.html", project=proj, datasets=data, active=active,
                  done=done, ledger=ledger, models=models)  # fmt: skip


@router.get("/projects/{project}/budget.svg")
async def budget_plot(request: Request, project: str) -> Response:
    await _project(request, project)
    ledger = _ok(await api(request, "GET", bridge.path("v1", "projects", project, "ledger")))
    svg = await run_in_threadpool(plots.budget_svg, ledger["entries"], ledger["budget"])
    return _headers(Response(svg, media_type="image/svg+xml"))


# ------------------------------------------------------------------------------- upload
@router.get("/projects/{project}/upload")
async def upload_page(request: Request, project: str) -> Response:
    proj = await _project(request, project)
    _need_write(proj)
    from lifelm.service.datasets import SUFFIXES

    limit = request.app.state.settings.max_upload_bytes
    return render(request, "upload.html", project=proj, suffixes=sorted(SUFFIXES), limit=limit)


@router.post("/projects/{project}/upload")
async def upload(request: Request, project: str, name: str = "", source: str = "",
                 licence: str = "unknown") -> Response:  # fmt: skip
    """The file's bytes as the request body (the page's script sends them with a progress
    bar); streamed on to the API's upload route, which sizes, hashes and validates them."""
    _check_csrf(request, request.headers.get("x-csrf-token"))
    await _project(request, project)  # another project's user gets the API's 404 first
    if not name:
        raise WebError(422, "no dataset name: choose a file")
    headers = {"content-type": "application/octet-stream"}
    if request.headers.get("content-length"):
        headers["content-length"] = request.headers["content-length"]
    answer = await api(request, "PUT", bridge.path("v1", "projects", project, "datasets", name),
                       query={"source": source, "licence": licence}, body=request.stream(),
                       headers=headers)  # fmt: skip
    if answer.status >= 400:
        return _headers(JSONResponse({"ok": False, "message": answer.detail()},
                                     status_code=answer.status))  # fmt: skip
    card = answer.json()
    return _headers(JSONResponse({"ok": True, "dataset": card,
                                  "message": f"{card['name']} stored and checked"},
                                 status_code=answer.status))  # fmt: skip


# ------------------------------------------------------------------------------- launch
@router.get("/projects/{project}/launch")
async def launch_index(request: Request, project: str) -> Response:
    proj = await _project(request, project)
    _need_write(proj)
    tasks = [(t, forms.task_summary(t)) for t in forms.spec_models()]
    return render(request, "launch_index.html", project=proj, tasks=tasks)


async def _launch_ctx(request: Request, project: str, task: str) -> dict[str, Any]:
    proj = await _project(request, project)
    if task not in forms.spec_models():
        raise WebError(404, f"no task {task!r}; tasks: {', '.join(forms.spec_models())}")
    _need_write(proj)
    base = bridge.path("v1", "projects", project)
    fields = forms.form_fields(task, request.app.state.settings.cli_options)
    kinds = {k for f in fields for k in f.dataset_kinds}
    data = [d for d in _ok(await api(request, "GET", base + "/datasets")) if d["kind"] in kinds]
    models = _ok(await api(request, "GET", base + "/models"))
    return {
        "project": proj, "task": task, "summary": forms.task_summary(task),
        "fields": fields, "datasets": data,
        "models": [f"{m['name']}:{m['version']}" for m in models],
    }  # fmt: skip


@router.get("/projects/{project}/launch/{task}")
async def launch_page(request: Request, project: str, task: str) -> Response:
    ctx = await _launch_ctx(request, project, task)
    cost = forms.cost({}, ctx["project"]["budget"])
    return render(request, "launch.html", values={}, error=None, cost=cost, **ctx)


@router.post("/projects/{project}/launch/{task}")
async def launch(request: Request, project: str, task: str) -> Response:
    form = await _form(request)
    _check_csrf(request, (form.get("csrf") or [""])[0])
    ctx = await _launch_ctx(request, project, task)
    spec = forms.spec_from_form(task, form)
    try:
        priority = int((form.get("priority") or ["0"])[0] or 0)
    except ValueError:
        priority = 0
    answer = await api(request, "POST", bridge.path("v1", "projects", project, "jobs"),
                       json_body={"spec": spec, "priority": priority})  # fmt: skip
    if answer.status == 201:
        job = answer.json()
        return _headers(
            RedirectResponse(
                f"/web/projects/{quote(project, safe='')}/jobs/{job['id']}", status_code=303
            )
        )
    if answer.status in (403, 404):
        raise WebError(answer.status, answer.detail())
    values = {k: v for k, v in form.items() if k != "csrf"}
    cost = forms.cost(spec, ctx["project"]["budget"])
    return render(request, "launch.html", status=answer.status, values=values,
                  error=answer.detail(), cost=cost, **ctx)  # fmt: skip


# --------------------------------------------------------------------------------- jobs
async def _job(request: Request, project: str, job_id: int) -> dict[str, Any]:
    job: dict[str, Any] = _ok(
        await api(request, "GET", bridge.path("v1", "projects", project, "jobs", job_id))
    )
    return job


@router.get("/projects/{project}/jobs/{job_id}")
async def job_page(request: Request, project: str, job_id: int) -> Response:
    proj = await _project(request, project)
    job = await _job(request, project, job_id)
    base = bridge.path("v1", "projects", project, "jobs", job_id)
    logs = await api(request, "GET", base + "/logs", query={"tail": 200})
    return render(request, "job.html", project=proj, job=job,
                  log=logs.body.decode(errors="replace"), terminal=TERMINAL)  # fmt: skip


@router.get("/projects/{project}/jobs/{job_id}/events")
async def job_events(request: Request, project: str, job_id: int) -> Response:
    base = bridge.path("v1", "projects", project, "jobs", job_id)
    answer = await api(request, "GET", base + "/events", stream=True)
    if answer.status >= 400 or answer.stream is None:
        body = b"".join([c async for c in answer.stream]) if answer.stream else b""
        return _headers(Response(body, status_code=answer.status, media_type="application/json"))
    r = StreamingResponse(answer.stream, media_type="text/event-stream")
    r.headers["X-Accel-Buffering"] = "no"
    return _headers(r)


async def _job_action(request: Request, project: str, job_id: int, action: str) -> Response:
    form = await _form(request)
    _check_csrf(request, (form.get("csrf") or [""])[0])
    base = bridge.path("v1", "projects", project, "jobs", job_id)
    answer = await api(request, "POST", f"{base}/{action}")
    if answer.status >= 400:
        raise WebError(answer.status, answer.detail())
    return _headers(
        RedirectResponse(f"/web/projects/{quote(project, safe='')}/jobs/{job_id}", status_code=303)
    )


@router.post("/projects/{project}/jobs/{job_id}/cancel")
async def job_cancel(request: Request, project: str, job_id: int) -> Response:
    return await _job_action(request, project, job_id, "cancel")


@router.post("/projects/{project}/jobs/{job_id}/retry")
async def job_retry(request: Request, project: str, job_id: int) -> Response:
    return await _job_action(request, project, job_id, "retry")


@router.get("/projects/{project}/jobs/{job_id}/files/{path:path}")
async def job_file(request: Request, project: str, job_id: int, path: str) -> Response:
    base = bridge.path("v1", "projects", project, "jobs", job_id, "artifacts")
    answer = await api(request, "GET", base + "/" + quote(path), stream=True)
    if answer.status >= 400 or answer.stream is None:
        body = b"".join([c async for c in answer.stream]) if answer.stream else b""
        raise WebError(answer.status, bridge.Answer(answer.status, {}, body).detail())
    headers = {k: v for k, v in answer.headers.items()
               if k in ("content-length", "content-disposition", "etag", "last-modified")}  # fmt: skip
    r = StreamingResponse(answer.stream, media_type="application/octet-stream", headers=headers)
    return _headers(r)


async def _artifacts(request: Request, project: str, job_id: int) -> dict[str, int]:
    base = bridge.path("v1", "projects", project, "jobs", job_id, "artifacts")
    return {a["path"]: a["size"] for a in _ok(await api(request, "GET", base))}


def _read_tsv(path: Path, limit: int = 300) -> dict[str, Any]:
    notes, lines = [], []
    with open(path, newline="") as fh:
        for line in fh:
            if line.startswith("#"):
                notes.append(line[1:].strip())
            else:
                lines.append(line)
    rows = list(csv.reader(io.StringIO("".join(lines)), delimiter="\t"))
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    return {"notes": notes, "header": header, "rows": body[:limit], "total": len(body)}


def _h5ad_summary(path: Path) -> dict[str, Any]:
    import anndata as ad

    a = ad.read_h5ad(path, backed="r")
    try:
        info = dict(a.uns.get("lifelm", {}))
        return {"n_obs": a.n_obs, "n_vars": a.n_vars, "obs": list(a.obs.columns),
                "obsm": list(a.obsm.keys()), "lifelm": info}  # fmt: skip
    finally:
        if a.file is not None:
            a.file.close()


def _annotation(path: Path) -> dict[str, Any]:
    """The annotate run's facts: held-out accuracy of the model next to its baselines, and a
    confusion table of the dataset's own labels against the calls (when it has labels)."""
    import anndata as ad
    import pandas as pd

    a = ad.read_h5ad(path, backed="r")
    try:
        info = dict(a.uns.get("lifelm", {}).get("annotate", {}))
        key = str(info.get("key_added", "lifelm_cell_type"))
        label_key = str(info.get("reference", {}).get("label_key", "cell_type"))
        table = None
        if key in a.obs and label_key in a.obs and label_key != key:
            truth = a.obs[label_key].astype(str)
            table = pd.crosstab(truth, a.obs[key].astype(str))
        held = {
            METHOD_NAMES.get(k, k): v
            for k, v in (info.get("holdout", {}) or {}).items()
            if isinstance(v, dict)
        }
        present = {k for m in held.values() for k, v in m.items() if isinstance(v, int | float)}
        metrics = [k for k in HELD_OUT_METRICS if k in present]
        counts = pd.Series(a.obs[key].astype(str)).value_counts() if key in a.obs else None
        return {"info": info, "key": key, "label_key": label_key, "table": table,
                "held": held, "metrics": metrics,
                "counts": list(counts.items()) if counts is not None else []}  # fmt: skip
    finally:
        if a.file is not None:
            a.file.close()


@router.get("/projects/{project}/jobs/{job_id}/results")
async def results(request: Request, project: str, job_id: int, color: str = "") -> Response:
    proj = await _project(request, project)
    job = await _job(request, project, job_id)
    arts = await _artifacts(request, project, job_id)
    out = _job_folder(request, job_id) / "out"
    ctx: dict[str, Any] = {"project": proj, "job": job, "artifacts": arts, "color": color}
    if job["task"] == "cells.embed" and "embedded.h5ad" in arts:
        summary = await run_in_threadpool(_h5ad_summary, out / "embedded.h5ad")
        ctx["embed"] = summary
        ctx["key"] = job["spec"].get("key_added", "X_lifelm")
        if color and color not in summary["obs"]:
            raise WebError(404, f"no .obs column {color!r} in embedded.h5ad")
    if job["task"] == "cells.annotate" and "annotated.h5ad" in arts:
        ctx["annotate"] = await run_in_threadpool(_annotation, out / "annotated.h5ad")
    for name in ("mutations.tsv", "qc.tsv", "targets.tsv"):
        found = [p for p in arts if p == name or p.endswith("/" + name)]
        if found:
            ctx.setdefault("tables", []).append(
                (found[0], await run_in_threadpool(_read_tsv, out / found[0]))
            )
    ctx["reports"] = [p for p in arts if p.endswith(".html")]
    ctx["loss"] = any(p.endswith("metrics.jsonl") for p in arts)
    if job["task"] == "cells.pretrain":
        models = _ok(await api(request, "GET", bridge.path("v1", "projects", project, "models")))
        ctx["models"] = [m for m in models if m["job_id"] == job_id]
    return render(request, "results.html", **ctx)


@router.get("/projects/{project}/jobs/{job_id}/umap.svg")
async def umap(request: Request, project: str, job_id: int, color: str = "") -> Response:
    job = await _job(request, project, job_id)
    arts = await _artifacts(request, project, job_id)
    if "embedded.h5ad" not in arts:
        raise WebError(404, f"job {job_id} has no embedded.h5ad")
    folder = _job_folder(request, job_id)
    key = job["spec"].get("key_added", "X_lifelm")
    try:
        svg = await run_in_threadpool(plots.umap_svg, folder / "out" / "embedded.h5ad", key,
                                      color or None, folder / "web")  # fmt: skip
    except KeyError as e:
        raise WebError(404, str(e)) from None
    return _headers(
        Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "private, max-age=60"})
    )


@router.get("/projects/{project}/jobs/{job_id}/confusion.svg")
async def confusion(request: Request, project: str, job_id: int) -> Response:
    arts = await _artifacts(request, project, job_id)
    if "annotated.h5ad" not in arts:
        raise WebError(404, f"job {job_id} has no annotated.h5ad")
    ann = await run_in_threadpool(
        _annotation, _job_folder(request, job_id) / "out" / "annotated.h5ad"
    )
    if ann["table"] is None:
        raise WebError(
            404, f"annotated.h5ad has no label column {ann['label_key']!r} to compare with"
        )
    svg = await run_in_threadpool(plots.confusion_svg, ann["table"])
    return _headers(Response(svg, media_type="image/svg+xml"))


@router.get("/projects/{project}/jobs/{job_id}/loss.svg")
async def job_loss(request: Request, project: str, job_id: int) -> Response:
    arts = await _artifacts(request, project, job_id)
    found = [p for p in arts if p.endswith("metrics.jsonl")]
    if not found:
        raise WebError(404, f"job {job_id} logged no training metrics")
    metrics = _job_folder(request, job_id) / "out" / found[0]
    baseline = _uniform_baseline(metrics.parent / "model" / "config.json")
    svg = await run_in_threadpool(plots.loss_svg, metrics, baseline)
    return _headers(Response(svg, media_type="image/svg+xml"))


def _uniform_baseline(config: Path) -> float | None:
    import json
    import math

    if not config.is_file():
        return None
    vocab = int(json.loads(config.read_text()).get("model", {}).get("vocab_size", 0))
    return math.log(vocab) if vocab > 1 else None


@router.get("/projects/{project}/jobs/{job_id}/report/{path:path}")
async def report(request: Request, project: str, job_id: int, path: str) -> Response:
    arts = await _artifacts(request, project, job_id)
    if path not in arts or not path.endswith(".html"):
        raise WebError(404, f"no HTML report {path!r} in job {job_id}")
    html = (_job_folder(request, job_id) / "out" / path).read_bytes()
    r = Response(html, media_type="text/html")
    r.headers["Content-Security-Policy"] = REPORT_CSP
    return _headers(r)


# ------------------------------------------------------------------------------- models
@router.get("/projects/{project}/models")
async def models_page(request: Request, project: str) -> Response:
    proj = await _project(request, project)
    rows = _ok(await api(request, "GET", bridge.path("v1", "projects", project, "models")))
    return render(request, "models.html", project=proj, models=rows)


def _flat(d: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        out[prefix.rstrip(".")] = ", ".join(
            " ".join(f"{k}={v}" for k, v in x.items()) if isinstance(x, dict) else str(x) for x in d
        )
    else:
        out[prefix.rstrip(".")] = (
            "" if d is None else (f"{d:.4g}" if isinstance(d, float) else str(d))
        )
    return out


@router.get("/projects/{project}/models/compare")
async def compare(request: Request, project: str, a: str = "", b: str = "") -> Response:
    proj = await _project(request, project)
    rows = _ok(await api(request, "GET", bridge.path("v1", "projects", project, "models")))
    refs = [f"{m['name']}:{m['version']}" for m in rows]
    by_ref = {f"{m['name']}:{m['version']}": m for m in rows}
    for ref in (a, b):
        if ref and ref not in by_ref:
            raise WebError(404, f"no model {ref} in project {proj['name']}")
    ctx: dict[str, Any] = {"project": proj, "refs": refs, "a": a, "b": b, "table": None}
    if a and b:
        fa, fb = _flat(by_ref[a]["card"]), _flat(by_ref[b]["card"])
        keys = list(dict.fromkeys([*fa, *fb]))
        ctx["table"] = [(k, fa.get(k, "—"), fb.get(k, "—")) for k in keys]
        da = sorted(x["sha256"] for x in by_ref[a]["card"].get("training_data", []) or [])
        db_ = sorted(x["sha256"] for x in by_ref[b]["card"].get("training_data", []) or [])
        ctx["same_data"] = bool(da) and da == db_
    return render(request, "compare.html", **ctx)


@router.get("/projects/{project}/models/{name}/{version}")
async def model_page(request: Request, project: str, name: str, version: int) -> Response:
    proj = await _project(request, project)
    m = _ok(
        await api(request, "GET", bridge.path("v1", "projects", project, "models", name, version))
    )
    return render(request, "model.html", project=proj, model=m, card=_flat(m["card"]))


# -------------------------------------------------------------------------------- mount
def _load_key(data_dir: Path) -> bytes:
    path = data_dir / "web-session.key"
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    return path.read_bytes()


def mount(app: FastAPI) -> None:
    """Add the web page to a service app (``/web``, static files at ``/web/static``)."""
    app.state.web_key = _load_key(Path(app.state.settings.data_dir).resolve())
    app.include_router(router)
    app.mount("/web/static", StaticFiles(directory=str(HERE / "static")), name="web-static")

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/web/projects", status_code=303)

    async def on_web_error(request: Request, exc: Exception) -> Response:
        if _bearer(request):  # a script, not a browser: answer as the API does
            status = exc.status if isinstance(exc, WebError) else 401
            return JSONResponse({"detail": str(exc) if status != 401 else "missing, invalid, "
                                 "expired or revoked token"}, status_code=status)  # fmt: skip
        if isinstance(exc, SignInNeeded):
            return _headers(RedirectResponse(f"/web/signin?next={quote(exc.next_url, safe='')}",
                                             status_code=303))  # fmt: skip
        assert isinstance(exc, WebError)
        if request.headers.get("x-csrf-token") is not None:  # the upload script reads JSON
            return _headers(
                JSONResponse({"ok": False, "message": str(exc)}, status_code=exc.status)
            )
        return render(
            request, "error.html", status=exc.status, status_code=exc.status, message=str(exc)
        )

    app.add_exception_handler(WebError, on_web_error)
    app.add_exception_handler(SignInNeeded, on_web_error)
