"""The FastAPI application of ``lifelm serve``.

Routes live under ``/v1``. Everything a project holds is under ``/v1/projects/{project}/…``;
a caller who is not a member of the project gets 404 for all of it (the project's existence is
not revealed). Viewers read, members also upload and submit, owners also manage members.
"""

# No `from __future__ import annotations`: FastAPI resolves the dependency aliases defined
# inside create_app() at run time, which string annotations would hide.

import asyncio
import datetime
import functools
import inspect
import json
import logging
import re
import shutil
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, overload

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from lifelm.service import auth, datasets, specs
from lifelm.service.db import (
    Dataset,
    Job,
    LedgerEntry,
    Membership,
    Model,
    Project,
    Token,
    User,
    make_engine,
    session_factory,
    upgrade,
    utcnow,
)
from lifelm.service.executors import LocalExecutor, SlurmExecutor
from lifelm.service.scheduler import TERMINAL, Scheduler, budget_left, log_tail, parse_spec

log = logging.getLogger("lifelm.service")
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


@dataclass
class Settings:
    """Server settings (``lifelm serve`` options)."""

    data_dir: Path
    database_url: str | None = None
    max_upload_bytes: int = 2 * 1024**3
    executor: str = "local"
    cpu_slots: int = 2
    gpu_slots: int = 0
    run_scheduler: bool = True
    tick: float = 0.5
    auth_failure_limit: int = 10
    auth_failure_window: float = 60.0
    slurm_partition: str | None = None
    # the CLI's parser (lifelm.cli hands it in: the service may not import the CLI); given the
    # argv a spec builds, it raises ValueError with the CLI's message when the CLI refuses it
    argv_check: Callable[[list[str]], None] | None = None
    # the CLI's help texts and choices per option flag of a command path (for the web forms)
    cli_options: Callable[[tuple[str, ...]], dict[str, dict[str, Any]]] | None = None
    bench_data: Path | None = None  # data folder for bench.perturbation jobs
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir).resolve() / 'lifelm.db'}"


# --------------------------------------------------------------------------------- schemas
class Problem(BaseModel):
    detail: Any


ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": Problem} for c in (400, 401, 402, 403, 404, 409, 413, 422, 429)
}


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_RE)
    admin: bool = False


class UserOut(BaseModel):
    id: int
    name: str
    is_admin: bool


class NewToken(BaseModel):
    id: int
    token: str = Field(description="The secret: shown this once, store it now.")
    expires: str | None


class UserWithToken(BaseModel):
    user: UserOut
    token: NewToken


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("", max_length=64)
    days: float | None = Field(90, gt=0, le=3650)


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str
    created: str
    expires: str | None
    revoked: bool


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_RE)
    owner: str | None = Field(None, pattern=NAME_RE)
    cpu_hours: float = Field(100.0, ge=0, le=1e9)
    gpu_hours: float = Field(0.0, ge=0, le=1e9)


class ProjectOut(BaseModel):
    id: int
    name: str
    role: str
    budget: dict[str, float]


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(pattern=NAME_RE)
    role: str = Field(pattern="^(owner|member|viewer)$")


class DatasetOut(BaseModel):
    name: str
    kind: str
    sha256: str
    size: int
    card: dict[str, Any]
    created: str


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: specs.JobSpec
    priority: int = Field(0, ge=-100, le=100)
    executor: str | None = Field(None, pattern="^(local|slurm)$")


class JobOut(BaseModel):
    id: int
    task: str
    status: str
    priority: int
    executor: str
    attempt: int
    progress: float | None
    exit_code: int | None
    error: str | None
    spec: dict[str, Any]
    created: str
    started: str | None
    finished: str | None


class ArtifactOut(BaseModel):
    path: str
    size: int


class FromArtifactIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job: int = Field(ge=1, le=2**31 - 1)
    path: str = Field(min_length=1, max_length=500, description="Artifact path, as listed.")
    licence: str = Field("unknown", max_length=64)


class ModelOut(BaseModel):
    name: str
    version: int
    job_id: int | None
    card: dict[str, Any]
    created: str


class LedgerOut(BaseModel):
    budget: dict[str, float]
    entries: list[dict[str, Any]]


@overload
def _ts(x: datetime.datetime) -> str: ...


@overload
def _ts(x: datetime.datetime | None) -> str | None: ...


def _ts(x: datetime.datetime | None) -> str | None:
    return x.isoformat() + "Z" if x is not None else None


def _job_out(j: Job) -> JobOut:
    return JobOut(
        id=j.id, task=j.task, status=j.status, priority=j.priority, executor=j.executor,
        attempt=j.attempt, progress=j.progress, exit_code=j.exit_code, error=j.error,
        spec=j.spec, created=_ts(j.created), started=_ts(j.started), finished=_ts(j.finished),
    )  # fmt: skip


def _dataset_out(d: Dataset) -> DatasetOut:
    return DatasetOut(
        name=d.name, kind=d.kind, sha256=d.sha256, size=d.size, card=d.card, created=_ts(d.created)
    )


def _model_out(m: Model) -> ModelOut:
    return ModelOut(
        name=m.name, version=m.version, job_id=m.job_id, card=m.card, created=_ts(m.created)
    )


# ------------------------------------------------------------------------------------ app
# Long because FastAPI routes are closures over the app's engine and settings: one nested function per route, each short.
def create_app(settings: Settings) -> FastAPI:
    """Build the app for ``settings`` (the database is upgraded to the newest schema first)."""
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "tmp").mkdir(exist_ok=True)
    upgrade(settings.url)
    engine = make_engine(settings.url)
    sessions = session_factory(engine)
    executors = {"local": LocalExecutor(), "slurm": SlurmExecutor(settings.slurm_partition)}
    scheduler = Scheduler(
        sessions, data_dir, executors, cpu_slots=settings.cpu_slots,
        gpu_slots=settings.gpu_slots, tick=settings.tick, bench_data=settings.bench_data,
    )  # fmt: skip
    limiter = auth.FailureLimiter(settings.auth_failure_limit, settings.auth_failure_window)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if settings.run_scheduler:
            scheduler.start()
        yield
        scheduler.stop()
        engine.dispose()

    app = FastAPI(
        title="LifeLM service",
        version="1",
        lifespan=lifespan,
        description="Shared compute for LifeLM cell and genome models: projects, datasets, "
        "jobs, models. Authenticate with `Authorization: Bearer <token>`.",
    )
    app.state.settings, app.state.sessions, app.state.scheduler = settings, sessions, scheduler

    # -- dependencies -------------------------------------------------------------------
    async def db():
        # async, so the session closes on the event loop after the response: a sync teardown
        # waits for a worker thread while holding its connection, and under load every thread
        # can be waiting for a connection (the pool deadlock seen with 200 clients)
        s = sessions()
        try:
            yield s
        finally:
            s.close()

    DB = Annotated[Session, Depends(db)]

    def current_user(request: Request, s: DB) -> User:
        client = request.client.host if request.client else "?"
        wait = limiter.blocked(client)
        if wait > 0:
            raise HTTPException(
                429,
                "too many failed authentications from this address; retry later",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        user = auth.lookup(s, secret.strip()) if scheme.lower() == "bearer" and secret else None
        s.commit()  # give the connection back while the request waits for its handler
        if user is None:
            limiter.fail(client)
            raise HTTPException(
                401, "missing, invalid, expired or revoked token",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        return user

    CurrentUser = Annotated[User, Depends(current_user)]

    def admin(user: CurrentUser) -> User:
        if not user.is_admin:
            raise HTTPException(403, "only an administrator may do this")
        return user

    @dataclass
    class Access:
        user: User
        project: Project
        role: str

        def need(self, role: str) -> None:
            if not auth.role_at_least(self.role, role):
                raise HTTPException(403, f"needs the {role} role in project {self.project.name}")

    def access(project: str, user: CurrentUser, s: DB) -> Access:
        p = s.scalars(select(Project).where(Project.name == project)).first()
        m = (
            s.scalars(
                select(Membership).where(
                    Membership.project_id == p.id, Membership.user_id == user.id
                )
            ).first()
            if p is not None
            else None
        )
        s.commit()  # give the connection back while the request waits for its handler
        if p is None or (m is None and not user.is_admin):
            raise HTTPException(404, f"no project {project!r}")  # same answer: exists or not
        return Access(user, p, m.role if m else "owner")

    Acc = Annotated[Access, Depends(access)]

    def get_job(a: Access, s: Session, job_id: int) -> Job:
        j = s.get(Job, job_id)
        if j is None or j.project_id != a.project.id:
            raise HTTPException(404, f"no job {job_id} in project {a.project.name}")
        return j

    # -- users and tokens -----------------------------------------------------------------
    @app.get("/v1/health", tags=["meta"])
    def health() -> dict[str, str]:
        """Liveness (no authentication)."""
        return {"status": "ok"}

    @app.get("/v1/me", response_model=UserOut, responses=ERRORS, tags=["users"])
    def me(user: CurrentUser) -> UserOut:
        """The caller."""
        return UserOut(id=user.id, name=user.name, is_admin=user.is_admin)

    @app.post("/v1/users", response_model=UserWithToken, status_code=201, responses=ERRORS,
              tags=["users"])  # fmt: skip
    def create_user(body: UserIn, _admin: Annotated[User, Depends(admin)], s: DB) -> UserWithToken:
        """Create a user and their first token (administrators only)."""
        u = User(name=body.name, is_admin=body.admin)
        s.add(u)
        try:
            s.flush()
        except IntegrityError:
            raise HTTPException(409, f"user {body.name!r} exists") from None
        tok, secret = auth.issue(s, u, name="first")
        s.commit()
        return UserWithToken(
            user=UserOut(id=u.id, name=u.name, is_admin=u.is_admin),
            token=NewToken(id=tok.id, token=secret, expires=_ts(tok.expires)),
        )

    @app.post("/v1/tokens", response_model=NewToken, status_code=201, responses=ERRORS,
              tags=["users"])  # fmt: skip
    def create_token(body: TokenIn, user: CurrentUser, s: DB) -> NewToken:
        """A new token for the caller (the secret is shown once)."""
        tok, secret = auth.issue(s, user, name=body.name, days=body.days)
        s.commit()
        return NewToken(id=tok.id, token=secret, expires=_ts(tok.expires))

    @app.get("/v1/tokens", response_model=list[TokenOut], responses=ERRORS, tags=["users"])
    def list_tokens(user: CurrentUser, s: DB) -> list[TokenOut]:
        """The caller's tokens (never their secrets)."""
        rows = s.scalars(select(Token).where(Token.user_id == user.id)).all()
        return [
            TokenOut(id=t.id, name=t.name, prefix=t.prefix, created=_ts(t.created),
                     expires=_ts(t.expires), revoked=t.revoked)
            for t in rows
        ]  # fmt: skip

    @app.delete("/v1/tokens/{token_id}", status_code=204, responses=ERRORS, tags=["users"])
    def revoke_token(token_id: int, user: CurrentUser, s: DB) -> None:
        """Revoke one of the caller's tokens."""
        t = s.get(Token, token_id)
        if t is None or t.user_id != user.id:
            raise HTTPException(404, f"no token {token_id}")
        t.revoked = True
        s.commit()

    # -- projects -------------------------------------------------------------------------
    @app.post("/v1/projects", response_model=ProjectOut, status_code=201, responses=ERRORS,
              tags=["projects"])  # fmt: skip
    def create_project(body: ProjectIn, user: Annotated[User, Depends(admin)], s: DB) -> ProjectOut:
        """Create a project with CPU/GPU-hour budgets (administrators only)."""
        owner = user
        if body.owner:
            named = s.scalars(select(User).where(User.name == body.owner)).first()
            if named is None:
                raise HTTPException(422, f"no user {body.owner!r}")
            owner = named
        p = Project(name=body.name, cpu_hours=body.cpu_hours, gpu_hours=body.gpu_hours)
        s.add(p)
        try:
            s.flush()
        except IntegrityError:
            raise HTTPException(409, f"project {body.name!r} exists") from None
        s.add(Membership(user_id=owner.id, project_id=p.id, role="owner"))
        s.commit()
        return ProjectOut(id=p.id, name=p.name, role="owner", budget=budget_left(s, p))

    @app.get("/v1/projects", response_model=list[ProjectOut], responses=ERRORS, tags=["projects"])
    def list_projects(user: CurrentUser, s: DB) -> list[ProjectOut]:
        """The caller's projects."""
        rows = s.execute(
            select(Project, Membership.role)
            .join(Membership, Membership.project_id == Project.id)
            .where(Membership.user_id == user.id)
        ).all()
        return [ProjectOut(id=p.id, name=p.name, role=r, budget=budget_left(s, p)) for p, r in rows]

    @app.get("/v1/projects/{project}", response_model=ProjectOut, responses=ERRORS,
             tags=["projects"])  # fmt: skip
    def get_project(a: Acc, s: DB) -> ProjectOut:
        """One project, with its budget."""
        return ProjectOut(id=a.project.id, name=a.project.name, role=a.role,
                          budget=budget_left(s, a.project))  # fmt: skip

    @app.put("/v1/projects/{project}/members", response_model=dict[str, str], responses=ERRORS,
             tags=["projects"])  # fmt: skip
    def set_member(body: MemberIn, a: Acc, s: DB) -> dict[str, str]:
        """Add a member or change their role (owners)."""
        a.need("owner")
        u = s.scalars(select(User).where(User.name == body.user)).first()
        if u is None:
            raise HTTPException(422, f"no user {body.user!r}")
        m = s.scalars(
            select(Membership).where(
                Membership.project_id == a.project.id, Membership.user_id == u.id
            )
        ).first()
        if m is None:
            s.add(Membership(user_id=u.id, project_id=a.project.id, role=body.role))
        else:
            m.role = body.role
        s.commit()
        return {"user": u.name, "role": body.role}

    @app.get("/v1/projects/{project}/ledger", response_model=LedgerOut, responses=ERRORS,
             tags=["projects"])  # fmt: skip
    def ledger(a: Acc, s: DB) -> LedgerOut:
        """Budget and the accounting ledger (seconds × resources per job attempt)."""
        rows = s.scalars(
            select(LedgerEntry)
            .where(LedgerEntry.project_id == a.project.id)
            .order_by(LedgerEntry.id)
        ).all()
        entries = [
            {"job": e.job_id, "attempt": e.attempt, "seconds": e.seconds,
             "cpu_hours": e.cpu_hours, "gpu_hours": e.gpu_hours, "at": _ts(e.created)}
            for e in rows
        ]  # fmt: skip
        return LedgerOut(budget=budget_left(s, a.project), entries=entries)

    # -- datasets -------------------------------------------------------------------------
    @app.put(
        "/v1/projects/{project}/datasets/{name}",
        response_model=DatasetOut,
        status_code=201,
        responses=ERRORS,
        tags=["datasets"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def upload_dataset(
        name: str,
        request: Request,
        a: Acc,
        source: Annotated[str, Query(max_length=500)] = "",
        licence: Annotated[str, Query(max_length=64)] = "unknown",
    ) -> DatasetOut:
        """Upload a dataset (raw bytes; h5ad, FASTA plain/.gz/.xz, TSV/CSV/TXT tables, corpus-store
        .tar/.tar.gz archives). Validated by LifeLM's readers before acceptance."""
        a.need("member")
        try:
            kind, suffix = datasets.check_name(name)
        except datasets.UploadError as e:
            raise HTTPException(e.status, str(e)) from None
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            raise HTTPException(
                413, f"upload of {declared} bytes exceeds the limit of {settings.max_upload_bytes}"
            )
        tmp = data_dir / "tmp" / f"{uuid.uuid4().hex}{suffix}"
        unpacked = tmp.with_name(tmp.name + ".d")  # a corpus archive's extraction folder
        try:
            sha, size = await datasets.receive(request.stream(), tmp, settings.max_upload_bytes)
            if kind == "corpus":
                facts = await run_in_threadpool(
                    datasets.extract_corpus, tmp, unpacked, settings.max_upload_bytes * 20
                )
                tmp.unlink()
            else:
                facts = await run_in_threadpool(datasets.validate, tmp, kind, name)
        except datasets.UploadError as e:
            tmp.unlink(missing_ok=True)
            shutil.rmtree(unpacked, ignore_errors=True)
            raise HTTPException(e.status, f"{name}: {e}" if kind == "corpus" else str(e)) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            shutil.rmtree(unpacked, ignore_errors=True)
            raise
        store = data_dir / "projects" / str(a.project.id) / "datasets"

        def commit() -> Dataset:
            with sessions() as s:
                if s.scalars(
                    select(Dataset).where(Dataset.project_id == a.project.id, Dataset.name == name)
                ).first():
                    tmp.unlink(missing_ok=True)
                    shutil.rmtree(unpacked, ignore_errors=True)
                    raise HTTPException(409, f"dataset {name!r} exists in {a.project.name}")
                if kind == "corpus":
                    root = unpacked / facts.pop("root")
                    path = datasets.place_folder(root, store, sha, link=False)
                    shutil.rmtree(unpacked, ignore_errors=True)
                else:
                    path = datasets.place(tmp, store, sha, suffix)
                card = {"source": source, "licence": licence, "checksum": f"sha256:{sha}", **facts}
                d = Dataset(project_id=a.project.id, name=name, kind=kind, sha256=sha,
                            size=size, path=str(path), card=card)  # fmt: skip
                s.add(d)
                s.commit()
                return d

        return _dataset_out(await run_in_threadpool(commit))

    @app.get("/v1/projects/{project}/datasets", response_model=list[DatasetOut], responses=ERRORS,
             tags=["datasets"])  # fmt: skip
    def list_datasets(a: Acc, s: DB) -> list[DatasetOut]:
        """Datasets of the project with their cards."""
        rows = s.scalars(select(Dataset).where(Dataset.project_id == a.project.id)).all()
        return [_dataset_out(d) for d in rows]

    def _dataset(a: Access, s: Session, name: str) -> Dataset:
        d = s.scalars(
            select(Dataset).where(Dataset.project_id == a.project.id, Dataset.name == name)
        ).first()
        if d is None:
            raise HTTPException(404, f"no dataset {name!r} in project {a.project.name}")
        return d

    @app.get("/v1/projects/{project}/datasets/{name}", response_model=DatasetOut, responses=ERRORS,
             tags=["datasets"])  # fmt: skip
    def get_dataset(name: str, a: Acc, s: DB) -> DatasetOut:
        """One dataset card."""
        return _dataset_out(_dataset(a, s, name))

    @app.get("/v1/projects/{project}/datasets/{name}/content", responses=ERRORS, tags=["datasets"],
             response_class=FileResponse)  # fmt: skip
    def download_dataset(name: str, a: Acc, s: DB) -> FileResponse:
        """The dataset's bytes."""
        d = _dataset(a, s, name)
        if Path(d.path).is_dir():
            raise HTTPException(409, f"dataset {name!r} is a corpus store (a folder): no download")
        return FileResponse(d.path, filename=d.name, media_type="application/octet-stream")

    @app.post("/v1/projects/{project}/datasets/{name}/from-artifact", response_model=DatasetOut,
              status_code=201, responses=ERRORS, tags=["datasets"])  # fmt: skip
    def dataset_from_artifact(name: str, body: FromArtifactIn, a: Acc, s: DB) -> DatasetOut:
        """Keep a job's artifact as a dataset (validated like an upload): e.g. the table of a
        ``genomes.embed`` job as the ``embeddings`` of a ``genomes.lineages`` job."""
        a.need("member")
        try:
            kind, suffix = datasets.check_name(name)
        except datasets.UploadError as e:
            raise HTTPException(e.status, str(e)) from None
        if kind == "corpus":
            raise HTTPException(422, "a corpus store is registered by its cells.corpus.build job")
        out = _out_dir(a, s, body.job)
        target = (out / body.path).resolve()
        if "\x00" in body.path or not target.is_relative_to(out) or not target.is_file():
            raise HTTPException(404, f"no artifact {body.path!r} in job {body.job}")
        if s.scalars(
            select(Dataset).where(Dataset.project_id == a.project.id, Dataset.name == name)
        ).first():
            raise HTTPException(409, f"dataset {name!r} exists in {a.project.name}")
        tmp = data_dir / "tmp" / f"{uuid.uuid4().hex}{suffix}"
        try:
            shutil.copyfile(target, tmp)
            sha = datasets.sha256_file(tmp)
            facts = datasets.validate(tmp, kind, name)
        except datasets.UploadError as e:
            tmp.unlink(missing_ok=True)
            raise HTTPException(e.status, str(e)) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        size = tmp.stat().st_size
        path = datasets.place(tmp, data_dir / "projects" / str(a.project.id) / "datasets", sha,
                              suffix)  # fmt: skip
        card = {"source": f"job {body.job} artifact {body.path}", "licence": body.licence,
                "checksum": f"sha256:{sha}", **facts}  # fmt: skip
        d = Dataset(project_id=a.project.id, name=name, kind=kind, sha256=sha, size=size,
                    path=str(path), card=card)  # fmt: skip
        s.add(d)
        s.commit()
        return _dataset_out(d)

    @app.delete("/v1/projects/{project}/datasets/{name}", status_code=204, responses=ERRORS,
                tags=["datasets"])  # fmt: skip
    def delete_dataset(name: str, a: Acc, s: DB) -> None:
        """Remove a dataset record (the file stays while another record shares its content).
        Refused while a queued or running job reads it."""
        a.need("member")
        d = _dataset(a, s, name)
        active = s.scalars(
            select(Job).where(
                Job.project_id == a.project.id,
                Job.status.in_(("queued", "running", "cancelling")),
            )
        ).all()
        for j in active:
            if name in {n for n, _ in specs.input_datasets(parse_spec(j.spec))}:
                raise HTTPException(
                    409, f"dataset {name!r} is an input of job {j.id} ({j.status}); cancel it first"
                )
        path = d.path
        s.delete(d)
        s.commit()
        if not s.scalars(select(Dataset).where(Dataset.path == path)).first():
            if Path(path).is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                Path(path).unlink(missing_ok=True)

    # -- jobs -----------------------------------------------------------------------------
    @app.post("/v1/projects/{project}/jobs", response_model=JobOut, status_code=201,
              responses=ERRORS, tags=["jobs"])  # fmt: skip
    def submit(body: JobIn, a: Acc, s: DB) -> JobOut:
        """Submit a job: the spec is checked (inputs exist, kinds match, budget left)."""
        a.need("member")
        spec = body.spec
        stored: dict[str, str] = {}
        seen: set[str] = set()
        for dname, kinds in specs.input_datasets(spec):
            d = s.scalars(
                select(Dataset).where(Dataset.project_id == a.project.id, Dataset.name == dname)
            ).first()
            if d is None:
                raise HTTPException(422, f"spec names dataset {dname!r}, not in {a.project.name}")
            if d.kind not in kinds:
                raise HTTPException(
                    422, f"{spec.task} needs {' or '.join(kinds)} data there; {dname!r} is {d.kind}"
                )
            stored[dname] = d.path
            seen.add(d.kind)
        if (
            isinstance(spec, specs.CellsCorpusBuild)
            and s.scalars(
                select(Dataset).where(
                    Dataset.project_id == a.project.id, Dataset.name == spec.store_name
                )
            ).first()
        ):
            raise HTTPException(422, f"dataset {spec.store_name!r} exists in {a.project.name}")
        if isinstance(spec, specs.CellsPretrain) and "corpus" in seen and len(spec.datasets) > 1:
            raise HTTPException(
                422, "cells.pretrain reads one corpus store or h5ad files, not both"
            )
        folders: dict[str, str] = {}
        for ref in specs.model_refs(spec):
            mname, _, ver = ref.partition(":")
            m = s.scalars(
                select(Model).where(
                    Model.project_id == a.project.id, Model.name == mname, Model.version == int(ver)
                )
            ).first()
            if m is None:
                raise HTTPException(
                    422, f"spec names model {ref!r}, not registered in {a.project.name}"
                )
            folders[ref] = m.path
        try:
            argv = specs.command(
                spec,
                stored,
                folders,
                resume=False,
                bench_data=str(settings.bench_data) if settings.bench_data else None,
            )
        except KeyError as e:
            raise HTTPException(422, str(e.args[0] if e.args else e)) from None
        if settings.argv_check is not None:
            try:
                settings.argv_check(argv)
            except ValueError as e:
                raise HTTPException(422, f"lifelm {spec.task.replace('.', ' ')}: {e}") from None
        res = spec.resources
        if (
            res.gpus > 0
            and settings.gpu_slots == 0
            and (body.executor or settings.executor) == "local"
        ):
            raise HTTPException(
                422, "this server's local executor has no GPU slots; ask for gpus=0"
            )
        left = budget_left(s, a.project)
        need_cpu, need_gpu = res.cpus * res.max_hours, res.gpus * res.max_hours
        if need_cpu > left["cpu_hours_left"] + 1e-9 or need_gpu > left["gpu_hours_left"] + 1e-9:
            raise HTTPException(
                402,
                {
                    "message": f"over budget: the job holds {need_cpu:g} CPU h and {need_gpu:g} GPU h "
                    f"(cpus/gpus × max_hours); project {a.project.name} has "
                    f"{left['cpu_hours_left']:g} CPU h and {left['gpu_hours_left']:g} GPU h left",
                    **left,
                },
            )
        j = Job(
            project_id=a.project.id, user_id=a.user.id, task=spec.task,
            spec=spec.model_dump(mode="json"), priority=body.priority,
            executor=body.executor or settings.executor, cpus=res.cpus, gpus=res.gpus,
            max_hours=res.max_hours,
        )  # fmt: skip
        s.add(j)
        s.commit()
        scheduler.wake()
        return _job_out(j)

    @app.get("/v1/projects/{project}/jobs", response_model=list[JobOut], responses=ERRORS,
             tags=["jobs"])  # fmt: skip
    def list_jobs(
        a: Acc, s: DB, status: Annotated[str | None, Query(pattern="^[a-z]+$")] = None
    ) -> list[JobOut]:
        """The project's jobs, newest first."""
        q = select(Job).where(Job.project_id == a.project.id)
        if status:
            q = q.where(Job.status == status)
        return [_job_out(j) for j in s.scalars(q.order_by(Job.id.desc())).all()]

    @app.get("/v1/projects/{project}/jobs/{job_id}", response_model=JobOut, responses=ERRORS,
             tags=["jobs"])  # fmt: skip
    def get_job_route(job_id: int, a: Acc, s: DB) -> JobOut:
        """One job."""
        return _job_out(get_job(a, s, job_id))

    @app.post("/v1/projects/{project}/jobs/{job_id}/cancel", response_model=JobOut,
              responses=ERRORS, tags=["jobs"])  # fmt: skip
    def cancel(job_id: int, a: Acc, s: DB) -> JobOut:
        """Cancel a queued or running job."""
        a.need("member")
        j = get_job(a, s, job_id)
        # compare-and-set against the scheduler thread, which may launch or finish the job
        # between our read and our write: a queued job is cancelled only if still queued, a
        # running one is marked for the scheduler to stop only if still running
        for frm, to in (("queued", "cancelled"), ("running", "cancelling")):
            values: dict[str, Any] = {"status": to}
            if to == "cancelled":
                values["finished"] = utcnow()
            done = s.execute(
                update(Job)
                .where(Job.id == j.id, Job.status == frm)
                .values(**values)
                .returning(Job.id)
            ).first()
            s.commit()
            if done is not None:
                break
        s.refresh(j)
        if j.status not in ("cancelled", "cancelling"):
            raise HTTPException(409, f"job {job_id} is {j.status}; nothing to cancel")
        scheduler.wake()
        return _job_out(j)

    @app.post("/v1/projects/{project}/jobs/{job_id}/retry", response_model=JobOut,
              responses=ERRORS, tags=["jobs"])  # fmt: skip
    def retry(job_id: int, a: Acc, s: DB) -> JobOut:
        """Queue a failed or cancelled job again (a new attempt; training resumes)."""
        a.need("member")
        j = get_job(a, s, job_id)
        if j.status not in ("failed", "cancelled"):
            raise HTTPException(
                409, f"job {job_id} is {j.status}; only failed or cancelled jobs retry"
            )
        j.status, j.error, j.exit_code, j.finished, j.external_id = "queued", None, None, None, None
        s.commit()
        scheduler.wake()
        return _job_out(j)

    @app.get("/v1/projects/{project}/jobs/{job_id}/logs", response_class=PlainTextResponse,
             responses=ERRORS, tags=["jobs"])  # fmt: skip
    def logs(
        job_id: int, a: Acc, s: DB, tail: Annotated[int, Query(ge=1, le=100000)] = 1000
    ) -> str:
        """The job's log (all attempts), last ``tail`` lines."""
        j = get_job(a, s, job_id)
        return log_tail(scheduler.job_dir(j), tail)

    @app.get("/v1/projects/{project}/jobs/{job_id}/events", responses=ERRORS, tags=["jobs"],
             response_class=StreamingResponse)  # fmt: skip
    async def events(job_id: int, a: Acc) -> StreamingResponse:
        """Server-sent events: ``status`` (status, progress, attempt) and ``log`` lines, until
        the job ends."""

        def snapshot() -> tuple[dict[str, Any], Path]:
            with sessions() as s:
                j = get_job(a, s, job_id)
                return (
                    {"status": j.status, "progress": j.progress, "attempt": j.attempt,
                     "exit_code": j.exit_code},
                    scheduler.job_dir(j),
                )  # fmt: skip

        first, folder = await run_in_threadpool(snapshot)

        async def stream():
            last: dict[str, Any] | None = None
            pos = 0
            state = first
            while True:
                path = folder / "log.txt"
                if path.is_file():
                    with open(path, "rb") as fh:
                        fh.seek(pos)
                        chunk = fh.read()
                    cut = chunk.rfind(b"\n") + 1
                    for line in chunk[:cut].decode(errors="replace").splitlines():
                        yield f"event: log\ndata: {json.dumps(line)}\n\n"
                    pos += cut
                if state != last:
                    yield f"event: status\ndata: {json.dumps(state)}\n\n"
                    last = state
                if state["status"] in TERMINAL:
                    return
                await asyncio.sleep(0.5)
                state = (await run_in_threadpool(snapshot))[0]

        return StreamingResponse(stream(), media_type="text/event-stream")

    def _out_dir(a: Access, s: Session, job_id: int) -> Path:
        return (scheduler.job_dir(get_job(a, s, job_id)) / "out").resolve()

    @app.get("/v1/projects/{project}/jobs/{job_id}/artifacts", response_model=list[ArtifactOut],
             responses=ERRORS, tags=["jobs"])  # fmt: skip
    def artifacts(job_id: int, a: Acc, s: DB) -> list[ArtifactOut]:
        """Files the job wrote under its ``out/`` folder."""
        out = _out_dir(a, s, job_id)
        files = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
        return [ArtifactOut(path=str(p.relative_to(out)), size=p.stat().st_size) for p in files]

    @app.get("/v1/projects/{project}/jobs/{job_id}/artifacts/{path:path}", responses=ERRORS,
             tags=["jobs"], response_class=FileResponse)  # fmt: skip
    def artifact(job_id: int, path: str, a: Acc, s: DB) -> FileResponse:
        """One artifact; paths leaving the job's ``out/`` folder are refused."""
        out = _out_dir(a, s, job_id)
        target = (out / path).resolve()
        if not target.is_relative_to(out) or "\x00" in path:
            raise HTTPException(404, f"no artifact {path!r} in job {job_id}")
        if not target.is_file():
            raise HTTPException(404, f"no artifact {path!r} in job {job_id}")
        return FileResponse(target, filename=target.name, media_type="application/octet-stream")

    # -- models ---------------------------------------------------------------------------
    @app.get("/v1/projects/{project}/models", response_model=list[ModelOut], responses=ERRORS,
             tags=["models"])  # fmt: skip
    def list_models(a: Acc, s: DB) -> list[ModelOut]:
        """Registered models with their cards."""
        rows = s.scalars(
            select(Model)
            .where(Model.project_id == a.project.id)
            .order_by(Model.name, Model.version)
        ).all()
        return [_model_out(m) for m in rows]

    @app.get("/v1/projects/{project}/models/{name}/{version}", response_model=ModelOut,
             responses=ERRORS, tags=["models"])  # fmt: skip
    def get_model(name: str, version: int, a: Acc, s: DB) -> ModelOut:
        """One registered model's card."""
        m = s.scalars(
            select(Model).where(
                Model.project_id == a.project.id, Model.name == name, Model.version == version
            )
        ).first()
        if m is None:
            raise HTTPException(404, f"no model {name}:{version} in project {a.project.name}")
        return _model_out(m)

    for route in app.routes:  # see _releasing
        if isinstance(route, APIRoute) and not inspect.iscoroutinefunction(route.dependant.call):
            route.dependant.call = _releasing(route.dependant.call)

    @app.exception_handler(IntegrityError)
    async def _conflict(_request: Request, exc: IntegrityError) -> JSONResponse:
        return JSONResponse({"detail": "conflict with an existing object"}, status_code=409)

    from lifelm.service.web import mount as mount_web  # the web page under /web (docs/web.md)

    mount_web(app)
    return app


def _releasing(fn):
    """Close the request's session as soon as a sync handler returns.

    FastAPI validates a sync handler's response in a worker thread after the handler, and
    closes yield-dependencies after the response: a request would hold its database connection
    while it waits for a thread, and with many clients every thread ends up waiting for a
    connection held by a request that waits for a thread (seen with 200 clients on PostgreSQL).
    Returned objects stay readable (sessions do not expire them).
    """

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            for value in kwargs.values():
                if isinstance(value, Session):
                    value.close()

    return call


def register_model_folder(
    settings: Settings, project: str, name: str, folder: Path, *, licence: str, intended_use: str
) -> tuple[str, int]:
    """Copy a checkpoint folder into the registry as ``name:<next version>`` (admin CLI)."""
    from lifelm.service.registry import model_card

    if not re.match(NAME_RE, name):
        raise ValueError(f"model name {name!r}: letters, digits, '.', '_' and '-' only")
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a checkpoint folder (model.safetensors + config.json)")
    upgrade(settings.url)
    engine = make_engine(settings.url)
    try:
        with session_factory(engine)() as s:
            p = s.scalars(select(Project).where(Project.name == project)).first()
            if p is None:
                raise ValueError(f"no project {project!r}")
            from sqlalchemy import func

            version = (
                s.scalar(
                    select(func.max(Model.version)).where(
                        Model.project_id == p.id, Model.name == name
                    )
                )
                or 0
            ) + 1
            dest = (
                Path(settings.data_dir).resolve()
                / "projects"
                / str(p.id)
                / "models"
                / name
                / str(version)
            )
            shutil.copytree(folder, dest)
            card = model_card(dest, dest, {"licence": licence, "intended_use": intended_use}, {}, 0)
            card["training"] = {"imported_from": str(folder)}
            s.add(Model(project_id=p.id, name=name, version=version, path=str(dest), card=card))
            s.commit()
            return name, version
    finally:
        engine.dispose()
