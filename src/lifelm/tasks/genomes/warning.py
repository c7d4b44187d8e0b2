"""Early warning of variants of concern: a walk-forward backtest over dated lineages.

The backtest walks forward in time over lineages with a "known since" date (for the Pango
consensus genomes: their Pango designation date). At every cutoff ``c_k`` (monthly by default) the
lineages dated before ``c_k`` are *known*; each lineage dated in ``[c_k, c_{k+1})`` is *new* and
is scored against the known set only:

(a) ``model_surprise``: ``log p(parent ORFs) - log p(lineage ORFs)`` under the codon model
    (nats; the parent is the nearest Pango ancestor known at the cutoff, or, for recombinants
    and lineages without a known ancestor, the nearest known lineage by nucleotide distance);
(b) ``embedding_novelty``: cosine distance of the lineage's mean codon-model embedding to the
    nearest known lineage's;
(c) ``mutation_score``: the codon model's scores of the lineage's new spike amino-acid changes
    (versus its parent), through a pluggable scorer (``None``: not computed, column NaN);
(d) ``combined``: the mean of (a), (b), (c)'s percentiles among every lineage scored before
    the cutoff (no fitted weights, so nothing to leak).

Baselines: ``new_spike_mutations`` (spike amino-acid changes versus the parent),
``nn_distance`` (nucleotide differences to the nearest known lineage); and, as an oracle-like
reference only, Nextclade's ``immune_escape``/``ace2_binding`` tip attributes (computed in
retrospect from later deep mutational scans; they did not exist when most lineages appeared).

A lineage is *flagged* when its score is above the ``1 - top_fraction`` quantile of that
method's scores of every lineage scored before the cutoff (the starting known set is scored
leave-one-out, so the first window has a reference too). No threshold, weight or label ever
uses a lineage dated at or after the cutoff; ``tests/test_genome_warning.py`` checks that
altering every record after a cutoff leaves every score and flag before it unchanged.

The codon model is fixed during the walk: it must have seen no genome dated after the first
cutoff (:func:`train_backtest_model` fits one on the lineages known at the start).
"""

from __future__ import annotations

import itertools
import json
import lzma
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from lifelm._core.errors import InputError
from lifelm.data.genomes.align import Reference, translate_codon
from lifelm.data.genomes.codons import CLS_ID, OrfLike, encode_codons, orf_sequence
from lifelm.data.genomes.datasets import pad_rows
from lifelm.models.codon_transformer import CodonTransformer, real_token_mask

#: Spike coordinates on Wuhan-Hu-1 (1-based nucleotides) and its receptor-binding domain (codons).
SPIKE_START = 21563
SPIKE_CODONS = 1273
RBD = (319, 541)

MODEL_METHODS = ("model_surprise", "embedding_novelty", "mutation_score", "combined")
BASELINE_METHODS = ("new_spike_mutations", "nn_distance")
ORACLE_METHODS = ("oracle_immune_escape", "oracle_ace2_binding")
METHODS = MODEL_METHODS + BASELINE_METHODS + ORACLE_METHODS


@dataclass(frozen=True)
class Variant:
    """A WHO-tracked variant: its root Pango lineage(s) and the WHO date it is compared with."""

    name: str
    roots: tuple[str, ...]
    who_date: str | None  # WHO VOC/VOI classification date (public WHO tracking page)
    who_note: str


#: The variants the issue asks about. WHO dates: WHO "Tracking SARS-CoV-2 variants" (VOC/VOI
#: classification). BA.2 and BA.4/5 were Omicron sublineages without a date of their own, and
#: XBB's is the date its sublineage XBB.1.5 became a VOI.
VARIANTS: tuple[Variant, ...] = (
    Variant("Alpha", ("B.1.1.7",), "2020-12-18", "VOC"),
    Variant("Beta", ("B.1.351",), "2020-12-18", "VOC"),
    Variant("Gamma", ("P.1",), "2021-01-11", "VOC"),
    Variant("Delta", ("B.1.617.2",), "2021-05-11", "VOC (VOI 2021-04-04)"),
    Variant("Omicron BA.1", ("BA.1",), "2021-11-26", "Omicron VOC"),
    Variant("Omicron BA.2", ("BA.2",), None, "no WHO date of its own (Omicron VOC 2021-11-26)"),
    Variant("Omicron BA.4/5", ("BA.4", "BA.5"), None, "no WHO date of its own"),
    Variant("XBB", ("XBB",), "2023-01-11", "XBB.1.5 VOI"),
    Variant("JN.1", ("JN.1",), "2023-12-18", "VOI"),
)


@dataclass(frozen=True)
class WarnConfig:
    """Settings of :func:`backtest` and :func:`evaluate`."""

    start: str = "2021-02-01"  # first cutoff; lineages dated before it form the starting set
    end: str | None = None  # last cutoff (None: the month after the last dated lineage)
    freq: str = "MS"  # pandas frequency of the cutoffs (MS = monthly)
    top_fraction: float = 0.1  # flag the top 10% (threshold from earlier lineages only)
    orfs: tuple[str, ...] = ("S",)  # ORFs the codon model reads
    context: int = 256  # tokens per window (spike: 1,274 tokens in 5 windows)
    batch_tokens: int = 16_384
    grew_min_descendants: int = 3  # "grew": at least this many designated descendant lineages
    never_grew_min_age_days: int = 180  # "never grew": no descendant and at least this old
    family_days: int = 90  # a variant counts as flagged early if its family is flagged within this
    max_n_fraction: float = 0.05  # genomes with more N/ambiguous bases in the ORFs: QC fail
    min_identity: float = 0.9  # identity to the reference below this: not this virus, QC fail


@dataclass
class WarnResult:
    """Everything :func:`warn` produces."""

    scores: pd.DataFrame  # one row per scored lineage (window, parent, every method's score/flag)
    variants: pd.DataFrame  # one row per variant x method
    alarms: pd.DataFrame  # one row per method: false-alarm rate, hit rate, AUROC
    qc: pd.DataFrame  # one row per genome: QC status and reason
    summary: dict[str, Any] = field(default_factory=dict)
    model: CodonTransformer | None = None  # the fixed codon model used (for reuse, e.g. novelty)


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def check_genomes(
    genomes: Mapping[str, str],
    *,
    reference: str | None = None,
    orfs: Sequence[OrfLike] | None = None,
    max_n_fraction: float = 0.05,
    min_identity: float = 0.9,
    source: str = "genomes",
) -> pd.DataFrame:
    """QC of reference-aligned genomes before any score: a table, or an error for a wrong file.

    Raises :class:`InputError` when the genomes are not in reference coordinates (not every one
    ``len(reference)`` characters: an unaligned file) or when none passes. A genome with more
    than ``max_n_fraction`` N/ambiguous bases in the ORFs read, or with identity to the
    reference below ``min_identity`` at called sites (another virus), gets ``qc_status`` "fail"
    and a reason; it is never scored.
    """
    ref = reference or Reference.sarscov2().sequence
    if not genomes:
        raise InputError(f"{source}: no genome given.")
    wrong = [(n, len(s)) for n, s in genomes.items() if len(s) != len(ref)]
    if wrong:
        raise InputError(
            f"{source}: {len(wrong)} of {len(genomes)} genomes are not {len(ref):,} characters "
            f"long (e.g. {wrong[0][0]!r}: {wrong[0][1]:,}), so they are not aligned to the "
            "reference. Give reference-aligned genomes (Nextclade's aligned.fasta, or align "
            "with `lifelm genomes mutations`)."
        )
    orfs = list(orfs) if orfs is not None else list(Reference.sarscov2().orfs)
    r = np.frombuffer(ref.upper().encode("latin-1"), dtype=np.uint8)
    in_orf = np.zeros(len(ref), dtype=bool)
    for o in orfs:
        for a, b in o.segments:
            in_orf[a - 1 : b] = True
    acgt = np.zeros(256, dtype=bool)
    acgt[[ord(c) for c in "ACGT"]] = True
    rows = []
    for name, s in genomes.items():
        g = np.frombuffer(s.upper().encode("latin-1"), dtype=np.uint8)
        called = acgt[g]
        gap = g == ord("-")
        unknown = ~called & ~gap
        n_frac = float(unknown[in_orf].mean()) if in_orf.any() else float(unknown.mean())
        both = called & acgt[r]
        identity = float((g[both] == r[both]).mean()) if both.any() else 0.0
        reasons = []
        if identity < min_identity:
            reasons.append(
                f"identity to the reference {identity:.3f} < {min_identity} "
                "(another virus, or a wrong alignment)"
            )
        if n_frac > max_n_fraction:
            reasons.append(f"N/ambiguous fraction in the ORFs read {n_frac:.3f} > {max_n_fraction}")
        rows.append(
            (
                name,
                round(n_frac, 5),
                round(identity, 5),
                "fail" if reasons else "pass",
                "; ".join(reasons),
            )
        )
    qc = pd.DataFrame(rows, columns=["seqName", "n_fraction", "identity", "qc_status", "qc_reason"])
    if (qc["qc_status"] == "fail").all():
        raise InputError(
            f"{source}: every genome fails QC (e.g. {qc['seqName'].iloc[0]!r}: "
            f"{qc['qc_reason'].iloc[0]}); nothing can be scored."
        )
    return qc


def check_unaligned(genomes: Mapping[str, str], *, source: str = "genomes") -> None:
    """Refuse an aligned file where raw genomes are expected (gaps ``-`` mean it was aligned)."""
    gapped = [n for n, s in genomes.items() if "-" in s]
    if gapped:
        raise InputError(
            f"{source}: {len(gapped)} of {len(genomes)} sequences contain alignment gaps '-' "
            f"(e.g. {gapped[0]!r}), so this is an aligned file given as unaligned. Pass it as "
            "the aligned genomes instead (--genomes), or give the raw sequences."
        )


# ----------------------------------------------------------------------------------------------
# lineage table
# ----------------------------------------------------------------------------------------------
def pango_ancestors(table: pd.DataFrame) -> dict[str, list[str]]:
    """Per lineage, its ancestors present in the table, nearest first (from unaliased names)."""
    by_unaliased = dict(zip(table["unaliased"], table["lineage"], strict=False))
    out: dict[str, list[str]] = {}
    for lin, un in zip(table["lineage"], table["unaliased"], strict=True):
        parts = str(un).split(".")
        anc = []
        for k in range(len(parts) - 1, 0, -1):
            p = by_unaliased.get(".".join(parts[:k]))
            if p is not None and p != lin:
                anc.append(p)
        out[lin] = anc
    return out


def descendant_counts(table: pd.DataFrame) -> dict[str, int]:
    """Number of lineages in the table below each lineage in the Pango hierarchy."""
    counts = dict.fromkeys(table["lineage"], 0)
    for anc in pango_ancestors(table).values():
        for a in anc:
            counts[a] += 1
    return counts


def _prepare_table(table: pd.DataFrame, start: pd.Timestamp) -> pd.DataFrame:
    need = {"lineage", "date"}
    missing = need - set(table.columns)
    if missing:
        raise InputError(
            f"lineage table: missing column(s) {sorted(missing)}; it needs lineage and date "
            "(ISO date the lineage became known, e.g. its designation date)."
        )
    t = table.copy().reset_index(drop=True)
    t["lineage"] = t["lineage"].astype(str)
    dup = t["lineage"][t["lineage"].duplicated()]
    if len(dup):
        raise InputError(f"lineage table: lineage {dup.iloc[0]!r} appears twice; keep one row.")
    if "unaliased" not in t.columns:
        t["unaliased"] = t["lineage"]
    t["unaliased"] = t["unaliased"].replace("", np.nan).fillna(t["lineage"]).astype(str)
    t["date"] = pd.to_datetime(t["date"], errors="coerce")
    if "known_at_start" not in t.columns:
        t["known_at_start"] = False
    t["known_at_start"] = t["known_at_start"].astype(bool) | (t["date"] < start)
    return t


# ----------------------------------------------------------------------------------------------
# model features (computed once per distinct ORF sequence: the model is fixed during the walk)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFeatures:
    """Per genome: summed codon log-likelihood, codons scored, mean embedding."""

    names: list[str]
    log_likelihood: np.ndarray  # (n,)
    n_scored: np.ndarray  # (n,)
    embeddings: np.ndarray  # (n, d)

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


@torch.no_grad()
def model_features(
    model: CodonTransformer,
    genomes: Mapping[str, str],
    *,
    orfs: Sequence[OrfLike],
    context: int = 512,
    batch_tokens: int = 16_384,
) -> ModelFeatures:
    """One forward pass per distinct ORF sequence: log-likelihood and mean embedding.

    Every ORF document (``[CLS]`` + codons) is cut into windows of ``context`` tokens; a codon is
    scored given the codons before it in its window (``[UNK]`` codons are not scored, so an
    N-rich genome scores fewer codons rather than wrong ones); the embedding is the mean final
    hidden state over its codons. Rows are independent (causal attention, right padding).
    """
    model.eval()
    device = next(model.parameters()).device
    context = min(context, model.cfg.max_length)
    names = list(genomes)
    keys = ["|".join(orf_sequence(genomes[n], o) for o in orfs) for n in names]
    uniq = list(dict.fromkeys(keys))
    docs: list[tuple[int, np.ndarray]] = []
    for u, key in enumerate(uniq):
        for seq in key.split("|"):
            ids, _ = encode_codons(seq)
            doc = np.concatenate([[CLS_ID], ids])
            for s in range(0, len(doc), context):
                piece = doc[s : s + context]
                if len(piece) >= 2:
                    docs.append((u, piece))
    ll = np.zeros(len(uniq))
    nsc = np.zeros(len(uniq))
    esum = np.zeros((len(uniq), model.cfg.d_model))
    ecount = np.zeros(len(uniq))
    order = sorted(range(len(docs)), key=lambda i: -len(docs[i][1]))
    at = 0
    while at < len(order):
        width = len(docs[order[at]][1])
        idx = order[at : at + max(1, batch_tokens // width)]
        at += len(idx)
        batch = pad_rows([docs[i][1] for i in idx]).to(device)
        h = model.hidden_states(batch)
        logp = model.head(h).float().log_softmax(-1)
        tgt = batch[:, 1:]
        lp = logp[:, :-1].gather(-1, tgt[..., None])[..., 0]
        ok = tgt >= 5  # codons only: not [UNK], [PAD] or other specials
        keep = real_token_mask(batch).float()[..., None]
        row_ll = (lp * ok).sum(1).double().cpu().numpy()
        row_n = ok.sum(1).cpu().numpy()
        row_e = (h.float() * keep).sum(1).double().cpu().numpy()
        row_c = keep.sum((1, 2)).double().cpu().numpy()
        for r, i in enumerate(idx):
            u = docs[i][0]
            ll[u] += row_ll[r]
            nsc[u] += row_n[r]
            esum[u] += row_e[r]
            ecount[u] += row_c[r]
    emb = esum / np.maximum(ecount, 1.0)[:, None]
    pos = {k: i for i, k in enumerate(uniq)}
    sel = np.array([pos[k] for k in keys], dtype=int)
    return ModelFeatures(names, ll[sel], nsc[sel], emb[sel].astype(np.float32))


# ----------------------------------------------------------------------------------------------
# sequence features
# ----------------------------------------------------------------------------------------------
def _difference_matrix(genomes: Sequence[str], reference: str) -> sparse.csr_matrix:
    """Binary (n, 5 * L) matrix: 1 where a genome has a called base or deletion unlike the reference."""
    r = np.frombuffer(reference.upper().encode("latin-1"), dtype=np.uint8)
    code = np.full(256, -1, dtype=np.int64)
    for i, base in enumerate("ACGT-"):
        code[ord(base)] = i
    rows: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    cols: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    for k, seq in enumerate(genomes):
        g = np.frombuffer(seq.upper().encode("latin-1"), dtype=np.uint8)
        c = code[g]
        pos = np.flatnonzero((c >= 0) & (g != r))
        rows.append(np.full(len(pos), k, dtype=np.int64))
        cols.append(pos * 5 + c[pos])
    data = np.ones(sum(len(x) for x in rows), dtype=np.float32)
    return sparse.csr_matrix(
        (data, (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(genomes), 5 * len(reference)),
    )


def spike_protein(genome: str) -> str:
    """Spike amino acids of a reference-aligned genome (``-`` deleted codon, ``X`` unknown)."""
    s = genome[SPIKE_START - 1 : SPIKE_START - 1 + 3 * SPIKE_CODONS]
    out = []
    for k in range(0, len(s), 3):
        c = s[k : k + 3]
        out.append("-" if c == "---" else translate_codon(c.upper()))
    return "".join(out)


def new_spike_changes(child: str, parent: str) -> list[str]:
    """Spike amino-acid changes of ``child`` versus ``parent`` (``S:N501Y``; unknown ``X`` skipped).

    Positions use Wuhan-Hu-1 numbering; the reference amino acid named is the parent's.
    """
    out = []
    for i, (a, b) in enumerate(zip(parent, child, strict=True)):
        if a != b and a != "X" and b != "X":
            out.append(f"S:{a}{i + 1}{b}")
    return out


MutationScorer = Callable[[str, str, list[str]], float]
"""``scorer(lineage_genome, parent_genome, new_spike_changes) -> score`` (higher: riskier)."""


def spike_nucleotide_changes(child: str, parent: str, *, non_synonymous: bool = True) -> list[str]:
    """Nucleotide substitutions ``A23403G`` of ``child`` versus ``parent`` inside spike.

    Only sites where both have A/C/G/T; with ``non_synonymous`` only those in codons whose amino
    acid changes (the parent's base is the one named).
    """
    lo = SPIKE_START - 1
    out = []
    for k in range(SPIKE_CODONS):
        a = parent[lo + 3 * k : lo + 3 * k + 3].upper()
        b = child[lo + 3 * k : lo + 3 * k + 3].upper()
        if a == b:
            continue
        if non_synonymous and translate_codon(a) == translate_codon(b):
            continue
        for j in range(3):
            if a[j] != b[j] and a[j] in "ACGT" and b[j] in "ACGT":
                out.append(f"{a[j]}{lo + 3 * k + j + 1}{b[j]}")
    return out


def codon_mutation_scorer(
    model: CodonTransformer,
    genomes: Mapping[str, str],
    *,
    reference: str | None = None,
    context_codons: int = 32,
) -> MutationScorer:
    """Method (c): ``-sum`` of the codon model's scores of a lineage's new spike changes.

    Every distinct non-synonymous spike substitution (versus Wuhan-Hu-1) carried by any of
    ``genomes`` is scored once by :func:`lifelm.tasks.genomes.mutscore.score_substitutions` in
    the reference's codon context (``method="left"``: ``log p(mutant codon | left context) -
    log p(reference codon | left context)``, nats). The model is fixed, so these numbers do not
    depend on the cutoff. A lineage's score is minus the sum over the substitutions it carries
    and its parent does not (NaN ones skipped; reversions and deletions are not scored): high
    when it brings many spike changes the model finds implausible. No new change: 0.
    """
    from lifelm.tasks.genomes.mutscore import score_substitutions

    ref = reference or Reference.sarscov2().sequence
    subs_of = {n: frozenset(spike_nucleotide_changes(g, ref)) for n, g in genomes.items()}
    union = sorted(set().union(*subs_of.values())) if subs_of else []
    llr = (
        score_substitutions(
            model,
            ref,
            union,
            context_codons=context_codons,
            method="left",
            orfs=select_orfs(["S"]),
            on_mismatch="nan",
        )
        if union
        else np.zeros(0)
    )
    table = dict(zip(union, llr.tolist(), strict=True))

    def scorer(child: str, parent: str, changes: list[str]) -> float:
        new = set(spike_nucleotide_changes(child, ref)) - set(spike_nucleotide_changes(parent, ref))
        vals = np.array([table.get(x, np.nan) for x in sorted(new)], dtype=float)
        if not len(vals):
            return 0.0
        if np.isnan(vals).all():
            return float("nan")
        return float(-np.nansum(vals))

    return scorer


def _percentile(pool: np.ndarray, x: float) -> float:
    pool = pool[np.isfinite(pool)]
    if not np.isfinite(x) or pool.size == 0:
        return float("nan")
    return float((np.sum(pool < x) + 0.5 * np.sum(pool == x)) / pool.size)


# ----------------------------------------------------------------------------------------------
# the walk
# ----------------------------------------------------------------------------------------------
def cutoffs(table: pd.DataFrame, config: WarnConfig) -> list[pd.Timestamp]:
    """Cutoffs from ``start`` to ``end`` (default: the first one after the last dated lineage)."""
    start = pd.Timestamp(config.start)
    last = table["date"].max()
    end = pd.Timestamp(config.end) if config.end else (last if pd.notna(last) else start)
    cuts = list(pd.date_range(start, end, freq=config.freq))
    if not cuts or cuts[0] != start:
        cuts = [start, *cuts]
    nxt = pd.date_range(cuts[-1], periods=2, freq=config.freq)[-1]
    return [*cuts, nxt] if config.end is None else cuts


@dataclass(frozen=True)
class _Walk:
    """What every window of the walk reads (each row depends on its own genome only)."""

    genomes: Mapping[str, str]
    ancestors: Mapping[str, list[str]]
    feats: ModelFeatures | None
    fidx: Mapping[str, int]
    diff: sparse.csr_matrix
    didx: Mapping[str, int]
    spikes: Mapping[str, str]
    mutation_scorer: MutationScorer | None


def _score_batch(
    new: list[str], known: list[str], ctx: _Walk, *, exclude_self: bool
) -> list[dict[str, Any]]:
    """Score ``new`` lineages against ``known`` (when ``exclude_self``, each against the others)."""
    genomes, ancestors, feats, fidx = ctx.genomes, ctx.ancestors, ctx.feats, ctx.fidx
    diff, didx, spikes, mutation_scorer = ctx.diff, ctx.didx, ctx.spikes, ctx.mutation_scorer
    if not new or not known:
        return []
    K = diff[[didx[k] for k in known]]
    N = diff[[didx[n] for n in new]]
    nk = np.asarray(K.sum(1)).ravel()
    nn_ = np.asarray(N.sum(1)).ravel()
    dist = nn_[:, None] + nk[None, :] - 2 * (N @ K.T).toarray()  # (new, known)
    known_pos = {k: j for j, k in enumerate(known)}
    if exclude_self:
        for i, n in enumerate(new):
            if n in known_pos:
                dist[i, known_pos[n]] = np.inf
    cos = None
    if feats is not None:
        E_k = feats.embeddings[[fidx[k] for k in known]].astype(np.float64)
        E_n = feats.embeddings[[fidx[n] for n in new]].astype(np.float64)
        E_k = E_k / np.maximum(np.linalg.norm(E_k, axis=1, keepdims=True), 1e-12)
        E_n = E_n / np.maximum(np.linalg.norm(E_n, axis=1, keepdims=True), 1e-12)
        cos = 1.0 - E_n @ E_k.T
        if exclude_self:
            for i, n in enumerate(new):
                if n in known_pos:
                    cos[i, known_pos[n]] = np.inf
    known_set = set(known)
    rows = []
    for i, n in enumerate(new):
        parent, source = None, "nearest"
        for a in ancestors.get(n, []):
            if a in known_set and a != n:
                parent, source = a, "pango"
                break
        j_nn = int(np.argmin(dist[i]))
        if not np.isfinite(dist[i, j_nn]):
            continue
        if parent is None:
            parent = known[j_nn]
        row: dict[str, Any] = {
            "lineage": n,
            "parent": parent,
            "parent_source": source,
            "nearest_known": known[j_nn],
            "nn_distance": float(dist[i, j_nn]),
        }
        changes = new_spike_changes(spikes[n], spikes[parent])
        row["new_spike_mutations"] = len(changes)
        row["new_rbd_mutations"] = sum(RBD[0] <= int(c[3:-1]) <= RBD[1] for c in changes)
        row["new_spike_changes"] = ",".join(changes)
        if feats is not None and cos is not None:
            f_n, f_p = fidx[n], fidx[parent]
            row["model_surprise"] = float(feats.log_likelihood[f_p] - feats.log_likelihood[f_n])
            row["embedding_novelty"] = float(np.min(cos[i]))
        else:
            row["model_surprise"] = row["embedding_novelty"] = float("nan")
        row["mutation_score"] = (
            float(mutation_scorer(genomes[n], genomes[parent], changes))
            if mutation_scorer is not None
            else float("nan")
        )
        rows.append(row)
    return rows


# Long because the walk (slice, score, threshold, flag) is one loop whose order is the time-leak guarantee.
def backtest(
    table: pd.DataFrame,
    genomes: Mapping[str, str],
    *,
    features: ModelFeatures | None = None,
    config: WarnConfig | None = None,
    reference: str | None = None,
    mutation_scorer: MutationScorer | None = None,
) -> pd.DataFrame:
    """Walk forward over the cutoffs and score every newly appearing lineage.

    Parameters
    ----------
    table
        One row per lineage: ``lineage``, ``date`` (when it became known), optional
        ``unaliased`` (full Pango name, for ancestors), ``known_at_start`` (undated lineages known
        before the first cutoff), ``immune_escape``/``ace2_binding`` (oracle reference).
        Lineages with no date that are not ``known_at_start`` are left out.
    genomes
        ``{lineage: reference-aligned genome}`` for every lineage of the table.
    features
        :func:`model_features` of the genomes (``None``: the model columns are NaN).
    config
        Cutoffs and threshold.
    reference
        Reference genome (``None``: Wuhan-Hu-1).
    mutation_scorer
        Scorer of the new spike changes, method (c) (``None``: not computed).

    Returns
    -------
    pandas.DataFrame
        One row per scored lineage: ``lineage``, ``date``, ``window`` (the cutoff whose known
        set it was scored against; ``start`` rows are the starting set scored leave-one-out),
        ``n_known``, ``parent``, ``parent_source``, ``nearest_known``, the scores of every
        method in :data:`METHODS`, and per method ``{method}_threshold`` (from earlier lineages
        only) and ``{method}_flag``.
    """
    cfg = config or WarnConfig()
    if not 0 < cfg.top_fraction < 1:
        raise InputError(f"top_fraction must be in (0, 1), got {cfg.top_fraction}.")
    start = pd.Timestamp(cfg.start)
    t = _prepare_table(table, start)
    absent = [n for n in t["lineage"] if n not in genomes]
    if absent:
        raise InputError(
            f"{len(absent)} lineages of the table have no genome (e.g. {absent[0]!r}); the "
            "genome FASTA headers must be the lineage names."
        )
    t = t[t["known_at_start"] | t["date"].notna()].reset_index(drop=True)
    ref = reference or Reference.sarscov2().sequence
    names = t["lineage"].tolist()
    diff = _difference_matrix([genomes[n] for n in names], ref)
    didx = {n: i for i, n in enumerate(names)}
    spikes = {n: spike_protein(genomes[n]) for n in names}
    ancestors = pango_ancestors(t)
    fidx = features.index() if features is not None else {}
    if features is not None:
        miss = [n for n in names if n not in fidx]
        if miss:
            raise InputError(f"model features lack {len(miss)} lineages (e.g. {miss[0]!r}).")
    ctx = _Walk(genomes, ancestors, features, fidx, diff, didx, spikes, mutation_scorer)
    start_set = t.loc[t["known_at_start"], "lineage"].tolist()
    rows = []
    for r in _score_batch(start_set, start_set, ctx, exclude_self=True):
        rows.append({**r, "window": "start", "n_known": len(start_set) - 1})
    cuts = cutoffs(t, cfg)
    dated = t[~t["known_at_start"]]
    for c0, c1 in itertools.pairwise(cuts):
        known = t.loc[t["known_at_start"] | (t["date"] < c0), "lineage"].tolist()
        new = dated.loc[(dated["date"] >= c0) & (dated["date"] < c1), "lineage"].tolist()
        for r in _score_batch(new, known, ctx, exclude_self=False):
            rows.append({**r, "window": c0.date().isoformat(), "n_known": len(known)})
    scores = pd.DataFrame(rows)
    if scores.empty or (scores["window"] == "start").all():
        raise InputError(
            f"no lineage could be scored in the walk: {len(start_set)} lineages are known before "
            f"the first cutoff ({cfg.start}) and none of the others is dated after it (or none is "
            "known before it); check --start and the dates."
        )
    meta = t.set_index("lineage")
    scores.insert(1, "date", meta.loc[scores["lineage"], "date"].to_numpy())
    for col, src in (
        ("oracle_immune_escape", "immune_escape"),
        ("oracle_ace2_binding", "ace2_binding"),
    ):
        vals = meta[src] if src in meta.columns else pd.Series(np.nan, index=meta.index)
        scores[col] = pd.to_numeric(vals.loc[scores["lineage"]], errors="coerce").to_numpy()
    _flag(scores, cfg)
    return scores


def _flag(scores: pd.DataFrame, cfg: WarnConfig) -> None:
    """Combined score and flags, window by window, from earlier windows' scores only."""
    comps = ["model_surprise", "embedding_novelty", "mutation_score"]
    q = 1.0 - cfg.top_fraction
    windows = ["start", *sorted(w for w in scores["window"].unique() if w != "start")]
    combined = np.full(len(scores), np.nan)
    for m in METHODS:
        scores[f"{m}_threshold"] = np.nan
        scores[f"{m}_flag"] = False
    for w in windows:
        cur = np.flatnonzero(scores["window"].to_numpy() == w)
        hist = np.flatnonzero(
            scores["window"].isin(windows[: windows.index(w)]).to_numpy()
            if w != "start"
            else scores["window"].to_numpy() == "start"
        )
        # combined: mean percentile of the model components among earlier lineages
        for i in cur:
            pct = [_percentile(scores[c].to_numpy()[hist], float(scores[c].iat[i])) for c in comps]
            pct = [p for p in pct if np.isfinite(p)]
            combined[i] = float(np.mean(pct)) if pct else np.nan
        scores.loc[scores.index[cur], "combined"] = combined[cur]
        for m in METHODS:
            vals = scores[m].to_numpy(dtype=float)
            past = vals[hist]
            past = past[np.isfinite(past)]
            if past.size == 0:
                continue
            thr = float(np.quantile(past, q))
            scores.loc[scores.index[cur], f"{m}_threshold"] = thr
            scores.loc[scores.index[cur], f"{m}_flag"] = np.isfinite(vals[cur]) & (vals[cur] > thr)


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
def grew_labels(table: pd.DataFrame, config: WarnConfig | None = None) -> pd.Series:
    """``grew`` / ``never_grew`` / ``unclear`` per lineage, from the whole table (evaluation only).

    ``grew``: at least ``grew_min_descendants`` designated descendant lineages in the data.
    ``never_grew``: no descendant, and dated at least ``never_grew_min_age_days`` before the last
    date in the data (so it had time to grow). Everything else is ``unclear``.
    """
    cfg = config or WarnConfig()
    t = table.copy()
    if "unaliased" not in t.columns:
        t["unaliased"] = t["lineage"]
    t["unaliased"] = t["unaliased"].replace("", np.nan).fillna(t["lineage"]).astype(str)
    d = pd.to_datetime(t["date"], errors="coerce")
    n_desc = descendant_counts(t)
    last = d.max()
    out = {}
    for lin, date in zip(t["lineage"], d, strict=True):
        k = n_desc[lin]
        if k >= cfg.grew_min_descendants:
            out[lin] = "grew"
        elif (
            k == 0
            and pd.notna(date)
            and pd.notna(last)
            and (last - date).days >= cfg.never_grew_min_age_days
        ):
            out[lin] = "never_grew"
        else:
            out[lin] = "unclear"
    return pd.Series(out, name="outcome")


def evaluate(
    scores: pd.DataFrame,
    table: pd.DataFrame,
    *,
    config: WarnConfig | None = None,
    variants: Sequence[Variant] = VARIANTS,
    emergence: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-variant flags and lead times, and per-method false-alarm rates.

    Returns ``(variants_table, alarms_table)``. The variant table has one row per variant and
    method: ``status`` (``flagged``, ``missed``, ``not scored`` (no score for this method),
    ``known at start`` (designated before the first cutoff: not testable) or ``not in data``),
    ``root_date``, ``flag_date`` (the root's date when flagged), ``lead_days_vs_who``,
    ``family_flag_date`` (first flagged lineage of the variant's family within
    ``family_days`` of the root), ``days_after_clade_emergence``, and the precursor columns
    ``parent`` (the root's parent in the walk), ``parent_flag_date`` and
    ``parent_lead_days_vs_who`` (when that parent was itself flagged, e.g. BA.2.86 before JN.1). The alarm table has per
    method: lineages scored in the walk, flagged, the false-alarm rate among ``never_grew``
    lineages, the hit rate among ``grew`` ones, and the AUROC of the score for grew vs never grew.
    """
    from sklearn.metrics import roc_auc_score

    cfg = config or WarnConfig()
    start = pd.Timestamp(cfg.start)
    t = _prepare_table(table, start)
    outcome = grew_labels(t, cfg)
    walk = scores[scores["window"] != "start"].copy()
    walk["outcome"] = outcome.reindex(walk["lineage"]).to_numpy()
    anc = pango_ancestors(t)
    info = t.set_index("lineage")
    vrows = []
    for v in variants:
        roots = [r for r in v.roots if r in info.index]
        fam = {n for n, a in anc.items() if any(r in a for r in roots) or n in roots}
        clade = (
            str(info.loc[roots[0], "nextstrain_clade"])
            if roots and "nextstrain_clade" in info.columns
            else ""
        )
        emerg = emergence.get(clade) if emergence and clade else None
        for m in METHODS:
            row: dict[str, Any] = {
                "variant": v.name,
                "method": m,
                "roots": ",".join(v.roots),
                "who_date": v.who_date or "",
                "who_note": v.who_note,
                "clade": clade,
                "clade_emergence": emerg or "",
            }
            if not roots:
                row["status"] = "not in data"
            elif all(bool(info.loc[r, "known_at_start"]) for r in roots):
                row["status"] = "known at start"
            else:
                rs = walk[walk["lineage"].isin(roots)]
                root_date = pd.to_datetime(rs["date"]).min() if len(rs) else pd.NaT
                row["root_date"] = root_date.date().isoformat() if pd.notna(root_date) else ""
                if rs.empty or rs[m].isna().all():
                    row["status"] = "not scored"
                else:
                    hit = rs[rs[f"{m}_flag"]]
                    row["status"] = "flagged" if len(hit) else "missed"
                    if len(hit):
                        fd = pd.to_datetime(hit["date"]).min()
                        row["flag_date"] = fd.date().isoformat()
                        if v.who_date:
                            row["lead_days_vs_who"] = int((pd.Timestamp(v.who_date) - fd).days)
                        if emerg:
                            row["days_after_clade_emergence"] = int((fd - pd.Timestamp(emerg)).days)
                    fs = walk[walk["lineage"].isin(fam) & walk[f"{m}_flag"]]
                    if pd.notna(root_date):
                        fs = fs[
                            pd.to_datetime(fs["date"])
                            <= root_date + pd.Timedelta(days=cfg.family_days)
                        ]
                    if len(fs):
                        row["family_flag_date"] = (
                            pd.to_datetime(fs["date"]).min().date().isoformat()
                        )
                    # precursor: the root's parent, when it was itself flagged in the walk
                    par = walk[walk["lineage"] == rs["parent"].iloc[0]]
                    row["parent"] = str(rs["parent"].iloc[0])
                    if len(par) and bool(par[f"{m}_flag"].iloc[0]):
                        pdate = pd.to_datetime(par["date"].iloc[0])
                        row["parent_flag_date"] = pdate.date().isoformat()
                        if v.who_date:
                            row["parent_lead_days_vs_who"] = int(
                                (pd.Timestamp(v.who_date) - pdate).days
                            )
            vrows.append(row)
    vt = pd.DataFrame(vrows)
    for c in (
        "parent",
        "parent_flag_date",
        "parent_lead_days_vs_who",
        "root_date",
        "flag_date",
        "family_flag_date",
        "lead_days_vs_who",
        "days_after_clade_emergence",
    ):
        if c not in vt.columns:
            vt[c] = np.nan
    arows = []
    for m in METHODS:
        ok = walk[m].notna()
        sub = walk[ok]
        never = sub[sub["outcome"] == "never_grew"]
        grew = sub[sub["outcome"] == "grew"]
        y = np.r_[np.ones(len(grew)), np.zeros(len(never))]
        s = np.r_[grew[m].to_numpy(float), never[m].to_numpy(float)]
        auc = float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")
        arows.append(
            {
                "method": m,
                "n_scored": int(ok.sum()),
                "n_flagged": int(sub[f"{m}_flag"].sum()),
                "n_never_grew": len(never),
                "false_alarm_rate": float(never[f"{m}_flag"].mean())
                if len(never)
                else float("nan"),
                "n_grew": len(grew),
                "hit_rate_grew": float(grew[f"{m}_flag"].mean()) if len(grew) else float("nan"),
                "auroc_grew_vs_never": auc,
            }
        )
    return vt, pd.DataFrame(arows)


# ----------------------------------------------------------------------------------------------
# data loading and the whole run
# ----------------------------------------------------------------------------------------------
def _tree_tips(path: Path) -> dict[str, dict[str, Any]]:
    with lzma.open(path, "rt") as fh:
        tree = json.load(fh)
    out: dict[str, dict[str, Any]] = {}
    stack = [tree["tree"]]
    while stack:
        node = stack.pop()
        kids = node.get("children")
        if kids:
            stack.extend(kids)
        else:
            out[node["name"]] = {
                k: v.get("value")
                for k, v in node.get("node_attrs", {}).items()
                if isinstance(v, dict)
            }
    return out


def load_pango_data(
    root: str | Path, *, start: str = "2021-02-01"
) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """The Pango consensus lineages of the shared data as a backtest table.

    ``root`` is the ``genomes/`` data folder. ``date`` is the Pango designation date. Lineages
    of the Nextclade tree without a designation date (the pre-2021 ones: designation dates are
    recorded from 2021-02-18 on) are ``known_at_start`` when their Nextstrain clade emerged
    before ``start``; other undated lineages (newer than the tree, labels inferred) are left out
    (``status`` says why). Returns ``(table, genomes, clade_emergence)``.
    """
    from lifelm.io.fasta import read_fasta

    root = Path(root)
    folder = root / "sarscov2/pango_consensus"
    labels_path = folder / "lineage_labels.tsv"
    fasta = folder / "pango_consensus_genome_nuc.fasta.xz"
    lin = root / "lineages"
    for p in (labels_path, fasta, lin / "nextstrain_clade_emergence_dates.tsv"):
        if not p.is_file():
            raise InputError(
                f"{p}: not found; --data must be the genomes/ data folder holding "
                "sarscov2/pango_consensus/ and lineages/ (see its README)."
            )
    t = pd.read_csv(labels_path, sep="\t", dtype=str, keep_default_na=False)
    em = pd.read_csv(lin / "nextstrain_clade_emergence_dates.tsv", sep="\t", dtype=str)
    emergence = dict(zip(em.iloc[:, 0], em.iloc[:, 1], strict=True))
    tree_path = lin / "nextclade_sars-cov-2_wuhan-hu-1_orfs_2025-04-01_tree.json.xz"
    tips = _tree_tips(tree_path) if tree_path.is_file() else {}
    t["date"] = pd.to_datetime(t["designation_date"].replace("", np.nan), errors="coerce")
    clade_em = pd.to_datetime(t["nextstrain_clade"].map(emergence), errors="coerce")
    undated_tree = t["date"].isna() & (t["label_source"] == "nextclade_tree")
    t["known_at_start"] = undated_tree & (clade_em < pd.Timestamp(start))
    t["status"] = np.where(
        t["date"].notna(),
        "dated",
        np.where(
            t["known_at_start"],
            "known at start (undated, clade emerged before start)",
            "left out: no date",
        ),
    )
    t["immune_escape"] = pd.to_numeric(
        t["lineage"].map(lambda n: tips.get(n, {}).get("immune_escape")), errors="coerce"
    )
    t["ace2_binding"] = pd.to_numeric(
        t["lineage"].map(lambda n: tips.get(n, {}).get("ace2_binding")), errors="coerce"
    )
    genomes = read_fasta(fasta)
    return t, genomes, emergence


def train_backtest_model(
    genomes: Mapping[str, str],
    out_dir: str | Path,
    *,
    orfs: Sequence[OrfLike],
    preset: str = "test",
    steps: int = 300,
    row_len: int = 512,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
) -> CodonTransformer:
    """Fit a small codon model on ``genomes`` (give only those known before the first cutoff).

    The ORFs are packed into rows of ``row_len`` tokens and trained with the shared loop
    (``out_dir/model`` holds the checkpoint and its provenance).
    """
    from lifelm.data.genomes.datasets import PackedCodonDataset, collate_packed, genome_documents
    from lifelm.tasks.genomes.codon_lm import model_sidecar
    from lifelm.tasks.genomes.train import init_codon_model
    from lifelm.training.loop import TrainConfig, train

    docs, stats = genome_documents(genomes, list(orfs))
    dataset = PackedCodonDataset(docs, row_len, seed=seed)
    model = init_codon_model(preset, max_length=max(row_len, 1024), seed=seed)
    provenance = {
        "task": "early-warning backtest model",
        "n_genomes": len(genomes),
        "genomes": sorted(genomes)[:50],
        "orfs": [o.name for o in orfs],
        "n_tokens": dataset.n_tokens,
        "unknown_codons": stats.n_unknown,
    }
    train(
        model.train(),
        dataset,
        config=TrainConfig(
            max_steps=steps,
            batch_size=batch_size,
            lr=lr,
            warmup_steps=max(1, steps // 10),
            checkpoint_every=0,
            log_every=max(1, steps // 10),
            seed=seed,
            device="cpu",
            progress=False,
        ),
        out_dir=out_dir,
        collate_fn=collate_packed,
        sidecar=model_sidecar(model.cfg, data=provenance),
        unit="rows",
    )
    return model.eval()


def select_orfs(names: Sequence[str]) -> list[OrfLike]:
    """SARS-CoV-2 ORFs by name (``S``, ``N``, ...), in the order given."""
    from lifelm.tasks.genomes.codon_lm import default_orfs

    by = {o.name: o for o in default_orfs()}
    bad = [n for n in names if n not in by]
    if bad:
        raise InputError(f"unknown ORF(s) {bad}; choose from {sorted(by)}.")
    return [by[n] for n in names]


def warn(
    table: pd.DataFrame,
    genomes: Mapping[str, str],
    *,
    model: CodonTransformer | None,
    config: WarnConfig | None = None,
    mutation_scorer: MutationScorer | None = None,
    emergence: Mapping[str, str] | None = None,
    model_note: str = "",
) -> WarnResult:
    """QC, model features, the walk and its evaluation in one call (see the module docstring)."""
    cfg = config or WarnConfig()
    orfs = select_orfs(cfg.orfs)
    t = _prepare_table(table, pd.Timestamp(cfg.start))
    keep = t["known_at_start"] | t["date"].notna()
    names = [n for n in t.loc[keep, "lineage"] if n in genomes]
    qc = check_genomes(
        {n: genomes[n] for n in names},
        orfs=orfs,
        max_n_fraction=cfg.max_n_fraction,
        min_identity=cfg.min_identity,
        source="lineage genomes",
    )
    passed = set(qc.loc[qc["qc_status"] == "pass", "seqName"])
    t_ok = t[keep & t["lineage"].isin(passed)]
    g_ok = {n: genomes[n] for n in t_ok["lineage"]}
    feats = None
    if model is not None:
        feats = model_features(
            model, g_ok, orfs=orfs, context=cfg.context, batch_tokens=cfg.batch_tokens
        )
    scores = backtest(t_ok, g_ok, features=feats, config=cfg, mutation_scorer=mutation_scorer)
    variants, alarms = evaluate(scores, t_ok, config=cfg, emergence=emergence)
    summary = {
        "settings": asdict(cfg),
        "model": model_note or ("none: model columns are NaN" if model is None else "given"),
        "n_lineages": len(t),
        "n_left_out_undated": int((~keep).sum()),
        "n_qc_fail": int((qc["qc_status"] == "fail").sum()),
        "n_known_at_start": int(t_ok["known_at_start"].sum()),
        "n_scored_in_walk": int((scores["window"] != "start").sum()),
        "n_windows": int(scores.loc[scores["window"] != "start", "window"].nunique()),
        "mutation_score": "computed" if mutation_scorer is not None else "not computed (no scorer)",
        "grew_definition": (
            f"grew: >= {cfg.grew_min_descendants} designated descendant lineages in the data; "
            f"never grew: none, and designated >= {cfg.never_grew_min_age_days} days before the "
            "last designation in the data"
        ),
        "combined_definition": "mean of the percentiles of model_surprise, embedding_novelty and "
        "mutation_score among all lineages scored before the cutoff (no fitted weights)",
        "threshold": f"top {cfg.top_fraction:.0%} of each method's scores among lineages scored "
        "before the cutoff (the starting set scored leave-one-out)",
        "oracle": "immune_escape/ace2_binding are Nextclade tree attributes computed in retrospect "
        "(2025 tree, DMS-based); shown as an oracle-like reference, not a fair baseline",
    }
    return WarnResult(scores, variants, alarms, qc, summary)


def run_pango_backtest(
    data_root: str | Path,
    out_dir: str | Path,
    *,
    model_dir: str | Path | None = None,
    config: WarnConfig | None = None,
    preset: str = "test",
    train_steps: int = 300,
    seed: int = 0,
    mutation_scores: bool = True,
    training_orfs: Sequence[str] | None = None,
) -> WarnResult:
    """The backtest on the shared Pango consensus data (``data_root`` = the ``genomes/`` folder).

    With ``model_dir`` the given codon model is used as it is (the caller vouches that it saw no
    SARS-CoV-2 genome dated after the first cutoff). Without it, a ``preset`` model is trained
    for ``train_steps`` on ``training_orfs`` (``None``: the configured ORFs) of the lineages
    known before the first cutoff only
    and saved to ``out_dir/train/model``. ``mutation_scores``: compute method (c) with
    :func:`codon_mutation_scorer` (the slowest part; off: column NaN).
    """
    from lifelm.tasks.genomes.codon_lm import load_codon_model

    cfg = config or WarnConfig()
    torch.manual_seed(seed)
    table, genomes, emergence = load_pango_data(data_root, start=cfg.start)
    select_orfs(cfg.orfs)  # an unknown ORF fails before the data is read
    train_orfs = tuple(training_orfs) if training_orfs is not None else cfg.orfs
    if model_dir is not None:
        model, _ = load_codon_model(model_dir, device="cpu")
        note = f"fixed model {model_dir} (as given; must have seen no genome after {cfg.start})"
    else:
        start_names = table.loc[table["known_at_start"], "lineage"].tolist()
        model = train_backtest_model(
            {n: genomes[n] for n in start_names},
            Path(out_dir) / "train",
            orfs=select_orfs(train_orfs),
            preset=preset,
            steps=train_steps,
            seed=seed,
        )
        note = (
            f"{preset} codon model trained {train_steps} steps on the {'+'.join(train_orfs)} ORFs of "
            f"the {len(start_names)} lineages known before {cfg.start} only (fixed during the walk)"
        )
    scorer = codon_mutation_scorer(model, genomes) if mutation_scores else None
    result = warn(
        table,
        genomes,
        model=model,
        config=cfg,
        mutation_scorer=scorer,
        emergence=emergence,
        model_note=note,
    )
    result.model = model
    return result
