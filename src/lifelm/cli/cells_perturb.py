"""``lifelm cells perturb`` and ``lifelm cells targets``: in-silico perturbation and target search.

Thin: the options fill a run plan and :mod:`lifelm.tasks.cells.folders` does the work (columns:
docs/cells-targets.md). Wired into ``lifelm cells`` in cli/cells.py.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lifelm.cli.options import (
    COMPILE,
    CPU_JOBS,
    DEVICE,
    H5AD,
    LAYER,
    MODEL,
    PRECISION,
    QUANTIZE,
    RESUME,
    SEED,
    Device,
    Precision,
    Quantize,
)


class Kind(StrEnum):
    """How a gene is perturbed."""

    delete = "delete"
    overexpress = "overexpress"
    knockdown = "knockdown"


class ScanMethod(StrEnum):
    """Exact recomputation of every perturbation, or a screen first."""

    exact = "exact"
    screen = "screen"


class Screen(StrEnum):
    """The screen of --method screen."""

    gradient = "gradient"
    rank = "rank"


class Ranking(StrEnum):
    """Which ranking fills the 'rank' column of targets.tsv."""

    auto = "auto"
    insilico = "insilico"
    de = "de"


KIND = Annotated[Kind, typer.Option(help="How the genes are perturbed.")]
FRACTION = Annotated[
    float, typer.Option(help="Knock-down strength: share of the way to the bottom rank.")
]
MAX_TOKENS = Annotated[
    int, typer.Option(help="Tokens per forward batch (memory only; results do not change).")
]


def perturb(
    data: H5AD,
    model: MODEL,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output folder: perturb_genes.tsv (one row per gene), responders.tsv (with "
            "--gene-shifts) and the resumable scan parts (scan/); no HTML report. Re-running "
            "with the same folder resumes after the finished cells.",
        ),
    ],
    genes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated genes (symbols or Ensembl IDs; A+B = both at once). "
            "Default: every expressed gene of each cell (delete/knockdown)."
        ),
    ] = None,
    kind: KIND = Kind.delete,
    fraction: FRACTION = 1.0,
    method: Annotated[
        ScanMethod,
        typer.Option(
            help="exact (every perturbation recomputed) or screen (first-order screen of every "
            "gene, exact recomputation of the top candidates; deletion only)."
        ),
    ] = ScanMethod.exact,
    screen: Annotated[
        Screen,
        typer.Option(
            help="gradient (first order, one backward pass per cell) or rank (higher-ranked "
            "genes first, no model call)."
        ),
    ] = Screen.gradient,
    top: Annotated[
        int, typer.Option(min=1, help="Candidates per cell recomputed with --method screen.")
    ] = 50,
    max_cells: Annotated[
        int | None, typer.Option(min=1, help="Scan only the first N cells (quick looks).")
    ] = None,
    gene_shifts: Annotated[
        bool, typer.Option(help="Also measure every other gene's embedding shift.")
    ] = False,
    layer: LAYER = None,
    max_tokens: MAX_TOKENS = 32_768,
    device: DEVICE = Device.auto,
    quantize: QUANTIZE = Quantize.none,
    compile_: COMPILE = False,
    precision: PRECISION = Precision.auto,
    jobs: CPU_JOBS = 1,
) -> None:
    """Perturb genes in every cell and write per-gene shifts (perturb_genes.tsv) to --out.

    The CPU techniques (--quantize, --precision, --compile, -j) are embed's, applied to the exact
    scan; the run's settings record which ran.
    """
    from lifelm.tasks.cells.cpu_techniques import CpuTechniques
    from lifelm.tasks.cells.folders import PerturbRun, perturb_to_folder

    info = perturb_to_folder(
        data,
        model,
        out,
        PerturbRun(
            genes=genes,
            kind=kind.value,
            fraction=fraction,
            method=method.value,
            screen=screen.value,
            top=top,
            max_cells=max_cells,
            gene_shifts=gene_shifts,
            layer=layer,
            max_tokens=max_tokens,
            device=device.value,
            techniques=CpuTechniques(
                quantize=quantize.value, compile=compile_, precision=precision.value, jobs=jobs
            ),
        ),
    )
    typer.echo(
        f"{info['rows_computed']} perturbed cells in {info['seconds']:.1f}s "
        f"({info['perturbed_cells_per_s']:.0f}/s); wrote {out / 'perturb_genes.tsv'}"
    )


# Long only because typer options are its signature; the body is under 40 lines.
def targets(
    data: H5AD,
    model: MODEL,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output folder: targets.tsv (ranked genes, '#' header lines with the test, the "
            "DE baseline and the verdict), report.html, pairs.tsv, manifest.json and the "
            "resumable scan parts (scan/). Continue a killed run with --resume.",
        ),
    ],
    label_key: Annotated[str, typer.Option(help=".obs column holding the states.")],
    start: Annotated[str, typer.Option(help="Label of the start state (e.g. disease, ctrl).")],
    goal: Annotated[
        str, typer.Option(help="Label of the goal state (e.g. healthy, stim); not --start.")
    ],
    kind: KIND = Kind.overexpress,
    fraction: FRACTION = 1.0,
    genes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated candidate genes; default: genes detected in the states."
        ),
    ] = None,
    donor_key: Annotated[
        str | None,
        typer.Option(
            help=".obs column with donors or samples: the unit of the test (paired within "
            "donors, or among donors). Without it cells are split into random "
            "pseudo-replicates, which is anti-conservative when cells come from few donors."
        ),
    ] = None,
    groupby: Annotated[
        str | None,
        typer.Option(help=".obs column (e.g. cell_type): run the search per group."),
    ] = None,
    method: Annotated[
        Ranking,
        typer.Option(
            help="Ranking of the 'rank' column: auto (whichever agrees better with the held-out "
            "expression shift), insilico (the model) or de (pseudobulk differential expression)."
        ),
    ] = Ranking.auto,
    n_cells: Annotated[int, typer.Option(min=1, help="Cells scanned per state.")] = 100,
    min_detection: Annotated[
        float, typer.Option(help="Candidates: genes detected in at least this share of cells.")
    ] = 0.05,
    max_candidates: Annotated[
        int, typer.Option(min=1, help="At most this many candidate genes.")
    ] = 2000,
    n_null: Annotated[
        int, typer.Option(min=1, help="Matched random genes per gene in the null.")
    ] = 20,
    n_permutations: Annotated[
        int, typer.Option(help="Label permutations when there are more possible labellings.")
    ] = 2000,
    pairs_top: Annotated[
        int, typer.Option(min=0, help="Also score all pairs of the top N genes (0 = none).")
    ] = 0,
    seed: SEED = 0,
    resume: RESUME = False,
    layer: LAYER = None,
    max_tokens: MAX_TOKENS = 32_768,
    device: DEVICE = Device.auto,
    quantize: QUANTIZE = Quantize.none,
    compile_: COMPILE = False,
    precision: PRECISION = Precision.auto,
    jobs: CPU_JOBS = 1,
) -> None:
    """Rank genes whose perturbation moves start cells toward the goal state, next to a DE ranking.

    Writes targets.tsv and report.html to --out. p-values come from a label-permutation test over
    donors (--donor-key) or cell pseudo-replicates; FDR is Benjamini-Hochberg.
    """
    from lifelm.tasks.cells.cpu_techniques import CpuTechniques
    from lifelm.tasks.cells.folders import TargetsRun, targets_to_folder

    res = targets_to_folder(
        data,
        model,
        out,
        TargetsRun(
            label_key=label_key,
            start=start,
            goal=goal,
            kind=kind.value,
            fraction=fraction,
            genes=genes,
            donor_key=donor_key,
            groupby=groupby,
            method=method.value,
            n_cells=n_cells,
            min_detection=min_detection,
            max_candidates=max_candidates,
            n_null=n_null,
            n_permutations=n_permutations,
            pairs_top=pairs_top,
            seed=seed,
            layer=layer,
            max_tokens=max_tokens,
            device=device.value,
            techniques=CpuTechniques(
                quantize=quantize.value, compile=compile_, precision=precision.value, jobs=jobs
            ),
        ),
        resume=resume,
    )
    for w in res["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    g = res["genes"]
    typer.echo(
        f"{len(g)} candidates; FDR < 0.05 toward the goal: "
        f"{int(((g['q'] < 0.05) & (g['effect'] > 0)).sum())} in silico, "
        f"{int(((g['de_q'] < 0.05) & (g['de_score'] > 0)).sum())} by DE; ranked by "
        f"{res['method']}; wrote {out / 'targets.tsv'} and {out / 'report.html'}"
    )
    typer.echo(res["verdict"])


def register(app: typer.Typer) -> None:
    """Add ``perturb`` and ``targets`` to the ``cells`` app."""
    app.command("perturb")(perturb)
    app.command("targets")(targets)
