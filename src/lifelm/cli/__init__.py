"""The ``lifelm`` command line: thin typer commands over the task functions.

Each sub-app lives in its own module (``cells``, ``genomes``) and imports the heavy layers
inside its commands, so ``lifelm --help`` stays fast. Nothing in the package imports this.
"""

from __future__ import annotations

import sys
from typing import Annotated, Protocol, runtime_checkable

import click
import typer

from lifelm import __version__
from lifelm.cli.bench import app as bench_app
from lifelm.cli.cells import app as cells_app
from lifelm.cli.demo import demo
from lifelm.cli.genomes import app as genomes_app
from lifelm.cli.lab import app as lab_app
from lifelm.cli.remote import app as remote_app
from lifelm.cli.serve import app as serve_app
from lifelm.cli.wetware import app as wetware_app

app = typer.Typer(
    name="lifelm",
    help="LifeLM: foundation models of cells and genomes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback when a command fails.")
    ] = False,
) -> None:
    """LifeLM: foundation models of cells and genomes."""
    _state["debug"] = debug


app.add_typer(cells_app, name="cells")
app.add_typer(genomes_app, name="genomes")
app.add_typer(bench_app, name="bench")
app.add_typer(serve_app, name="serve")
app.add_typer(remote_app, name="remote")
app.add_typer(wetware_app, name="wetware")
app.command("demo")(demo)
app.add_typer(lab_app, name="lab")


@app.command("version")
def version() -> None:
    """Print the LifeLM version."""
    typer.echo(__version__)


@runtime_checkable
class _UsageError(Protocol):
    """A click usage error (click's own or typer's vendored copy)."""

    exit_code: int

    def show(self) -> None: ...


def _click_classes() -> tuple[
    tuple[type[Exception], ...], tuple[type[BaseException], ...], tuple[type[BaseException], ...]
]:
    """Usage-error, abort and exit classes of click and of the click that typer vendors."""
    errors: list[type[Exception]] = [click.ClickException]
    aborts: list[type[BaseException]] = [click.exceptions.Abort, typer.Abort]
    exits: list[type[BaseException]] = [click.exceptions.Exit, typer.Exit]
    try:  # typer >= 0.20 ships its own copy of click (typer._click)
        from typer._click.exceptions import ClickException as TyperClickException

        errors.append(TyperClickException)
    except ImportError:  # pragma: no cover - older typer uses click itself
        pass
    return tuple(errors), tuple(aborts), tuple(exits)


_CLICK_ERROR, _ABORT, _EXIT = _click_classes()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.

    Errors a user can fix (:class:`lifelm._core.errors.LifeLMError` and the readers' own
    ``ValueError``/``OSError`` subclasses) print one ``error:`` line and exit with status 2;
    any other exception is an internal error (exit 1). ``--debug`` shows the traceback.
    """
    from lifelm._core.errors import LifeLMError

    args = sys.argv[1:] if argv is None else argv
    _state["debug"] = "--debug" in args
    try:
        rv = app(args=args, prog_name="lifelm", standalone_mode=False)
    except _ABORT:
        typer.echo("Aborted.", err=True)
        sys.exit(130)
    except _CLICK_ERROR as e:  # usage errors: a bad option, a missing file, a folder for a file
        if not isinstance(e, _UsageError):
            raise
        e.show()
        sys.exit(e.exit_code)
    except _EXIT as e:
        sys.exit(getattr(e, "exit_code", 0))
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        sys.exit(130)
    except (LifeLMError, ValueError, KeyError, OSError) as e:
        if _state["debug"]:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        typer.echo(f"error: {msg}", err=True)
        sys.exit(2)
    except Exception as e:
        if _state["debug"]:
            raise
        typer.echo(
            f"internal error: {type(e).__name__}: {e}\n(a bug in LifeLM; run again with --debug "
            "for the traceback and report it)",
            err=True,
        )
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
