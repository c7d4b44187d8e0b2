"""The queue: fair share between projects, priorities inside a project, CPU/GPU slots, the ledger.

One :class:`Scheduler` thread runs in the server. Each tick it (1) stops jobs marked
``cancelling``, (2) polls running attempts: a finished attempt is closed from its
``result.json`` (the ledger is charged once per attempt: a unique (job, attempt) row), a lost one
(worker killed, server restarted while it died) is re-queued and resumed (``--resume``) up to
``max_attempts``, and (3) starts queued jobs in fair-share order while slots are free.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections import defaultdict
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from lifelm.service import specs
from lifelm.service.db import Dataset, Job, LedgerEntry, Model, Project, utcnow
from lifelm.service.executors import Executor, ExecutorError, SlurmExecutor, write_job

log = logging.getLogger("lifelm.service.scheduler")
TERMINAL = ("succeeded", "failed", "cancelled")


def used_hours(session: Session, project_id: int) -> tuple[float, float]:
    """CPU and GPU hours charged to the project's ledger."""
    row = session.execute(
        select(
            func.coalesce(func.sum(LedgerEntry.cpu_hours), 0.0),
            func.coalesce(func.sum(LedgerEntry.gpu_hours), 0.0),
        ).where(LedgerEntry.project_id == project_id)
    ).one()
    return float(row[0]), float(row[1])


def held_hours(session: Session, project_id: int) -> tuple[float, float]:
    """Hours held by the project's queued and running jobs (cpus × max_hours)."""
    jobs = session.scalars(
        select(Job).where(Job.project_id == project_id, Job.status.in_(("queued", "running")))
    ).all()
    return (sum(j.cpus * j.max_hours for j in jobs), sum(j.gpus * j.max_hours for j in jobs))


def budget_left(session: Session, project: Project) -> dict[str, float]:
    """Budget, charged, held and left, in CPU and GPU hours."""
    cu, gu = used_hours(session, project.id)
    ch, gh = held_hours(session, project.id)
    return {
        "cpu_hours": project.cpu_hours,
        "gpu_hours": project.gpu_hours,
        "cpu_hours_used": round(cu, 6),
        "gpu_hours_used": round(gu, 6),
        "cpu_hours_held": round(ch, 6),
        "gpu_hours_held": round(gh, 6),
        "cpu_hours_left": round(project.cpu_hours - cu - ch, 6),
        "gpu_hours_left": round(project.gpu_hours - gu - gh, 6),
    }


def fair_order(session: Session) -> list[Job]:
    """Queued jobs in the order they should start.

    Projects take turns by their share of use (CPU hours charged plus CPU hours of running jobs,
    divided by their CPU budget; the least used first); inside a project, higher priority first,
    then first come first served. The order is recomputed after every start, so one project's
    long queue cannot starve another's single job.
    """
    queued = session.scalars(select(Job).where(Job.status == "queued")).all()
    if not queued:
        return []
    running = session.scalars(select(Job).where(Job.status == "running")).all()
    share: dict[int, float] = defaultdict(float)
    cpu_hours: dict[int, float] = {}
    for pid in {j.project_id for j in queued}:
        project = session.get(Project, pid)
        if project is None:  # the foreign key forbids it; a corrupt database should say so
            raise RuntimeError(f"queued job(s) of project {pid}, which does not exist")
        cpu_hours[pid] = project.cpu_hours
        cu, _ = used_hours(session, pid)
        busy = sum(j.cpus for j in running if j.project_id == pid)
        share[pid] = (cu + busy) / max(project.cpu_hours, 1e-9)
    order: list[Job] = []
    by_project: dict[int, list[Job]] = defaultdict(list)
    for j in sorted(queued, key=lambda j: (-j.priority, j.created, j.id)):
        by_project[j.project_id].append(j)
    while by_project:  # round-robin in share order: a project's next job counts it as busier
        pid = min(by_project, key=lambda p: (share[p], p))
        job = by_project[pid].pop(0)
        order.append(job)
        share[pid] += job.cpus / max(cpu_hours[pid], 1e-9)
        if not by_project[pid]:
            del by_project[pid]
    return order


class Scheduler:
    """The queue thread of one server."""

    def __init__(
        self,
        sessions: sessionmaker,
        data_dir: Path,
        executors: dict[str, Executor],
        *,
        cpu_slots: int = 2,
        gpu_slots: int = 0,
        tick: float = 0.5,
        max_attempts: int = 3,
        bench_data: Path | None = None,
    ) -> None:
        self.bench_data = str(bench_data) if bench_data else None
        self.sessions = sessions
        self.data_dir = Path(data_dir)
        self.executors = executors
        self.cpu_slots, self.gpu_slots = cpu_slots, gpu_slots
        self.tick, self.max_attempts = tick, max_attempts
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def job_dir(self, job: Job) -> Path:
        """Folder of one job (``job.json``, ``log.txt``, ``result.json``, ``out/``)."""
        return self.data_dir / "projects" / str(job.project_id) / "jobs" / str(job.id)

    # -- thread ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lifelm-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)

    def wake(self) -> None:
        """Run a tick now (after a submission or a cancel)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # keep the queue alive; the next tick retries
                log.exception("scheduler tick failed")
            self._wake.wait(self.tick)
            self._wake.clear()

    # -- one tick -------------------------------------------------------------------------
    def step(self) -> None:
        with self.sessions() as s:
            for job in s.scalars(select(Job).where(Job.status == "cancelling")).all():
                self._cancel(s, job)
            for job in s.scalars(select(Job).where(Job.status == "running")).all():
                self._poll(s, job)
            self._start_queued(s)

    def _charge(self, s: Session, job: Job, until) -> None:
        if job.started is None:
            return
        seconds = max(0.0, (until - job.started).total_seconds())
        entry = LedgerEntry(
            project_id=job.project_id,
            job_id=job.id,
            attempt=job.attempt,
            seconds=seconds,
            cpu_hours=seconds * job.cpus / 3600,
            gpu_hours=seconds * job.gpus / 3600,
        )
        s.add(entry)
        try:
            s.flush()
        except IntegrityError:  # this attempt was charged already (restart after a crash)
            s.rollback()
            s.add(job)

    def _cancel(self, s: Session, job: Job) -> None:
        if job.external_id:
            self.executors[job.executor].cancel(job.external_id)
        now = utcnow()
        self._charge(s, job, now)
        job.status, job.finished = "cancelled", now
        s.commit()

    def _poll(self, s: Session, job: Job) -> None:
        folder = self.job_dir(job)
        state = self.executors[job.executor].poll(job.external_id or "0", folder)
        now = utcnow()
        if state == "running":
            job.heartbeat = now
            job.progress = progress(job, folder)
            s.commit()
            return
        if state == "done":
            result = json.loads((folder / "result.json").read_text())
            self._charge(s, job, now)
            job.exit_code = int(result["exit_code"])
            job.finished = now
            if job.exit_code == 0:
                try:
                    finish(s, job, folder)
                    job.status, job.progress = "succeeded", 1.0
                except Exception as e:
                    job.status, job.error = "failed", f"post-processing failed: {e}"
            else:
                job.status, job.error = "failed", log_tail(folder)
            s.commit()
            return
        if state in ("cancelled", "failed"):  # ended outside the service, without a result
            self._charge(s, job, now)
            where = SlurmExecutor.state(job.external_id or "") if job.executor == "slurm" else None
            job.finished = now
            if state == "cancelled":
                job.status = "cancelled"
                job.error = (
                    f"cancelled outside the service ({job.executor} job {job.external_id} is "
                    f"{where or 'cancelled'}: scancel by someone else?)"
                )
            else:
                job.status = "failed"
                job.error = (
                    f"{job.executor} stopped job {job.external_id} ({where or 'failed'}: a time "
                    f"or memory limit; ask for more in resources); last log:\n{log_tail(folder)}"
                )
            s.commit()
            return
        # lost: the worker died without a result (killed, or the server restarted meanwhile)
        self._charge(s, job, job.heartbeat or now)
        if job.attempt >= self.max_attempts:
            job.status, job.finished = "failed", now
            job.error = f"the worker was lost {job.attempt} times; last log:\n{log_tail(folder)}"
        else:
            log.warning("job %d attempt %d lost; re-queued to resume", job.id, job.attempt)
            job.status, job.external_id = "queued", None
        s.commit()

    def _start_queued(self, s: Session) -> None:
        busy_cpu = busy_gpu = 0
        for j in s.scalars(select(Job).where(Job.status == "running", Job.executor == "local")):
            busy_cpu += j.cpus
            busy_gpu += j.gpus
        for job in fair_order(s):
            if job.executor == "local":
                if busy_cpu + job.cpus > self.cpu_slots or busy_gpu + job.gpus > self.gpu_slots:
                    continue
                busy_cpu += job.cpus
                busy_gpu += job.gpus
            self._launch(s, job)

    def _launch(self, s: Session, job: Job) -> None:
        # The API thread may cancel this job at any moment, so every status change here is a
        # compare-and-set: claim the job only while it is still queued, and mark it running only
        # while no cancel came in meanwhile (a cancel then stops the started worker next tick).
        claimed = s.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "queued")
            .values(status="running", started=utcnow(), heartbeat=utcnow(), external_id=None)
            .returning(Job.id)
        ).first()
        s.commit()
        if claimed is None:
            return
        s.refresh(job)
        spec = parse_spec(job.spec)
        datasets = {
            d.name: d.path
            for d in s.scalars(select(Dataset).where(Dataset.project_id == job.project_id))
        }
        models = {
            f"{m.name}:{m.version}": m.path
            for m in s.scalars(select(Model).where(Model.project_id == job.project_id))
        }
        attempt = job.attempt + 1
        folder = self.job_dir(job)
        keep = attempt > 1 and spec.resumes != "no"
        if attempt > 1 and not keep:  # nothing to resume: start clean
            shutil.rmtree(folder / "out", ignore_errors=True)
        # --resume only where the last attempt got as far as its manifest (else it is refused)
        resume = keep and spec.resumes == "flag" and any((folder / "out").rglob("manifest.json"))
        try:  # an input deleted, or bench data gone, since submission: fail, do not hang
            argv = specs.command(spec, datasets, models, resume=resume, bench_data=self.bench_data)
        except KeyError as e:
            s.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(status="failed", finished=utcnow(), attempt=attempt,
                        error=f"cannot build the command ({e.args[0] if e.args else e}): an input "
                              "was deleted since submission, or the server lacks --bench-data")
            )  # fmt: skip
            s.commit()
            return
        payload = {
            "id": job.id,
            "attempt": attempt,
            "argv": argv,
            "processes": getattr(spec, "processes", 1),
            "launcher": "srun" if job.executor == "slurm" else "local",
            "cpus": job.cpus,
            "gpus": job.gpus,
            "max_hours": job.max_hours,
        }
        write_job(folder, payload)
        try:
            external_id = self.executors[job.executor].start(folder, payload)
        except ExecutorError as e:
            s.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(status="failed", error=str(e), finished=utcnow(), attempt=attempt)
            )
            s.commit()
            return
        # the worker runs: record it whatever the status now is ('cancelling' is handled next tick)
        s.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(external_id=external_id, attempt=attempt, error=None, heartbeat=utcnow())
        )
        s.commit()
        s.refresh(job)


def parse_spec(raw: dict):
    """Validate a stored spec dict back into its pydantic model."""
    from pydantic import TypeAdapter

    return TypeAdapter(specs.JobSpec).validate_python(raw)


def log_tail(folder: Path, lines: int = 20) -> str:
    """The last lines of a job's log."""
    path = folder / "log.txt"
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def progress(job: Job, folder: Path) -> float | None:
    """Fraction done, where the task writes something to measure it by: a training run's
    steps (``metrics.jsonl``), or the lab loop's rounds (``<strategy>/state.json``)."""
    spec = parse_spec(job.spec)
    where = spec.progress_from
    if where is None:
        return None
    path = folder / where
    if isinstance(spec, specs.LabRun):
        done = 0
        for name in dict.fromkeys(spec.strategies):
            try:
                state = json.loads((path / name / "state.json").read_text())
                done += min(spec.rounds, int(state.get("rounds_done", 0)))
            except (OSError, ValueError, AttributeError):
                continue
        return min(1.0, done / (spec.rounds * len(dict.fromkeys(spec.strategies))))
    if not path.is_file():
        return 0.0
    step = 0
    for line in path.read_text().splitlines():
        try:
            step = max(step, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            continue
    return min(1.0, step / max(1, int(job.spec.get("steps", 1))))


def finish(s: Session, job: Job, folder: Path) -> None:
    """After a successful attempt: check the outputs exist; register a trained model or a
    built corpus store. Idempotent: a restart after the commit registers nothing twice."""
    outputs = [p for p in (folder / "out").rglob("*") if p.is_file()]
    if not outputs:
        raise FileNotFoundError(f"job {job.id} exited 0 but wrote nothing under out/")
    spec = parse_spec(job.spec)
    if isinstance(spec, specs.CellsCorpusBuild):
        _register_corpus(s, job, spec, folder)
    reg = specs.registered_model(spec)
    if reg is None:
        return
    rel, name = reg
    from lifelm.service.registry import model_card

    model_dir = folder / rel
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"job {job.id} exited 0 but wrote no model in {rel}")
    existing = s.scalars(select(Model).where(Model.job_id == job.id)).first()
    if existing is not None:  # registered already (a restart after the commit)
        return
    version = (
        s.scalar(
            select(func.max(Model.version)).where(
                Model.project_id == job.project_id, Model.name == name
            )
        )
        or 0
    ) + 1
    used = [n for n, _ in specs.input_datasets(spec)]
    inputs = {
        d.name: d.sha256
        for d in s.scalars(
            select(Dataset).where(Dataset.project_id == job.project_id, Dataset.name.in_(used))
        )
    }
    base = None
    for ref in specs.model_refs(spec):  # the model it was fine-tuned from
        mname, _, ver = ref.partition(":")
        base = ref if s.scalars(select(Model).where(
            Model.project_id == job.project_id, Model.name == mname, Model.version == int(ver)
        )).first() else None  # fmt: skip
    card = model_card(model_dir, model_dir.parent, job.spec, inputs, job.id)
    card["task"] = job.task
    if base is not None:
        card["training"]["base_model"] = base
    s.add(
        Model(
            project_id=job.project_id,
            name=name,
            version=version,
            job_id=job.id,
            path=str(model_dir),
            card=card,
        )
    )


def _register_corpus(s: Session, job: Job, spec: specs.CellsCorpusBuild, folder: Path) -> None:
    """Register a built store as dataset ``store_name`` (hard-linked into the dataset store)."""
    from lifelm.service import datasets

    name = spec.store_name
    existing = s.scalars(
        select(Dataset).where(Dataset.project_id == job.project_id, Dataset.name == name)
    ).first()
    if existing is not None:
        if existing.card.get("job") == job.id:  # registered already (a restart after the commit)
            return
        raise ValueError(f"dataset {name!r} exists in the project; the store stays in out/corpus")
    src = folder / "out" / "corpus"
    facts = datasets.corpus_facts(src)
    digest = datasets.tree_digest(src)
    store = folder.parent.parent / "datasets"
    path = datasets.place_folder(src, store, digest, link=True)
    used = [n for n, _ in specs.input_datasets(spec)]
    sources = {
        d.name: d.sha256
        for d in s.scalars(
            select(Dataset).where(Dataset.project_id == job.project_id, Dataset.name.in_(used))
        )
    }
    card = {
        "source": f"lifelm cells corpus build (job {job.id})",
        "licence": "as its sources",
        "checksum": f"sha256-tree:{digest}",
        "job": job.id,
        "sources": [{"dataset": k, "sha256": v} for k, v in sorted(sources.items())],
        **facts,
    }
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    s.add(Dataset(project_id=job.project_id, name=name, kind="corpus", sha256=digest, size=size,
                  path=str(path), card=card))  # fmt: skip
