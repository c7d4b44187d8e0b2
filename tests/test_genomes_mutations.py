"""Alignment, mutation calls and QC on synthetic genomes with planted changes (exact calls)."""

from __future__ import annotations

import random

import pandas as pd
import pytest
from tests.conftest import shared_file

from lifelm.data.genomes.align import (
    MutationCaller,
    Reference,
    aligned_to_reference,
    call_many,
    format_ranges,
    reverse_complement,
    translate_codon,
)
from lifelm.data.genomes.qc import evaluate_qc, sequence_stats
from lifelm.io.annotation import Orf
from lifelm.tasks.genomes.mutations import call_mutations
from lifelm.tasks.genomes.qc import genome_qc

REF = Reference.sarscov2()
W = REF.sequence


def _mut(seq: str, pos: int, alt: str) -> str:
    return seq[: pos - 1] + alt + seq[pos:]


def _del(seq: str, start: int, end: int) -> str:
    return seq[: start - 1] + seq[end:]


@pytest.fixture(scope="module")
def caller() -> MutationCaller:
    return MutationCaller()


def _subs(m) -> list[str]:
    return [f"{r}{p}{a}" for p, r, a in m.substitutions]


def test_random_reference_planted_mutations() -> None:
    rng = random.Random(7)
    seq = "".join(rng.choice("ACGT") for _ in range(3000))
    ref = Reference("rand", seq, (Orf("G1", ((301, 1500),)), Orf("G2", ((1601, 2899),))))
    caller = MutationCaller(ref)
    q = list(seq)
    planted = {}
    for pos in (400, 777, 1234, 2002, 2500):
        alt = next(b for b in "ACGT" if b != seq[pos - 1])
        q[pos - 1] = alt
        planted[pos] = alt
    q = "".join(q)
    q = q[:1801] + q[1807:]  # delete 1802-1807: codons 68 and 69 of G2 (1802 = 1601 + 67 * 3)
    ins = next(  # 3 bases that cannot slide left or right: the insertion stays after codon 234
        a + b + c
        for a in "ACGT"
        for b in "ACGT"
        for c in "ACGT"
        if c != seq[1001] and a != seq[1002]
    )
    q = q[:1002] + ins + q[1002:]  # insertion after 1002, between codons 234 and 235 of G1
    m = caller.call(q)
    assert _subs(m) == [f"{seq[p - 1]}{p}{a}" for p, a in planted.items()]
    assert format_ranges(m.deletions) == "1802-1807"
    assert m.insertions == ((1002, ins),)
    assert [str(d) for d in m.aa_deletions] == [
        f"G2:{translate_codon(seq[1801:1804])}68-",
        f"G2:{translate_codon(seq[1804:1807])}69-",
    ]
    expected_aa = []
    for pos, alt in planted.items():
        for orf in ref.orfs:
            if orf.start <= pos <= orf.end:
                ci = (pos - orf.start) // 3
                c0 = orf.start - 1 + 3 * ci
                rc = seq[c0 : c0 + 3]
                qc = "".join(alt if c0 + k + 1 == pos else rc[k] for k in range(3))
                if translate_codon(qc) != translate_codon(rc):
                    expected_aa.append(
                        f"{orf.name}:{translate_codon(rc)}{ci + 1}{translate_codon(qc)}"
                    )
    assert [str(a) for a in m.aa_substitutions] == expected_aa
    assert m.frameshifts == ()


def test_nextclade_notation_on_wuhan(caller: MutationCaller) -> None:
    m = caller.call(_mut(_mut(W, 241, "T"), 23403, "G"))
    assert _subs(m) == ["C241T", "A23403G"]
    assert [str(a) for a in m.aa_substitutions] == ["S:D614G"]
    assert (m.alignment_start, m.alignment_end) == (1, len(W))


def test_deletion_inside_codon_keeps_residue(caller: MutationCaller) -> None:
    m = caller.call(_del(W, 21765, 21770))  # Alpha's S:H69-/V70-: ATC|CAT|GTC minus TCCATG
    assert format_ranges(m.deletions) == "21765-21770"
    assert [str(a) for a in m.aa_deletions] == ["S:H69-", "S:V70-"]
    assert m.aa_substitutions == ()


def test_whole_codon_deletion_moved_to_codon_start(caller: MutationCaller) -> None:
    # deleting 21991-21993 gives the same genome as deleting codon 144 (21992-21994)
    m = caller.call(_del(W, 21991, 21993))
    assert format_ranges(m.deletions) == "21992-21994"
    assert [str(a) for a in m.aa_deletions] == ["S:Y144-"]
    assert caller.aligned_to_reference(_del(W, 21991, 21993))[21991:21994] == "---"


def test_insertion_frameshift_and_stop(caller: MutationCaller) -> None:
    m = caller.call(W[:22204] + "GAGCCAGAA" + W[22204:])
    assert m.insertions == ((22204, "GAGCCAGAA"),)
    assert m.aa_substitutions == ()
    assert m.frameshifts == ()
    m = caller.call(_del(W, 22000, 22000))  # 1 nt deletion: S out of frame from codon 146
    assert m.frameshifts == (("S", 146, 1274),)
    assert not any(a.gene == "S" for a in m.aa_substitutions)
    m = caller.call(_mut(W, 27972, "T"))  # Alpha's ORF8:Q27*
    assert [str(a) for a in m.stop_codons] == ["ORF8:Q27*"]


def test_ambiguous_bases_are_missing_not_substitutions(caller: MutationCaller) -> None:
    q = "N" * 54 + W[54:5000] + "N" * 300 + _mut(W[5300:], 23403 - 5300, "R")
    m = caller.call(q)
    assert m.substitutions == ()
    assert format_ranges(m.missing) == "1-54,5001-5300"
    assert m.non_acgtn == ((23403, "R"),)
    assert m.aa_substitutions == ()


def test_reverse_complement_lowercase_and_gaps(caller: MutationCaller) -> None:
    q = reverse_complement(_mut(W, 23403, "G")).lower()
    df = call_mutations({"rc": q[:100] + "--" + q[100:]})
    assert df.loc[0, "substitutions"] == "A23403G"
    assert df.loc[0, "strand"] == "-"


def test_orf1ab_slippage_frame() -> None:
    ref = Reference(REF.name, W, (Orf("ORF1ab", ((266, 13468), (13468, 21555))),))
    m = MutationCaller(ref).call(_mut(W, 14408, "T"))  # ORF1b:P314L = ORF1ab:P4715L
    assert [str(a) for a in m.aa_substitutions] == ["ORF1ab:P4715L"]


def test_aligned_to_reference_shape(caller: MutationCaller) -> None:
    q = W[100:21764] + W[21770:22204] + "AAAA" + W[22204:29800]
    out = aligned_to_reference(q)
    assert len(out) == len(W)
    assert out[:100] == "-" * 100
    assert out[29800:] == "-" * 103
    assert out[21764:21770] == "------"
    assert out.replace("-", "") == W[100:21764] + W[21770:29800]  # insertion removed


def test_call_many_parallel_equals_serial() -> None:
    recs = [("a", _mut(W, 241, "T")), ("b", _del(W, 21765, 21770)), ("c", "N" * 50)]
    serial = [(n, m) for n, _, m in call_many(recs)]
    parallel = [(n, m) for n, _, m in call_many(recs, n_jobs=2, chunksize=1)]
    assert serial == parallel
    assert serial[2][1].alignment_end == 0


def test_qc_statuses() -> None:
    seqs = {
        "good": W,
        "frameshift": _del(W, 22000, 22000),
        "short": W[:20000],
        "all_n": "N" * 29903,
        "empty": "",
        "mixed": _mut(_mut(_mut(W, 100, "R"), 200, "Y"), 300, "K"),
    }
    df = genome_qc(seqs).set_index("seqName")
    # Nextclade's scoring: 1 frame shift = 75 -> overall 56 (mediocre); 3 mixed sites = 30 -> 9
    # (good); a genome reaching 67% of the reference: LifeLM's span rule, 75 -> mediocre
    assert df["qc.overallStatus"].to_dict() == {
        "good": "good",
        "frameshift": "mediocre",
        "short": "mediocre",
        "all_n": "bad",
        "empty": "bad",
        "mixed": "good",
    }
    assert df.loc["mixed", "qc.mixedSites.score"] == 30.0
    assert "frame shift" in df.loc["frameshift", "qc.reasons"]
    assert df.loc["all_n", "qc.reasons"] == "all N"
    assert "partial genome" in df.loc["short", "qc.reasons"]
    assert df.loc["empty", "qc.reasons"].startswith("empty sequence")
    assert df.loc["short", "length"] == 20000
    stats = sequence_stats("ACNNNTNR-")
    assert (
        stats.length,
        stats.n_count,
        stats.ambiguous_count,
        stats.n_runs,
        stats.longest_n_run,
    ) == (8, 4, 1, 2, 3)
    assert evaluate_qc(stats, None, 100).status == "bad"


def test_mutations_table_columns_and_metadata() -> None:
    meta = pd.DataFrame({"strain": ["x"], "date": ["2021-01-01"]})
    df = call_mutations({"x": _mut(W, 23403, "G"), "y": W}, metadata=meta)
    for col in (
        "seqName",
        "substitutions",
        "deletions",
        "insertions",
        "aaSubstitutions",
        "aaDeletions",
        "missing",
        "qc.overallStatus",
    ):
        assert col in df.columns
    assert df["date"].tolist() == ["2021-01-01", ""]
    assert df.attrs["metadata_join"].missing_in_metadata == ["y"]


@pytest.mark.data
def test_real_lineages_match_nextclade_truth() -> None:
    from lifelm.io.fasta import iter_fasta

    truth = pd.read_csv(
        shared_file("genomes/lineages/nextclade_lineage_mutations.tsv.gz"),
        sep="\t",
        dtype=str,
        keep_default_na=False,
    ).set_index("lineage")
    want = {"AY.4", "B.1.1.7", "B.1.617.2", "BA.2"}  # Delta, Alpha, Omicron: early in the file
    seqs: dict[str, str] = {}
    for r in iter_fasta(
        shared_file("genomes/sarscov2/pango_consensus/pango_consensus_genome_nuc.fasta.xz")
    ):
        if r.name in want:
            seqs[r.name] = r.sequence.replace("-", "")
        if len(seqs) == len(want):
            break
    df = call_mutations(seqs).set_index("seqName")
    for lineage in want:
        t = truth.loc[lineage]
        called = set(
            filter(
                None,
                (df.loc[lineage, "aaSubstitutions"] + "," + df.loc[lineage, "aaDeletions"]).split(
                    ","
                ),
            )
        )
        assert called == set(t.aa_mutations.split(",")), lineage
        assert set(df.loc[lineage, "substitutions"].split(",")) == set(
            t.nuc_substitutions.split(",")
        )
        assert df.loc[lineage, "deletions"] == t.nuc_deletions


@pytest.mark.data
def test_pangolin_bad_inputs_get_verdicts() -> None:
    df = genome_qc(shared_file("genomes/sarscov2/pangolin_test/test_seqs.fasta.xz")).set_index(
        "seqName"
    )
    expected = pd.read_csv(
        shared_file("genomes/sarscov2/pangolin_test/test_seqs.assignments.csv")
    ).set_index("taxon")
    unassigned = expected.index[expected["lineage"] == "Unassigned"]
    assert (df.loc[unassigned, "qc.overallStatus"] == "bad").all()
    assigned = expected.index[expected["lineage"] != "Unassigned"].drop(
        "b117"
    )  # b117 lacks a base: 1 frameshift
    assert (df.loc[assigned, "qc.overallStatus"] == "good").all()
