"""``lifelm genomes qc`` and ``lifelm genomes mutations``: sequence work (wired in cli/genomes.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lifelm.cli.options import AS_JSON, FASTA, JOBS, OUT_FILE

METADATA = Annotated[
    Path | None,
    typer.Option("--metadata", help="TSV joined by sequence name.", exists=True, dir_okay=False),
]
METADATA_KEY = Annotated[
    str | None,
    typer.Option("--metadata-key", help="Metadata column holding the names (default: best match)."),
]
REFERENCE = Annotated[
    Path | None,
    typer.Option(
        "--reference",
        help="Reference FASTA (default: SARS-CoV-2 MN908947.3).",
        exists=True,
        dir_okay=False,
    ),
]
ANNOTATION = Annotated[
    Path | None,
    typer.Option(
        "--annotation", help="GFF3 or GenBank ORFs of --reference.", exists=True, dir_okay=False
    ),
]
NO_ORF_CHECKS = Annotated[
    bool,
    typer.Option(
        "--no-orf-checks",
        help="Accept a --reference without --annotation (frame-shift and stop-codon rules not run).",
    ),
]
TREE = Annotated[
    Path | None,
    typer.Option(
        "--tree",
        help="Reference tree (Auspice JSON, e.g. Nextclade's dataset tree.json, .gz/.xz ok) for the "
        "private-mutation and SNP-cluster rules; without it they are not run.",
        exists=True,
    ),
]
PATHOGEN = Annotated[
    Path | None,
    typer.Option(
        "--pathogen-json",
        help="Nextclade dataset pathogen.json whose QC parameters to use (default: SARS-CoV-2's).",
        exists=True,
    ),
]


def qc(
    sequences: FASTA,
    out: OUT_FILE,
    metadata: METADATA = None,
    metadata_key: METADATA_KEY = None,
    reference: REFERENCE = None,
    annotation: ANNOTATION = None,
    no_orf_checks: NO_ORF_CHECKS = False,
    tree: TREE = None,
    pathogen_json: PATHOGEN = None,
    jobs: JOBS = 1,
    as_json: AS_JSON = False,
) -> None:
    """QC each genome with Nextclade's rules and scores: good/mediocre/bad with reasons (docs/genomes.md)."""
    from lifelm.data.genomes.qc import QcConfig
    from lifelm.tasks.genomes.output import check_table_path, write_table
    from lifelm.tasks.genomes.qc import genome_qc, load_reference

    check_table_path(out)
    df = genome_qc(
        sequences,
        reference=load_reference(reference, annotation, allow_no_orfs=no_orf_checks),
        config=QcConfig.from_pathogen_json(pathogen_json) if pathogen_json else None,
        tree=tree,
        metadata=metadata,
        metadata_key=metadata_key,
        n_jobs=jobs,
        progress=True,
    )
    write_table(df, out, as_json=as_json)
    _report(df, out)


def mutations(
    sequences: FASTA,
    out: OUT_FILE,
    metadata: METADATA = None,
    metadata_key: METADATA_KEY = None,
    reference: REFERENCE = None,
    annotation: ANNOTATION = None,
    no_orf_checks: NO_ORF_CHECKS = False,
    jobs: JOBS = 1,
    as_json: AS_JSON = False,
) -> None:
    """Align to the reference (minimap2) and call mutations in Nextclade's notation and columns."""
    from lifelm.tasks.genomes.mutations import call_mutations
    from lifelm.tasks.genomes.output import check_table_path, write_table
    from lifelm.tasks.genomes.qc import load_reference

    check_table_path(out)
    df = call_mutations(
        sequences,
        reference=load_reference(reference, annotation, allow_no_orfs=no_orf_checks),
        metadata=metadata,
        metadata_key=metadata_key,
        n_jobs=jobs,
        progress=True,
    )
    write_table(df, out, as_json=as_json)
    _report(df, out)


def _report(df, out: Path) -> None:
    counts = df["qc.overallStatus"].value_counts().to_dict() if len(df) else {}
    typer.echo(f"wrote {len(df)} rows to {out} (QC: {counts})")
    if "called" in df:
        uncalled = int((~df["called"].astype(bool)).sum())
        if uncalled:
            typer.echo(
                f"{uncalled} genome(s) failed a sanity check (too long, not aligned or empty): "
                "their mutation columns are empty; see qc.reasons."
            )
