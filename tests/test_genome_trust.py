"""Genome commands that abstain, show baselines, refuse bad input and score QC as Nextclade does (issue 9)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from conftest import shared_file
from lifelm._core.errors import InputError
from lifelm.cli import main
from lifelm.data.genomes.align import Mutations, Reference, call_many
from lifelm.data.genomes.qc import (
    QcConfig,
    ReferenceTree,
    evaluate_qc,
    grade,
    sequence_stats,
    snp_clusters,
)
from lifelm.tasks.genomes.lineages import LineageConfig, lineages, lineages_from_files
from lifelm.tasks.genomes.mutations import call_mutations
from lifelm.tasks.genomes.qc import genome_qc, load_reference

W = Reference.sarscov2().sequence
REF_LEN = len(W)


def _mut(seq: str, pos: int, alt: str) -> str:
    return seq[: pos - 1] + alt + seq[pos:]


def _sub(seq: str, pos: int) -> str:
    """A substitution at ``pos`` (1-based) to a base other than the reference's."""
    return _mut(seq, pos, "A" if W[pos - 1] != "A" else "C")


def _cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


# ---- QC: Nextclade's scores ----------------------------------------------------------------


def test_qc_scores_follow_nextclade() -> None:
    assert [grade(s) for s in (0, 29.9, 30, 99.9, 100)] == [
        "good",
        "good",
        "mediocre",
        "mediocre",
        "bad",
    ]
    stats = sequence_stats(W)
    cfg = QcConfig()
    # missing data: (N - 300) / 2700 * 100, N inside the alignment only
    m = Mutations(missing=((1001, 2650),), alignment_start=1, alignment_end=REF_LEN)
    q = evaluate_qc(stats, m, REF_LEN, cfg)
    assert q.scores["missingData"] == pytest.approx((1650 - 300) / 2700 * 100)
    assert q.overall_score == pytest.approx(q.scores["missingData"] ** 2 / 100)
    assert q.status == "good"  # score 50 -> overall 25
    assert q.rules["missingData"] == "mediocre"
    m = Mutations(missing=((1001, 4000),), alignment_start=1, alignment_end=REF_LEN)
    assert evaluate_qc(stats, m, REF_LEN, cfg).status == "bad"  # 3,000 N: score 100
    # uncovered ends are not missing data (as in Nextclade), but LifeLM's span rule sees them
    m = Mutations(alignment_start=200, alignment_end=REF_LEN - 200)
    q = evaluate_qc(stats, m, REF_LEN, cfg)
    assert q.scores["missingData"] == 0
    assert q.status == "good"
    # mixed sites: 10 per site; overall = sum of squares / 100
    m = Mutations(
        non_acgtn=tuple((100 * i, "R") for i in range(1, 7)),
        alignment_start=1,
        alignment_end=REF_LEN,
    )
    q = evaluate_qc(stats, m, REF_LEN, cfg)
    assert q.scores["mixedSites"] == 60
    assert q.overall_score == pytest.approx(36)
    assert q.status == "mediocre"
    # without a tree the private-mutation rules are not run, never reported as good
    assert q.rules["privateMutations"] == ""
    assert np.isnan(q.scores["privateMutations"])


def test_frame_shift_and_stop_rules() -> None:
    seqs = {
        "one_shift": W[:21999] + W[22000:],
        "two_shifts": W[:21999] + W[22000:28499] + W[28500:],  # one in S, one in N
        "orf3a_254_stop": _mut(W, 25393 + 253 * 3, "T"),  # GGA -> TGA, in Nextclade's known list
    }
    p = 21563 + 9 * 3  # a premature stop (TAA) at S codon 10
    seqs["spike_stop"] = W[: p - 1] + "TAA" + W[p + 2 :]
    df = genome_qc(seqs).set_index("seqName")
    assert df.loc["one_shift", "qc.frameShifts.score"] == 75
    assert df.loc["one_shift", "qc.overallStatus"] == "mediocre"
    assert df.loc["two_shifts", "qc.frameShifts.score"] == 150
    assert df.loc["two_shifts", "qc.overallStatus"] == "bad"
    assert df.loc["spike_stop", "qc.stopCodons.score"] == 75
    assert df.loc["spike_stop", "qc.stopCodons"].startswith("S:")
    assert df.loc["orf3a_254_stop", "qc.stopCodons.score"] == 0  # known stop: not penalised
    assert df.loc["orf3a_254_stop", "qc.overallStatus"] == "good"


def test_snp_clusters() -> None:
    assert snp_clusters([10, 20, 30, 40, 50, 60], 100, 6) == []
    assert snp_clusters([10, 20, 30, 40, 50, 60, 70], 100, 6) == [(10, 70)]
    far = [10, 20, 30, 40, 50, 60, 70, 5000, 5010, 5020, 5030, 5040, 5050, 5060]
    assert snp_clusters(far, 100, 6) == [(10, 70), (5000, 5060)]


def _tiny_tree(path: Path) -> Path:
    tree = {
        "version": "v2",
        "tree": {
            "name": "root",
            "node_attrs": {"clade_membership": {"value": "19A"}},
            "children": [
                {
                    "name": "cladeX",
                    "branch_attrs": {
                        "mutations": {"nuc": ["C241T", "A23403G"]},
                        "labels": {"clade": "X"},
                    },
                    "node_attrs": {"clade_membership": {"value": "X"}},
                    "children": [
                        {
                            "name": "tipX1",
                            "branch_attrs": {"mutations": {"nuc": ["C3037T"]}},
                            "node_attrs": {"clade_membership": {"value": "X"}},
                        }
                    ],
                }
            ],
        },
    }
    path.write_text(json.dumps(tree))
    return path


def test_private_mutations_on_a_reference_tree(tmp_path: Path) -> None:
    tree = ReferenceTree.from_auspice(_tiny_tree(tmp_path / "tree.json"), W)
    assert len(tree) == 3
    x1 = _mut(_mut(_mut(W, 241, "T"), 23403, "G"), 3037, "T")
    query = _sub(_sub(x1, 5000), 6000)  # two private substitutions
    rev = _mut(_mut(W, 241, "T"), 23403, "G")  # cladeX itself
    rev_tip = _sub(_mut(x1, 241, "C"), 10_000)  # reverts C241T, one private
    calls = {n: m for n, _, m in call_many([("q", query), ("r", rev), ("t", rev_tip)])}
    cfg = QcConfig(labeled_substitutions=frozenset())  # labels: the tree's clade branches
    p = tree.place(calls["q"])
    assert p.node == "tipX1"
    assert p.clade == "X"
    assert len(p.unlabeled) == 2
    assert not p.reversions
    assert tree.place(calls["r"]).node == "cladeX"
    pt = tree.place(calls["t"], cfg.labeled_substitutions)
    assert pt.node == "tipX1"
    assert pt.reversions == ("T241C",)
    # 13 unlabelled private substitutions: (13 - 8) * 100 / 24 = 20.8; 7 in 100 nt: one cluster
    many = x1
    for i in range(13):
        many = _sub(many, 8000 + 10 * i)
    ((_, _, m),) = call_many([("m", many)])
    q = evaluate_qc(sequence_stats(many), m, REF_LEN, cfg, tree=tree)
    assert q.scores["privateMutations"] == pytest.approx((13 - 8) * 100 / 24)
    assert q.scores["snpClusters"] == 50
    assert len(q.snp_clusters) == 1
    df = genome_qc({"m": many}, tree=tmp_path / "tree.json").set_index("seqName")
    assert df.loc["m", "qc.privateMutations.node"] == "tipX1"
    assert df.loc["m", "qc.snpClusters.status"] == "mediocre"


# ---- bad inputs -------------------------------------------------------------------------------


def test_genome_seven_times_too_long_is_bad_and_not_called() -> None:
    df = genome_qc({"x7": W * 7, "ok": W}).set_index("seqName")
    assert df.loc["x7", "qc.overallStatus"] == "bad"
    assert "too long" in df.loc["x7", "qc.reasons"]
    assert df.loc["ok", "qc.overallStatus"] == "good"
    muts = call_mutations({"x7": _mut(W, 241, "T") * 7}).set_index("seqName")
    assert not muts.loc["x7", "called"]
    assert muts.loc["x7", "substitutions"] == ""
    assert muts.loc["x7", "aaSubstitutions"] == ""


def test_empty_fasta_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    with pytest.raises(InputError, match="no FASTA record"):
        genome_qc(empty)
    out = tmp_path / "qc.tsv"
    assert _cli(["genomes", "qc", str(empty), "-o", str(out)]) == 2
    assert not out.exists()
    assert _cli(["genomes", "mutations", str(empty), "-o", str(out)]) == 2
    assert not out.exists()
    assert not list(tmp_path.glob(".qc.tsv*"))


def test_out_pointing_at_a_folder_is_refused(tmp_path: Path, capsys) -> None:
    fasta = tmp_path / "g.fasta"
    fasta.write_text(f">a\n{W}\n")
    assert _cli(["genomes", "qc", str(fasta), "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_reference_without_annotation_keeps_reading_frame_checks(tmp_path: Path) -> None:
    sars = tmp_path / "ref.fasta"
    sars.write_text(f">MN908947.3\n{W}\n")
    ref = load_reference(sars, None)
    assert ref.orfs == Reference.sarscov2().orfs  # recognised: the packaged genes are used
    df = genome_qc({"s": W[:21999] + W[22000:]}, reference=ref)
    assert df.loc[0, "qc.frameShifts.score"] == 75
    other = tmp_path / "other.fasta"
    rng = np.random.default_rng(0)
    other_seq = "".join(rng.choice(list("ACGT"), 5000))
    other.write_text(f">other\n{other_seq}\n")
    with pytest.raises(InputError, match="--annotation"):
        load_reference(other, None)
    out = tmp_path / "qc.tsv"
    q = tmp_path / "q.fasta"
    q.write_text(f">q\n{other_seq}\n")
    assert _cli(["genomes", "qc", str(q), "-o", str(out), "--reference", str(other)]) == 2
    assert not out.exists()
    # explicitly accepted: the rules are reported as not run, and lengths follow this reference
    assert (
        _cli(
            ["genomes", "qc", str(q), "-o", str(out), "--reference", str(other), "--no-orf-checks"]
        )
        == 0
    )
    df = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert df.loc[0, "qc.frameShifts.status"] == ""
    assert df.loc[0, "qc.stopCodons.status"] == ""
    assert df.loc[0, "qc.overallStatus"] == "good"  # 5,000 nt is the full length of this reference
    long = tmp_path / "long.fasta"
    long.write_text(f">long\n{other_seq * 7}\n")
    assert (
        _cli(
            [
                "genomes",
                "qc",
                str(long),
                "-o",
                str(out),
                "--reference",
                str(other),
                "--no-orf-checks",
            ]
        )
        == 0
    )
    assert pd.read_csv(out, sep="\t").loc[0, "qc.overallStatus"] == "bad"


# ---- lineages: abstain, calibrate, baselines ------------------------------------------------------


def _lineage_data(n_per: int = 30, seed: int = 0):
    """Two clades that differ at 40 sites; embeddings either informative or pure noise."""
    rng = np.random.default_rng(seed)
    sites = rng.choice(np.arange(1000, 29000), 40, replace=False)
    names, seqs, labs, emb = [], [], [], []
    for k, clade in enumerate(["a", "b", ""]):
        for i in range(n_per):
            s = list(W)
            if clade == "b":
                for p in sites:
                    s[p] = "A" if W[p] != "A" else "C"
            if clade == "":  # unlabelled genomes: a third group (pre-variant, say)
                for p in sites[:20]:
                    s[p] = "G" if W[p] != "G" else "T"
            for p in rng.choice(29903, 3, replace=False):  # private noise
                s[p] = "T" if W[p] != "T" else "C"
            names.append(f"{clade or 'none'}{i}")
            seqs.append("".join(s))
            labs.append(clade)
            emb.append(rng.normal(3.0 * k, 1.0, 8))
    return names, seqs, labs, np.asarray(emb)


def test_empty_labels_are_a_class_not_forced_into_a_variant() -> None:
    names, seqs, labs, emb = _lineage_data()
    table = pd.DataFrame({"seqName": names, "who": labs})
    out, summary = lineages(emb, table, columns=["who"], sequences=seqs)
    none_rows = out[out["who"] == "(none)"]
    assert (none_rows["who_pred"] == "(none)").all()  # never "b" with probability 1
    s = summary["columns"]["who"]
    assert s["n_empty_labels"] == 30
    assert "(none)" in s["empty_labels"]
    assert s["n_held_out"] > 0
    assert "held out" in s["split"]
    with pytest.raises(InputError, match="empty label"):
        lineages(emb, table, columns=["who"], config=LineageConfig(empty_labels="refuse"))


def test_novel_genomes_are_flagged_and_probabilities_calibrated() -> None:
    names, _seqs, labs, emb = _lineage_data()
    keep = [i for i, lab in enumerate(labs) if lab]
    rng = np.random.default_rng(1)
    novel_emb = rng.normal(20.0, 1.0, (5, 8))  # far from every reference class
    X = np.concatenate([emb[keep], novel_emb])
    table = pd.DataFrame(
        {
            "seqName": [names[i] for i in keep] + [f"new{i}" for i in range(5)],
            "clade": [labs[i] for i in keep] + [""] * 5,
        }
    )
    train = np.r_[np.ones(len(keep), bool), np.zeros(5, bool)]
    out, summary = lineages(X, table, train=train, columns=["clade"], method="model")
    q = out[out["split"] == "query"]
    assert (q["clade_status"] == "novel").all()
    assert (q["clade_call"] == "novel").all()
    held = out[out["split"] == "held_out"]
    assert (held["clade_status"] == "assigned").mean() >= 0.9
    assert ((held["clade_prob"] > 0) & (held["clade_prob"] <= 1)).all()
    r = summary["columns"]["clade"]["methods"]["model"]
    assert r["accuracy"] == 1.0
    assert 0 <= r["ece"] <= 0.2
    # a high --min-confidence makes genomes unassigned instead of guessed
    out2, _ = lineages(
        X,
        table,
        train=train,
        columns=["clade"],
        method="model",
        config=LineageConfig(min_confidence=1.01),
    )
    assert set(out2.loc[out2["split"] != "query", "clade_call"]) == {"unassigned"}


def test_model_that_loses_to_a_baseline_is_named_and_auto_picks_the_winner(tmp_path: Path) -> None:
    names, seqs, labs, _ = _lineage_data()
    noise = np.random.default_rng(2).normal(size=(len(names), 8))  # an uninformative model
    table = pd.DataFrame({"seqName": names, "clade": labs})
    out, summary = lineages(noise, table, columns=["clade"], sequences=seqs, method="auto")
    s = summary["columns"]["clade"]
    assert s["methods"]["hamming_nn"]["accuracy"] == 1.0
    assert s["methods"]["model"]["accuracy"] < 1.0
    assert s["model_loses_to"] in ("hamming_nn", "kmer_logreg")
    assert s["method"] == "hamming_nn"  # a tie between baselines goes to the simpler one
    assert (out["clade_method"] == "hamming_nn").all()
    # the CLI: TSV with header comments, JSON summary beside it, one line naming the winner
    emb_tsv = tmp_path / "emb.tsv"
    pd.concat(
        [
            pd.DataFrame({"seqName": names}),
            pd.DataFrame(noise, columns=[f"emb_{i}" for i in range(8)]),
        ],
        axis=1,
    ).to_csv(emb_tsv, sep="\t", index=False)
    lab_tsv = tmp_path / "labels.tsv"
    table.to_csv(lab_tsv, sep="\t", index=False)
    fasta = tmp_path / "g.fasta"
    fasta.write_text("".join(f">{n}\n{s}\n" for n, s in zip(names, seqs, strict=True)))
    out_tsv = tmp_path / "pred.tsv"
    from typer.testing import CliRunner

    from lifelm.cli import app

    r = CliRunner().invoke(
        app,
        [
            "genomes",
            "lineages",
            str(emb_tsv),
            str(lab_tsv),
            "-o",
            str(out_tsv),
            "--genomes",
            str(fasta),
            "--column",
            "clade",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "the model loses to the simpler" in r.output
    assert "held-out accuracy" in r.output
    head = [ln for ln in out_tsv.read_text().splitlines() if ln.startswith("#")]
    assert any("hamming_nn 1.000" in ln for ln in head)
    pred = pd.read_csv(out_tsv, sep="\t", comment="#")
    assert len(pred) == len(names)
    assert pred["clade_prob"].between(0, 1).all()
    side = json.loads((tmp_path / "pred.summary.json").read_text())
    assert side["columns"]["clade"]["method"] == "hamming_nn"
    # baselines only (no embeddings) work through the file API too
    _, s2 = lineages_from_files(None, lab_tsv, columns=["clade"], genomes=fasta)
    assert "model" in s2["columns"]["clade"]["unavailable"]


# ---- determinism ---------------------------------------------------------------------------------


def test_pretrain_seed_fixes_initial_and_final_weights(tmp_path: Path) -> None:
    from lifelm.tasks.genomes.train import init_codon_model, pretrain
    from lifelm.training.loop import TrainConfig

    a = init_codon_model("test", max_length=64, seed=3).state_dict()
    b = init_codon_model("test", max_length=64, seed=3).state_dict()
    c = init_codon_model("test", max_length=64, seed=4).state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert any(not np.array_equal(a[k].numpy(), c[k].numpy()) for k in a)
    rng = np.random.default_rng(0)
    cds = tmp_path / "cds.fasta"
    cds.write_text(
        "".join(f">g|c{i}\nATG{''.join(rng.choice(list('ACG'), 120))}TAA\n" for i in range(12))
    )
    finals = []
    for run, seed in (("r1", 7), ("r2", 7), ("r3", 8)):
        cfg = TrainConfig(
            max_steps=2,
            batch_size=2,
            warmup_steps=1,
            checkpoint_every=0,
            log_every=1,
            device="cpu",
            progress=False,
            seed=seed,
        )
        res = pretrain(
            [cds], tmp_path / run, preset="test", row_len=32, train_config=cfg, seed=seed
        )
        finals.append(load_file(str(res.model_dir / "model.safetensors")))
    assert all(np.array_equal(finals[0][k].numpy(), finals[1][k].numpy()) for k in finals[0])
    assert any(not np.array_equal(finals[0][k].numpy(), finals[2][k].numpy()) for k in finals[0])


# ---- agreement with Nextclade on real data ---------------------------------------------------------


@pytest.mark.data
def test_qc_agrees_with_nextclade_on_genbank_subset() -> None:
    """>= 99 % agreement on the overall status for a fixed subset of 250 GenBank genomes.

    The full 1,000 run in ``benchmarks/genome_qc_agreement.py`` (99.4 % without a tree).
    """
    from lifelm.io.fasta import iter_fasta

    folder = "genomes/sarscov2/genbank_1000_lapis_silo/"
    meta = pd.read_csv(
        shared_file(folder + "metadata.tsv"), sep="\t", dtype=str, keep_default_na=False
    ).set_index("genbankAccession")
    recs = [(r.name, r.sequence) for r in iter_fasta(shared_file(folder + "sequences.fasta.xz"))]
    recs = recs[::4]  # every 4th: 250 genomes across the file's submitters
    df = genome_qc(recs).set_index("seqName")
    score = pd.to_numeric(meta.loc[df.index, "nextcladeQcOverallScore"]).fillna(0)
    truth = score.map(grade)
    agree = (df["qc.overallStatus"] == truth).mean()
    assert agree >= 0.99, (df["qc.overallStatus"] != truth).sum()
    missing = pd.to_numeric(meta.loc[df.index, "nextcladeQcMissingDataScore"]).fillna(0)
    assert np.allclose(df["qc.missingData.score"], missing, atol=1e-3)
    mixed = pd.to_numeric(meta.loc[df.index, "nextcladeQcMixedSites"]).fillna(0)
    assert (df["qc.mixedSites.score"] == mixed).mean() >= 0.99
