"""FASTA reading/writing/validation, metadata join, and GFF3/GenBank ORF annotation."""

from __future__ import annotations

import gzip
import logging
import lzma
from pathlib import Path

import pandas as pd
import pytest
from tests.conftest import shared_file

from lifelm.io.annotation import AnnotationError, Orf, read_annotation, read_genbank, read_gff3
from lifelm.io.fasta import (
    FastaFormatError,
    FastaRecord,
    compression_of,
    iter_fasta,
    join_metadata,
    read_fasta,
    write_fasta,
)

RECORDS = [("seq1 first", "ACGTNNRY-ACGT"), ("seq2", "GGGCCC" * 30)]


@pytest.mark.parametrize("suffix", [".fasta", ".fasta.gz", ".fa.xz", ".fa.bz2"])
def test_roundtrip_all_compressions(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"x{suffix}"
    assert write_fasta(path, RECORDS, width=7) == 2
    recs = list(iter_fasta(path))
    assert [(r.name, r.sequence) for r in recs] == RECORDS
    assert recs[0].id == "seq1"
    assert recs[0].line == 1
    assert not recs[0].had_lowercase


def test_compression_detected_by_magic_bytes(tmp_path: Path) -> None:
    hidden = tmp_path / "renamed.fasta"  # gzip content, plain name: magic bytes win
    hidden.write_bytes(gzip.compress(b">a\nACGT\n"))
    assert compression_of(hidden) == "gzip"
    assert read_fasta(hidden) == {"a": "ACGT"}
    xz = tmp_path / "x.txt"
    xz.write_bytes(lzma.compress(b">a\nAC\n"))
    assert read_fasta(xz) == {"a": "AC"}
    fake = tmp_path / "plain.fasta.gz"  # suffix says gzip, content is plain
    fake.write_text(">a\nACGT\n")
    with pytest.raises(FastaFormatError, match=r"plain\.fasta\.gz.*not compressed"):
        read_fasta(fake)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.fasta"
    path.write_text(text)
    return path


def test_sequence_before_header(tmp_path: Path) -> None:
    path = _write(tmp_path, "\nACGT\n>a\nACGT\n")
    with pytest.raises(
        FastaFormatError, match=r"bad\.fasta: line 2 has sequence before any '>' header"
    ):
        read_fasta(path)


def test_empty_record_error_and_keep(tmp_path: Path) -> None:
    path = _write(tmp_path, ">a\nACGT\n>empty\n>c\nGG\n")
    with pytest.raises(
        FastaFormatError, match=r"record 'empty' \(header on line 3\) has no sequence"
    ):
        read_fasta(path)
    assert read_fasta(path, empty="keep") == {"a": "ACGT", "empty": "", "c": "GG"}


def test_empty_name(tmp_path: Path) -> None:
    with pytest.raises(FastaFormatError, match="line 1 is a header"):
        read_fasta(_write(tmp_path, ">\nACGT\n"))


def test_illegal_characters_named(tmp_path: Path) -> None:
    path = _write(tmp_path, ">a\nACGT\n>b\nACGT\nAC1U\n")
    with pytest.raises(FastaFormatError, match=r"record 'b' line 5 has character\(s\) '1U'"):
        read_fasta(path)


def test_duplicated_names(tmp_path: Path) -> None:
    path = _write(tmp_path, ">a\nACGT\n>b\nA\n>a\nC\n")
    with pytest.raises(FastaFormatError, match=r"'a' on line 5 duplicates the one on line 1"):
        read_fasta(path)


def test_lowercase_reported_not_unknown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path, ">a\nacgtn\n>b\nACGT\n")
    with caplog.at_level(logging.WARNING, logger="lifelm"):
        recs = list(iter_fasta(path))
    assert recs[0] == FastaRecord("a", "ACGTN", 1, True)
    assert not recs[1].had_lowercase
    assert "1 record(s) had lower-case bases" in caplog.text


def test_join_metadata_reports_both_sides() -> None:
    meta = pd.DataFrame({"date": ["2020", "2021", "2022"], "strain": ["a", "b", "zz"]})
    joined = join_metadata(["a extra words", "b", "c"], meta)
    assert joined.key == "strain"
    assert joined.table["seqName"].tolist() == ["a extra words", "b", "c"]
    assert joined.table["date"].tolist() == ["2020", "2021", ""]
    assert joined.missing_in_metadata == ["c"]
    assert joined.missing_in_fasta == ["zz"]
    assert "1 sequence(s) without metadata" in joined.summary()


def test_join_metadata_errors(tmp_path: Path) -> None:
    meta = pd.DataFrame({"name": ["a", "a"], "x": ["1", "2"]})
    with pytest.raises(ValueError, match="duplicated value"):
        join_metadata(["a"], meta)
    with pytest.raises(ValueError, match="no column 'nope'"):
        join_metadata(["a"], meta, key="nope")
    with pytest.raises(ValueError, match="no column contains any"):
        join_metadata(["q"], meta)
    tsv = tmp_path / "m.tsv"
    tsv.write_text("strain\tdate\na\t2020\n")
    assert join_metadata(["a"], tsv).table.loc[0, "date"] == "2020"


GFF = """##gff-version 3
chr\tx\tgene\t1\t30\t.\t+\t.\tID=g1;Name=G1
chr\tx\tCDS\t1\t12\t.\t+\t0\tID=cds1;Name=AB
chr\tx\tCDS\t12\t26\t.\t+\t0\tID=cds1;Name=AB
chr\tx\tCDS\t40\t51\t.\t-\t0\tID=cds2;gene=REV%3B1
"""


def test_gff3_multi_segment_and_minus_strand(tmp_path: Path) -> None:
    path = tmp_path / "a.gff3"
    path.write_text(GFF)
    orfs = read_gff3(path)
    assert orfs == [Orf("AB", ((1, 12), (12, 26)), "+"), Orf("REV;1", ((40, 51),), "-")]
    ab = orfs[0]
    assert ab.length == 27
    assert ab.positions()[10:14] == [11, 12, 12, 13]  # slippage reads 12 twice
    assert orfs[1].positions()[:2] == [51, 50]
    assert read_gff3(path, feature_types=("gene",)) == [Orf("G1", ((1, 30),))]
    bad = tmp_path / "b.gff3"
    bad.write_text("chr\tx\tCDS\t1\n")
    with pytest.raises(AnnotationError, match=r"b\.gff3: line 1 has 4"):
        read_gff3(bad)


def test_genbank_join(tmp_path: Path) -> None:
    from Bio.Seq import Seq
    from Bio.SeqFeature import CompoundLocation, FeatureLocation, SeqFeature
    from Bio.SeqIO import write
    from Bio.SeqRecord import SeqRecord

    rec = SeqRecord(Seq("ATG" * 20), id="X1", name="X1", annotations={"molecule_type": "DNA"})
    loc = CompoundLocation([FeatureLocation(0, 12, strand=1), FeatureLocation(11, 26, strand=1)])
    rec.features.append(SeqFeature(loc, type="CDS", qualifiers={"gene": ["AB"]}))
    rec.features.append(
        SeqFeature(FeatureLocation(30, 42, strand=-1), type="CDS", qualifiers={"locus_tag": ["R"]})
    )
    path = tmp_path / "x.gb"
    write(rec, path, "genbank")
    assert read_genbank(path) == [Orf("AB", ((1, 12), (12, 26)), "+"), Orf("R", ((31, 42),), "-")]
    assert read_annotation(path) == read_genbank(path)


def test_orf_validation() -> None:
    with pytest.raises(ValueError, match="bad segment"):
        Orf("x", ((5, 2),))
    assert Orf.from_dict(Orf("x", ((1, 3),)).to_dict()) == Orf("x", ((1, 3),))


@pytest.mark.data
def test_real_annotations_agree_with_bundled_reference() -> None:
    from lifelm.data.genomes.align import Reference

    bundled = Reference.sarscov2()
    gff = read_annotation(shared_file("genomes/reference/genome_annotation.orfs.gff3"))
    gb = read_annotation(shared_file("genomes/reference/MN908947.3.gb"))
    assert sorted(gff, key=lambda o: o.start) == list(bundled.orfs)
    assert {o.name: o.segments for o in gb} == {o.name: o.segments for o in bundled.orfs}
    proteins = {
        o.name: o
        for o in read_annotation(shared_file("genomes/reference/genome_annotation.proteins.gff3"))
    }
    assert proteins["nsp12"].segments == ((13442, 13468), (13468, 16236))
    ref = read_fasta(shared_file("genomes/reference/MN908947.3.fasta"))
    assert next(iter(ref.values())) == bundled.sequence
