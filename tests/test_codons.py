"""Codon tokenizer, packing and CDS datasets (GenSLM-compatible ids, frames, counts, dedupe)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelm.data.genomes.codons import (
    CLS_ID,
    PAD_ID,
    SEP_ID,
    UNK_ID,
    VOCAB,
    check_tokenizer,
    decode_codons,
    encode_codons,
    encode_orfs,
    orf_sequence,
    pack_documents,
    tokenizer_identity,
)
from lifelm.data.genomes.datasets import (
    CdsRecord,
    PackedCodonDataset,
    collate_packed,
    dedupe_cds,
    genome_label,
    read_cds_fasta,
    split_by_genome,
)
from lifelm.io.annotation import Orf


def test_vocabulary_matches_genslm() -> None:
    assert len(VOCAB) == 69
    assert VOCAB[:5] == ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
    # first, some middle and last codons of GenSLM's codon_wordlevel_69vocab.json
    assert VOCAB[5:9] == ("GGC", "GCC", "ATC", "GAC")
    assert VOCAB[10] == "ATG"
    assert VOCAB[65:] == ("TAA", "CGA", "TGA", "TAG")
    assert sorted(VOCAB[5:]) == sorted(a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT")


def test_encode_counts_unknowns_and_accepts_lower_case() -> None:
    ids, stats = encode_codons("atgNNNgcRTAAga")
    assert ids.tolist() == [10, UNK_ID, UNK_ID, VOCAB.index("TAA")]
    assert (stats.n_codons, stats.n_unknown, stats.n_trailing) == (4, 2, 2)
    assert decode_codons(ids) == "ATGNNNNNNTAA"


def test_all_gap_codons_are_dropped_and_partial_gaps_unknown() -> None:
    ids, stats = encode_codons("ATG---GC-TAA")
    assert ids.tolist() == [10, UNK_ID, VOCAB.index("TAA")]
    assert stats.n_deleted == 1
    assert stats.n_unknown == 1


def test_reading_frame_follows_the_orf_not_position_zero() -> None:
    genome = "CC" + "ATGAAATAA" + "G" + "ATGCCCTGA"  # ORFs at 3..11 and 13..21 (1-based)
    orfs = [Orf("a", ((3, 11),), "+"), Orf("b", ((13, 21),), "+")]
    docs, stats = encode_orfs(genome, orfs)
    assert [decode_codons(d) for d in docs] == ["ATGAAATAA", "ATGCCCTGA"]
    assert all(d[0] == CLS_ID for d in docs)
    (whole,), _ = encode_orfs(genome, orfs, mode="genome")
    assert whole[0] == CLS_ID
    assert whole.tolist().count(SEP_ID) == 1
    assert len(whole) == 1 + 3 + 1 + 3
    assert stats.n_unknown == 0
    (cut,), _ = encode_orfs(genome, orfs, mode="genome", max_codons=4)
    assert len(cut) == 4


def test_multi_segment_and_minus_strand_orfs() -> None:
    genome = "ATGAAACCTAA"  # slippage-like join: 1..7 then 7..11 reads base 7 twice
    orf = Orf("x", ((1, 7), (7, 11)), "+")
    assert orf_sequence(genome, orf) == "ATGAAACCCTAA"
    rc = Orf("y", ((1, 9),), "-")
    assert orf_sequence("TTACATCAT", rc) == "ATGATGTAA"
    with pytest.raises(ValueError, match="outside the genome"):
        orf_sequence("ACGT", Orf("z", ((1, 9),), "+"))


def test_tokenizer_identity_is_stable_and_checked() -> None:
    ident = tokenizer_identity()
    assert ident == tokenizer_identity()
    check_tokenizer(ident)
    with pytest.raises(ValueError, match="misread"):
        check_tokenizer({**ident, "hash": "0000", "name": "other"})


def test_packing_keeps_documents_apart() -> None:
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, 69, size=n) for n in (3, 10, 7, 2, 25, 1)]
    packed = pack_documents(docs, 8)
    pieces = [len(d[i : i + 8]) for d in docs for i in range(0, len(d), 8)]
    total = sum(n for n in pieces if n >= 2)  # long docs split; 1-token pieces predict nothing
    assert (packed.input_ids != PAD_ID).sum() == total
    assert ((packed.doc_ids == -1) == (packed.input_ids == PAD_ID)).all()
    for r in range(len(packed.input_ids)):
        for d in set(packed.doc_ids[r].tolist()) - {-1}:
            pos = packed.position_ids[r][packed.doc_ids[r] == d]
            assert pos.tolist() == list(range(len(pos)))  # positions restart per document
    ds = PackedCodonDataset(docs, 8)
    batch = collate_packed([ds[0], ds[1]], torch.Generator())
    assert set(batch) == {"input_ids", "doc_ids", "position_ids"}
    assert batch["input_ids"].shape == (2, 8)


def test_dedupe_drops_exact_and_near_duplicates() -> None:
    rng = np.random.default_rng(1)
    bases = np.array(list("ACGT"))

    def gene(n: int) -> str:
        return "ATG" + "".join(rng.choice(bases, size=3 * n)) + "TAA"

    a, b = gene(300), gene(300)
    near = a[:300] + ("C" if a[300] != "C" else "G") + a[301:]  # one substitution
    recs = [CdsRecord("g1", "a", a), CdsRecord("g2", "a2", a), CdsRecord("g2", "near", near)]
    recs.append(CdsRecord("g1", "b", b))
    kept, report = dedupe_cds(recs)
    assert [r.name for r in kept] == ["a", "b"]
    assert (report.n_exact, report.n_near) == (1, 1)
    train, held = split_by_genome(kept, ["g1"])
    assert not train
    assert len(held) == 2
    with pytest.raises(ValueError, match="not in the corpus"):
        split_by_genome(kept, ["nope"])


def test_read_cds_fasta_and_genome_labels(tmp_path) -> None:
    path = tmp_path / "cds.fasta"
    gene = "ATG" + "GCT" * 40 + "TAA"
    path.write_text(f">Ecol|x1|b0001 product=thr\n{gene}\n>Ecol|x2|b0002\n{gene[:-1]}\n")
    recs = read_cds_fasta(path)
    assert [(r.genome, r.name) for r in recs] == [("Ecol", "Ecol|x1|b0001")]  # 2nd not whole codons
    assert genome_label("lcl|NC_013967.1_cds_WP_1 [gene=x]", default="f") == "NC_013967.1"
    assert genome_label("plain", default="f") == "f"


@pytest.mark.data
def test_real_consensus_genomes_tokenize_in_the_reference_frame() -> None:
    from tests.conftest import shared_file

    from lifelm.data.genomes.align import Reference
    from lifelm.io.fasta import iter_fasta

    path = shared_file("genomes/sarscov2/pango_consensus/pango_consensus_genome_nuc.fasta.xz")
    wanted = {"B.1.1.7", "BA.1", "A"}
    seqs = {}
    for rec in iter_fasta(path):  # stop reading once the three are found
        if rec.name in wanted:
            seqs[rec.name] = rec.sequence
            if len(seqs) == len(wanted):
                break
    orfs = Reference.sarscov2().orfs
    spike = next(k for k, o in enumerate(orfs) if o.name == "S")
    for name, seq in seqs.items():
        docs, stats = encode_orfs(seq, orfs)
        assert stats.n_codons > 9_700
        codon614 = orf_sequence(seq, orfs[spike])[3 * 613 : 3 * 614]  # reference frame
        assert codon614 == ("GAT" if name == "A" else "GGT")  # D614G in Alpha and Omicron
        if name == "A":  # no deletions: token 614 ([CLS] is token 0) is codon 614
            assert decode_codons(docs[spike][614:615]) == "GAT"
    # Alpha's S:HV69- and S:Y144- leave partial-gap codons as [UNK], counted, not silent
    _, alpha = encode_orfs(seqs["B.1.1.7"], orfs)
    assert 0 < alpha.unknown_by_orf["S"] + alpha.n_deleted < 10
