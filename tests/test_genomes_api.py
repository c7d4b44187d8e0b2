"""The public ``lifelm.genomes`` API: data-first functions, Nextclade's columns, bad inputs flagged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lifelm.genomes as lg
from lifelm._core.errors import InputError
from lifelm.io.checkpoint import save_checkpoint
from lifelm.tasks.genomes.codon_lm import model_sidecar

REF = lg.reference()


def _mut(seq: str, pos: int, base: str) -> str:
    return seq[: pos - 1] + base + seq[pos:]


@pytest.fixture(scope="module")
def model() -> lg.CodonModel:
    return lg.CodonModel.random("test", seed=0)


@pytest.fixture(scope="module")
def genomes() -> dict[str, str]:
    rng = np.random.default_rng(0)
    n_rich = list(REF)
    for start in range(300, 29000, 1000):  # 30 stretches of 300 N: ~30% of the genome
        n_rich[start : start + 300] = "N" * 300
    return {
        "wuhan": REF,
        "d614g": _mut(REF, 23403, "G"),
        "n_rich": "".join(n_rich),
        "other_virus": "".join(rng.choice(list("ACGT"), len(REF))),  # same length, no relation
    }


def test_score_flags_bad_genomes_instead_of_scoring_them(model, genomes) -> None:
    table = lg.score(genomes, model)
    t = table.set_index("seqName")
    assert list(table["seqName"]) == list(genomes)
    assert t.loc["wuhan", "qc.scoreStatus"] == "ok"
    assert t.loc["d614g", "qc.scoreStatus"] == "ok"
    assert np.isfinite(t.loc[["wuhan", "d614g"], "log_likelihood"]).all()
    assert t.loc["n_rich", "qc.scoreStatus"] == "bad"
    assert "N/ambiguous" in t.loc["n_rich", "qc.scoreReasons"]
    assert t.loc["other_virus", "qc.scoreStatus"] == "bad"
    assert np.isnan(t.loc[["n_rich", "other_virus"], "log_likelihood"]).all()


def test_embed_joins_to_nextclade_columns(model, genomes) -> None:
    good = {k: genomes[k] for k in ("wuhan", "d614g")}
    emb = lg.embed(good, model)
    muts = lg.mutations(good)
    joined = muts.merge(emb, on="seqName")
    assert len(joined) == 2
    assert joined.set_index("seqName").loc["d614g", "substitutions"] == "A23403G"
    cols = [c for c in emb.columns if c.startswith("emb_")]
    assert len(cols) == model.module.cfg.d_model
    assert np.isfinite(emb[cols].to_numpy()).all()
    whole = lg.embed(good, model, mode="genome")
    assert whole[cols].shape == emb[cols].shape
    assert not np.allclose(whole[cols], emb[cols])  # another context, another embedding


def test_bad_inputs_are_clear_errors(model) -> None:
    with pytest.raises(InputError, match="none of the 1 genome"):
        lg.score({"x": "ACGT--ACGT" * 100}, model)  # gaps of another alignment, no SARS-CoV-2
    with pytest.raises(InputError, match="none of the 1 genome"):
        lg.score({"x": "N" * len(REF)}, model)
    with pytest.raises(InputError, match="no genome"):
        lg.score({}, model)


def test_codon_model_loads_from_a_folder(model, tmp_path) -> None:
    save_checkpoint(tmp_path / "m", model.module.state_dict(), model_sidecar(model.module.cfg))
    loaded = lg.CodonModel.load(tmp_path / "m")
    assert loaded.path == tmp_path / "m"
    a = lg.score_mutations(["A23403G", "G28881A"], model, context=4)
    b = lg.score_mutations(["A23403G", "G28881A"], tmp_path / "m", context=4)
    np.testing.assert_allclose(a["llr"], b["llr"], atol=1e-6)


def test_score_mutations_with_baselines(model) -> None:
    consensus = [REF, _mut(REF, 23403, "G"), _mut(_mut(REF, 23403, "G"), 241, "T")]
    rates = pd.DataFrame(
        {
            "subset": "all",
            "clade": "20A",
            "mut_type": ["AtoG", "GtoA", "CtoT"],
            "rate": [0.3, 0.7, 3],
        }
    )
    nt = lg.score_mutations(
        ["A23403G", "A23403C", "G28881A"], model, consensus=consensus, rates=rates, context=4
    )
    assert list(nt["substitution"]) == ["A23403G", "A23403C", "G28881A"]
    c = nt.set_index("substitution")["conservation"]
    assert c["A23403G"] > c["A23403C"]  # seen in 2 of 3 consensus genomes vs none
    assert nt.set_index("substitution").loc["A23403G", "mutation_prior"] == pytest.approx(
        np.log(0.3)
    )
    assert np.isnan(nt.set_index("substitution").loc["A23403C", "mutation_prior"])  # no rate given
    assert nt["blosum62"].notna().all()
    assert nt["codon_matrix"].notna().all()
    aa = lg.score_mutations(None, model, region=(21563, 21568), level="aa", context=4)
    assert set(aa["orf"]) == {"S"}
    assert aa["codon"].isin([1, 2]).all()
    assert {"llr", "blosum62", "best_substitution", "n_paths"} <= set(aa.columns)


def test_generate_returns_valid_orfs(model) -> None:
    out = lg.generate(model, 2, top_k=1, max_codons=12)
    assert list(out.columns[:2]) == ["seqName", "sequence"]
    assert (out["n_codons"] <= 12).all()


def test_warn_is_the_early_warning_backtest() -> None:
    from lifelm.tasks.genomes import warning

    assert lg.warn is warning.warn
    assert "warn" in lg.__all__
    with pytest.raises(AttributeError):
        _ = lg.not_a_function  # type: ignore[attr-defined]


@pytest.mark.data
def test_pangolin_edge_cases_are_flagged_not_scored(model) -> None:
    from conftest import shared_file
    from lifelm.io.fasta import read_fasta

    path = shared_file("genomes/sarscov2/pangolin_test/test_seqs.fasta.xz")
    seqs = {k: v for k, v in read_fasta(path, empty="keep").items() if v}
    table = lg.score(seqs, model).set_index("seqName")
    assert table.loc["b117", "qc.scoreStatus"] == "ok"
    assert np.isfinite(table.loc["b117", "log_likelihood"])
    bad = table[table["qc.scoreStatus"] == "bad"]
    assert len(bad) >= 2  # the all-N and the too-short / many-N test records
    assert bad["log_likelihood"].isna().all()
    assert (bad["qc.scoreReasons"] != "").all()


def test_lineages_from_embeddings_with_the_baseline(model) -> None:
    rng = np.random.default_rng(1)
    genomes, clades = {}, []
    for i in range(16):
        seq = REF
        clade = "A" if i % 2 else "B"
        for pos in (22000, 23000, 24000) if clade == "A" else (26000, 27000, 28000):
            seq = _mut(seq, pos, "T" if seq[pos - 1] != "T" else "C")
        for pos in rng.choice(np.arange(1000, 29000), 3, replace=False):  # private changes
            seq = _mut(seq, int(pos), "A" if seq[pos - 1] != "A" else "G")
        genomes[f"g{i}"] = seq
        clades.append(clade)
    emb = lg.embed(genomes, model)
    labels = pd.DataFrame({"seqName": list(genomes), "clade": clades})
    table = lg.lineages(emb, labels, sequences=genomes)
    assert list(table["seqName"]) == list(genomes)
    assert {"clade_pred", "clade_prob", "clade_call"} <= set(table.columns)
    held = table[table["split"] == "held_out"]
    assert len(held) > 0
    assert "clade" in table.attrs["summary"]["columns"]
