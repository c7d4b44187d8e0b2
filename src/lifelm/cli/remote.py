"""``lifelm remote …``: talk to a LifeLM server through :class:`lifelm.client.Client`.

The server and token come from ``--url``/``--token`` or ``LIFELM_URL``/``LIFELM_TOKEN``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Use a LifeLM server: upload, submit, wait, fetch.", no_args_is_help=True)
URL = Annotated[str, typer.Option("--url", envvar="LIFELM_URL", help="Server URL.")]
TOKEN = Annotated[str, typer.Option("--token", envvar="LIFELM_TOKEN", help="API token.")]
PROJECT = Annotated[str, typer.Option("--project", "-p", envvar="LIFELM_PROJECT", help="Project.")]


def _client(url: str, token: str):
    from lifelm.client import Client

    return Client(url, token)


@app.command("project-create")
def project_create(
    name: str, url: URL, token: TOKEN,
    owner: Annotated[str | None, typer.Option(help="Owner user name.")] = None,
    cpu_hours: Annotated[float, typer.Option(help="CPU-hour budget.")] = 100.0,
    gpu_hours: Annotated[float, typer.Option(help="GPU-hour budget.")] = 0.0,
) -> None:  # fmt: skip
    """Create a project (administrators)."""
    typer.echo(json.dumps(_client(url, token).create_project(
        name, owner=owner, cpu_hours=cpu_hours, gpu_hours=gpu_hours)))  # fmt: skip


@app.command("user-create")
def user_create(name: str, url: URL, token: TOKEN) -> None:
    """Create a user and print their first token (administrators)."""
    typer.echo(_client(url, token).create_user(name)["token"]["token"])


@app.command("member")
def member(user: str, url: URL, token: TOKEN, project: PROJECT,
           role: Annotated[str, typer.Option(help="owner, member or viewer.")] = "member") -> None:  # fmt: skip
    """Add USER to the project with a role (owners)."""
    typer.echo(json.dumps(_client(url, token).add_member(project, user, role)))


@app.command("upload")
def upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    url: URL, token: TOKEN, project: PROJECT,
    name: Annotated[str | None, typer.Option(help="Dataset name (default: the file name).")] = None,
    source: Annotated[str, typer.Option(help="Where the data comes from.")] = "",
    licence: Annotated[str, typer.Option(help="Data licence.")] = "unknown",
) -> None:  # fmt: skip
    """Upload a dataset (h5ad, FASTA, TSV/CSV/TXT table, corpus-store .tar/.tar.gz); prints its card."""
    card = _client(url, token).upload(
        project, name or path.name, path, source=source, licence=licence
    )
    typer.echo(json.dumps(card, indent=1))


@app.command("submit")
def submit(
    spec: Annotated[str, typer.Argument(help="Job spec as JSON, or @file.json.")],
    url: URL, token: TOKEN, project: PROJECT,
    priority: Annotated[int, typer.Option(help="Higher runs first within the project.")] = 0,
    wait: Annotated[bool, typer.Option("--wait", help="Wait with a progress bar.")] = False,
) -> None:  # fmt: skip
    """Submit a job; prints its id (and its final state with --wait)."""
    text = Path(spec[1:]).read_text() if spec.startswith("@") else spec
    c = _client(url, token)
    job = c.submit(project, json.loads(text), priority=priority)
    typer.echo(job["id"])
    if wait:
        job = c.wait(project, job["id"], progress=True)
        typer.echo(json.dumps({k: job[k] for k in ("id", "status", "exit_code", "error")}))
        if job["status"] != "succeeded":
            raise typer.Exit(1)


@app.command("status")
def status(job_id: int, url: URL, token: TOKEN, project: PROJECT) -> None:
    """Show one job."""
    typer.echo(json.dumps(_client(url, token).job(project, job_id), indent=1))


@app.command("logs")
def logs(job_id: int, url: URL, token: TOKEN, project: PROJECT) -> None:
    """Print a job's log."""
    typer.echo(_client(url, token).logs(project, job_id))


@app.command("cancel")
def cancel(job_id: int, url: URL, token: TOKEN, project: PROJECT) -> None:
    """Cancel a job."""
    typer.echo(_client(url, token).cancel(project, job_id)["status"])


@app.command("fetch")
def fetch(
    job_id: int, url: URL, token: TOKEN, project: PROJECT,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the artifacts.")] = Path(),
) -> None:  # fmt: skip
    """Download a job's artifacts into --out."""
    for p in _client(url, token).fetch(project, job_id, out):
        typer.echo(str(p))


@app.command("datasets")
def datasets(url: URL, token: TOKEN, project: PROJECT) -> None:
    """List the project's datasets with their cards (JSON)."""
    typer.echo(json.dumps(_client(url, token).datasets(project), indent=1))


@app.command("models")
def models(url: URL, token: TOKEN, project: PROJECT) -> None:
    """List the project's registered models with their cards (JSON)."""
    typer.echo(json.dumps(_client(url, token).models(project), indent=1))
