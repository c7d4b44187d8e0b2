"""Per-sequence quality control with Nextclade's scores, thresholds and rules.

Nextclade's definitions (its QC documentation and the SARS-CoV-2 dataset's ``pathogen.json``):

* every rule gives a score; a score below 30 is ``good``, below 100 ``mediocre``, else ``bad``;
* the overall score is ``sum(score_i ** 2 / 100)`` over the rules, graded with the same thresholds;
* ``missingData``: ``max(0, N - 300) / 2700 * 100`` where ``N`` counts ``N`` bases inside the
  alignment (uncovered ends are not counted, as in Nextclade);
* ``mixedSites``: ``100 * (non-ACGTN bases) / 10``;
* ``privateMutations``: with the genome placed on a reference tree, ``max(0, 4 * labelled +
  6 * reversions + 1 * unlabelled - 8) * 100 / 24`` over its private substitutions;
* ``snpClusters``: 50 per cluster of more than 6 private substitutions within 100 nt;
* ``frameShifts`` and ``stopCodons``: 75 per frame shift / premature stop codon that is not in
  the known list (ORF3a:257-276 and ORF3a:259-276 frame shifts; ORF8:27 and ORF8:68 stops).

The private-mutation and SNP-cluster rules need a reference tree (:class:`ReferenceTree`, an
Auspice JSON such as Nextclade's dataset ``tree.json``). Without one they are reported as not run
(empty status), never as good.

LifeLM adds two sanity rules Nextclade does not have, which only fire on grossly wrong input:
``length`` (ungapped length above ``max_length_ratio`` times the reference: score 100, bad) and
``referenceSpan`` (share of the reference reached by the alignment below ``min_span_mediocre``:
score 75, which alone makes the overall status mediocre as one frame shift does; below
``min_span_bad`` or no alignment at all: score 100). Set them to ``None`` to
score exactly as Nextclade does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lifelm._core.errors import InputError
from lifelm.data.genomes.align import Mutations

Status = Literal["good", "mediocre", "bad"]
_N_RUN = re.compile(r"N+")
_AMBIGUOUS = frozenset("RYSWKMBDHV")
_BASES = "ACGT"

#: Rules in the order their columns are written.
RULES = (
    "missingData",
    "mixedSites",
    "privateMutations",
    "snpClusters",
    "frameShifts",
    "stopCodons",
    "length",
    "referenceSpan",
)


def grade(score: float) -> Status:
    """Nextclade's status of a score: good below 30, mediocre below 100, bad from 100."""
    return "bad" if score >= 100 else "mediocre" if score >= 30 else "good"


@cache
def _nextclade_sarscov2() -> dict[str, Any]:
    text = resources.files("lifelm").joinpath("resources/sarscov2_nextclade_qc.json").read_text()
    return json.loads(text)


@dataclass(frozen=True)
class QcConfig:
    """Parameters of the QC rules (defaults: Nextclade's SARS-CoV-2 dataset)."""

    missing_score_bias: int = 300  # N not penalised
    missing_threshold: int = 2700  # N beyond the bias that give score 100
    mixed_sites_threshold: int = 10  # non-ACGTN bases that give score 100
    private_typical: float = 8.0  # weighted private substitutions not penalised
    private_cutoff: float = 24.0  # weighted excess that gives score 100
    weight_labeled: float = 4.0  # private substitution known elsewhere in the tree (clade-defining)
    weight_reversion: float = 6.0  # private reversion to the reference base
    weight_unlabeled: float = 1.0  # any other private substitution
    snp_window: int = 100  # nt
    snp_cluster_cutoff: int = 6  # more than this many private substitutions in a window: a cluster
    snp_score_weight: float = 50.0  # score per cluster
    frameshift_score: float = 75.0  # per unexpected frame shift
    stop_codon_score: float = 75.0  # per unexpected premature stop codon
    ignored_stop_codons: frozenset[str] = field(
        default_factory=lambda: frozenset(_nextclade_sarscov2()["ignoredStopCodons"])
    )  # GENE:codon, 1-based (Nextclade's 90 known stops)
    ignored_frameshifts: frozenset[str] = field(
        default_factory=lambda: frozenset(_nextclade_sarscov2()["ignoredFrameShifts"])
    )  # GENE:first-last codon, 1-based inclusive (Nextclade lists them 0-based, end excluded)
    labeled_substitutions: frozenset[str] = field(
        default_factory=lambda: frozenset(_nextclade_sarscov2()["labeledSubstitutions"])
    )  # POSALT (e.g. "241T"): Nextclade's clade-labelled substitutions; empty: the tree's clade branches
    max_length_ratio: float | None = 1.1  # LifeLM: ungapped length above this x reference: bad
    min_span_mediocre: float | None = 0.9  # LifeLM: reference reached below this share: mediocre
    min_span_bad: float | None = 0.5  # LifeLM: below this share (or not aligned): bad

    @classmethod
    def from_pathogen_json(cls, path: str | Path, **overrides: Any) -> QcConfig:
        """Parameters from a Nextclade dataset's ``pathogen.json`` (its ``qc`` and ``mutLabels``)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            qc = data["qc"]
        except (OSError, ValueError, KeyError) as err:
            raise InputError(
                f"{path}: not a Nextclade pathogen.json with a 'qc' section ({err}); give the "
                "dataset's pathogen.json or leave the option out for SARS-CoV-2's defaults."
            ) from err
        kw: dict[str, Any] = {}  # JSON values; the dataclass fields type them
        md, ms = qc.get("missingData", {}), qc.get("mixedSites", {})
        pm, sc = qc.get("privateMutations", {}), qc.get("snpClusters", {})
        pairs = [
            ("missing_score_bias", md, "scoreBias"),
            ("missing_threshold", md, "missingDataThreshold"),
            ("mixed_sites_threshold", ms, "mixedSitesThreshold"),
            ("private_typical", pm, "typical"),
            ("private_cutoff", pm, "cutoff"),
            ("weight_labeled", pm, "weightLabeledSubstitutions"),
            ("weight_reversion", pm, "weightReversionSubstitutions"),
            ("weight_unlabeled", pm, "weightUnlabeledSubstitutions"),
            ("snp_window", sc, "windowSize"),
            ("snp_cluster_cutoff", sc, "clusterCutOff"),
            ("snp_score_weight", sc, "scoreWeight"),
        ]
        for name, section, key in pairs:
            if key in section:
                kw[name] = section[key]
        stops = qc.get("stopCodons", {}).get("ignoredStopCodons", [])
        kw["ignored_stop_codons"] = frozenset(
            f"{s.get('cdsName', s.get('geneName'))}:{s['codon'] + 1}" for s in stops
        )
        shifts = qc.get("frameShifts", {}).get("ignoredFrameShifts", [])
        kw["ignored_frameshifts"] = frozenset(
            f"{s.get('cdsName', s.get('geneName'))}:{s['codonRange']['begin'] + 1}-{s['codonRange']['end']}"
            for s in shifts
        )
        kw["labeled_substitutions"] = frozenset(data.get("mutLabels", {}).get("nucMutLabelMap", {}))
        kw.update(overrides)
        return cls(**kw)


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


# --------------------------------------------------------------------------------------------
# Reference tree: placement and private mutations
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a genome sits on the reference tree and what it has beyond that node."""

    node: str  # name of the nearest node
    clade: str  # its clade (``clade_membership`` / ``clade_nextstrain``), "" when unknown
    labeled: tuple[str, ...]  # private substitutions seen on a clade-defining branch (C241T)
    unlabeled: tuple[str, ...]  # other private substitutions
    reversions: tuple[str, ...]  # the node's substitutions where the genome has the reference base

    @property
    def positions(self) -> list[int]:
        """Positions of the private substitutions (reversions included), sorted."""
        return sorted(int(m[1:-1]) for m in (*self.labeled, *self.unlabeled, *self.reversions))


class ReferenceTree:
    """Nodes of a reference tree as sets of substitutions from the reference, for placement.

    Parameters
    ----------
    names, clades
        One per node.
    node_subs
        One ``{position (1-based): base}`` per node: substitutions accumulated from the root.
    labeled
        Substitutions ``(position, base)`` that define a clade somewhere in the tree.
    reference
        Reference sequence (for reversions).
    """

    def __init__(
        self,
        names: Sequence[str],
        clades: Sequence[str],
        node_subs: Sequence[dict[int, str]],
        labeled: set[tuple[int, str]],
        reference: str,
    ) -> None:
        from scipy import sparse

        self.names, self.clades, self.reference = list(names), list(clades), reference
        self.labeled = frozenset(labeled)
        self._node_subs = list(node_subs)
        n_ref = len(reference)
        rows, feats = [], []
        for i, subs in enumerate(node_subs):
            for p, b in subs.items():
                rows.append(i)
                feats.append((p - 1) * 4 + _BASES.index(b))
        data = np.ones(len(rows), dtype=np.float32)
        shape = (len(node_subs), n_ref * 4)
        self._m = sparse.csr_matrix((data, (rows, feats)), shape=shape)
        pos = np.asarray(feats, dtype=np.int64) // 4
        self._mpos = sparse.csr_matrix((data, (rows, pos)), shape=(len(node_subs), n_ref))

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_auspice(cls, path: str | Path, reference: str) -> ReferenceTree:
        """Read an Auspice v2 JSON tree (plain, .gz or .xz), e.g. Nextclade's ``tree.json``."""
        from lifelm.io.fasta import open_text

        path = Path(path)
        try:
            with open_text(path) as fh:
                data = json.load(fh)
            root = data["tree"]
        except (OSError, ValueError, KeyError, EOFError) as err:
            raise InputError(
                f"{path}: not a readable Auspice JSON tree ({err}); give Nextclade's dataset "
                "tree.json (plain, .gz or .xz)."
            ) from err
        names: list[str] = []
        clades: list[str] = []
        subs_list: list[dict[int, str]] = []
        labeled: set[tuple[int, str]] = set()
        stack: list[tuple[dict, dict[int, str]]] = [(root, {})]
        while stack:
            node, parent = stack.pop()
            subs = dict(parent)
            branch = node.get("branch_attrs", {})
            muts = branch.get("mutations", {}).get("nuc", [])
            is_clade = bool(branch.get("labels", {}).get("clade"))
            for m in muts:
                p, alt = int(m[1:-1]), m[-1]
                if p < 1 or p > len(reference):
                    continue
                if alt not in _BASES or alt == reference[p - 1]:
                    subs.pop(p, None)
                else:
                    subs[p] = alt
                    if is_clade:
                        labeled.add((p, alt))
            attrs = node.get("node_attrs", {})
            clade = attrs.get("clade_membership", {}).get("value", "") or attrs.get(
                "clade_nextstrain", {}
            ).get("value", "")
            names.append(str(node.get("name", f"node{len(names)}")))
            clades.append(str(clade))
            subs_list.append(subs)
            for child in reversed(node.get("children", [])):
                stack.append((child, subs))
        if not names:
            raise InputError(f"{path}: the tree has no nodes.")
        return cls(names, clades, subs_list, labeled, reference)

    def place(self, mutations: Mutations, labeled: frozenset[str] = frozenset()) -> Placement:
        """Nearest node (fewest differences at positions the genome covers) and private mutations.

        ``labeled``: substitutions as ``POSALT`` (``"241T"``) that count as labelled; empty: those
        on the tree's clade-defining branches.
        """
        n_ref = len(self.reference)
        covered = np.zeros(n_ref, dtype=np.float32)
        if mutations.alignment_end:
            covered[mutations.alignment_start - 1 : mutations.alignment_end] = 1
        for a, b in (*mutations.missing, *mutations.deletions):
            covered[a - 1 : b] = 0
        for p, _ in mutations.non_acgtn:
            covered[p - 1] = 0
        q = {p: alt for p, _, alt in mutations.substitutions if alt in _BASES}
        feats = np.asarray([(p - 1) * 4 + _BASES.index(b) for p, b in q.items()], dtype=np.int64)
        shared = np.asarray(self._m[:, feats].sum(1)).ravel() if len(feats) else np.zeros(len(self))
        node_cov = self._mpos @ covered
        dist = (len(q) - shared) + (node_cov - shared)
        best = int(np.argmin(dist))
        node = self._node_subs[best]
        labeled_out: list[str] = []
        unlabeled: list[str] = []
        reversions: list[str] = []
        for p, alt in sorted(q.items()):
            if node.get(p) == alt:
                continue
            ref = self.reference[p - 1]
            known = f"{p}{alt}" in labeled if labeled else (p, alt) in self.labeled
            (labeled_out if known else unlabeled).append(f"{ref}{p}{alt}")
        for p, alt in sorted(node.items()):
            if covered[p - 1] and p not in q:
                reversions.append(f"{alt}{p}{self.reference[p - 1]}")
        return Placement(
            self.names[best],
            self.clades[best],
            tuple(labeled_out),
            tuple(unlabeled),
            tuple(reversions),
        )


def snp_clusters(positions: Sequence[int], window: int, cutoff: int) -> list[tuple[int, int]]:
    """Clusters of more than ``cutoff`` positions within ``window`` nt (overlapping windows merged)."""
    pos = sorted(positions)
    clusters: list[tuple[int, int]] = []
    j = 0
    for i, p in enumerate(pos):
        while pos[j] <= p - window:
            j += 1
        if i - j + 1 > cutoff:  # the window ending at p holds too many
            start = pos[j]
            if clusters and start <= clusters[-1][1]:
                clusters[-1] = (clusters[-1][0], p)
            else:
                clusters.append((start, p))
    return clusters


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QcResult:
    """Scores, statuses and reasons of one sequence."""

    status: Status  # graded overall score
    reasons: tuple[str, ...]  # one plain sentence per rule that is not good
    rules: dict[str, Status | Literal[""]] = field(default_factory=dict)  # "" when not run
    scores: dict[str, float] = field(default_factory=dict)  # rule -> score (NaN when not run)
    overall_score: float = 0.0  # sum of score**2 / 100
    total_missing: int = 0  # N inside the alignment (Nextclade's totalMissing)
    coverage: float = 0.0  # share of reference positions covered by A/C/G/T
    frameshifts: tuple[str, ...] = ()  # unexpected, as GENE:first-last codon
    stop_codons: tuple[str, ...] = ()  # unexpected premature stops, as GENE:REFposALT
    placement: Placement | None = None  # on the reference tree, when one was given
    snp_clusters: tuple[tuple[int, int], ...] = ()  # first-last position of each cluster


def _finish(
    scores: dict[str, float],
    reasons: list[str],
    *,
    total_missing: int = 0,
    coverage: float = 0.0,
    frameshifts: tuple[str, ...] = (),
    stop_codons: tuple[str, ...] = (),
    placement: Placement | None = None,
    snp_clusters: tuple[tuple[int, int], ...] = (),
) -> QcResult:
    run = {k: v for k, v in scores.items() if not np.isnan(v)}
    overall = float(sum(v * v / 100 for v in run.values()))
    rules: dict[str, Status] = {k: grade(v) for k, v in run.items()}
    full_rules: dict[str, Status | Literal[""]] = {k: rules.get(k, "") for k in RULES}
    full_scores = {k: scores.get(k, float("nan")) for k in RULES}
    return QcResult(
        grade(overall),
        tuple(reasons),
        full_rules,
        full_scores,
        overall,
        total_missing=total_missing,
        coverage=coverage,
        frameshifts=frameshifts,
        stop_codons=stop_codons,
        placement=placement,
        snp_clusters=snp_clusters,
    )


# Long because it applies Nextclade's rules one after another in Nextclade's order, so each block can be checked against its documentation.
def evaluate_qc(
    stats: SequenceStats,
    mutations: Mutations | None,
    reference_length: int,
    config: QcConfig | None = None,
    *,
    tree: ReferenceTree | None = None,
    orf_checks: bool = True,
) -> QcResult:
    """Apply the QC rules to one sequence.

    Parameters
    ----------
    stats
        From :func:`sequence_stats`.
    mutations
        Calls from the aligner, or ``None`` when the sequence was not aligned.
    reference_length
        Length of the reference.
    config
        Rule parameters.
    tree
        Reference tree for the private-mutation and SNP-cluster rules (``None``: not run).
    orf_checks
        ``False`` when the reference has no ORFs: the frame-shift and stop-codon rules are then
        not run (empty status), never reported as good.

    Returns
    -------
    QcResult
    """
    cfg = config or QcConfig()
    nan = float("nan")
    scores: dict[str, float] = dict.fromkeys(RULES, nan)
    reasons: list[str] = []
    if stats.length == 0:
        scores["referenceSpan"] = 100.0
        return _finish(scores, ["empty sequence (no bases after the header)"])
    if cfg.max_length_ratio is not None:
        scores["length"] = 0.0
        if stats.length > cfg.max_length_ratio * reference_length:
            scores["length"] = 100.0
            reasons.append(
                f"too long: {stats.length:,} nt, {stats.length / reference_length:.1f}x the "
                f"reference ({reference_length:,} nt); not one genome of this species "
                "(concatenated records or the wrong reference?)"
            )
    aligned = mutations is not None and mutations.alignment_end > 0
    if not aligned:
        scores["referenceSpan"] = 100.0
        reasons.append(
            "all N" if stats.n_count == stats.length else "does not align to the reference"
        )
        scores["mixedSites"] = 100.0 * stats.ambiguous_count / cfg.mixed_sites_threshold
        return _finish(scores, reasons, total_missing=stats.n_count)
    assert mutations is not None
    span = (mutations.alignment_end - mutations.alignment_start + 1) / reference_length
    if cfg.min_span_bad is not None or cfg.min_span_mediocre is not None:
        bad = cfg.min_span_bad is not None and span < cfg.min_span_bad
        med = cfg.min_span_mediocre is not None and span < cfg.min_span_mediocre
        scores["referenceSpan"] = 100.0 if bad else 75.0 if med else 0.0
        if bad or med:
            reasons.append(f"partial genome: the alignment reaches {span:.0%} of the reference")
    total_missing = sum(b - a + 1 for a, b in mutations.missing)
    n_deleted = sum(b - a + 1 for a, b in mutations.deletions)
    covered = (
        mutations.alignment_end
        - mutations.alignment_start
        + 1
        - total_missing
        - n_deleted
        - len(mutations.non_acgtn)
    )
    coverage = covered / reference_length
    scores["missingData"] = (
        max(0.0, total_missing - cfg.missing_score_bias) / cfg.missing_threshold * 100.0
    )
    if scores["missingData"] >= 30:
        reasons.append(
            f"{total_missing:,} missing bases (N); longest N run {stats.longest_n_run:,}"
        )
    n_mixed = len(mutations.non_acgtn)
    scores["mixedSites"] = 100.0 * n_mixed / cfg.mixed_sites_threshold
    if scores["mixedSites"] >= 30:
        reasons.append(f"{n_mixed} mixed (ambiguous) sites")
    shifts = tuple(
        f"{g}:{a}-{b}"
        for g, a, b in mutations.frameshifts
        if f"{g}:{a}-{b}" not in cfg.ignored_frameshifts
    )
    scores["frameShifts"] = cfg.frameshift_score * len(shifts) if orf_checks else nan
    if shifts:
        reasons.append(f"{len(shifts)} frame shift(s): {', '.join(shifts)}")
    stops = tuple(
        str(s) for s in mutations.stop_codons if f"{s.gene}:{s.pos}" not in cfg.ignored_stop_codons
    )
    scores["stopCodons"] = cfg.stop_codon_score * len(stops) if orf_checks else nan
    if stops:
        reasons.append(f"{len(stops)} premature stop codon(s): {', '.join(stops)}")
    placement = None
    clusters: list[tuple[int, int]] = []
    if tree is not None:
        placement = tree.place(mutations, cfg.labeled_substitutions)
        weighted = (
            cfg.weight_labeled * len(placement.labeled)
            + cfg.weight_reversion * len(placement.reversions)
            + cfg.weight_unlabeled * len(placement.unlabeled)
        )
        scores["privateMutations"] = (
            max(0.0, weighted - cfg.private_typical) * 100 / cfg.private_cutoff
        )
        if scores["privateMutations"] >= 30:
            reasons.append(
                f"{len(placement.labeled) + len(placement.unlabeled)} private substitutions and "
                f"{len(placement.reversions)} reversions beyond tree node {placement.node}"
            )
        clusters = snp_clusters(placement.positions, cfg.snp_window, cfg.snp_cluster_cutoff)
        scores["snpClusters"] = cfg.snp_score_weight * len(clusters)
        if clusters:
            reasons.append(
                f"{len(clusters)} cluster(s) of private mutations: "
                + ", ".join(f"{a}-{b}" for a, b in clusters)
            )
    return _finish(
        scores,
        reasons,
        total_missing=total_missing,
        coverage=coverage,
        frameshifts=shifts,
        stop_codons=stops,
        placement=placement,
        snp_clusters=tuple(clusters),
    )
