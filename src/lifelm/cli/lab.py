"""``lifelm lab …``: closed-loop experiment design (the strategy picks, a lab runs)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lifelm.cli.options import OPTIONAL_MODEL, OUT_DIR, RESUME, SEED

app = typer.Typer(
    help="Lab in the loop: choose the next experiments, run them, learn.", no_args_is_help=True
)


class Backend(StrEnum):
    simulated = "simulated"
    pylabrobot = "pylabrobot"


class Direction(StrEnum):
    both = "both"
    up = "up"
    down = "down"


class Setting(StrEnum):
    screen = "screen"
    perturbseq = "perturbseq"


class Surrogate(StrEnum):
    forest = "forest"
    mc_dropout = "mc_dropout"


# Long only because typer options are its signature; the body is under 40 lines.
@app.command("run")
def run(
    screen: Annotated[
        Path,
        typer.Argument(
            help="Screen table (CSV: gene, score[, replicate][, is_control]), or a Perturb-seq "
            ".h5ad (raw counts, a perturbation column with controls); the simulated assay answers from it.",
            exists=True,
            dir_okay=False,
        ),
    ],
    out: OUT_DIR = Path("runs/lab"),
    hits: Annotated[
        Path | None,
        typer.Option(
            "--hits",
            help="The screen's hit genes (.npy or one a line); else called from its controls.",
        ),
    ] = None,
    direction: Annotated[Direction, typer.Option(help="Which tail is sought.")] = Direction.both,
    strategies: Annotated[
        list[str],
        typer.Option(
            "--strategy",
            help="random, greedy, uncertainty, ucb_thompson, diversity (repeat the option).",
        ),
    ] = ["random", "ucb_thompson"],  # noqa: B006 (typer reads it)
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Rounds of experiments.")] = 5,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Experiments per round.")
    ] = 128,
    expression: Annotated[
        Path | None,
        typer.Option(
            "--expression",
            help="Single-cell counts (.h5ad) for expression/co-expression features.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    model: OPTIONAL_MODEL = None,
    pool: Annotated[
        Path | None,
        typer.Option(
            "--pool",
            help="Candidate genes, one a line (default: every screen gene).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    backend: Annotated[
        Backend, typer.Option(help="simulated assay, or a PyLabRobot protocol per round.")
    ] = Backend.simulated,
    positive_control: Annotated[
        str | None,
        typer.Option(
            "--positive-control", help="Gene for the plates' positive-control wells (pylabrobot)."
        ),
    ] = None,
    noise_sd: Annotated[
        float | None,
        typer.Option(
            "--noise-sd", min=0.0, help="Measurement noise (score units); default from the data."
        ),
    ] = None,
    seed: SEED = 0,
    resume: RESUME = False,
    stop_after: Annotated[
        int | None,
        typer.Option("--stop-after", min=1, help="Stop after this many rounds (resume later)."),
    ] = None,
    setting: Annotated[
        Setting | None,
        typer.Option(
            "--setting",
            help="screen (a CSV of gene scores) or perturbseq (an .h5ad of cells); default: "
            "perturbseq for .h5ad files, else screen.",
        ),
    ] = None,
    surrogate: Annotated[
        Surrogate,
        typer.Option(
            "--surrogate",
            help="Model behind the strategies: forest (random-forest ensemble) or mc_dropout "
            "(MLP, dropout kept on at prediction).",
        ),
    ] = Surrogate.forest,
    mc_samples: Annotated[
        int, typer.Option("--mc-samples", min=2, help="MC-dropout forward passes.")
    ] = 32,
    perturbation_key: Annotated[
        str, typer.Option("--perturbation-key", help="perturbseq: obs column of the labels.")
    ] = "perturbation",
    control: Annotated[
        list[str] | None,
        typer.Option(
            "--control",
            help="perturbseq: label of control cells (repeat; default control, non-targeting, ctrl, NT).",
        ),
    ] = None,
    subset: Annotated[
        list[str] | None,
        typer.Option(
            "--subset", help="perturbseq: keep cells with obs KEY == VALUE (KEY=VALUE, repeat)."
        ),
    ] = None,
    gi_map: Annotated[
        Path | None,
        typer.Option(
            "--gi-map",
            help="perturbseq: Norman 2019 GI map (square CSV) to track synergistic pairs.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    top_fraction: Annotated[
        float,
        typer.Option(
            "--top-fraction", min=0.0, max=1.0, help="perturbseq: share of the pool that is a hit."
        ),
    ] = 0.1,
    synergy_quantile: Annotated[
        float,
        typer.Option(
            "--synergy-quantile",
            min=0.0,
            max=1.0,
            help="perturbseq: GI score quantile at or below which a pair is synergistic.",
        ),
    ] = 0.1,
) -> None:
    """Run one discovery loop per strategy in OUT/<strategy> and write OUT/report.html."""
    from lifelm.lab.api import parse_subset, run_lab
    from lifelm.reports.lab import write_report

    results = run_lab(
        screen, out, hits=hits, direction=direction.value, strategies=strategies, rounds=rounds,
        batch_size=batch_size, seed=seed, expression=expression, model=model, pool=pool,
        backend=backend.value, positive_control=positive_control, noise_sd=noise_sd,
        resume=resume, stop_after=stop_after, setting=setting.value if setting else None,
        surrogate=surrogate.value, mc_samples=mc_samples, perturbation_key=perturbation_key,
        control=control, subset=parse_subset(subset or []), gi_map=gi_map,
        top_fraction=top_fraction, synergy_quantile=synergy_quantile,
    )  # fmt: skip
    for name, res in results.items():
        last = res.curve.iloc[-1] if len(res.curve) else None
        done = (
            "done"
            if res.completed
            else f"stopped after {len(res.curve)} rounds (--resume continues)"
        )
        if last is not None:
            extra = "".join(
                f", {int(last[c])}/{int(last[c.replace('_found', '_in_pool')])} "
                f"{c.removesuffix('_found')} found"
                for c in res.curve.columns
                if c.endswith("_found") and c != "hits_found"
            )
            typer.echo(
                f"{name}: {int(last.n_tested)} tested, {int(last.hits_found)}/{int(last.hits_in_pool)} "
                f"hits found ({100 * last.hit_ratio:.1f}%){extra}, {done}"
            )
    report = write_report(out)
    typer.echo(f"wrote {report}")
