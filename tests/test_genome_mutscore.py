"""Zero-shot substitution scores: exact against whole-ORF likelihoods, NaN with reasons, baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lifelm._core.errors import InputError
from lifelm.data.genomes.align import Reference
from lifelm.models.codon_transformer import CodonTransformer, CodonTransformerConfig
from lifelm.tasks.genomes.mutscore import (
    aa_table,
    all_substitutions,
    parse_substitution,
    score_substitutions,
    substitution_table,
)
from lifelm.tasks.genomes.score import score_genomes

REF = Reference.sarscov2()
E = REF.orf("E")  # 26245..26472, 76 codons: short enough to score with the whole ORF as context


def _model() -> CodonTransformer:
    torch.manual_seed(0)  # a large init spreads the predictions so differences are not ~0
    return CodonTransformer(CodonTransformerConfig.from_name("test", init_std=0.3)).eval()


def _sub(pos: int, k: int = 1) -> str:
    b = REF.sequence[pos - 1]
    return f"{b}{pos}{'ACGT'[('ACGT'.index(b) + k) % 4]}"


def _mutate(seq: str, sub: str) -> str:
    s = parse_substitution(sub)
    return seq[: s.pos - 1] + s.alt + seq[s.pos :]


def test_full_score_is_the_whole_orf_log_likelihood_ratio() -> None:
    model = _model()
    subs = [_sub(p, k) for p in (26245 + 3, 26300, 26301, 26400) for k in (1, 2)]
    got = score_substitutions(model, REF.sequence, subs, context_codons=200, orfs=[E])
    ref_ll = score_genomes(model, {"r": REF.sequence}, orfs=[E], progress=False)[0]
    for sub, llr in zip(subs, got, strict=True):
        mut = score_genomes(model, {"m": _mutate(REF.sequence, sub)}, orfs=[E], progress=False)
        expect = mut[0]["log_likelihood"].iat[0] - ref_ll["log_likelihood"].iat[0]
        assert llr == pytest.approx(expect, abs=1e-4)
    assert np.ptp(got) > 0.05  # the scores differ between substitutions


def test_left_score_matches_the_observed_mutation_ratio_of_score_genomes() -> None:
    model = _model()
    subs = [_sub(26300), _sub(26410, 2)]
    table = substitution_table(model, REF.sequence, subs, context_codons=200, orfs=[E])
    for sub, row in zip(subs, table.itertuples(), strict=True):
        _, muts, _ = score_genomes(
            model, {"m": _mutate(REF.sequence, sub)}, orfs=[E], progress=False
        )
        assert muts["aaSubstitution"].iat[0] == row.aaSubstitution
        assert row.llr_left == pytest.approx(muts["llr"].iat[0], abs=1e-4)


def test_scores_do_not_depend_on_batching_or_input_order() -> None:
    model = _model()
    subs = [_sub(p, k) for p in range(21563, 21563 + 60, 7) for k in (1, 3)]
    a = score_substitutions(model, REF.sequence, subs, context_codons=8)
    b = score_substitutions(model, REF.sequence, subs[::-1], context_codons=8, batch_tokens=300)
    np.testing.assert_allclose(a, b[::-1], atol=1e-5)


def test_unscorable_substitutions_are_nan_with_a_reason() -> None:
    model = _model()
    seq = REF.sequence[:26300] + "N" + REF.sequence[26301:]  # E's codon 26299-26301 gets an N
    subs = ["C241T", _sub(26300), "A23403G", "A23403N"]
    table = substitution_table(model, seq, subs, context_codons=4)
    reasons = table.set_index("substitution")["reason"]
    assert reasons["C241T"] == "non-coding"
    assert reasons[subs[1]] == "reference codon not ACGT"
    assert reasons["A23403N"] == "alt base not ACGT"
    assert reasons["A23403G"] == ""
    assert table.set_index("substitution").loc["A23403G", "aaSubstitution"] == "S:D614G"
    scores = score_substitutions(model, seq, subs, context_codons=4)
    assert np.isnan(scores[[0, 1, 3]]).all()
    assert np.isfinite(scores[2])


def test_overlapping_orfs_are_summed_and_mismatches_refused() -> None:
    model = _model()
    sub = _sub(28300)  # read by N and ORF9b
    table = substitution_table(model, REF.sequence, [sub], context_codons=4)
    assert sorted(table["orf"]) == ["N", "ORF9b"]
    score = score_substitutions(model, REF.sequence, [sub], context_codons=4)
    assert score[0] == pytest.approx(table["llr"].sum())
    wrong = f"{'ACGT'[('ACGT'.index(REF.sequence[100]) + 1) % 4]}101A"
    with pytest.raises(InputError, match="do not match the reference base"):
        score_substitutions(model, REF.sequence, [wrong])
    out = score_substitutions(model, REF.sequence, [wrong, "A23403G"], on_mismatch="nan")
    assert np.isnan(out[0])
    assert np.isfinite(out[1])
    with pytest.raises(InputError, match="Nextclade's notation"):
        parse_substitution("23403G")
    with pytest.raises(InputError, match="ends at"):
        score_substitutions(model, REF.sequence[:20000], ["A23403G"])


def test_all_substitutions_and_the_amino_acid_view() -> None:
    model = _model()
    subs = all_substitutions(REF.sequence, orfs=[E], region=(26245, 26262))
    assert len(subs) == 3 * 18
    assert len(set(subs)) == len(subs)
    table = substitution_table(model, REF.sequence, subs, context_codons=4, orfs=[E])
    aa = aa_table(table)
    # 6 codons; each AA reachable by one nucleotide change appears once with its best path
    assert not aa.duplicated(["orf", "codon", "alt_aa"]).any()
    first = aa[(aa["codon"] == 1)]
    assert set(first["ref_aa"]) == {"M"}
    best = table[table["codon"] == 1].groupby("aaSubstitution")["llr"].max()
    np.testing.assert_allclose(
        first.set_index("aaSubstitution").loc[best.index, "llr"], best.to_numpy()
    )
    assert aa["synonymous"].dtype == bool
    assert isinstance(aa, pd.DataFrame)


def _cli(args: list[str]) -> int:
    from lifelm.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_score_mutations_command(tmp_path, capsys) -> None:
    from lifelm.io.checkpoint import save_checkpoint
    from lifelm.tasks.genomes.codon_lm import model_sidecar

    model = _model()
    save_checkpoint(tmp_path / "m", model.state_dict(), model_sidecar(model.cfg))
    rates = tmp_path / "rates.csv"
    pd.DataFrame(
        {"subset": "all", "clade": "20A", "mut_type": ["AtoG", "CtoT"], "rate": [0.3, 3.0]}
    ).to_csv(rates, index=False)
    out = tmp_path / "scan.tsv"
    args = ["genomes", "score-mutations", "-m", str(tmp_path / "m"), "-o", str(out)]
    code = _cli([*args, "--region", "21563-21571", "--context", "4", "--rates", str(rates)])
    assert code == 0
    nt = pd.read_csv(out, sep="\t", comment="#")
    aa = pd.read_csv(tmp_path / "scan.aa.tsv", sep="\t", comment="#")
    assert len(nt) == 27
    assert nt["score"].notna().all()
    assert {"codon_matrix", "blosum62", "conservation", "mutation_prior"} <= set(nt.columns)
    assert set(aa["ref_aa"]) == {"M", "F", "V"}  # S:M1, F2, V3
    assert "conservation baseline: not computed" in capsys.readouterr().out
    # a date without the genomes it filters is a clear error, not a silent baseline
    assert _cli([*args, "--as-of", "2021-06-01"]) == 2
    assert "--as-of" in capsys.readouterr().err


@pytest.mark.data
def test_scan_of_a_lineage_consensus_on_real_data() -> None:
    from conftest import shared_file
    from lifelm.tasks.genomes.mutscore import ScanInputs, scan_from_files

    cons = shared_file("genomes/sarscov2/pango_consensus/pango_consensus_genome_nuc.fasta.xz")
    dates = shared_file("genomes/sarscov2/pango_consensus/lineage_labels.tsv")
    rates = shared_file("genomes/fitness/synonymous_rates_by_clade.csv")
    inputs = ScanInputs(
        lineage="BA.1",
        consensus=str(cons),
        consensus_dates=str(dates),
        as_of="2021-06-01",
        rates=str(rates),
        region=(23401, 23405),
    )
    nt, aa, lines = scan_from_files(_model(), inputs, context_codons=4)
    assert lines[0] == "reference: consensus of BA.1"
    assert "designated before 2021-06-01" in lines[1]
    row = nt.set_index("substitution").loc["G23403A"]  # BA.1 carries D614G: G is its base
    assert row["aaSubstitution"] == "S:G614D"
    assert np.isfinite(nt["score"]).all()
    assert nt["conservation"].notna().all()
    assert nt["mutation_prior"].notna().all()
    assert "S:G614D" in set(aa["aaSubstitution"])
