"""``lifelm genomes qc`` and ``lifelm genomes mutations``: sequence work (see cli/genomes.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _write(df, out: Path, as_json: bool) -> None:
    from lifelm.tasks.genomes.output import write_table

    write_table(df, out, as_json=as_json)
    counts = df["qc.overallStatus"].value_counts().to_dict() if len(df) else {}
    typer.echo(f"wrote {len(df)} rows to {out} (QC: {counts})")
    uncalled = int((df.get("called", True) == False).sum()) if "called" in df else 0  # noqa: E712
    if uncalled:
        typer.echo(
            f"{uncalled} genome(s) failed a sanity check (too long, not aligned or empty): "
            "their mutation columns are empty; see qc.reasons."
        )


def _reference(reference: Path | None, annotation: Path | None, no_orf_checks: bool):
    from lifelm.tasks.genomes.qc import load_reference

    return load_reference(reference, annotation, allow_no_orfs=no_orf_checks)


Sequences = Annotated[
    Path, typer.Argument(help="FASTA of genomes (plain, .gz or .xz).", exists=True)
]
Out = Annotated[Path, typer.Option("-o", "--out", help="Output table (TSV, or JSON with --json).")]
Metadata = Annotated[
    Path | None, typer.Option("--metadata", help="TSV joined by sequence name.", exists=True)
]
MetadataKey = Annotated[
    str | None,
    typer.Option("--metadata-key", help="Metadata column holding the names (default: best match)."),
]
RefFasta = Annotated[
    Path | None,
    typer.Option("--reference", help="Reference FASTA (default: SARS-CoV-2 MN908947.3)."),
]
RefAnnotation = Annotated[
    Path | None, typer.Option("--annotation", help="GFF3 or GenBank ORFs of --reference.")
]
NoOrfChecks = Annotated[
    bool,
    typer.Option(
        "--no-orf-checks",
        help="Accept a --reference without --annotation (frame-shift and stop-codon rules not run).",
    ),
]
Tree = Annotated[
    Path | None,
    typer.Option(
        "--tree",
        help="Reference tree (Auspice JSON, e.g. Nextclade's dataset tree.json, .gz/.xz ok) for the "
        "private-mutation and SNP-cluster rules; without it they are not run.",
        exists=True,
    ),
]
Pathogen = Annotated[
    Path | None,
    typer.Option(
        "--pathogen-json",
        help="Nextclade dataset pathogen.json whose QC parameters to use (default: SARS-CoV-2's).",
        exists=True,
    ),
]
Jobs = Annotated[int, typer.Option("--jobs", "-j", help="Worker processes.")]
AsJson = Annotated[bool, typer.Option("--json", help="Write JSON records instead of TSV.")]


def register(app: typer.Typer) -> None:
    """Add ``qc`` and ``mutations`` to the ``genomes`` app."""

    @app.command("qc")
    def qc(
        sequences: Sequences,
        out: Out,
        metadata: Metadata = None,
        metadata_key: MetadataKey = None,
        reference: RefFasta = None,
        annotation: RefAnnotation = None,
        no_orf_checks: NoOrfChecks = False,
        tree: Tree = None,
        pathogen_json: Pathogen = None,
        jobs: Jobs = 1,
        as_json: AsJson = False,
    ) -> None:
        """QC each genome with Nextclade's rules and scores: good/mediocre/bad with reasons (docs/genomes.md)."""
        from lifelm.data.genomes.qc import QcConfig
        from lifelm.tasks.genomes.output import check_table_path
        from lifelm.tasks.genomes.qc import genome_qc

        check_table_path(out)
        df = genome_qc(
            sequences,
            reference=_reference(reference, annotation, no_orf_checks),
            config=QcConfig.from_pathogen_json(pathogen_json) if pathogen_json else None,
            tree=tree,
            metadata=metadata,
            metadata_key=metadata_key,
            n_jobs=jobs,
            progress=True,
        )
        _write(df, out, as_json)

    @app.command("mutations")
    def mutations(
        sequences: Sequences,
        out: Out,
        metadata: Metadata = None,
        metadata_key: MetadataKey = None,
        reference: RefFasta = None,
        annotation: RefAnnotation = None,
        no_orf_checks: NoOrfChecks = False,
        jobs: Jobs = 1,
        as_json: AsJson = False,
    ) -> None:
        """Align to the reference (minimap2) and call mutations in Nextclade's notation and columns."""
        from lifelm.tasks.genomes.mutations import call_mutations
        from lifelm.tasks.genomes.output import check_table_path

        check_table_path(out)
        df = call_mutations(
            sequences,
            reference=_reference(reference, annotation, no_orf_checks),
            metadata=metadata,
            metadata_key=metadata_key,
            n_jobs=jobs,
            progress=True,
        )
        _write(df, out, as_json)
