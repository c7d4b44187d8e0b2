"""``lifelm genomes qc`` and ``lifelm genomes mutations``: sequence work (see cli/genomes.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _write(df, out: Path, as_json: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if as_json:
        df.to_json(out, orient="records", indent=1)
    else:
        df.to_csv(out, sep="\t", index=False)
    counts = df["qc.overallStatus"].value_counts().to_dict() if len(df) else {}
    typer.echo(f"wrote {len(df)} rows to {out} (QC: {counts})")


def _reference(reference: Path | None, annotation: Path | None):
    from lifelm.data.genomes.align import Reference

    if reference is None:
        if annotation is not None:
            raise typer.BadParameter(
                "--annotation needs --reference (the built-in one has its genes)"
            )
        return Reference.sarscov2()
    return Reference.from_files(reference, annotation)


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
        jobs: Jobs = 1,
        as_json: AsJson = False,
    ) -> None:
        """QC each genome (length, N and mixed bases, coverage, frameshifts, stops): good/mediocre/bad with reasons."""
        from lifelm.tasks.genomes.qc import genome_qc

        df = genome_qc(
            sequences,
            reference=_reference(reference, annotation),
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
        jobs: Jobs = 1,
        as_json: AsJson = False,
    ) -> None:
        """Align to the reference (minimap2) and call mutations in Nextclade's notation and columns."""
        from lifelm.tasks.genomes.mutations import call_mutations

        df = call_mutations(
            sequences,
            reference=_reference(reference, annotation),
            metadata=metadata,
            metadata_key=metadata_key,
            n_jobs=jobs,
            progress=True,
        )
        _write(df, out, as_json)
