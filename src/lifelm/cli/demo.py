"""``lifelm demo``: the whole cell workflow on real PBMCs (or generated cells) in a few CPU minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Folder for the run, the annotated query, report.html and report.md.",
        ),
    ] = Path("runs/demo"),
    h5ad: Annotated[
        Path | None,
        typer.Option(
            help="Use this labelled raw-count .h5ad (split in halves) instead of the shared "
            "PBMC data, scanpy's pbmc68k_reduced or generated cells.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    label_key: Annotated[str, typer.Option(help="Label column of --h5ad.")] = "cell_type",
    preset: Annotated[str, typer.Option(help="Model size preset.")] = "tiny",
    steps: Annotated[int, typer.Option(help="Pretraining steps.")] = 150,
    mode: Annotated[str, typer.Option(help="Annotation mode: knn or finetune.")] = "knn",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Pretrain a small cell model, annotate a query with calibration, abstention and the
    PCA+logreg baseline, write an HTML report and say which method to use."""
    from lifelm.demo import run_demo

    typer.echo(
        run_demo(
            out, h5ad=h5ad, label_key=label_key, preset=preset, steps=steps, mode=mode, seed=seed
        )
    )
