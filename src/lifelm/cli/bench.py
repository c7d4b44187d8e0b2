"""``lifelm bench …``: benchmarks against simple baselines and published models."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Benchmarks: every model next to simple baselines.", no_args_is_help=True)


@app.command("perturbation")
def perturbation(
    data_root: Path = typer.Option(
        Path("../shared/data"),
        "--data",
        help="Shared data folder that holds singlecell/perturbation and singlecell/kang2018.",
    ),
    out: Path = typer.Option(
        Path("runs/bench_perturbation"),
        "--out",
        help="Folder for results.csv, table.md, plot and splits.",
    ),
    datasets: list[str] = typer.Option(
        ["norman19", "mcfaline23", "papalexi21", "kang18"],
        "--dataset",
        help="Dataset names to run (repeat the option).",
    ),
    seeds: int = typer.Option(
        3, "--seeds", min=1, help="Number of split seeds (0..N-1); the table reports mean ± sd."
    ),
    model: Path | None = typer.Option(
        None,
        "--model",
        help="Pretrained cell-model folder: adds the cell-model linear baseline and the response model.",
    ),
    response_epochs: int = typer.Option(
        300, "--response-epochs", help="Training epochs of the response model per split."
    ),
) -> None:
    """Run every perturbation baseline (and the response model) over every split and dataset."""
    from lifelm.evaluation.benchmarks.perturbation import run_cli

    table = run_cli(
        data_root, out, datasets=datasets, seeds=seeds, model=model, response_epochs=response_epochs
    )
    typer.echo(table)
    typer.echo(f"wrote {out}/table.md, {out}/results.csv, {out}/summary.png")
