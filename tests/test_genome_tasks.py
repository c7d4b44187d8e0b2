"""Codon-model tasks end to end on a tiny model: train, embed, lineages, score, generate, baselines, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from lifelm.data.genomes.align import Reference
from lifelm.evaluation.baselines.genomes import hamming_distances, hamming_nn, kmer_logreg
from lifelm.models.codon_transformer import CodonTransformer, CodonTransformerConfig
from lifelm.tasks.genomes.codon_lm import load_codon_model, model_sidecar
from lifelm.tasks.genomes.embed import embed_genomes
from lifelm.tasks.genomes.generate import generate, is_valid_orf
from lifelm.tasks.genomes.lineages import (
    LineageConfig,
    date_split,
    lineage_family_split,
    lineages,
)
from lifelm.tasks.genomes.score import perplexity_table, score_genomes
from lifelm.tasks.genomes.train import finetune, pretrain
from lifelm.training.loop import TrainConfig

TINY_TRAIN = TrainConfig(
    max_steps=2,
    batch_size=2,
    warmup_steps=1,
    checkpoint_every=0,
    log_every=1,
    device="cpu",
    progress=False,
)


@pytest.fixture(scope="module")
def ref() -> str:
    return Reference.sarscov2().sequence


@pytest.fixture(scope="module")
def genomes(ref: str) -> dict[str, str]:
    """Wuhan-Hu-1, a D614G genome (A23403G), and one with Ns and a 3-nt deletion in S."""
    d614g = ref[:23402] + "G" + ref[23403:]
    gappy = ref[:1000] + "N" * 300 + ref[1300:21763] + "---" + ref[21766:]  # in-frame deletion
    return {"wuhan": ref, "d614g": d614g, "gappy": gappy}


@pytest.fixture(scope="module")
def model() -> CodonTransformer:
    torch.manual_seed(0)
    return CodonTransformer(CodonTransformerConfig.from_name("test")).eval()


def test_embeddings_do_not_depend_on_batch_size_or_order(model, genomes) -> None:
    a, table = embed_genomes(model, genomes, context=512, batch_tokens=200_000, progress=False)
    rev = dict(reversed(list(genomes.items())))  # other order, other batch mates and sizes
    c, _ = embed_genomes(model, rev, context=512, batch_tokens=1100, progress=False)
    np.testing.assert_allclose(a, c[::-1], atol=1e-5, rtol=1e-5)
    assert a.shape == (3, 32)
    assert table.set_index("seqName").loc["gappy", "n_unknown"] == 100
    assert table.set_index("seqName").loc["gappy", "n_deleted"] == 1
    assert not np.allclose(a[0], a[1])  # one substitution moves the embedding


def test_score_finds_the_planted_mutation(model, genomes) -> None:
    gt, mt, ot = score_genomes(model, genomes, context=512, progress=False)
    assert list(gt["seqName"]) == list(genomes)
    hits = mt[mt["seqName"] == "d614g"]
    assert hits["aaSubstitution"].tolist() == ["S:D614G"]
    assert np.isfinite(hits["llr"]).all()
    assert mt[mt["seqName"] == "wuhan"].empty
    ppl = perplexity_table(ot)
    assert ppl["orf"].iloc[-1] == "ALL"
    assert {"S", "ORF1a", "N"} <= set(ppl["orf"])
    assert (ppl["perplexity"] > 1).all()


def test_generation_yields_valid_orfs(model) -> None:
    df = generate(model, 4, temperature=1.2, top_k=20, min_codons=5, max_codons=15, seed=1)
    assert all(is_valid_orf(s) for s in df["sequence"])
    assert df["n_codons"].between(5, 15).all()
    again = generate(model, 4, temperature=1.2, top_k=20, min_codons=5, max_codons=15, seed=1)
    assert df["sequence"].tolist() == again["sequence"].tolist()
    with pytest.raises(ValueError, match="whole A/C/G/T codons"):
        generate(model, 1, prompt="ATGTAA")


def test_lineage_probe_and_splits() -> None:
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (20, 8)), rng.normal(4, 1, (20, 8))])
    labels = pd.DataFrame(
        {"seqName": [f"g{i}" for i in range(40)], "clade": ["a"] * 20 + ["b"] * 20}
    )
    train = np.arange(40) % 2 == 0
    for probe in ("logreg", "knn"):
        out, summary = lineages(
            X, labels, train=train, columns=["clade"], config=LineageConfig(probe=probe)
        )
        test = out[out["split"] != "fit"]  # held-out reference genomes and queries
        assert (test["clade"] == test["clade_pred"]).mean() == 1.0
        assert summary["columns"]["clade"]["methods"]["model"]["accuracy"] == 1.0
    names = ["B.1.1.529.2.86.1", "B.1.1.529.2.86.2", "B.1.617.2.4", "B.1.617.2.5", "A.1", "A.2"]
    mask = lineage_family_split(names, test_fraction=0.34, depth=4, seed=0)
    fam = [".".join(n.split(".")[:4]) for n in names]
    for f in set(fam):  # a family is entirely on one side
        assert len({bool(m) for m, g in zip(mask, fam, strict=True) if g == f}) == 1
    assert date_split(["2020-01-01", "2021-06-01", ""], "2021-01-01").tolist() == [
        True,
        False,
        False,
    ]


def test_baselines_ignore_missing_sites() -> None:
    train = ["ACGTACGTAC", "ACGTTCGTAC", "TTTTACGTAC"]
    test = ["ACGTNCGTA-", "TTTTACGTNN"]
    d = hamming_distances(train, test)
    assert d[0, 0] == 0.0
    assert d[0, 1] == 0.0  # the differing site is N in the query
    assert d[1, 2] == 0.0
    assert hamming_nn(train, ["x", "y", "z"], test).tolist() == ["x", "z"]
    rng = np.random.default_rng(0)
    a = "".join(rng.choice(list("AT"), 300))
    c = "".join(rng.choice(list("GC"), 300))
    pred = kmer_logreg([a, a[::-1], c, c[::-1]], ["at", "at", "gc", "gc"], [a[5:], c[7:]], k=3)
    assert pred.tolist() == ["at", "gc"]


def _write_cds(path: Path, n: int = 24) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        body = "".join(rng.choice(list("ACG"), size=3 * 40))  # no T: no stop codons inside
        lines += [f">{'gA' if i % 3 else 'gB'}|cds{i}", "ATG" + body + "TAA"]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_pretrain_then_finetune_through_the_shared_loop(tmp_path, genomes) -> None:
    cds = tmp_path / "cds.fasta"
    _write_cds(cds)
    res = pretrain(
        [cds],
        tmp_path / "pre",
        preset="test",
        row_len=64,
        held_out_genomes=["gB"],
        train_config=TINY_TRAIN,
    )
    side = json.loads((res.model_dir / "config.json").read_text())
    assert side["model_type"] == "codon_transformer"
    assert side["tokenizer"]["hash"]
    assert side["data"]["held_out_genomes"] == ["gB"]
    assert res.eval_loss is not None
    assert np.isfinite(res.eval_loss)
    fasta = tmp_path / "genomes.fasta"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in genomes.items()))
    ft = finetune(
        res.model_dir,
        fasta,
        tmp_path / "ft",
        held_out=["gappy"],
        row_len=128,
        train_config=TINY_TRAIN,
    )
    model, side = load_codon_model(tmp_path / "ft")
    assert side["data"]["n_genomes"] == 2
    assert side["step"] == 2
    assert np.isfinite(ft.final_loss)
    assert model.cfg.name == "test"


def test_mismatched_checkpoint_is_an_error(tmp_path, model) -> None:
    from lifelm.io.checkpoint import save_checkpoint

    side = model_sidecar(model.cfg)
    side["tokenizer"] = {**side["tokenizer"], "hash": "deadbeef"}
    save_checkpoint(tmp_path, model.state_dict(), side)
    with pytest.raises(ValueError, match="misread"):
        load_codon_model(tmp_path)


def test_cli_generate_embed_score(tmp_path, model, genomes) -> None:
    from lifelm.cli.genomes import app
    from lifelm.io.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "m", model.state_dict(), model_sidecar(model.cfg))
    fasta = tmp_path / "g.fasta"
    fasta.write_text(f">d614g\n{genomes['d614g']}\n")
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "generate",
            "-m",
            str(ckpt),
            "-o",
            str(tmp_path / "gen.fasta"),
            "--n",
            "2",
            "--max-codons",
            "20",
            "--min-codons",
            "3",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "gen.fasta").read_text().count(">") == 2
    r = runner.invoke(
        app,
        ["embed", str(fasta), "-m", str(ckpt), "-o", str(tmp_path / "emb.tsv"), "--device", "cpu"],
    )
    assert r.exit_code == 0, r.output
    emb = pd.read_csv(tmp_path / "emb.tsv", sep="\t")
    assert emb["seqName"].tolist() == ["d614g"]
    r = runner.invoke(
        app,
        [
            "score",
            str(fasta),
            "-m",
            str(ckpt),
            "-o",
            str(tmp_path / "score.tsv"),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    muts = pd.read_csv(tmp_path / "score.mutations.tsv", sep="\t")
    assert muts["aaSubstitution"].tolist() == ["S:D614G"]
