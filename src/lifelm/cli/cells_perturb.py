"""``lifelm cells perturb`` and ``lifelm cells targets``: in-silico perturbation and target search.

Wire with ``register(app)`` on the ``cells`` Typer app. Thin: every option maps to a task argument.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

H5AD = Annotated[
    Path,
    typer.Argument(help="An .h5ad file with raw counts.", exists=True, dir_okay=False),
]
MODEL = Annotated[
    Path,
    typer.Option(
        "--model", "-m", help="Cell model checkpoint folder.", exists=True, file_okay=False
    ),
]
OUT = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        help="Output folder: targets.tsv (ranked genes, '#' header lines with the test, the DE "
        "baseline and the verdict), report.html, pairs.tsv, manifest.json and the resumable "
        "scan parts (scan/). Continue a killed run with --resume.",
    ),
]
PERTURB_OUT = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        help="Output folder: perturb_genes.tsv (one row per gene), responders.tsv (with "
        "--gene-shifts) and the resumable scan parts (scan/); no HTML report. Re-running with "
        "the same folder resumes after the finished cells.",
    ),
]
KIND = Annotated[str, typer.Option(help="delete, overexpress or knockdown.")]
FRACTION = Annotated[
    float, typer.Option(help="Knock-down strength: share of the way to the bottom rank.")
]
LAYER = Annotated[str | None, typer.Option(help="Where the raw counts are; found when omitted.")]
DEVICE = Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")]
MAX_TOKENS = Annotated[
    int, typer.Option(help="Tokens per forward batch (memory only; results do not change).")
]


def perturb(
    data: H5AD,
    model: MODEL,
    out: PERTURB_OUT,
    genes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated genes (symbols or Ensembl IDs; A+B = both at once). "
            "Default: every expressed gene of each cell (delete/knockdown)."
        ),
    ] = None,
    kind: KIND = "delete",
    fraction: FRACTION = 1.0,
    method: Annotated[
        str,
        typer.Option(
            help="exact (every perturbation recomputed) or screen (first-order screen of every "
            "gene, exact recomputation of the top candidates; deletion only)."
        ),
    ] = "exact",
    screen: Annotated[
        str,
        typer.Option(
            help="Screen for --method screen: gradient (first order, one backward pass per "
            "cell) or rank (higher-ranked genes first, no model call)."
        ),
    ] = "gradient",
    top: Annotated[
        int, typer.Option(help="Candidates per cell recomputed with --method screen.")
    ] = 50,
    max_cells: Annotated[
        int | None, typer.Option(help="Scan only the first N cells (quick looks).")
    ] = None,
    gene_shifts: Annotated[
        bool, typer.Option(help="Also measure every other gene's embedding shift.")
    ] = False,
    layer: LAYER = None,
    max_tokens: MAX_TOKENS = 32_768,
    device: DEVICE = "auto",
) -> None:
    """Perturb genes in every cell and write per-gene shifts (perturb_genes.tsv) to --out."""
    import anndata as ad

    from lifelm.tasks.cells.perturb import perturb as run

    adata = ad.read_h5ad(data)
    if max_cells is not None:
        adata = adata[:max_cells].copy()
    gene_list = [g.strip() for g in genes.split(",") if g.strip()] if genes else None
    run(
        adata, model, genes=gene_list, kind=kind, fraction=fraction, layer=layer,  # type: ignore[arg-type]
        method=method, screen=screen, top=top, max_tokens=max_tokens, gene_shifts=gene_shifts,  # type: ignore[arg-type]
        out_dir=out / "scan", device=device,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    res = adata.uns["lifelm_perturb"]
    res["genes"].to_csv(out / "perturb_genes.tsv", sep="\t", index=False)
    if "responders" in res:
        res["responders"].to_csv(out / "responders.tsv", sep="\t", index=False)
    info = res["info"]
    typer.echo(
        f"{info['rows_computed']} perturbed cells in {info['seconds']:.1f}s "
        f"({info['perturbed_cells_per_s']:.0f}/s); wrote {out / 'perturb_genes.tsv'}"
    )


def targets(
    data: H5AD,
    model: MODEL,
    out: OUT,
    label_key: Annotated[str, typer.Option(help=".obs column holding the states.")],
    start: Annotated[str, typer.Option(help="Label of the start state (e.g. disease, ctrl).")],
    goal: Annotated[
        str, typer.Option(help="Label of the goal state (e.g. healthy, stim); not --start.")
    ],
    kind: KIND = "overexpress",
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
        str,
        typer.Option(
            help="Ranking of the 'rank' column: auto (whichever agrees better with the held-out "
            "expression shift), insilico (the model) or de (pseudobulk differential expression)."
        ),
    ] = "auto",
    n_cells: Annotated[int, typer.Option(help="Cells scanned per state.")] = 100,
    min_detection: Annotated[
        float, typer.Option(help="Candidates: genes detected in at least this share of cells.")
    ] = 0.05,
    max_candidates: Annotated[int, typer.Option(help="At most this many candidate genes.")] = 2000,
    n_null: Annotated[int, typer.Option(help="Matched random genes per gene in the null.")] = 20,
    n_permutations: Annotated[
        int, typer.Option(help="Label permutations when there are more possible labellings.")
    ] = 2000,
    pairs_top: Annotated[
        int, typer.Option(help="Also score all pairs of the top N genes (0 = none).")
    ] = 0,
    seed: Annotated[
        int, typer.Option(help="Seed for units, cell sample, null genes and permutations.")
    ] = 0,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out (refused if the data, weights or settings differ).",
        ),
    ] = False,
    layer: LAYER = None,
    max_tokens: MAX_TOKENS = 32_768,
    device: DEVICE = "auto",
) -> None:
    """Rank genes whose perturbation moves start cells toward the goal state, next to a DE ranking.

    Writes targets.tsv and report.html to --out. p-values come from a label-permutation test over
    donors (--donor-key) or cell pseudo-replicates; FDR is Benjamini-Hochberg.
    """
    import anndata as ad

    from lifelm._core.errors import OutputError
    from lifelm._core.runfolder import atomic_output, ensure_manifest, lock_folder
    from lifelm.reports.perturbation import targets_report
    from lifelm.tasks.cells.targets import rank_targets, write_targets

    gene_list = [g.strip() for g in genes.split(",") if g.strip()] if genes else None
    settings = {
        "label_key": label_key, "start": start, "goal": goal, "kind": kind,
        "fraction": fraction, "genes": gene_list, "donor_key": donor_key, "groupby": groupby,
        "method": method, "n_cells": n_cells, "min_detection": min_detection,
        "max_candidates": max_candidates, "n_null": n_null, "n_permutations": n_permutations,
        "pairs_top": pairs_top, "seed": seed, "layer": layer,
    }  # fmt: skip
    inputs = {
        "data": data,
        "model_weights": model / "model.safetensors",
        "model_config": model / "config.json",
    }
    with lock_folder(out):
        if not resume and (out / "scan").exists():
            raise OutputError(
                f"{out}: holds a previous targets run; pass --resume to continue it (same data, "
                "weights and settings) or choose another --out folder."
            )
        ensure_manifest(out, job="cells.targets", inputs=inputs, settings=settings, resume=resume)
        adata = ad.read_h5ad(data)
        rank_targets(
            adata, model, label_key=label_key, start=start, goal=goal, kind=kind,  # type: ignore[arg-type]
            fraction=fraction, genes=gene_list, donor_key=donor_key, groupby=groupby,
            method=method, n_cells=n_cells, min_detection=min_detection,
            max_candidates=max_candidates, n_null=n_null, n_permutations=n_permutations,
            pairs_top=pairs_top, layer=layer, max_tokens=max_tokens, out_dir=out / "scan",
            seed=seed, device=device,
        )  # fmt: skip
        res = adata.uns["lifelm_targets"]
        write_targets(res, out / "targets.tsv")
        if "pairs" in res:
            with atomic_output(out / "pairs.tsv") as tmp:
                res["pairs"].to_csv(tmp, sep="\t", index=False)
        with atomic_output(out / "report.html") as tmp:
            targets_report(res, tmp)
    for w in res["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    g = res["genes"]
    typer.echo(
        f"{len(g)} candidates; FDR < 0.05 toward the goal: "
        f"{int(((g['q'] < 0.05) & (g['effect'] > 0)).sum())} in silico, "
        f"{int(((g['de_q'] < 0.05) & (g['de_score'] > 0)).sum())} by DE; ranked by "
        f"{res['method']}; wrote "
        f"{out / 'targets.tsv'} and {out / 'report.html'}"
    )
    typer.echo(res["verdict"])


def register(app: typer.Typer) -> None:
    """Add ``perturb`` and ``targets`` to the ``cells`` app."""
    app.command("perturb")(perturb)
    app.command("targets")(targets)
