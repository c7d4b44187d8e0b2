"""``lifelm serve``: run the job service; ``db upgrade``; ``admin`` bootstrap commands."""

from __future__ import annotations

import functools
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from lifelm.service.app import Settings

app = typer.Typer(
    help="The job service for a lab's shared machine or SLURM cluster (see docs/service.md).",
    invoke_without_command=True,
)
admin_app = typer.Typer(help="Administration on the server machine (no HTTP, no password).")
db_app = typer.Typer(help="Database schema.")
app.add_typer(admin_app, name="admin")
app.add_typer(db_app, name="db")


class ExecutorName(StrEnum):
    """Where jobs run by default."""

    local = "local"
    slurm = "slurm"


DATA_DIR = Annotated[
    Path, typer.Option("--data-dir", help="Folder for the database (SQLite), datasets and jobs.")
]
DB_URL = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="LIFELM_DATABASE_URL",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in --data-dir).",
    ),
]


def _settings(data_dir: Path, database_url: str | None) -> Settings:
    from lifelm.service.app import Settings

    return Settings(data_dir=data_dir, database_url=database_url)


@app.callback()
def serve(
    ctx: typer.Context,
    data_dir: DATA_DIR = Path("lifelm-service"),
    database_url: DB_URL = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8765,
    executor: Annotated[
        ExecutorName, typer.Option(help="Default executor: local (worker processes) or slurm.")
    ] = ExecutorName.local,
    cpu_slots: Annotated[int, typer.Option(min=1, help="CPUs the local executor hands out.")] = 2,
    gpu_slots: Annotated[int, typer.Option(min=0, help="GPUs the local executor hands out.")] = 0,
    max_upload_gb: Annotated[float, typer.Option(help="Largest accepted upload (GB).")] = 2.0,
    bench_data: Annotated[
        Path | None,
        typer.Option(
            help="Data folder for bench.perturbation jobs (holds singlecell/perturbation and "
            "singlecell/kang2018); without it such jobs are refused.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Start the server (or run a sub-command)."""
    ctx.obj = {"data_dir": data_dir, "database_url": database_url}
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from lifelm.service.app import Settings, create_app

    settings = Settings(
        data_dir=data_dir, database_url=database_url, executor=executor.value,
        cpu_slots=cpu_slots, gpu_slots=gpu_slots, max_upload_bytes=int(max_upload_gb * 1024**3),
        argv_check=check_argv, cli_options=describe_options, bench_data=bench_data,
    )  # fmt: skip
    check_argv(["version"])  # build the CLI's parser now, not in the first submission
    # keep-alive above uvicorn's 5 s: a client reusing a connection the server is closing at
    # that moment sees "server disconnected" (seen under load with 200 clients)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", timeout_keep_alive=30)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Bring the database to the newest schema (also done at every start)."""
    from lifelm.service.db import upgrade

    s = _settings(ctx.obj["data_dir"], ctx.obj["database_url"])
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    upgrade(s.url)
    typer.echo("database at the newest schema")


@admin_app.command("create-user")
def create_user(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name.")],
    admin: Annotated[bool, typer.Option("--admin", help="Make an administrator.")] = False,
    days: Annotated[float, typer.Option(help="Token lifetime in days.")] = 90.0,
) -> None:
    """Create a user and print their first API token (shown once; no password exists)."""
    from lifelm.service import auth
    from lifelm.service.db import User, make_engine, session_factory, upgrade

    s_ = _settings(ctx.obj["data_dir"], ctx.obj["database_url"])
    Path(s_.data_dir).mkdir(parents=True, exist_ok=True)
    upgrade(s_.url)
    engine = make_engine(s_.url)
    with session_factory(engine)() as s:
        from sqlalchemy import select

        if s.scalars(select(User).where(User.name == name)).first():
            raise ValueError(f"user {name!r} exists")
        u = User(name=name, is_admin=admin)
        s.add(u)
        s.flush()
        _, secret = auth.issue(s, u, name="cli", days=days)
        s.commit()
    engine.dispose()
    typer.echo(secret)


@admin_app.command("import-model")
def import_model(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="Project name.")],
    name: Annotated[str, typer.Argument(help="Model name (the version is assigned).")],
    folder: Annotated[
        Path, typer.Argument(help="Checkpoint folder.", exists=True, file_okay=False)
    ],
    licence: Annotated[str, typer.Option(help="Licence of the weights.")] = "unknown",
    intended_use: Annotated[str, typer.Option(help="Intended use.")] = "research",
) -> None:
    """Register an existing checkpoint folder as NAME:<next version> in PROJECT."""
    from lifelm.service.app import register_model_folder

    s = _settings(ctx.obj["data_dir"], ctx.obj["database_url"])
    n, v = register_model_folder(
        s, project, name, folder, licence=licence, intended_use=intended_use
    )
    typer.echo(f"{n}:{v}")


def check_argv(argv: list[str]) -> None:
    """Parse ``lifelm ARGV`` with the real CLI, as a user's shell would, without running it.

    The server calls this on the command a job spec builds before it accepts the job, so a spec
    is held to the CLI's own option rules (choices, ranges, existing input files).

    Raises
    ------
    ValueError
        With the CLI's own message when the CLI would refuse the command.
    """
    import typer

    from lifelm.cli import _CLICK_ERROR
    from lifelm.cli import app as root

    cmd = _root_command(root, typer)
    try:
        ctx = cmd.make_context("lifelm", list(argv))
        while True:
            rest = [*getattr(ctx, "_protected_args", []), *getattr(ctx, "protected_args", []),
                    *ctx.args]  # fmt: skip
            group = ctx.command
            if not hasattr(group, "resolve_command"):
                if rest:
                    raise ValueError(f"unexpected arguments: {' '.join(rest)}")
                return
            name, sub, args = group.resolve_command(ctx, rest)
            if sub is None or name is None:
                raise ValueError(f"no command {' '.join(rest[:1])!r}")
            ctx = sub.make_context(name, args, parent=ctx)
    except _CLICK_ERROR as e:
        raise ValueError(getattr(e, "format_message", e.__str__)()) from None


def describe_options(path: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Help text and choices of every option of ``lifelm PATH…``, keyed by each of its flags.

    The web page's launch forms show these next to the job spec's fields, so a form says what
    ``lifelm … --help`` says. Unknown paths give an empty mapping.
    """
    import typer

    from lifelm.cli import app as root

    cmd = _root_command(root, typer)
    ctx = cmd.context_class(cmd, info_name="lifelm")
    for name in path:
        if not hasattr(cmd, "get_command"):
            return {}
        cmd = cmd.get_command(ctx, name)
        if cmd is None:
            return {}
    out: dict[str, dict[str, Any]] = {}
    for param in getattr(cmd, "params", []):
        if getattr(param, "param_type_name", "") != "option":  # typer vendors its own click
            continue
        kind = getattr(param, "type_descriptor", None) or getattr(param, "type", None)
        choices = tuple(str(getattr(c, "value", c)) for c in getattr(kind, "choices", None) or ())
        info = {"help": " ".join((param.help or "").split()), "choices": choices}
        for flag in [*param.opts, *param.secondary_opts]:
            if flag.startswith("--"):
                out[flag] = info
    return out


@functools.cache
def _root_command(root: typer.Typer, typer_module: Any) -> Any:
    """The click command tree of the ``lifelm`` app (built once)."""
    return typer_module.main.get_command(root)
