"""Mutation calls as a table whose columns join to Nextclade's (``seqName``, ``substitutions``, ...).

Notation as Nextclade: ``substitutions`` ``C241T,A23403G``; ``deletions`` ranges
``21765-21770,28271``; ``insertions`` ``22204:GAGCCAGAA``; ``aaSubstitutions`` ``S:D614G,ORF8:Q27*``;
``aaDeletions`` ``S:H69-,S:V70-``; ``missing`` N ranges ``1-54``; ``nonACGTNs`` ``R:1234``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lifelm._core.errors import InputError
from lifelm.data.genomes.align import Mutations, Reference, format_ranges
from lifelm.data.genomes.qc import QcConfig
from lifelm.tasks.genomes.qc import GenomeReport, Sequences, _join, analyse_genomes, with_progress


def mutation_strings(m: Mutations) -> dict[str, str]:
    """Nextclade-notation strings of one genome's calls."""
    return {
        "substitutions": ",".join(f"{r}{p}{a}" for p, r, a in m.substitutions),
        "deletions": format_ranges(m.deletions),
        "insertions": ",".join(f"{p}:{s}" for p, s in m.insertions),
        "aaSubstitutions": ",".join(str(x) for x in m.aa_substitutions),
        "aaDeletions": ",".join(str(x) for x in m.aa_deletions),
        "missing": format_ranges(m.missing),
        "nonACGTNs": ",".join(f"{c}:{p}" for p, c in m.non_acgtn),
        "frameShifts": ",".join(f"{g}:{a}-{b}" for g, a, b in m.frameshifts),
    }


#: Rules whose failure means the calls would be garbage (not one genome of this reference).
SANITY_RULES = ("length", "referenceSpan")


def is_callable(rep: GenomeReport) -> bool:
    """Whether the calls of a genome mean anything: it aligned and is not far longer than the reference."""
    return rep.alignment.is_aligned and all(rep.qc.rules.get(r) != "bad" for r in SANITY_RULES)


def mutation_row(rep: GenomeReport) -> dict[str, object]:
    """One output row: names, QC status, calls, counts (calls left empty when not callable)."""
    called = is_callable(rep)
    m = rep.mutations if called else Mutations()
    return {
        "seqName": rep.name,
        "called": called,
        "qc.overallStatus": rep.qc.status,
        "qc.reasons": "; ".join(rep.qc.reasons),
        "alignmentStart": m.alignment_start,
        "alignmentEnd": m.alignment_end,
        **mutation_strings(m),
        "totalSubstitutions": len(m.substitutions),
        "totalDeletions": sum(b - a + 1 for a, b in m.deletions),
        "totalInsertions": sum(len(s) for _, s in m.insertions),
        "totalMissing": rep.qc.total_missing,
        "totalNonACGTNs": len(m.non_acgtn),
        "totalAminoacidSubstitutions": len(m.aa_substitutions),
        "totalAminoacidDeletions": len(m.aa_deletions),
        "coverage": round(rep.qc.coverage, 6) if called else 0.0,
        "strand": rep.alignment.strand if called else "",
    }


def call_mutations(
    sequences: Sequences,
    *,
    reference: Reference | None = None,
    qc_config: QcConfig | None = None,
    metadata: str | Path | pd.DataFrame | None = None,
    metadata_key: str | None = None,
    n_jobs: int = 1,
    progress: bool = False,
) -> pd.DataFrame:
    """Align genomes to the reference and call nucleotide and amino-acid mutations.

    Parameters
    ----------
    sequences
        FASTA path (plain/.gz/.xz), ``{name: sequence}``, or ``(name, sequence)`` pairs.
        Alignment gaps in the input are removed first; lower case is accepted.
    reference
        Reference and ORFs; ``None``: SARS-CoV-2 Wuhan-Hu-1 (MN908947.3), Nextclade's genes.
    qc_config
        QC thresholds for ``qc.overallStatus``.
    metadata, metadata_key
        Optional metadata table joined by sequence name (see :func:`genome_qc`).
    n_jobs
        Worker processes.
    progress
        Show a progress bar.

    Returns
    -------
    pandas.DataFrame
        One row per sequence: ``seqName``, ``called`` (``False``: the genome did not align, is
        empty, or is far longer than the reference, so its call columns are left empty rather
        than filled with garbage; ``qc.reasons`` says why), ``qc.overallStatus``, ``qc.reasons``,
        ``alignmentStart``, ``alignmentEnd``, ``substitutions``, ``deletions``, ``insertions``,
        ``aaSubstitutions``, ``aaDeletions``, ``missing``, ``nonACGTNs``, ``frameShifts``,
        ``total*`` counts, ``coverage``, ``strand``, then metadata columns.

    Examples
    --------
    >>> from lifelm.data.genomes.align import Reference
    >>> ref = Reference.sarscov2().sequence
    >>> df = call_mutations({"x": ref[:23402] + "G" + ref[23403:]})
    >>> df.loc[0, "aaSubstitutions"]
    'S:D614G'
    """
    reports = analyse_genomes(sequences, reference=reference, qc_config=qc_config, n_jobs=n_jobs)
    table = pd.DataFrame([mutation_row(r) for r in with_progress(reports, progress)])
    if table.empty:
        raise InputError("no genomes were given (the input has no FASTA record).")
    n_bad = int((~table["called"]).sum())
    if n_bad:
        logging.getLogger("lifelm").warning(
            "%d genome(s) not called (too long, not aligned or empty), e.g. %s: %s",
            n_bad,
            table.loc[~table["called"], "seqName"].iloc[0],
            table.loc[~table["called"], "qc.reasons"].iloc[0],
        )
    return _join(table, metadata, metadata_key)
