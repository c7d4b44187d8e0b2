"""The worker: ``python -m lifelm.service.runner JOB_DIR`` runs one job attempt.

It reads ``JOB_DIR/job.json`` (the ``lifelm`` arguments and the launcher), runs the command in
``JOB_DIR`` with its output appended to ``JOB_DIR/log.txt``, and writes ``JOB_DIR/result.json``
(exit code, attempt, times) atomically at the end. The same runner runs under the local executor
and inside a SLURM allocation, so both give the same artifacts; ``result.json`` is what tells a
finished attempt from one that was killed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def build_command(job: dict) -> list[str]:
    """The process to start for ``job`` (``lifelm`` directly, or torchrun for N processes)."""
    argv = [sys.executable, "-m", "lifelm", *job["argv"]]
    n = int(job.get("processes", 1))
    if n > 1:
        run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        argv = [*run, f"--nproc_per_node={n}", "-m", "lifelm", *job["argv"]]
        if job.get("launcher") == "srun":
            argv = ["srun", "--ntasks=1", f"--cpus-per-task={n}", *argv]
    return argv


def main(job_dir: str) -> int:
    """Run the attempt described in ``job_dir/job.json``; return its exit code."""
    folder = Path(job_dir)
    job = json.loads((folder / "job.json").read_text())
    started = time.time()
    with open(folder / "log.txt", "ab") as log:
        log.write(f"--- attempt {job['attempt']}: lifelm {' '.join(job['argv'])}\n".encode())
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LIFELM_JOB_ID": str(job["id"])}
        rc = subprocess.call(
            build_command(job), cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.write(f"--- exit code {rc}\n".encode())
    tmp = folder / "result.json.tmp"
    tmp.write_text(
        json.dumps(
            {
                "exit_code": rc,
                "attempt": job["attempt"],
                "started": started,
                "finished": time.time(),
            }
        )
    )
    os.replace(tmp, folder / "result.json")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
