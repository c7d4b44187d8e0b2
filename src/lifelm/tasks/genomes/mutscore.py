"""Zero-shot scores of nucleotide substitutions from a codon language model.

A substitution ``A23403G`` (Nextclade's notation: reference base, 1-based position, new base) is
scored in every ORF that reads its position. In ORF ``o`` it changes codon ``k`` from the
reference codon ``c`` to the mutant codon ``c'``; the model reads the ORF as ``[CLS]`` + codons,
exactly as in training, and the score is a log-likelihood ratio (nats) of the mutant against the
reference in a window of ``context_codons`` codons on each side of the changed codon:

``method="full"`` (default)
    ``log p(mutant window) - log p(reference window)``: the changed codon's own term
    ``log p(c' | left) - log p(c | left)`` plus how much the change moves the model's
    predictions of the ``context_codons`` codons after it (a causal model sees a change only to
    its right). One extra forward pass per distinct mutant codon.
``method="left"``
    Only the changed codon's term ``log p(c' | left) - log p(c | left)``; one forward pass per
    changed codon position serves every mutant there, so it is about nine times cheaper.

Negative means the model finds the mutant less plausible than the reference. A position read by
two ORFs (ORF1a/ORF1b at 13468, N/ORF9b, ORF7a/ORF7b) gets the sum of its per-ORF ratios, the
log-likelihood ratio of the genome's ORF documents, which the model treats as independent.

A score is NaN, never a guess, when the substitution cannot be scored, and the ``reason`` column
of :func:`substitution_table` says why:

``non-coding``
    the position is in no ORF (UTRs, intergenic bases);
``reference codon not ACGT``
    the reference's codon at that ORF position has an N, an ambiguity code or a gap (a lineage
    consensus with a deletion there);
``alt base not ACGT``
    the new base is ambiguous (Nextclade lists such bases as missing, not as substitutions).

A substitution whose reference base differs from ``reference`` is an error by default (the
substitutions were called against another sequence); ``on_mismatch="nan"`` turns it into a NaN
with reason ``reference base mismatch`` instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from lifelm._core.errors import InputError
from lifelm.data.genomes.align import translate_codon
from lifelm.data.genomes.codons import VOCAB, OrfLike, orf_sequence
from lifelm.data.genomes.datasets import pad_rows
from lifelm.models.codon_transformer import N_SPECIAL, CodonTransformer
from lifelm.tasks.genomes.codon_lm import default_orfs, tokenize_genome

Method = Literal["full", "left"]
_SUB = re.compile(r"^([A-Za-z])(\d+)([A-Za-z])$")
_ACGT = frozenset("ACGT")
_ID = {c: i for i, c in enumerate(VOCAB)}
REASONS = (
    "non-coding",
    "reference codon not ACGT",
    "alt base not ACGT",
    "reference base mismatch",
)


@dataclass(frozen=True)
class Substitution:
    """One parsed nucleotide substitution (1-based position)."""

    ref: str
    pos: int
    alt: str

    def __str__(self) -> str:
        return f"{self.ref}{self.pos}{self.alt}"


def parse_substitution(text: str) -> Substitution:
    """Parse Nextclade's ``A23403G`` notation.

    >>> parse_substitution("a23403g")
    Substitution(ref='A', pos=23403, alt='G')
    """
    m = _SUB.match(text.strip())
    if m is None:
        raise InputError(
            f"substitution {text!r} is not in Nextclade's notation REF<position>ALT (e.g. A23403G)"
        )
    ref, pos, alt = m.group(1).upper(), int(m.group(2)), m.group(3).upper()
    if ref == alt:
        raise InputError(f"substitution {text!r} changes nothing (the new base is the old one)")
    if pos < 1:
        raise InputError(f"substitution {text!r}: positions are 1-based")
    return Substitution(ref, pos, alt)


def _as_codon_model(model: object) -> CodonTransformer:
    """The network inside ``model`` (a :class:`CodonTransformer` or a wrapper holding one)."""
    if isinstance(model, CodonTransformer):
        return model
    inner = getattr(model, "module", None)
    if isinstance(inner, CodonTransformer):
        return inner
    raise TypeError(
        f"expected a codon model (CodonTransformer or lifelm.genomes.CodonModel), got {type(model).__name__}"
    )


def _orf_positions(orf: OrfLike) -> np.ndarray:
    """1-based genome position of each base of the ORF in reading order."""
    if orf.strand == "+":
        return np.concatenate([np.arange(s, e + 1) for s, e in orf.segments])
    return np.concatenate([np.arange(e, s - 1, -1) for s, e in orf.segments])


_COMPLEMENT = str.maketrans("ACGT", "TGCA")


# Long only because of its docstring; the body is under 80 lines.
def substitution_table(
    model: object,
    reference: str,
    substitutions: Sequence[str],
    *,
    context_codons: int = 32,
    orfs: Sequence[OrfLike] | None = None,
    on_mismatch: Literal["raise", "nan"] = "raise",
    batch_tokens: int = 32_768,
    device: str | torch.device | None = None,
    need_full: bool = True,
) -> pd.DataFrame:
    """Score substitutions ORF by ORF: one row per (substitution, ORF reading it).

    Parameters are those of :func:`score_substitutions`; ``need_full=False`` skips the mutant
    forward passes (``llr`` is then NaN and only ``llr_left`` is filled).

    Returns
    -------
    DataFrame
        ``input_index`` (row of the substitution in the input), ``substitution``, ``position``, ``ref``, ``alt``, ``orf`` (``""`` when non-coding),
        ``codon`` (1-based in the ORF), ``codon_position`` (1-3), ``ref_codon``, ``alt_codon``,
        ``aaSubstitution`` (``S:D614G``; synonymous ones too), ``ref_aa``, ``alt_aa``
        (``*`` = stop), ``synonymous``, ``llr``
        (method ``full``), ``llr_left`` (method ``left``), ``reason`` (``""`` when scored).
        Rows are in input order; a substitution in two ORFs has two rows.
    """
    net = _as_codon_model(model)
    if device is not None:
        net.to(device)
    if context_codons < 1:
        raise InputError(f"context_codons must be at least 1, got {context_codons}")
    ref = reference.upper()
    orfs = default_orfs() if orfs is None else list(orfs)
    for orf in orfs:
        if max(e for _, e in orf.segments) > len(ref):
            raise InputError(
                f"the reference has {len(ref)} bases but ORF {orf.name} ends at "
                f"{max(e for _, e in orf.segments)}: pass a genome in the ORFs' coordinates "
                "(aligned to Wuhan-Hu-1) or the ORFs of this genome"
            )
    subs = [parse_substitution(s) for s in substitutions]
    bad = [s for s in subs if s.pos > len(ref) or ref[s.pos - 1] != s.ref]
    if bad and on_mismatch == "raise":
        shown = ", ".join(
            f"{s} (reference has {ref[s.pos - 1] if s.pos <= len(ref) else 'no base'})"
            for s in bad[:3]
        )
        raise InputError(
            f"{len(bad)} substitution(s) do not match the reference base, e.g. {shown}; pass the "
            "sequence they were called against, or on_mismatch='nan'"
        )
    bad_set = {id(s) for s in bad}
    tokens = tokenize_genome(ref, orfs)
    # per ORF: position -> index in the ORF's base sequence (first read wins at a slippage base)
    where: list[dict[int, list[int]]] = []
    for orf in orfs:
        d: dict[int, list[int]] = {}
        for i, p in enumerate(_orf_positions(orf).tolist()):
            d.setdefault(p, []).append(i)
        where.append(d)
    orf_seqs = [orf_sequence(ref, o) for o in orfs]
    token_of = [
        {int(k): t for t, k in enumerate(tokens.codon_index[o].tolist()) if k >= 0}
        for o in range(len(orfs))
    ]
    rows: list[dict[str, object]] = []
    for n, s in enumerate(subs):
        base = {
            "input_index": n,
            "substitution": str(s),
            "position": s.pos,
            "ref": s.ref,
            "alt": s.alt,
        }
        hits = [(o, i) for o in range(len(orfs)) for i in where[o].get(s.pos, [])]
        if id(s) in bad_set:
            rows.append({**base, **_empty(), "reason": "reference base mismatch"})
            continue
        if not hits:
            rows.append({**base, **_empty(), "reason": "non-coding"})
            continue
        for o, i in hits:
            k, j = divmod(i, 3)
            rc = orf_seqs[o][3 * k : 3 * k + 3]
            alt_base = s.alt if orfs[o].strand == "+" else s.alt.translate(_COMPLEMENT)
            ac = rc[:j] + alt_base + rc[j + 1 :]
            token = token_of[o].get(k, -1)
            row = {
                **base,
                **_empty(),
                "orf": orfs[o].name,
                "codon": k + 1,
                "codon_position": j + 1,
                "ref_codon": rc,
                "alt_codon": ac,
                "_orf": o,
                "_token": token,
            }
            if not set(rc) <= _ACGT or token < 0:
                row["reason"] = "reference codon not ACGT"
            elif s.alt not in _ACGT:
                row["reason"] = "alt base not ACGT"
            else:
                ra, aa = translate_codon(rc), translate_codon(ac)
                row["aaSubstitution"] = f"{orfs[o].name}:{ra}{k + 1}{aa}"
                row["ref_aa"], row["alt_aa"] = ra, aa
                row["synonymous"] = ra == aa
            rows.append(row)
    table = pd.DataFrame(rows, columns=[*_COLUMNS, "_orf", "_token"])
    _fill_scores(net, tokens.docs, table, context_codons, batch_tokens, need_full)
    return table[list(_COLUMNS)].reset_index(drop=True)


_COLUMNS = (
    "input_index",
    "substitution",
    "position",
    "ref",
    "alt",
    "orf",
    "codon",
    "codon_position",
    "ref_codon",
    "alt_codon",
    "aaSubstitution",
    "ref_aa",
    "alt_aa",
    "synonymous",
    "llr",
    "llr_left",
    "reason",
)


def _empty() -> dict[str, object]:
    return {
        "orf": "",
        "codon": 0,
        "codon_position": 0,
        "ref_codon": "",
        "alt_codon": "",
        "aaSubstitution": "",
        "ref_aa": "",
        "alt_aa": "",
        "synonymous": pd.NA,
        "llr": np.nan,
        "llr_left": np.nan,
        "reason": "",
        "_orf": -1,
        "_token": -1,
    }


@torch.no_grad()
def _window_logprobs(
    net: CodonTransformer, rows: list[np.ndarray], batch_tokens: int
) -> list[np.ndarray]:
    """Per row: ``(len, V)`` log-probabilities predicting each next token (row ``j`` predicts ``j+1``)."""
    device = next(net.parameters()).device
    out: list[np.ndarray] = [np.empty(0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    at = 0
    while at < len(order):
        n = max(1, batch_tokens // len(rows[order[at]]))
        idx = order[at : at + n]
        at += n
        logp, _ = net.token_logprobs(pad_rows([rows[i] for i in idx]).to(device))
        lp = logp.cpu().numpy()
        for r, i in enumerate(idx):
            out[i] = lp[r, : len(rows[i])]
    return out


def _fill_scores(
    net: CodonTransformer,
    docs: Sequence[np.ndarray],
    table: pd.DataFrame,
    context: int,
    batch_tokens: int,
    need_full: bool,
) -> None:
    """Fill ``llr`` and ``llr_left`` of the scorable rows of ``table`` in place."""
    net.eval()
    ok = (table["reason"] == "") & (table["_orf"] >= 0)
    if not ok.any():
        return
    sites = sorted(
        {
            (int(o), int(t))
            for o, t in zip(table.loc[ok, "_orf"], table.loc[ok, "_token"], strict=True)
        }
    )
    spans = {}
    ref_rows: list[np.ndarray] = []
    for o, t in sites:
        doc = docs[o]
        s, e = max(0, t - context), min(len(doc), t + context + 1)
        spans[(o, t)] = (s, e, len(ref_rows))
        ref_rows.append(doc[s:e])
    ref_lp = _window_logprobs(net, ref_rows, batch_tokens)
    ref_total = {}
    for key, (s, _e, r) in spans.items():
        w = ref_rows[r]
        ref_total[key] = _suffix_logprob(ref_lp[r], w, key[1] - s)
    mutants: dict[tuple[int, int, int], int] = {}
    mut_rows: list[np.ndarray] = []
    for i in np.flatnonzero(ok.to_numpy()):
        o, t = int(table["_orf"].iat[i]), int(table["_token"].iat[i])
        s, _e, r = spans[(o, t)]
        alt_id, ref_id = _ID[table["alt_codon"].iat[i]], _ID[table["ref_codon"].iat[i]]
        lp = ref_lp[r][t - s - 1]
        table.iat[i, table.columns.get_loc("llr_left")] = float(lp[alt_id] - lp[ref_id])
        if need_full and (o, t, alt_id) not in mutants:
            w = ref_rows[r].copy()
            w[t - s] = alt_id
            mutants[(o, t, alt_id)] = len(mut_rows)
            mut_rows.append(w)
    if not need_full:
        return
    mut_lp = _window_logprobs(net, mut_rows, batch_tokens)
    for i in np.flatnonzero(ok.to_numpy()):
        o, t = int(table["_orf"].iat[i]), int(table["_token"].iat[i])
        s, _e, _r = spans[(o, t)]
        m = mutants[(o, t, _ID[table["alt_codon"].iat[i]])]
        mut_total = _suffix_logprob(mut_lp[m], mut_rows[m], t - s)
        table.iat[i, table.columns.get_loc("llr")] = mut_total - ref_total[(o, t)]


def _suffix_logprob(lp: np.ndarray, window: np.ndarray, start: int) -> float:
    """``sum_j log p(window[j] | window[:j])`` for ``j >= start``, codon targets only."""
    j = np.arange(start, len(window))
    tgt = window[j]
    keep = tgt >= N_SPECIAL  # [UNK] and specials are never targets, as in training
    return float(lp[j[keep] - 1, tgt[keep]].sum())


def score_substitutions(
    model: object,
    reference: str,
    substitutions: Sequence[str],
    *,
    context_codons: int = 32,
    method: Method = "full",
    orfs: Sequence[OrfLike] | None = None,
    on_mismatch: Literal["raise", "nan"] = "raise",
    batch_tokens: int = 32_768,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Zero-shot codon-model score of each nucleotide substitution (module docstring).

    Parameters
    ----------
    model
        A codon model (``load_codon_model(...)[0]``, or ``lifelm.genomes.CodonModel``).
    reference
        The genome the substitutions are called against, in the ORFs' coordinates (Wuhan-Hu-1,
        or a lineage consensus aligned to it with ``-`` for deletions).
    substitutions
        Nextclade-style changes, e.g. ``["A23403G", "C241T"]`` (1-based positions).
    context_codons
        Codons of context on each side of the changed codon (the window is cut at ORF ends).
    method
        ``"full"``: log-likelihood ratio of the whole window; ``"left"``: of the changed codon only.
    orfs
        ORFs read (``None``: SARS-CoV-2's 12, Nextclade's gene map).
    on_mismatch
        ``"raise"`` (default) when a substitution's reference base is not the reference's, or
        ``"nan"`` to score it NaN.
    batch_tokens
        Padded tokens per forward pass (speed and memory only; results do not depend on it).
    device
        Where to compute (the model is moved there); ``None``: where the model is.

    Returns
    -------
    numpy.ndarray
        ``(len(substitutions),)`` float64 log-likelihood ratios in nats, NaN where a substitution
        cannot be scored (reasons: :func:`substitution_table`).
    """
    table = substitution_table(
        model,
        reference,
        substitutions,
        context_codons=context_codons,
        orfs=orfs,
        on_mismatch=on_mismatch,
        batch_tokens=batch_tokens,
        device=device,
        need_full=method == "full",
    )
    return aggregate(table, method=method)


def aggregate(table: pd.DataFrame, *, method: Method = "full") -> np.ndarray:
    """One score per substitution from :func:`substitution_table` rows (summed over ORFs).

    A substitution with any unscorable ORF row is NaN (a partial sum would look like a score).
    """
    col = {"full": "llr", "left": "llr_left"}.get(method)
    if col is None:
        raise InputError(f"method must be 'full' or 'left', got {method!r}")
    if not len(table):
        return np.empty(0)
    idx = table["input_index"].to_numpy(dtype=np.int64)
    n = int(idx.max()) + 1
    vals = table[col].to_numpy(dtype=np.float64)
    sums = np.bincount(idx, weights=np.nan_to_num(vals), minlength=n)
    bad = np.bincount(idx, weights=np.isnan(vals), minlength=n) > 0
    return np.where(bad, np.nan, sums)


def all_substitutions(
    reference: str,
    *,
    orfs: Sequence[OrfLike] | None = None,
    region: tuple[int, int] | None = None,
    coding_only: bool = True,
) -> list[str]:
    """Every single-nucleotide change of ``reference``: three per position, in position order.

    Parameters
    ----------
    reference
        The genome (positions whose base is not A/C/G/T are skipped: they have no single change).
    orfs
        ORFs for ``coding_only`` (``None``: SARS-CoV-2's).
    region
        1-based inclusive ``(start, end)`` to restrict to.
    coding_only
        Only positions read by an ORF (the model scores nothing else).

    >>> all_substitutions("ACGTACGTA", orfs=[], coding_only=False, region=(1, 1))
    ['A1C', 'A1G', 'A1T']
    """
    ref = reference.upper()
    lo, hi = region if region is not None else (1, len(ref))
    if not 1 <= lo <= hi <= len(ref):
        raise InputError(f"region {lo}..{hi} is not inside the reference (1..{len(ref)})")
    keep = np.zeros(len(ref) + 1, dtype=bool)
    if coding_only:
        for orf in default_orfs() if orfs is None else orfs:
            keep[_orf_positions(orf)] = True
    else:
        keep[:] = True
    out: list[str] = []
    for p in range(lo, hi + 1):
        b = ref[p - 1]
        if keep[p] and b in _ACGT:
            out.extend(f"{b}{p}{a}" for a in "ACGT" if a != b)
    return out


BASELINES = ("codon_matrix", "blosum62", "conservation", "mutation_prior")


def add_baselines(
    table: pd.DataFrame,
    *,
    consensus: Sequence[str] | None = None,
    rates: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Add the simple baselines to a :func:`substitution_table` (a copy; higher = more tolerated).

    ``codon_matrix``
        Schneider et al. (2005)'s empirical codon substitution matrix (log-odds of one codon
        replacing another in aligned vertebrate genes; Biopython's ``SCHNEIDER``).
    ``blosum62``
        BLOSUM62 of the amino-acid change (synonymous: the diagonal; ``*`` = stop).
    ``conservation``
        ``log((n_alt + 0.5) / (n + 1))``: how many of the ``consensus`` genomes (e.g. the lineage
        consensus genomes designated before a date) carry the new base at the position, out of
        the ``n`` with an A/C/G/T there. Absent (NaN) without ``consensus``.
    ``mutation_prior``
        ``log`` of the neutral rate of the nucleotide change class (``CtoT`` ...): the mean over
        clades of the ``rate`` column of ``rates`` (Bloom & Neher's
        ``synonymous_rates_by_clade.csv``, rows ``subset == "all"``). NaN without ``rates``.
    """
    from Bio.Align import substitution_matrices

    out = table.copy()
    schneider = substitution_matrices.load("SCHNEIDER")
    blosum = substitution_matrices.load("BLOSUM62")
    ok = out["reason"] == ""
    out["codon_matrix"] = np.nan
    out["blosum62"] = np.nan
    out.loc[ok, "codon_matrix"] = [
        float(schneider[r, a])
        for r, a in zip(out.loc[ok, "ref_codon"], out.loc[ok, "alt_codon"], strict=True)
    ]
    out.loc[ok, "blosum62"] = [
        float(blosum[r, a])
        for r, a in zip(out.loc[ok, "ref_aa"], out.loc[ok, "alt_aa"], strict=True)
    ]
    out["conservation"] = np.nan
    if consensus is not None:
        out["conservation"] = conservation_scores(consensus, out["position"], out["alt"])
    out["mutation_prior"] = np.nan
    if rates is not None:
        prior = mutation_class_prior(rates)
        kind = out["ref"] + "to" + out["alt"]
        out["mutation_prior"] = kind.map(prior).astype(float)
    return out


def conservation_scores(
    consensus: Sequence[str], positions: pd.Series | np.ndarray, alts: pd.Series | np.ndarray
) -> np.ndarray:
    """``log((n_alt + 0.5) / (n + 1))`` per (position, alt base) over aligned ``consensus`` genomes."""
    pos = np.asarray(positions, dtype=np.int64)
    alt = np.frombuffer("".join(np.asarray(alts, dtype=str)).encode(), dtype=np.uint8)
    if not len(consensus):
        raise InputError("no consensus genomes to compute conservation from (check --as-of)")
    uniq, inv = np.unique(pos, return_inverse=True)
    cols = np.stack(
        [np.frombuffer(g.upper().encode("latin-1"), dtype=np.uint8)[uniq - 1] for g in consensus]
    )  # (G, P)
    called = np.isin(cols, np.frombuffer(b"ACGT", dtype=np.uint8)).sum(0)[inv]
    n_alt = (cols[:, inv] == alt[None, :]).sum(0)
    return np.log((n_alt + 0.5) / (called + 1.0))


def mutation_class_prior(rates: pd.DataFrame) -> dict[str, float]:
    """``{"CtoT": log mean rate, ...}`` from Bloom & Neher's synonymous rates by clade."""
    need = {"subset", "mut_type", "rate"}
    if not need <= set(rates.columns):
        raise InputError(f"the rates table needs columns {sorted(need)}, has {list(rates.columns)}")
    sub = rates[rates["subset"] == "all"] if (rates["subset"] == "all").any() else rates
    mean = sub.groupby("mut_type")["rate"].mean()
    if (mean <= 0).any():
        raise InputError("the rates table has a non-positive mean rate; cannot take its log")
    return {str(k): float(np.log(v)) for k, v in mean.items()}


SCORE_COLUMNS = ("llr", "llr_left", *BASELINES)


def per_substitution(table: pd.DataFrame) -> pd.DataFrame:
    """One row per input substitution: ORF rows joined (scores summed over ORFs; a NaN in any
    ORF makes the sum NaN), position-level baselines taken once."""
    cols = [c for c in SCORE_COLUMNS if c in table.columns]
    keys = ["input_index", "substitution", "position", "ref", "alt"]
    multi = table["input_index"].duplicated(keep=False)
    one = table.loc[~multi, [*keys, "orf", "aaSubstitution", "synonymous", *cols, "reason"]].copy()
    one["synonymous"] = one["synonymous"].eq(True).astype(bool)
    parts = [one]
    if multi.any():  # a position read by two ORFs (rare): join the rows
        g = table[multi].groupby("input_index", sort=True)
        many = g[keys[1:]].first()
        many["orf"] = g["orf"].agg(lambda x: ",".join(v for v in x if v))
        many["aaSubstitution"] = g["aaSubstitution"].agg(lambda x: ",".join(v for v in x if v))
        many["synonymous"] = g["synonymous"].agg(
            lambda x: bool(x.notna().all() and x.astype(bool).all())
        )
        for c in cols:
            if c in ("conservation", "mutation_prior"):
                many[c] = g[c].first()
            else:
                many[c] = g[c].agg(lambda x: x.sum() if x.notna().all() else np.nan)
        many["reason"] = g["reason"].agg(lambda x: ",".join(sorted({v for v in x if v})))
        parts.append(many.reset_index())
    out = pd.concat(parts, ignore_index=True).sort_values("input_index", kind="stable")
    return out.drop(columns="input_index").reset_index(drop=True)


def aa_table(table: pd.DataFrame) -> pd.DataFrame:
    """The amino-acid view: one row per (ORF, codon, new amino acid) reachable by one nucleotide
    change, scored by its best path (the highest ``llr`` among the substitutions that make it;
    baselines: their highest value too). Unscorable rows are left out.

    Columns: ``orf``, ``codon``, ``ref_aa``, ``alt_aa``, ``aaSubstitution``, ``synonymous``,
    ``best_substitution``, ``n_paths``, then the score columns present in ``table``.
    """
    ok = table[table["reason"] == ""]
    cols = [c for c in SCORE_COLUMNS if c in ok.columns]
    keys = ["orf", "codon", "ref_aa", "alt_aa"]
    g = ok.groupby(keys, sort=False)
    best = ok.loc[g["llr"].idxmax() if ok["llr"].notna().all() else g["llr_left"].idxmax()]
    out = best[[*keys, "aaSubstitution", "synonymous"]].copy()
    out["best_substitution"] = best["substitution"].to_numpy()
    out["n_paths"] = g.size().to_numpy()
    for c in cols:
        out[c] = g[c].max().to_numpy()
    out["synonymous"] = out["synonymous"].astype(bool)
    return out.sort_values(["orf", "codon", "alt_aa"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class ScanInputs:
    """What ``lifelm genomes score-mutations`` reads besides the model (paths or ``None``)."""

    reference: str | None = None  # FASTA of the reference genome (default: Wuhan-Hu-1)
    lineage: str | None = None  # name of a genome in ``consensus`` to use as the reference
    consensus: str | None = None  # aligned lineage consensus genomes (conservation baseline)
    consensus_dates: str | None = None  # TSV: lineage, designation_date
    as_of: str | None = None  # YYYY-MM-DD: conservation from lineages designated before it
    rates: str | None = None  # Bloom & Neher synonymous_rates_by_clade.csv (mutation prior)
    substitutions: str | None = None  # file, one substitution per line (default: all)
    region: tuple[int, int] | None = None
    orf_names: tuple[str, ...] = ()
    annotation: str | None = None


def _consensus(inputs: ScanInputs) -> tuple[dict[str, str], list[str]]:
    """The consensus genomes known at ``as_of``, and lines that say which were used."""
    from lifelm.io.fasta import read_fasta

    if inputs.consensus is None:
        if inputs.as_of or inputs.consensus_dates or inputs.lineage:
            raise InputError("--as-of, --consensus-dates and --lineage need --consensus FASTA")
        return {}, ["conservation baseline: not computed (no --consensus)"]
    genomes = read_fasta(inputs.consensus)
    if inputs.as_of is None:
        return genomes, [
            f"conservation baseline: all {len(genomes)} consensus genomes (no --as-of)"
        ]
    if inputs.consensus_dates is None:
        raise InputError("--as-of needs --consensus-dates (a TSV with lineage, designation_date)")
    dates = pd.read_csv(inputs.consensus_dates, sep="\t", dtype=str, keep_default_na=False)
    missing = {"lineage", "designation_date"} - set(dates.columns)
    if missing:
        raise InputError(f"{inputs.consensus_dates}: missing column(s) {sorted(missing)}")
    try:
        cutoff = pd.Timestamp(inputs.as_of)
    except ValueError as err:
        raise InputError(f"--as-of {inputs.as_of!r} is not a date (YYYY-MM-DD)") from err
    when = pd.to_datetime(dates["designation_date"], errors="coerce")
    known = set(dates.loc[when < cutoff, "lineage"])
    kept = {k: v for k, v in genomes.items() if k in known}
    lines = [
        f"conservation baseline: {len(kept)} of {len(genomes)} consensus genomes designated "
        f"before {inputs.as_of} ({int(when.isna().sum())} undated lineages left out)"
    ]
    if not kept:
        raise InputError(f"no consensus genome was designated before {inputs.as_of}")
    return kept, lines


def scan_from_files(
    model: object,
    inputs: ScanInputs,
    *,
    context_codons: int = 32,
    method: Method = "full",
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Everything ``lifelm genomes score-mutations`` computes: the nucleotide table, the
    amino-acid table and summary lines (which reference, which baselines, how many NaN)."""
    from lifelm.data.genomes.align import Reference

    consensus, lines = _consensus(inputs)
    if inputs.lineage is not None:
        all_consensus = consensus
        if inputs.as_of is not None:  # the reference lineage itself may be newer than as_of
            from lifelm.io.fasta import read_fasta

            all_consensus = read_fasta(str(inputs.consensus))
        if inputs.lineage not in all_consensus:
            raise InputError(f"{inputs.consensus}: no consensus genome named {inputs.lineage!r}")
        ref = all_consensus[inputs.lineage].upper()
        lines.insert(0, f"reference: consensus of {inputs.lineage}")
    elif inputs.reference is not None:
        from lifelm.tasks.genomes.codon_lm import reference_sequence

        ref = reference_sequence(inputs.reference).upper()
        lines.insert(0, f"reference: {inputs.reference}")
    else:
        ref = Reference.sarscov2().sequence
        lines.insert(0, "reference: Wuhan-Hu-1 (MN908947.3)")
    orfs = default_orfs(inputs.annotation)
    if inputs.orf_names:
        unknown = set(inputs.orf_names) - {o.name for o in orfs}
        if unknown:
            raise InputError(
                f"--orf {sorted(unknown)}: not an ORF; ORFs: {', '.join(o.name for o in orfs)}"
            )
        orfs = [o for o in orfs if o.name in inputs.orf_names]
    if inputs.substitutions is not None:
        from lifelm.tasks.genomes.output import read_name_list

        subs = read_name_list(inputs.substitutions)
    else:
        subs = all_substitutions(ref, orfs=orfs, region=inputs.region)
    if not subs:
        raise InputError("no substitution to score (check --region/--orf/--substitutions)")
    rates = pd.read_csv(inputs.rates) if inputs.rates is not None else None
    if rates is None:
        lines.append("mutation-prior baseline: not computed (no --rates)")
    table = substitution_table(
        model, ref, subs, context_codons=context_codons, orfs=orfs, need_full=method == "full"
    )
    table = add_baselines(
        table, consensus=list(consensus.values()) if consensus else None, rates=rates
    )
    nt = per_substitution(table)
    nt["score"] = nt["llr" if method == "full" else "llr_left"]
    aa = aa_table(table)
    n_nan = int(nt["score"].isna().sum())
    lines.append(
        f"{len(nt)} substitutions, {len(aa)} amino-acid changes; model score = {method} "
        f"log-likelihood ratio, {context_codons} codons of context each side"
    )
    if n_nan:
        reasons = nt.loc[nt["score"].isna(), "reason"].value_counts().to_dict()
        lines.append(f"{n_nan} substitutions not scored (NaN), by reason: {reasons}")
    return nt, aa, lines
