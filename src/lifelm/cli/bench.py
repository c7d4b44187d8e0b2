"""``lifelm bench …``: benchmarks against simple baselines and published models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lifelm.cli.options import OPTIONAL_MODEL, OUT_DIR

app = typer.Typer(help="Benchmarks: every model next to simple baselines.", no_args_is_help=True)


@app.command("perturbation")
def perturbation(
    data_root: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Data folder that holds singlecell/perturbation and singlecell/kang2018 "
            "(e.g. the project's shared/data).",
            exists=True,
            file_okay=False,
        ),
    ],
    out: OUT_DIR = Path("runs/bench_perturbation"),
    datasets: Annotated[
        list[str], typer.Option("--dataset", help="Dataset names to run (repeat the option).")
    ] = ["norman19", "mcfaline23", "papalexi21", "kang18"],  # noqa: B006 (typer reads it)
    seeds: Annotated[
        int,
        typer.Option(
            "--seeds", min=1, help="Number of split seeds (0..N-1); the table reports mean ± sd."
        ),
    ] = 3,
    model: OPTIONAL_MODEL = None,
    response_epochs: Annotated[
        int, typer.Option(help="Training epochs of the response model per split.")
    ] = 300,
) -> None:
    """Run every perturbation baseline (and the response model) over every split and dataset.

    With -m/--model, the cell-model linear baseline and the response model are added.
    """
    from lifelm.evaluation.benchmarks.perturbation import run_cli

    table = run_cli(
        data_root, out, datasets=datasets, seeds=seeds, model=model, response_epochs=response_epochs
    )
    typer.echo(table)
    typer.echo(f"wrote {out}/table.md, {out}/results.csv, {out}/summary.png")


@app.command("early-warning")
def early_warning(
    data_root: Annotated[
        Path,
        typer.Option(
            "--data",
            help="The genomes/ data folder (e.g. shared/data/genomes).",
            exists=True,
            file_okay=False,
        ),
    ],
    out: OUT_DIR = Path("runs/bench_early_warning"),
    model: OPTIONAL_MODEL = None,
    train_steps: Annotated[
        int,
        typer.Option("--train-steps", min=1, help="Steps of the model trained on the start set."),
    ] = 300,
    top_fraction: Annotated[
        float, typer.Option("--top-fraction", min=0.001, max=0.999, help="Flag the top fraction.")
    ] = 0.1,
) -> None:
    """Early-warning backtest and unseen-lineage flagging, model next to every baseline.

    Prints the per-variant lead-time table, the false-alarm table and the novelty precision /
    recall; writes them (and report.html) to -o.
    """
    from lifelm.reports.warning import markdown_table, variant_matrix, write_outputs
    from lifelm.tasks.genomes.novelty import run_genbank_novelty
    from lifelm.tasks.genomes.warning import WarnConfig, run_pango_backtest

    result = run_pango_backtest(
        data_root,
        out,
        model_dir=model,
        config=WarnConfig(top_fraction=top_fraction),
        train_steps=train_steps,
    )
    nov = run_genbank_novelty(data_root, result.model)
    report = write_outputs(result, out, novelty=nov)
    typer.echo(markdown_table(variant_matrix(result.variants)))
    typer.echo(markdown_table(result.alarms))
    typer.echo(markdown_table(nov[1]))
    typer.echo(f"wrote {report}")
