"""Per-sequence quality control in the manner of Nextclade: metrics, rules, a status with reasons.

Metrics come from the raw sequence (length, N and other ambiguous bases, N runs) and, once
aligned, from the calls (reference coverage, frameshifts and premature stop codons in ORFs).
Each rule gives ``good``, ``mediocre`` or ``bad``; the sequence's status is the worst, and every
rule that is not good adds a reason in plain words. The default thresholds follow Nextclade's
SARS-CoV-2 dataset where it has a rule (missing data, mixed sites, frameshifts, stop codons) and
add two of its implicit ones (too short, does not align).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from lifelm.data.genomes.align import Mutations

Status = Literal["good", "mediocre", "bad"]
_ORDER = {"good": 0, "mediocre": 1, "bad": 2}
_N_RUN = re.compile(r"N+")
_AMBIGUOUS = frozenset("RYSWKMBDHV")


@dataclass(frozen=True)
class QcConfig:
    """Thresholds of the QC rules (a value at or above a threshold takes that status)."""

    min_length_mediocre: int = (
        29_000  # ungapped length below this: mediocre (SARS-CoV-2 is 29,903 nt)
    )
    min_length_bad: int = 25_000  # below this: bad (a partial genome)
    missing_mediocre: int = (
        1_110  # N plus unreached reference bases: Nextclade's score 30 (bias 300 + 0.3 * 2,700)
    )
    missing_bad: int = 3_000  # Nextclade's score 100 (bias 300 + 2,700)
    mixed_sites_mediocre: int = (
        3  # ambiguous IUPAC codes other than N (Nextclade's mixedSites: 10 = score 100)
    )
    mixed_sites_bad: int = 10
    frameshifts_mediocre: int = (
        1  # unexpected frameshifts (Nextclade scores 75 each: 1 mediocre, 2 bad)
    )
    frameshifts_bad: int = 2
    stop_codons_mediocre: int = 1  # unexpected premature stop codons (75 each, as frameshifts)
    stop_codons_bad: int = 2
    ignored_stop_codons: tuple[str, ...] = (
        "ORF8:27",
        "ORF8:68",
    )  # GENE:codon stops known in lineages (Alpha's ORF8:Q27*)
    ignored_frameshifts: tuple[str, ...] = ()  # GENE:first-last codon ranges to ignore
    min_aligned_fraction: float = 0.5  # reference covered below this: bad ("does not align")


@dataclass(frozen=True)
class SequenceStats:
    """What the raw sequence alone says."""

    length: int  # bases without gaps
    n_count: int  # N
    ambiguous_count: int  # IUPAC codes other than A/C/G/T/N
    n_runs: int  # stretches of N
    longest_n_run: int  # longest stretch of N

    @property
    def n_fraction(self) -> float:
        """Share of N among the bases."""
        return self.n_count / self.length if self.length else 1.0

    @property
    def ambiguous_fraction(self) -> float:
        """Share of non-ACGTN IUPAC codes among the bases."""
        return self.ambiguous_count / self.length if self.length else 0.0


def sequence_stats(sequence: str) -> SequenceStats:
    """Length, N and ambiguous counts and N runs of a (possibly gapped) sequence."""
    seq = sequence.replace("-", "").upper()
    runs = [m.end() - m.start() for m in _N_RUN.finditer(seq)]
    return SequenceStats(
        length=len(seq),
        n_count=seq.count("N"),
        ambiguous_count=sum(seq.count(c) for c in _AMBIGUOUS),
        n_runs=len(runs),
        longest_n_run=max(runs, default=0),
    )


@dataclass(frozen=True)
class QcResult:
    """Status of one sequence and why."""

    status: Status  # worst status over the rules
    reasons: tuple[str, ...]  # one plain sentence per rule that is not good
    rules: dict[str, Status] = field(default_factory=dict)  # rule name -> status
    total_missing: int = 0  # N plus reference positions the genome does not reach
    coverage: float = 0.0  # share of reference positions covered by A/C/G/T
    frameshifts: tuple[str, ...] = ()  # unexpected, as GENE:first-last codon
    stop_codons: tuple[str, ...] = ()  # unexpected premature stops, as GENE:REFposALT


def _grade(value: float, mediocre: float, bad: float) -> Status:
    return "bad" if value >= bad else "mediocre" if value >= mediocre else "good"


def evaluate_qc(
    stats: SequenceStats,
    mutations: Mutations | None,
    reference_length: int,
    config: QcConfig | None = None,
) -> QcResult:
    """Apply the QC rules to one sequence.

    Parameters
    ----------
    stats
        From :func:`sequence_stats`.
    mutations
        Calls from the aligner, or ``None`` when the sequence was not aligned (then only the
        sequence rules apply, and a non-empty sequence gets "not aligned" as a reason).
    reference_length
        Length of the reference (for coverage and missing data).
    config
        Thresholds.

    Returns
    -------
    QcResult
    """
    cfg = config or QcConfig()
    rules: dict[str, Status] = {}
    reasons: list[str] = []
    if stats.length == 0:
        return QcResult("bad", ("empty sequence (no bases after the header)",), {"length": "bad"})
    rules["length"] = (
        "bad"
        if stats.length < cfg.min_length_bad
        else "mediocre"
        if stats.length < cfg.min_length_mediocre
        else "good"
    )
    if rules["length"] != "good":
        reasons.append(f"short: {stats.length:,} nt (good from {cfg.min_length_mediocre:,})")
    rules["mixedSites"] = _grade(
        stats.ambiguous_count, cfg.mixed_sites_mediocre, cfg.mixed_sites_bad
    )
    if rules["mixedSites"] != "good":
        reasons.append(f"{stats.ambiguous_count} ambiguous (mixed) bases")
    aligned = mutations is not None and mutations.alignment_end > 0
    if not aligned:
        rules["alignment"] = "bad"
        what = "all N" if stats.n_count == stats.length else "does not align to the reference"
        reasons.append(what)
        total_missing = reference_length
        return QcResult("bad", tuple(reasons), rules, total_missing, 0.0)
    assert mutations is not None
    uncovered = reference_length - (mutations.alignment_end - mutations.alignment_start + 1)
    n_missing_aligned = sum(b - a + 1 for a, b in mutations.missing)
    n_deleted = sum(b - a + 1 for a, b in mutations.deletions)
    total_missing = n_missing_aligned + uncovered
    covered = reference_length - total_missing - n_deleted - len(mutations.non_acgtn)
    coverage = covered / reference_length
    if coverage < cfg.min_aligned_fraction:
        rules["alignment"] = "bad"
        reasons.append(f"only {coverage:.0%} of the reference covered by A/C/G/T")
    rules["missingData"] = _grade(total_missing, cfg.missing_mediocre, cfg.missing_bad)
    if rules["missingData"] != "good":
        reasons.append(
            f"{total_missing:,} missing bases (N or not reached; longest N run {stats.longest_n_run:,})"
        )
    shifts = tuple(
        f"{g}:{a}-{b}"
        for g, a, b in mutations.frameshifts
        if f"{g}:{a}-{b}" not in cfg.ignored_frameshifts
    )
    rules["frameShifts"] = _grade(len(shifts), cfg.frameshifts_mediocre, cfg.frameshifts_bad)
    if shifts:
        reasons.append(f"{len(shifts)} frameshift(s): {', '.join(shifts)}")
    stops = tuple(
        str(s) for s in mutations.stop_codons if f"{s.gene}:{s.pos}" not in cfg.ignored_stop_codons
    )
    rules["stopCodons"] = _grade(len(stops), cfg.stop_codons_mediocre, cfg.stop_codons_bad)
    if stops:
        reasons.append(f"{len(stops)} premature stop codon(s): {', '.join(stops)}")
    status: Status = max(rules.values(), key=_ORDER.__getitem__)
    return QcResult(status, tuple(reasons), rules, total_missing, coverage, shifts, stops)
