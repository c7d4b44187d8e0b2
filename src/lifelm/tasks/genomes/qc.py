"""Genome QC as a table: one row per sequence, columns that join to Nextclade's output.

``genome_qc`` reads a FASTA (or takes ``(name, sequence)`` pairs), aligns every genome to the
reference, applies :class:`~lifelm.data.genomes.qc.QcConfig`'s rules (Nextclade's scores and
thresholds) and returns a DataFrame. Empty or unalignable records get ``qc.overallStatus ==
"bad"`` with a reason; a FASTA with no record at all is an error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lifelm._core.errors import InputError
from lifelm.data.genomes.align import AlignerConfig, Alignment, Mutations, Reference, call_many
from lifelm.data.genomes.qc import (
    RULES,
    QcConfig,
    QcResult,
    ReferenceTree,
    SequenceStats,
    evaluate_qc,
    sequence_stats,
)
from lifelm.io.fasta import iter_fasta, join_metadata, read_fasta

Sequences = str | Path | Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True)
class GenomeReport:
    """Everything known about one input genome."""

    name: str  # FASTA header (Nextclade's seqName)
    stats: SequenceStats  # raw-sequence metrics
    alignment: Alignment  # placement on the reference
    mutations: Mutations  # calls
    qc: QcResult  # status and reasons
    had_lowercase: bool = False  # input had lower-case bases (upper-cased)


def load_reference(
    fasta: str | Path | None, annotation: str | Path | None, *, allow_no_orfs: bool = False
) -> Reference:
    """The reference for QC and mutation calls, refusing a silent loss of the reading-frame checks.

    ``fasta=None``: SARS-CoV-2 Wuhan-Hu-1 with Nextclade's genes (``annotation`` must then be
    ``None``). A FASTA without ``annotation``: when its sequence is Wuhan-Hu-1 the packaged genes
    are used; otherwise an :class:`InputError` asks for the annotation, unless ``allow_no_orfs``
    (then the frame-shift and stop-codon rules are reported as not run).
    """
    if fasta is None:
        if annotation is not None:
            raise InputError(
                f"{annotation}: --annotation needs --reference (the FASTA whose genes it lists); "
                "the built-in SARS-CoV-2 reference has its genes already."
            )
        return Reference.sarscov2()
    if annotation is not None:
        return Reference.from_files(fasta, annotation)
    seqs = read_fasta(fasta)
    if len(seqs) != 1:
        raise InputError(f"{fasta}: a reference FASTA needs exactly one record, found {len(seqs)}.")
    ((name, seq),) = seqs.items()
    builtin = Reference.sarscov2()
    if seq.upper() == builtin.sequence:
        return Reference(name.split()[0], builtin.sequence, builtin.orfs)
    if not allow_no_orfs:
        raise InputError(
            f"{fasta}: --reference was given without --annotation, so no reading frames are known "
            "and the frame-shift and stop-codon checks could not run. Give its genes with "
            "--annotation FILE.gff3 (or GenBank), or pass --no-orf-checks to accept QC without them."
        )
    return Reference(name.split()[0], seq.upper(), ())


def _records(sequences: Sequences) -> Iterator[tuple[str, str, bool]]:
    if isinstance(sequences, (str, Path)):
        n = 0
        for rec in iter_fasta(sequences, empty="keep"):
            n += 1
            yield rec.name, rec.sequence, rec.had_lowercase
        if n == 0:
            raise InputError(
                f"{sequences}: no FASTA record (the file is empty or has no '>' header); "
                "give a FASTA with at least one genome."
            )
    elif isinstance(sequences, Mapping):
        for name, seq in sequences.items():
            yield name, seq.upper(), seq != seq.upper()
    else:
        for name, seq in sequences:
            yield name, seq.upper(), seq != seq.upper()


def analyse_genomes(
    sequences: Sequences,
    *,
    reference: Reference | None = None,
    qc_config: QcConfig | None = None,
    aligner_config: AlignerConfig | None = None,
    tree: ReferenceTree | None = None,
    n_jobs: int = 1,
) -> Iterator[GenomeReport]:
    """Align, call and QC genomes one at a time, in input order (streams large files).

    Parameters
    ----------
    sequences
        FASTA path (plain/.gz/.xz), ``{name: sequence}``, or ``(name, sequence)`` pairs.
    reference
        Reference and ORFs; ``None``: SARS-CoV-2 Wuhan-Hu-1 with Nextclade's gene map.
    qc_config, aligner_config
        Thresholds and alignment settings.
    tree
        Reference tree for the private-mutation and SNP-cluster rules (``None``: not run).
    n_jobs
        Worker processes for alignment.
    """
    reference = reference or Reference.sarscov2()
    side: deque[tuple[SequenceStats, bool]] = deque()

    def feed() -> Iterator[tuple[str, str]]:
        for name, seq, lower in _records(sequences):
            side.append((sequence_stats(seq), lower))
            yield name, seq

    for name, aln, muts in call_many(
        feed(), reference=reference, config=aligner_config, n_jobs=n_jobs
    ):
        stats, lower = side.popleft()
        qc = evaluate_qc(
            stats,
            muts if aln.is_aligned else None,
            len(reference.sequence),
            qc_config,
            tree=tree,
            orf_checks=bool(reference.orfs),
        )
        yield GenomeReport(name, stats, aln, muts, qc, lower)


def with_progress(reports: Iterable[GenomeReport], progress: bool) -> Iterable[GenomeReport]:
    """Wrap in a rich progress bar when asked (rank 0 only)."""
    if not progress:
        return reports
    from lifelm._core.progress import track

    return track(reports, description="genomes")


def qc_row(rep: GenomeReport) -> dict[str, object]:
    """Nextclade-style QC columns of one report."""
    q, s = rep.qc, rep.stats
    row: dict[str, object] = {
        "seqName": rep.name,
        "qc.overallScore": round(q.overall_score, 6),
        "qc.overallStatus": q.status,
        "qc.reasons": "; ".join(q.reasons),
        "length": s.length,
        "nFraction": round(s.n_fraction, 6),
        "ambiguousFraction": round(s.ambiguous_fraction, 6),
        "nRuns": s.n_runs,
        "longestNRun": s.longest_n_run,
        "totalMissing": q.total_missing,
        "coverage": round(q.coverage, 6),
        "frameShifts": ",".join(q.frameshifts),
        "qc.stopCodons": ",".join(q.stop_codons),
        "lowercase": rep.had_lowercase,
    }
    p = q.placement
    row["qc.privateMutations.node"] = p.node if p else ""
    row["qc.privateMutations.labeled"] = ",".join(p.labeled) if p else ""
    row["qc.privateMutations.unlabeled"] = ",".join(p.unlabeled) if p else ""
    row["qc.privateMutations.reversions"] = ",".join(p.reversions) if p else ""
    row["qc.snpClusters.clusters"] = ",".join(f"{a}-{b}" for a, b in q.snp_clusters)
    for rule in RULES:
        score = q.scores.get(rule, float("nan"))
        row[f"qc.{rule}.score"] = round(score, 6) if score == score else float("nan")
        row[f"qc.{rule}.status"] = q.rules.get(rule, "")
    return row


def _join(
    table: pd.DataFrame, metadata: str | Path | pd.DataFrame | None, key: str | None
) -> pd.DataFrame:
    if metadata is None or table.empty:
        return table
    joined = join_metadata(table["seqName"].tolist(), metadata, key=key)
    import logging

    logging.getLogger("lifelm").info("metadata %s", joined.summary())
    extra = joined.table.drop(columns=["seqName"])
    extra = extra[[c for c in extra.columns if c not in table.columns]]
    out = pd.concat([table.reset_index(drop=True), extra.reset_index(drop=True)], axis=1)
    out.attrs["metadata_join"] = joined
    return out


def genome_qc(
    sequences: Sequences,
    *,
    reference: Reference | None = None,
    config: QcConfig | None = None,
    tree: ReferenceTree | str | Path | None = None,
    metadata: str | Path | pd.DataFrame | None = None,
    metadata_key: str | None = None,
    n_jobs: int = 1,
    progress: bool = False,
) -> pd.DataFrame:
    """QC every genome: status good/mediocre/bad with reasons, one row per sequence.

    Parameters
    ----------
    sequences
        FASTA path (plain/.gz/.xz), ``{name: sequence}``, or ``(name, sequence)`` pairs.
    reference
        ``None``: SARS-CoV-2 Wuhan-Hu-1.
    config
        QC thresholds.
    tree
        Reference tree (Auspice JSON path, e.g. Nextclade's dataset ``tree.json``, or a
        :class:`ReferenceTree`) for the private-mutation and SNP-cluster rules; ``None``: those
        two rules are not run (empty status).
    metadata
        TSV path or DataFrame joined by sequence name (names missing on either side are in
        ``df.attrs["metadata_join"]`` and logged).
    metadata_key
        Metadata column with the names (``None``: the best-matching column).
    n_jobs
        Worker processes.
    progress
        Show a progress bar.

    Returns
    -------
    pandas.DataFrame
        ``seqName``, ``qc.overallScore``, ``qc.overallStatus``, ``qc.reasons``, ``length``,
        ``nFraction``, ``ambiguousFraction``, ``nRuns``, ``longestNRun``, ``totalMissing``,
        ``coverage``, ``frameShifts``, ``qc.stopCodons``, ``lowercase``, the private mutations,
        ``qc.<rule>.score`` and ``qc.<rule>.status`` per rule, then metadata (docs/genomes.md).
    """
    reference = reference or Reference.sarscov2()
    if tree is not None and not isinstance(tree, ReferenceTree):
        tree = ReferenceTree.from_auspice(tree, reference.sequence)
    reports = analyse_genomes(
        sequences, reference=reference, qc_config=config, tree=tree, n_jobs=n_jobs
    )
    table = pd.DataFrame([qc_row(r) for r in with_progress(reports, progress)])
    if table.empty:
        raise InputError("no genomes were given (the input has no FASTA record).")
    return _join(table, metadata, metadata_key)
