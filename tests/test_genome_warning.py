"""Early-warning backtest and unseen-lineage flagging: time leaks, bad inputs, edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lifelm._core.errors import InputError
from lifelm.data.genomes.align import Reference
from lifelm.models.codon_transformer import CodonTransformer, CodonTransformerConfig
from lifelm.tasks.genomes.novelty import NoveltyConfig, unseen_lineage_flags
from lifelm.tasks.genomes.warning import (
    SPIKE_START,
    Variant,
    WarnConfig,
    backtest,
    check_genomes,
    check_unaligned,
    codon_mutation_scorer,
    evaluate,
    model_features,
    select_orfs,
    warn,
)

REF = Reference.sarscov2().sequence
SPIKE = select_orfs(["S"])


def _mutate(seq: str, changes: dict[int, str]) -> str:
    s = list(seq)
    for pos, base in changes.items():
        s[pos - 1] = base
    return "".join(s)


def _spike_site(codon: int, offset: int = 0) -> int:
    return SPIKE_START + 3 * (codon - 1) + offset


def _alt(pos: int) -> str:
    return {"A": "G", "G": "A", "C": "T", "T": "C"}[REF[pos - 1]]


def _lineages() -> tuple[pd.DataFrame, dict[str, str]]:
    """Starting set A, A.1, A.2 (undated), then one or two new lineages per month."""
    rows = [
        ("A", "A", None, True),
        ("A.1", "A.1", None, True),
        ("A.2", "A.2", None, True),
        ("A.1.1", "A.1.1", "2021-02-10", False),
        ("A.2.1", "A.2.1", "2021-02-20", False),
        ("B", "B", "2021-03-05", False),  # big spike jump: a "variant"
        ("A.1.2", "A.1.2", "2021-05-03", False),  # April is an empty window
        ("B.1", "B.1", "2021-05-20", False),
        ("B.1.1", "B.1.1", "2021-06-02", False),
        ("A.1.1.1", "A.1.1.1", "2021-06-15", False),
    ]
    table = pd.DataFrame(rows, columns=["lineage", "unaliased", "date", "known_at_start"])
    g = {"A": REF}
    g["A.1"] = _mutate(REF, {100: _alt(100)})
    g["A.2"] = _mutate(REF, {200: _alt(200), _spike_site(10): _alt(_spike_site(10))})
    g["A.1.1"] = _mutate(g["A.1"], {300: _alt(300)})
    g["A.2.1"] = _mutate(g["A.2"], {_spike_site(20): _alt(_spike_site(20))})
    jump = {_spike_site(c, 1): _alt(_spike_site(c, 1)) for c in (417, 452, 484, 501, 614, 681)}
    g["B"] = _mutate(REF, jump)
    g["A.1.2"] = _mutate(g["A.1"], {400: _alt(400)})
    g["B.1"] = _mutate(g["B"], {_spike_site(30, 1): _alt(_spike_site(30, 1))})
    g["B.1.1"] = _mutate(g["B.1"], {500: _alt(500)})
    g["A.1.1.1"] = _mutate(g["A.1.1"], {600: _alt(600)})
    return table, g


@pytest.fixture(scope="module")
def model() -> CodonTransformer:
    torch.manual_seed(0)
    return CodonTransformer(CodonTransformerConfig.from_name("test", max_length=256)).eval()


def _run(table, genomes, model, cfg):
    feats = model_features(model, genomes, orfs=SPIKE, context=cfg.context)
    scorer = codon_mutation_scorer(model, genomes, context_codons=8)
    return backtest(table, genomes, features=feats, config=cfg, mutation_scorer=scorer)


CFG = WarnConfig(start="2021-02-01", top_fraction=0.3, context=128)


def test_walk_scores_each_new_lineage_once_against_the_past(model) -> None:
    table, g = _lineages()
    s = _run(table, g, model, CFG).set_index("lineage")
    walk = s[s["window"] != "start"]
    assert sorted(walk.index) == sorted(table.loc[~table["known_at_start"], "lineage"])
    assert walk.loc["B", "window"] == "2021-03-01"
    assert walk.loc["B", "n_known"] == 5  # A, A.1, A.2 + the two February lineages
    assert walk.loc["A.1.1", "parent"] == "A.1"
    assert walk.loc["A.1.1", "parent_source"] == "pango"
    assert walk.loc["B", "parent_source"] == "nearest"  # no Pango ancestor in the table
    assert walk.loc["B", "new_spike_mutations"] == 6
    assert walk.loc["B", "new_rbd_mutations"] == 4  # 417, 452, 484, 501 are in the RBD
    assert walk.loc["A.1.1", "new_spike_mutations"] == 0
    assert walk.loc["A.1.1", "nn_distance"] == 1
    # the big jump is flagged by the count baseline, from a threshold of earlier lineages only
    assert bool(walk.loc["B", "new_spike_mutations_flag"])
    assert not bool(walk.loc["A.1.1", "new_spike_mutations_flag"])
    for m in ("model_surprise", "embedding_novelty", "mutation_score", "combined"):
        assert walk[m].notna().all(), m
    assert walk.loc["A.1.1", "mutation_score"] == 0.0  # no new spike change
    # no lineage is dated in April: that window is empty, not an error
    assert "2021-04-01" not in set(s["window"])


def test_time_leak_altering_the_future_changes_nothing_before_the_cutoff(model) -> None:
    table, g = _lineages()
    before = _run(table, g, model, CFG)
    cutoff = pd.Timestamp("2021-05-01")
    t2, g2 = table.copy(), dict(g)
    d = pd.to_datetime(t2["date"])
    later = d >= cutoff
    # every record after the cutoff: shifted in time, its genome changed, and a new one added
    t2.loc[later, "date"] = (d[later] + pd.Timedelta(days=45)).dt.strftime("%Y-%m-%d")
    for name in t2.loc[later, "lineage"]:
        g2[name] = _mutate(g2[name], {_spike_site(700, 1): _alt(_spike_site(700, 1)), 50: "T"})
    t2 = pd.concat(
        [
            t2,
            pd.DataFrame(
                [("C", "C", "2021-05-02", False)],
                columns=["lineage", "unaliased", "date", "known_at_start"],
            ),
        ],
        ignore_index=True,
    )
    g2["C"] = _mutate(REF, {_spike_site(c, 1): _alt(_spike_site(c, 1)) for c in range(100, 140)})
    after = _run(t2, g2, model, CFG)
    early = lambda s: (  # noqa: E731
        s[(s["window"] == "start") | (pd.to_datetime(s["date"]) < cutoff)]
        .sort_values("lineage")
        .reset_index(drop=True)
    )
    a, b = early(before), early(after)
    assert len(a) == 6  # 3 at start + A.1.1, A.2.1, B
    pd.testing.assert_frame_equal(a, b)
    # ...while the future itself did change (the test can fail)
    assert (
        after.set_index("lineage").loc["B.1", "date"]
        != before.set_index("lineage").loc["B.1", "date"]
    )


def test_variants_missing_or_known_at_start_are_reported_not_scored(model) -> None:
    table, g = _lineages()
    s = _run(table, g, model, CFG)
    variants = (
        Variant("Jump", ("B",), "2021-04-01", "test"),
        Variant("Old", ("A.1",), "2020-12-01", "test"),
        Variant("Absent", ("Z.9",), None, "test"),
        Variant("Child", ("B.1",), "2021-06-01", "test"),
    )
    vt, alarms = evaluate(s, table, config=CFG, variants=variants)
    by = vt.set_index(["variant", "method"])["status"]
    assert by[("Jump", "new_spike_mutations")] == "flagged"
    row = vt[(vt["variant"] == "Jump") & (vt["method"] == "new_spike_mutations")].iloc[0]
    assert row["flag_date"] == "2021-03-05"
    assert row["lead_days_vs_who"] == 27
    child = vt[(vt["variant"] == "Child") & (vt["method"] == "new_spike_mutations")].iloc[0]
    assert child["parent"] == "B"  # its precursor, flagged when it appeared
    assert child["parent_flag_date"] == "2021-03-05"
    assert child["parent_lead_days_vs_who"] == 88
    assert by[("Old", "combined")] == "known at start"
    assert by[("Absent", "combined")] == "not in data"
    assert by[("Jump", "oracle_immune_escape")] == "not scored"  # no oracle values given
    assert set(alarms["method"]) >= {"combined", "new_spike_mutations", "nn_distance"}


def test_bad_inputs_are_errors_or_qc_flags_never_silent_scores(model, tmp_path) -> None:
    table, g = _lineages()
    rng = np.random.default_rng(0)
    other_virus = "".join(rng.choice(list("ACGT"), len(REF)))
    n_rich = _mutate(g["A.1.1"], dict.fromkeys(range(SPIKE_START, SPIKE_START + 600), "N"))
    g_bad = {**g, "A.2.1": other_virus, "B.1": n_rich}
    qc = check_genomes(g_bad, orfs=SPIKE).set_index("seqName")
    assert qc.loc["A.2.1", "qc_status"] == "fail"
    assert "another virus" in qc.loc["A.2.1", "qc_reason"]
    assert qc.loc["B.1", "qc_status"] == "fail"
    assert "N/ambiguous" in qc.loc["B.1", "qc_reason"]
    assert qc.loc["B", "qc_status"] == "pass"
    res = warn(table, g_bad, model=model, config=CFG)
    assert not {"A.2.1", "B.1"} & set(res.scores["lineage"])  # never scored
    assert res.summary["n_qc_fail"] == 2
    # unaligned genomes (not reference length) are a clear error
    with pytest.raises(InputError, match="not aligned"):
        check_genomes({"x": REF.replace("A", "", 5)})
    with pytest.raises(InputError, match="every genome fails QC"):
        check_genomes({"x": other_virus})
    # an aligned file passed where raw genomes are expected
    with pytest.raises(InputError, match="aligned file given as unaligned"):
        check_unaligned({"x": "ACGT--ACGT"})
    # a lineage without genome, and a table without dates
    with pytest.raises(InputError, match="no genome"):
        backtest(table, {k: v for k, v in g.items() if k != "B"}, config=CFG)
    with pytest.raises(InputError, match="missing column"):
        backtest(table.drop(columns="date"), g, config=CFG)


def test_nothing_new_after_the_start_is_a_clear_error() -> None:
    table, g = _lineages()
    with pytest.raises(InputError, match="no lineage could be scored"):
        backtest(table[table["known_at_start"]], g, config=CFG)
    with pytest.raises(InputError, match="no lineage could be scored"):
        backtest(table[~table["known_at_start"]], g, config=WarnConfig(start="2022-01-01"))


def _clade_genomes() -> tuple[pd.DataFrame, list[str]]:
    rng = np.random.default_rng(1)
    clades = {
        "K1": {1000: _alt(1000)},
        "K2": {2000: _alt(2000), 2100: _alt(2100)},
        "NEW": {p: _alt(p) for p in range(5000, 5060, 3)},
    }
    rows, seqs = [], []
    for i in range(60):
        clade = "K1" if i % 2 else "K2"
        date = f"2020-{1 + i % 12:02d}-15"
        if i >= 50:
            clade, date = ("NEW" if i >= 54 else clade), "2021-03-01"
        extra = {
            int(p): _alt(int(p)) for p in rng.choice(np.arange(10000, 20000), 2, replace=False)
        }
        rows.append((f"g{i}", date, clade))
        seqs.append(_mutate(REF, {**clades[clade], **extra}))
    rows.append(("nrich", "2021-03-01", "NEW"))
    seqs.append("N" * len(REF))
    return pd.DataFrame(rows, columns=["seqName", "date", "clade"]), seqs


def test_unseen_clades_are_flagged_and_n_rich_genomes_left_out() -> None:
    meta, seqs = _clade_genomes()
    cfg = NoveltyConfig(cutoff="2021-01-01", label_column="clade", quantile=0.95)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(meta), 8))
    table, metrics, summary = unseen_lineage_flags(emb, meta, seqs, config=cfg)
    assert summary["n_left_out_n_rich"] == 1
    assert "nrich" not in set(table["seqName"])
    assert summary["novel_clades"] == ["NEW"]
    m = metrics.set_index("method")
    assert set(m.index) == {"model", "embedding_nn", "hamming_class", "nn_distance"}
    assert m.loc["nn_distance", "recall"] == 1.0
    assert m.loc["nn_distance", "precision"] == 1.0
    assert int(table["truly_novel"].sum()) == 6
    # random embeddings carry no signal: the model's flag must not look as good as the baseline
    assert m.loc["embedding_nn", "f1"] < m.loc["nn_distance", "f1"]
    with pytest.raises(InputError, match="need at least 10 before"):
        unseen_lineage_flags(
            None, meta, seqs, config=NoveltyConfig(cutoff="2019-01-01", label_column="clade")
        )


def test_cli_reports_a_wrong_data_folder_in_one_line(tmp_path, capsys) -> None:
    from lifelm.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["genomes", "warn", "--data", str(tmp_path), "-o", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "pango_consensus" in err
    assert "Traceback" not in err


@pytest.mark.data
def test_backtest_on_the_shared_pango_data_smoke(shared_data, tmp_path) -> None:
    from lifelm.reports.warning import write_outputs
    from lifelm.tasks.genomes.warning import load_pango_data

    table, genomes, emergence = load_pango_data(shared_data / "genomes")
    assert table["known_at_start"].sum() > 100
    keep = table["known_at_start"] | (pd.to_datetime(table["date"]) < "2021-06-01")
    sub = table[keep]
    res = warn(sub, genomes, model=None, config=WarnConfig(), emergence=emergence)
    walk = res.scores[res.scores["window"] != "start"]
    assert {"2021-02-01", "2021-03-01", "2021-04-01", "2021-05-01"} <= set(walk["window"])
    v = res.variants.set_index(["variant", "method"])["status"]
    assert v[("Alpha", "new_spike_mutations")] == "known at start"
    assert v[("Gamma", "new_spike_mutations")] in {"flagged", "missed"}
    assert v[("Gamma", "model_surprise")] == "not scored"  # no model given: said, not faked
    assert v[("JN.1", "nn_distance")] == "not in data"  # cut out of this subset
    report = write_outputs(res, tmp_path)
    assert "Per-variant" in report.read_text()


def test_cli_end_to_end_on_a_tiny_data_folder(tmp_path) -> None:
    import lzma

    from lifelm.cli import main

    table, g = _lineages()
    root = tmp_path / "genomes"
    pc = root / "sarscov2/pango_consensus"
    pc.mkdir(parents=True)
    (root / "lineages").mkdir()
    labels = pd.DataFrame(
        {
            "lineage": table["lineage"],
            "unaliased": table["unaliased"],
            "nextstrain_clade": "19A",
            "designation_date": table["date"].fillna(""),
            "label_source": "nextclade_tree",
        }
    )
    labels.to_csv(pc / "lineage_labels.tsv", sep="\t", index=False)
    with lzma.open(pc / "pango_consensus_genome_nuc.fasta.xz", "wt") as fh:
        fh.write("".join(f">{k}\n{v}\n" for k, v in g.items()))
    (root / "lineages/nextstrain_clade_emergence_dates.tsv").write_text(
        "Nextstrain_clade\tfirst_sequence\n19A\t2019-12-01\n"
    )
    out = tmp_path / "out"
    args = ["genomes", "warn", "--data", str(root), "-o", str(out), "--no-novelty"]
    args += ["--train-steps", "2", "--context", "64", "--top-fraction", "0.3"]
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code
    assert code in (0, None)
    scores = pd.read_csv(out / "scores.tsv", sep="\t")
    assert set(scores.loc[scores["window"] != "start", "lineage"]) == set(
        table.loc[~table["known_at_start"], "lineage"]
    )
    assert scores["model_surprise"].notna().all()
    assert scores["mutation_score"].notna().all()
    assert (out / "train/model/config.json").is_file()
    html = (out / "report.html").read_text()
    assert "Per-variant" in html
    assert "data:image/png;base64," in html
    variants = pd.read_csv(out / "variants.tsv", sep="\t")
    assert set(variants["status"]) == {"not in data"}  # none of the WHO roots is in this toy set
