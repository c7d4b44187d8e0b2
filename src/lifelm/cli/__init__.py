"""The ``lifelm`` command line: thin typer commands over the task functions.

Each sub-app lives in its own module (``cells``, ``genomes``) and imports the heavy layers
inside its commands, so ``lifelm --help`` stays fast. Nothing in the package imports this.
"""

from __future__ import annotations

import typer

from lifelm import __version__
from lifelm.cli.bench import app as bench_app
from lifelm.cli.cells import app as cells_app
from lifelm.cli.demo import demo
from lifelm.cli.genomes import app as genomes_app

app = typer.Typer(
    name="lifelm",
    help="LifeLM: foundation models of cells and genomes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(cells_app, name="cells")
app.add_typer(genomes_app, name="genomes")
app.add_typer(bench_app, name="bench")
app.command("demo")(demo)


@app.command("version")
def version() -> None:
    """Print the LifeLM version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
