"""The discovery loop: strategies, resume, no leakage, bad input, evidence (synthetic data only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lifelm._core.errors import InputError, LifeLMError
from lifelm.lab import (
    STRATEGIES,
    GeneFeatures,
    LoopConfig,
    Screen,
    SimulatedLab,
    load_screen,
    run_loop,
)
from lifelm.lab.evidence import evidence_table
from lifelm.lab.strategies import Observations, select_batch

N_GENES = 400


def _world(seed: int = 0) -> tuple[Screen, GeneFeatures]:
    """Genes in 8 co-expression modules; the hits are module 3 (planted, learnable from features)."""
    rng = np.random.default_rng(seed)
    genes = np.array([f"G{i:04d}" for i in range(N_GENES)])
    module = rng.integers(0, 8, N_GENES)
    centers = rng.normal(0, 1, (8, 6))
    X = centers[module] + rng.normal(0, 0.3, (N_GENES, 6))
    scores = rng.normal(0, 0.2, N_GENES) + np.where(
        module == 3, rng.choice([-2.0, 2.0], N_GENES), 0
    )
    hits = frozenset(genes[module == 3])
    feats = GeneFeatures(
        genes,
        np.hstack([np.ones((N_GENES, 1)), X]),
        ("expression:present", *tuple(f"coexpression:c{i}" for i in range(6))),
    )
    return Screen("synthetic", genes, scores, hits), feats


CFG = LoopConfig(strategy="ucb_thompson", rounds=4, batch_size=20, seed=3, n_estimators=16)


def test_every_strategy_picks_a_valid_batch() -> None:
    screen, feats = _world()
    obs = Observations(tuple(screen.genes[:40]), screen.scores[:40], np.zeros(40, dtype=np.int64))
    pool = list(screen.genes[40:])
    for s in STRATEGIES:
        sel = select_batch(
            s,
            pool=pool,
            features=feats,
            obs=obs,
            batch_size=25,
            round_index=1,
            seed=0,
            n_estimators=8,
        )
        assert len(sel.genes) == 25, s
        assert len(set(sel.genes)) == 25, s
        assert set(sel.genes) <= set(pool), s
        if s != "random":
            assert np.isfinite(sel.mean).all(), s
            assert (sel.sd >= 0).all(), s


def test_model_strategies_find_planted_hits_faster_than_random(tmp_path: Path) -> None:
    screen, feats = _world()
    found = {}
    for s in ("random", "greedy", "diversity"):
        cfg = LoopConfig(strategy=s, rounds=4, batch_size=20, seed=1, n_estimators=16)
        res = run_loop(screen, tmp_path / s, config=cfg, features=feats)
        found[s] = res.curve.hits_found.iloc[-1]
        assert list(res.curve.n_tested) == [20, 40, 60, 80]
    # planted module ≈ 1/8 of genes: random finds ~10 of 80, a model that learned the module far more
    assert found["greedy"] > 2 * found["random"]
    assert found["diversity"] > found["random"]


def test_round_zero_is_shared_by_all_strategies(tmp_path: Path) -> None:
    screen, feats = _world()
    firsts = []
    for s in ("random", "greedy"):
        res = run_loop(
            screen,
            tmp_path / s,
            config=LoopConfig(strategy=s, rounds=1, batch_size=15),
            features=feats,
        )
        firsts.append(res.batches[0])
    assert firsts[0] == firsts[1]


def test_killed_loop_resumes_to_the_identical_final_state(tmp_path: Path) -> None:
    screen, feats = _world()
    full = run_loop(screen, tmp_path / "full", config=CFG, features=feats)
    part = run_loop(screen, tmp_path / "part", config=CFG, features=feats, stop_after=2)
    assert not part.completed
    assert len(part.batches) == 2
    assert not (tmp_path / "part" / "ranking.csv").exists()
    resumed = run_loop(screen, tmp_path / "part", config=CFG, features=feats, resume=True)
    assert resumed.completed
    assert resumed.batches == full.batches
    pd.testing.assert_frame_equal(resumed.results, full.results)
    pd.testing.assert_frame_equal(resumed.curve, full.curve)
    pd.testing.assert_frame_equal(resumed.ranking, full.ranking)
    for r in range(CFG.rounds):
        a = np.load(tmp_path / "full" / "rounds" / f"round_{r:03d}" / "predictions.npz")
        b = np.load(tmp_path / "part" / "rounds" / f"round_{r:03d}" / "predictions.npz")
        np.testing.assert_array_equal(a["mean"], b["mean"])


def test_resume_with_other_settings_or_without_flag_is_refused(tmp_path: Path) -> None:
    screen, feats = _world()
    run_loop(screen, tmp_path, config=CFG, features=feats, stop_after=1)
    other = LoopConfig(strategy="ucb_thompson", rounds=4, batch_size=21, seed=3, n_estimators=16)
    with pytest.raises(LifeLMError, match="batch_size"):
        run_loop(screen, tmp_path, config=other, features=feats, resume=True)
    with pytest.raises(LifeLMError, match="--resume"):
        run_loop(screen, tmp_path, config=CFG, features=feats)


class SpyLab(SimulatedLab):
    def __init__(self, screen: Screen) -> None:
        super().__init__(screen)
        self.asked: list[list[str]] = []

    def run(self, round_index, genes):
        self.asked.append(list(genes))
        return super().run(round_index, genes)


def test_no_leakage_strategy_sees_only_outcomes_it_chose(tmp_path: Path) -> None:
    screen, feats = _world()
    spy = SpyLab(screen)
    res = run_loop(screen, tmp_path / "a", config=CFG, features=feats, lab=spy)
    assert spy.asked == res.batches
    assert spy.queried == [g for b in res.batches for g in b]  # the oracle was asked nothing else
    # a second world that agrees on every tested gene and differs on every untested one,
    # including which genes are hits: the loop must choose exactly the same experiments
    tested = {g for b in res.batches for g in b}
    untested = np.array([g not in tested for g in screen.genes])
    rng = np.random.default_rng(9)
    scores = screen.scores.copy()
    scores[untested] = rng.normal(0, 5, untested.sum())
    hits = frozenset(g for g in screen.hits if g in tested) | frozenset(screen.genes[untested][:50])
    other = Screen("other", screen.genes, scores, hits)
    res2 = run_loop(other, tmp_path / "b", config=CFG, features=feats)
    assert res2.batches == res.batches
    np.testing.assert_array_equal(res2.results.score, res.results.score)


def test_bad_input_gives_clear_errors(tmp_path: Path) -> None:
    screen, feats = _world()
    with pytest.raises(InputError, match=r"2 genes the screen synthetic did not measure.*NOPE1"):
        run_loop(
            screen, tmp_path / "a", config=CFG, features=feats, pool=["G0001", "NOPE1", "NOPE2"]
        )
    with pytest.raises(InputError, match="larger than the pool"):
        run_loop(screen, tmp_path / "b", config=CFG, features=feats, pool=list(screen.genes[:50]))
    no_hits = [g for g in screen.genes if g not in screen.hits]
    with pytest.raises(InputError, match="none of the"):
        run_loop(screen, tmp_path / "c", config=CFG, features=feats, pool=no_hits)
    with pytest.raises(InputError, match="unknown strategy"):
        LoopConfig(strategy="oracle")
    f = tmp_path / "screen.csv"
    pd.DataFrame({"gene": ["A", "B", "C"], "score": [0.1, 2.0, -0.3]}).to_csv(f, index=False)
    with pytest.raises(InputError, match="no control rows"):
        load_screen(f)
    hits = tmp_path / "hits.txt"
    hits.write_text("B\nZZZ\n")
    with pytest.raises(InputError, match=r"not in the screen table.*ZZZ"):
        load_screen(f, hits=hits)
    pd.DataFrame({"gene": ["A", "B"], "score": [0.1, "x"]}).to_csv(f, index=False)
    with pytest.raises(InputError, match="non-numeric"):
        load_screen(f, hits=hits)


def test_controls_call_hits_and_replicates_are_the_oracle_noise(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [
        {"gene": f"non-targeting_{i}", "score": s} for i, s in enumerate(rng.normal(0, 0.1, 50))
    ]
    rows += [{"gene": "CTRL", "score": 0.02}]  # a real gene symbol, not a control
    rows += [{"gene": f"G{i}", "score": s} for i, s in enumerate(rng.normal(0, 0.1, 200))]
    rows += [{"gene": "STRONG", "score": 3.0}, {"gene": "WEAK", "score": -2.5}]
    f = tmp_path / "screen.csv"
    pd.DataFrame(rows).to_csv(f, index=False)
    s = load_screen(f)
    assert {"STRONG", "WEAK"} <= s.hits
    assert "CTRL" in s.index
    assert len(s.control_scores) == 50
    assert load_screen(f, direction="up").hits >= {"STRONG"}
    assert "WEAK" not in load_screen(f, direction="up").hits
    rep = pd.DataFrame(
        {"gene": ["A", "A", "B", "B"], "replicate": [1, 2, 1, 2], "score": [1.0, 3.0, -1.0, -1.0]}
    )
    rep.to_csv(f, index=False)
    h = tmp_path / "h.txt"
    h.write_text("A\n")
    s = load_screen(f, hits=h)
    assert s.scores.tolist() == [2.0, -1.0]
    lab = SimulatedLab(s, seed=0)
    seen = {float(lab.measure(r, ["A"])[0]) for r in range(30)}
    assert seen == {1.0, 3.0}  # one measured replicate each time, never the mean


def test_evidence_scores_are_in_unit_interval_with_sources() -> None:
    genes = [f"G{i}" for i in range(100)]
    observed = pd.Series(np.arange(60, dtype=float), index=genes[:60])
    predicted = pd.Series(np.linspace(0, 1, 40), index=genes[60:])
    extra = {"in_silico": pd.Series(np.arange(100, dtype=float), index=genes)}
    t = evidence_table(genes, observed_effect=observed, predicted_effect=predicted, scores=extra)
    for c in (
        "score:prior_hits",
        "score:predicted_effect",
        "score:in_silico",
        "rank_mean",
        "learned",
    ):
        v = t[c].dropna()
        assert len(v), c
        assert v.between(0, 1).all(), c
    row = t.set_index("gene").loc["G59"]
    assert row["score:prior_hits"] == 1.0
    assert np.isnan(row["score:predicted_effect"])
    assert row["sources"] == "prior_hits,in_silico"
    assert "logistic regression" in t.learned_note.iloc[0]


def test_round_folders_hold_protocol_and_results(tmp_path: Path) -> None:
    screen, feats = _world()
    run_loop(screen, tmp_path, config=LoopConfig(rounds=2, batch_size=10), features=feats)
    d = tmp_path / "rounds" / "round_001"
    assert sorted(p.name for p in d.iterdir()) == [
        "batch.json", "predictions.npz", "protocol.json", "protocol.log", "results.csv"
    ]  # fmt: skip
    proto = json.loads((d / "protocol.json").read_text())
    assert proto["backend"] == "simulated"
    assert proto["n_experiments"] == 10
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["rounds_done"] == 2
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["settings"]["screen_digest"] == screen.digest()


def test_expression_features_and_de_evidence_on_synthetic_cells() -> None:
    from lifelm.lab import expression_features
    from lifelm.lab.evidence import coexpression_centrality, differential_expression
    from lifelm.testing.synthetic import synthetic_cells

    adata = synthetic_cells(n_cells=300, n_genes=200, n_types=3, seed=1)
    symbols = adata.var["gene_symbol"].astype(str).tolist()
    feats = expression_features([*symbols[:150], "NOT_A_GENE"], adata, n_components=4)
    assert feats.matrix.shape == (151, 7)
    assert feats.matrix[-1].tolist() == [0.0] * 7  # absent gene: zeros, present flag 0
    assert feats.matrix[:150, 0].mean() > 0.5
    adata.var_names = symbols
    score, test = differential_expression(adata, key="cell_type", groups=("type_0", "type_1"))
    assert "Wilcoxon" in test
    lab = adata.obs["cell_type"].astype(str).to_numpy()
    x = adata.X.toarray() / adata.X.sum(axis=1).A
    diff = np.abs(x[lab == "type_0"].mean(0) - x[lab == "type_1"].mean(0))
    top = np.argsort(-score.to_numpy())[:10]
    assert np.median(diff[top]) > 3 * np.median(diff)  # the test ranks real differences first
    _, test_pb = differential_expression(
        adata, key="cell_type", groups=("type_0", "type_1"), donor_key="batch"
    )
    assert "pseudobulk" in test_pb
    cent = coexpression_centrality(adata, list(score.index[top]))
    assert cent.between(0, 1).all()
    assert cent[score.index[top]].mean() > cent.median()


def test_learned_combination_leaves_out_sources_missing_on_tested_genes() -> None:
    genes = [f"G{i}" for i in range(100)]
    observed = pd.Series(np.arange(60, dtype=float), index=genes[:60])
    predicted = pd.Series(np.linspace(0, 1, 40), index=genes[60:])  # untested genes only
    t = evidence_table(genes, observed_effect=observed, predicted_effect=predicted)
    assert t["learned"].isna().all()
    assert "left out: predicted_effect" in t.learned_note.iloc[0]
