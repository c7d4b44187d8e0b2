"""Executors behind one interface: ``local`` (worker subprocesses) and ``slurm`` (sbatch).

Both start the same runner (:mod:`lifelm.service.runner`) in the job folder, so a spec gives the
same artifacts on either. :meth:`Executor.poll` answers ``running``, ``done`` (``result.json``
written), ``lost`` (the worker is gone without a result: killed, node lost; re-queued),
``cancelled`` (SLURM says someone cancelled it outside the service) or ``failed`` (SLURM stopped
it at a limit: time, memory).
State is read from the process table (local) or ``scontrol show job -o`` (SLURM; ``sacct`` needs
accounting, which a plain cluster may not run), so a restarted server re-attaches to what is
still running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Literal

State = Literal["running", "done", "lost", "cancelled", "failed"]
SLURM_ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "RESIZING",
}
# ended without the runner's result.json: cancelled by someone (scancel outside the service), or
# stopped by a limit (time, memory: running it again would end the same way); anything else
# (NODE_FAIL, PREEMPTED, BOOT_FAIL, forgotten by SLURM) is a lost attempt, re-queued
SLURM_CANCELLED = {"CANCELLED"}
SLURM_FAILED = {"TIMEOUT", "OUT_OF_MEMORY", "DEADLINE", "FAILED"}


class ExecutorError(RuntimeError):
    """The executor could not start or query a job."""


class Executor:
    """Starts, polls and cancels job attempts."""

    name = "base"

    def start(self, job_dir: Path, job: dict) -> str:  # pragma: no cover - interface
        """Start the attempt in ``job_dir``; return an id that :meth:`poll` understands."""
        raise NotImplementedError

    def poll(self, external_id: str, job_dir: Path) -> State:  # pragma: no cover - interface
        """State of the attempt."""
        raise NotImplementedError

    def cancel(self, external_id: str) -> None:  # pragma: no cover - interface
        """Stop the attempt (no error when it already ended)."""
        raise NotImplementedError


def write_job(job_dir: Path, job: dict) -> None:
    """Write ``job.json`` for the runner and remove the previous attempt's result."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "out").mkdir(exist_ok=True)
    (job_dir / "result.json").unlink(missing_ok=True)
    tmp = job_dir / "job.json.tmp"
    tmp.write_text(json.dumps(job))
    os.replace(tmp, job_dir / "job.json")


def _start_time(pid: int) -> str | None:
    """The kernel start time of ``pid`` (None when it is gone or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


class LocalExecutor(Executor):
    """Worker subprocesses on this machine, each in its own process group."""

    name = "local"

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen] = {}

    def start(self, job_dir: Path, job: dict) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lifelm.service.runner", str(job_dir)],
            cwd=job_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._procs[proc.pid] = proc
        return f"{proc.pid}:{_start_time(proc.pid) or ''}"

    def _alive(self, external_id: str) -> bool:
        pid_s, _, started = external_id.partition(":")
        pid = int(pid_s)
        proc = self._procs.get(pid)
        if proc is not None:
            if proc.poll() is None:
                return True
            del self._procs[pid]
            return False
        now = _start_time(pid)  # after a restart: the same process, not a reused pid
        return now is not None and (not started or now == started)

    def poll(self, external_id: str, job_dir: Path) -> State:
        if self._alive(external_id):
            return "running"
        return "done" if (job_dir / "result.json").is_file() else "lost"

    def cancel(self, external_id: str) -> None:
        if not self._alive(external_id):
            return
        pid = int(external_id.partition(":")[0])
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        proc = self._procs.get(pid)
        if proc is not None:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(pid, signal.SIGKILL)
                proc.wait()
            self._procs.pop(pid, None)


def slurm_available() -> bool:
    """Whether ``sbatch`` and ``scontrol`` are on PATH."""
    return shutil.which("sbatch") is not None and shutil.which("scontrol") is not None


class SlurmExecutor(Executor):
    """``sbatch`` with the job's resources; state from ``scontrol``; cancel with ``scancel``."""

    name = "slurm"

    def __init__(self, partition: str | None = None) -> None:
        self.partition = partition

    def start(self, job_dir: Path, job: dict) -> str:
        if not slurm_available():
            raise ExecutorError("sbatch/scontrol not found: this server cannot reach SLURM")
        n = int(job.get("processes", 1))
        minutes = max(1, round(float(job["max_hours"]) * 60))
        lines = [
            "#!/bin/bash",
            f"#SBATCH --job-name=lifelm-{job['id']}",
            f"#SBATCH --cpus-per-task={max(int(job['cpus']), n)}",
            "#SBATCH --ntasks=1",
            f"#SBATCH --time={minutes}",
            f"#SBATCH --output={job_dir}/slurm-%j.out",
            f"#SBATCH --chdir={job_dir}",
        ]
        if int(job["gpus"]):
            lines.append(f"#SBATCH --gres=gpu:{int(job['gpus'])}")
        if self.partition:
            lines.append(f"#SBATCH --partition={self.partition}")
        lines.append(f"exec {sys.executable} -m lifelm.service.runner {job_dir}")
        script = job_dir / "job.sbatch"
        script.write_text("\n".join(lines) + "\n")
        res = subprocess.run(
            ["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=60
        )
        if res.returncode != 0:
            raise ExecutorError(f"sbatch failed: {res.stderr.strip()}")
        return res.stdout.strip().split(";")[0]

    @staticmethod
    def state(external_id: str) -> str | None:
        """``JobState`` from ``scontrol show job -o`` (None once SLURM forgot the job)."""
        res = subprocess.run(
            ["scontrol", "show", "job", "-o", external_id],
            capture_output=True,
            text=True,
            timeout=60,
        )
        m = re.search(r"\bJobState=(\S+)", res.stdout)
        return m.group(1) if res.returncode == 0 and m else None

    def poll(self, external_id: str, job_dir: Path) -> State:
        state = self.state(external_id)
        if state in SLURM_ACTIVE:
            return "running"
        if (job_dir / "result.json").is_file():
            return "done"
        if state in SLURM_CANCELLED:
            return "cancelled"
        if state in SLURM_FAILED:
            return "failed"
        return "lost"

    def cancel(self, external_id: str) -> None:
        subprocess.run(["scancel", external_id], capture_output=True, timeout=60)
