"""``lifelm genomes warn``: the early-warning backtest over dated lineages, with its HTML report.

Thin wrapper over ``lifelm.tasks.genomes.warning`` (the walk), ``lifelm.tasks.genomes.novelty``
(unseen-lineage flagging) and ``lifelm.reports.warning`` (files and report); see
docs/genomes-warning.md.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lifelm.cli.options import AS_JSON, OPTIONAL_MODEL, OUT_DIR, SEED


class Preset(StrEnum):
    """Size of the codon model trained on the starting set when no -m is given."""

    test = "test"
    tiny = "tiny"


DATA = Annotated[
    Path,
    typer.Option(
        "--data",
        help="The genomes/ data folder (sarscov2/pango_consensus, lineages/, "
        "sarscov2/genbank_1000_lapis_silo).",
        exists=True,
        file_okay=False,
    ),
]


def warn(
    data: DATA,
    out: OUT_DIR = Path("runs/genomes_warn"),
    model: OPTIONAL_MODEL = None,
    start: Annotated[
        str, typer.Option("--start", help="First cutoff (ISO date); earlier lineages are known.")
    ] = "2021-02-01",
    top_fraction: Annotated[
        float,
        typer.Option(
            "--top-fraction",
            min=0.001,
            max=0.999,
            help="Flag the top fraction of scores (threshold from earlier lineages only).",
        ),
    ] = 0.1,
    orfs: Annotated[
        list[str], typer.Option("--orf", help="ORF(s) the model scores (repeat the option).")
    ] = ["S"],  # noqa: B006 (typer reads it)
    context: Annotated[int, typer.Option("--context", min=2, help="Tokens per window.")] = 256,
    preset: Annotated[
        Preset, typer.Option("--preset", help="Model trained on the starting set when no -m.")
    ] = Preset.test,
    train_steps: Annotated[
        int, typer.Option("--train-steps", min=1, help="Training steps of that model.")
    ] = 300,
    mutation_scores: Annotated[
        bool,
        typer.Option(
            "--mutation-scores/--no-mutation-scores",
            help="Score the new spike changes with the codon model (method c).",
        ),
    ] = True,
    novelty: Annotated[
        bool,
        typer.Option(
            "--novelty/--no-novelty",
            help="Also flag unseen clades among the GenBank 1,000 (train before --novelty-cutoff).",
        ),
    ] = True,
    novelty_cutoff: Annotated[
        str, typer.Option("--novelty-cutoff", help="Train/query date split of the novelty test.")
    ] = "2021-01-01",
    seed: SEED = 0,
    as_json: AS_JSON = False,
) -> None:
    """Walk forward over the Pango lineages, flag risky new ones, and write the report.

    Without -m a small codon model is trained on the lineages known before --start only and kept
    fixed during the walk; with -m the given model must have seen no genome dated after --start.
    Writes scores.tsv, variants.tsv, alarms.tsv, qc.tsv, summary.json and report.html to -o.
    """
    from lifelm._core.runfolder import lock_folder
    from lifelm.reports.warning import variant_matrix, write_outputs
    from lifelm.tasks.genomes.novelty import NoveltyConfig, run_genbank_novelty
    from lifelm.tasks.genomes.warning import WarnConfig, run_pango_backtest

    cfg = WarnConfig(start=start, top_fraction=top_fraction, orfs=tuple(orfs), context=context)
    out.mkdir(parents=True, exist_ok=True)
    with lock_folder(out):
        result = run_pango_backtest(
            data,
            out,
            model_dir=model,
            config=cfg,
            preset=preset.value,
            train_steps=train_steps,
            seed=seed,
            mutation_scores=mutation_scores,
        )
        nov = None
        if novelty:
            nov = run_genbank_novelty(
                data,
                result.model,
                orfs=tuple(orfs),
                context=context,
                config=NoveltyConfig(cutoff=novelty_cutoff, seed=seed),
            )
        report = write_outputs(result, out, novelty=nov)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "variants": result.variants.to_dict(orient="records"),
                    "alarms": result.alarms.to_dict(orient="records"),
                    "novelty": nov[1].to_dict(orient="records") if nov else None,
                    "report": str(report),
                },
                default=str,
            )
        )
        return
    typer.echo(variant_matrix(result.variants).to_string(index=False))
    typer.echo(result.alarms.to_string(index=False))
    if nov is not None:
        typer.echo(nov[1].to_string(index=False))
    typer.echo(f"wrote {report} and the tables in {out}")
