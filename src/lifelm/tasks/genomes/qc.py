"""Genome QC as a table: one row per sequence, columns that join to Nextclade's output.

``genome_qc`` reads a FASTA (or takes ``(name, sequence)`` pairs), aligns every genome to the
reference, applies :class:`~lifelm.data.genomes.qc.QcConfig`'s rules and returns a DataFrame.
Empty or unalignable records get ``qc.overallStatus == "bad"`` with a reason, never an exception.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lifelm.data.genomes.align import AlignerConfig, Alignment, Mutations, Reference, call_many
from lifelm.data.genomes.qc import QcConfig, QcResult, SequenceStats, evaluate_qc, sequence_stats
from lifelm.io.fasta import iter_fasta, join_metadata

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


def _records(sequences: Sequences) -> Iterator[tuple[str, str, bool]]:
    if isinstance(sequences, (str, Path)):
        for rec in iter_fasta(sequences, empty="keep"):
            yield rec.name, rec.sequence, rec.had_lowercase
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
            stats, muts if aln.is_aligned else None, len(reference.sequence), qc_config
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
    for rule, status in q.rules.items():
        row[f"qc.{rule}.status"] = status
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
        ``seqName``, ``qc.overallStatus``, ``qc.reasons``, ``length``, ``nFraction``,
        ``ambiguousFraction``, ``nRuns``, ``longestNRun``, ``totalMissing``, ``coverage``,
        ``frameShifts``, ``qc.stopCodons``, ``lowercase``, ``qc.<rule>.status``, then metadata.
    """
    reports = analyse_genomes(sequences, reference=reference, qc_config=config, n_jobs=n_jobs)
    table = pd.DataFrame([qc_row(r) for r in with_progress(reports, progress)])
    return _join(table, metadata, metadata_key)
