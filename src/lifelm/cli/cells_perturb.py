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
        help="Output folder: resumable scan parts, the ranked TSV and the HTML report. "
        "Re-running with the same folder resumes after the finished cells.",
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
    out: OUT,
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
    goal: Annotated[str, typer.Option(help="Label of the goal state (e.g. healthy, stim).")],
    kind: KIND = "overexpress",
    fraction: FRACTION = 1.0,
    genes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated candidate genes; default: genes detected in the states."
        ),
    ] = None,
    donor_key: Annotated[
        str | None, typer.Option(help=".obs column with donors (donor-level statistics).")
    ] = None,
    n_cells: Annotated[int, typer.Option(help="Start cells sampled for the scan.")] = 200,
    min_detection: Annotated[
        float, typer.Option(help="Candidates: genes detected in at least this share of cells.")
    ] = 0.05,
    max_candidates: Annotated[int, typer.Option(help="At most this many candidate genes.")] = 2000,
    n_null: Annotated[int, typer.Option(help="Matched random genes per gene in the null.")] = 20,
    pairs_top: Annotated[
        int, typer.Option(help="Also score all pairs of the top N genes (0 = none).")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed for the cell sample and the null genes.")] = 0,
    layer: LAYER = None,
    max_tokens: MAX_TOKENS = 32_768,
    device: DEVICE = "auto",
) -> None:
    """Rank genes whose perturbation moves start cells toward the goal state (targets.tsv, report.html)."""
    import anndata as ad

    from lifelm.reports.perturbation import targets_report
    from lifelm.tasks.cells.targets import rank_targets

    adata = ad.read_h5ad(data)
    gene_list = [g.strip() for g in genes.split(",") if g.strip()] if genes else None
    rank_targets(
        adata, model, label_key=label_key, start=start, goal=goal, kind=kind,  # type: ignore[arg-type]
        fraction=fraction, genes=gene_list, donor_key=donor_key, n_cells=n_cells,
        min_detection=min_detection, max_candidates=max_candidates, n_null=n_null,
        pairs_top=pairs_top, layer=layer, max_tokens=max_tokens, out_dir=out / "scan",
        seed=seed, device=device,
    )  # fmt: skip
    res = adata.uns["lifelm_targets"]
    out.mkdir(parents=True, exist_ok=True)
    res["genes"].to_csv(out / "targets.tsv", sep="\t", index=False)
    if "pairs" in res:
        res["pairs"].to_csv(out / "pairs.tsv", sep="\t", index=False)
    targets_report(res, out / "report.html")
    n_sig = int((res["genes"]["q"] < 0.05).sum())
    typer.echo(
        f"{len(res['genes'])} candidates, {n_sig} at FDR < 0.05; wrote {out / 'targets.tsv'} "
        f"and {out / 'report.html'}"
    )


def register(app: typer.Typer) -> None:
    """Add ``perturb`` and ``targets`` to the ``cells`` app."""
    app.command("perturb")(perturb)
    app.command("targets")(targets)
