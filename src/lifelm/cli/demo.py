"""``lifelm demo``: the whole cell workflow on generated data in a few minutes on a laptop."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for the run, the annotated query and report.md."),
    ] = Path("runs/demo"),
    h5ad: Annotated[
        Path | None,
        typer.Option(
            help="Use this labelled raw-count .h5ad instead of generated cells.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    label_key: Annotated[
        str, typer.Option(help="Label column for annotation and evaluation.")
    ] = "cell_type",
    preset: Annotated[str, typer.Option(help="Model size preset.")] = "tiny",
    steps: Annotated[int, typer.Option(help="Pretraining steps.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Pretrain a small cell model, embed, annotate a held-out half and compare with baselines."""
    from lifelm.demo import run_demo

    typer.echo(run_demo(out, h5ad=h5ad, label_key=label_key, preset=preset, steps=steps, seed=seed))
