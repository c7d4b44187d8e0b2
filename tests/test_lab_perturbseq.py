"""The Perturb-seq setting and the MC-dropout surrogate (synthetic cells; one real-data test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lifelm._core.errors import InputError
from lifelm.cli import main
from lifelm.data.cells.perturbation import synthetic_perturbation
from lifelm.lab import LoopConfig, run_loop
from lifelm.lab.features import ALL_SOURCES
from lifelm.lab.perturbseq import (
    PerturbSeqLab,
    load_perturbseq,
    magnitude,
    perturbation_features,
    response_accuracy,
)
from lifelm.lab.strategies import Observations, mc_dropout_samples, select_batch

SINGLES = tuple(f"G{i}" for i in range(10))
COMBOS = ("G0+G1", "G2+G3", "G4+G5", "G6+G7", "G8+G9", "G1+G2")


def _adata(seed: int = 0):
    a = synthetic_perturbation(
        n_genes=40, singles=SINGLES, combos=COMBOS, contexts=("A",), cells_per_condition=30,
        seed=seed,
    )  # fmt: skip
    return a


def _write(tmp_path: Path, adata, name: str = "ps.h5ad") -> Path:
    f = tmp_path / name
    adata.write_h5ad(f)
    return f


def _gi(tmp_path: Path) -> Path:
    genes = list(SINGLES)
    bg = np.random.default_rng(0).uniform(0.5, 2.0, (len(genes), len(genes)))
    m = pd.DataFrame((bg + bg.T) / 2, index=genes, columns=genes)
    for a, b, v in (("G0", "G1", -5.0), ("G4", "G5", -4.0), ("G2", "G3", 3.0)):
        m.loc[a, b] = m.loc[b, a] = v
    f = tmp_path / "gi.csv"
    m.to_csv(f)
    return f


CFG = LoopConfig(
    strategy="greedy", rounds=4, batch_size=3, seed=2, n_estimators=16, feature_sources=ALL_SOURCES
)


def test_pool_truth_hits_and_synergy(tmp_path: Path) -> None:
    s = load_perturbseq(_write(tmp_path, _adata()), gi_map=_gi(tmp_path), synergy_quantile=0.03)
    assert sorted(s.genes) == sorted([*SINGLES, *COMBOS])
    # the truth is the full-data mean shift; the magnitude leaves the targets out
    ctrl = s.data.control_mean("pool")
    d = s.data.cells("pool|G0+G1").mean(0) - ctrl
    np.testing.assert_allclose(s.truth[s.index["G0+G1"]], d, rtol=1e-6)
    assert s.scores[s.index["G0+G1"]] == pytest.approx(magnitude(d, [0, 1]))
    assert len(s.hits) == 2  # ceil(10 % of 16)
    assert s.hits == set(s.genes[np.argsort(-s.scores)[:2]])
    assert s.hit_sets["synergy"] == {"G0+G1", "G4+G5"}
    assert "synergy: GI score" in s.notes[-1]


def test_oracle_reveals_a_bootstrap_never_the_mean(tmp_path: Path) -> None:
    s = load_perturbseq(_write(tmp_path, _adata()))
    lab = PerturbSeqLab(s, seed=0)
    a, b = lab.measure(0, ["G3"])[0], lab.measure(1, ["G3"])[0]
    truth = s.truth[s.index["G3"]]
    assert not np.allclose(a, truth)
    assert not np.allclose(a, b)  # each experiment is a fresh draw of cells
    # but it measures the same response: closer to its own truth than to another perturbation's
    r_own = np.corrcoef(a, truth)[0, 1]
    assert r_own > 0.5
    assert r_own > np.corrcoef(a, s.truth[s.index["G7"]])[0, 1] + 0.2
    np.testing.assert_array_equal(a, PerturbSeqLab(s, seed=0).measure(0, ["G3"])[0])
    assert lab.queried == ["G3", "G3"]


def test_loop_writes_responses_accuracy_and_resumes(tmp_path: Path) -> None:
    s = load_perturbseq(_write(tmp_path, _adata()), gi_map=_gi(tmp_path), synergy_quantile=0.03)
    feats = perturbation_features(s)
    full = run_loop(s, tmp_path / "full", config=CFG, features=feats)
    assert list(full.curve.n_tested) == [3, 6, 9, 12]
    assert {"synergy_found", "synergy_in_pool", "synergy_ratio"} <= set(full.curve.columns)
    z = np.load(tmp_path / "full" / "rounds" / "round_001" / "responses.npz")
    assert z["delta"].shape == (3, 40)
    assert list(z["conditions"]) == full.batches[1]
    batch = json.loads((tmp_path / "full" / "rounds" / "round_002" / "batch.json").read_text())
    assert "3 features" in batch["model"]  # n_targets + the response model's two columns
    acc = pd.read_csv(tmp_path / "full" / "response_accuracy.csv")
    assert set(acc.method) >= {"mean_shift", "linear", "lab_model"}
    assert acc.pearson.notna().all()
    assert (acc.groupby("round").n_untested.first().to_numpy() == [13, 10, 7, 4]).all()
    part = run_loop(s, tmp_path / "part", config=CFG, features=feats, stop_after=2)
    assert not part.completed
    resumed = run_loop(s, tmp_path / "part", config=CFG, features=feats, resume=True)
    assert resumed.batches == full.batches
    pd.testing.assert_frame_equal(resumed.results, full.results)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "part" / "response_accuracy.csv"), acc)


def test_additive_response_model_beats_mean_shift_on_pairs(tmp_path: Path) -> None:
    """Synthetic pairs add their singles' effects: once the singles are read out, the additive
    model must predict the untested pairs far better than the mean-shift baseline."""
    s = load_perturbseq(_write(tmp_path, _adata()))
    lab = PerturbSeqLab(s, seed=0)
    singles = list(SINGLES)
    rounds = [{"conditions": np.array(singles), "delta": lab.measure(0, singles)}]
    acc = response_accuracy(s, rounds).set_index("method")
    assert acc.loc["additive", "n_scored"] == len(COMBOS)
    assert acc.loc["additive", "pearson"] > acc.loc["mean_shift", "pearson"] + 0.2


class Spy(PerturbSeqLab):
    asked: list[list[str]]

    def run(self, round_index, genes):
        self.asked = [*getattr(self, "asked", []), list(genes)]
        return super().run(round_index, genes)


def test_no_leakage_untested_perturbations_do_not_matter(tmp_path: Path) -> None:
    adata = _adata()
    s = load_perturbseq(_write(tmp_path, adata))
    feats = perturbation_features(s)
    spy = Spy(s, seed=CFG.seed)
    res = run_loop(s, tmp_path / "a", config=CFG, features=feats, lab=spy)
    assert spy.asked == res.batches
    assert spy.queried == [g for b in res.batches for g in b]
    # a second world: every untested perturbation's cells replaced by very different ones
    tested = {g for b in res.batches for g in b}
    other = adata.copy()
    lab_col = other.obs["perturbation"].astype(str).to_numpy()
    untested = np.array([p != "control" and p not in tested for p in lab_col])
    rng = np.random.default_rng(5)
    x = other.X.toarray()
    x[untested] = rng.poisson(20.0, size=(untested.sum(), x.shape[1]))
    other.X = sp.csr_matrix(x)
    s2 = load_perturbseq(_write(tmp_path, other, "other.h5ad"))
    assert not np.allclose(s2.scores, s.scores)
    res2 = run_loop(s2, tmp_path / "b", config=CFG, features=feats)
    assert res2.batches == res.batches
    np.testing.assert_array_equal(res2.results.score, res.results.score)


def test_bad_perturbseq_input(tmp_path: Path) -> None:
    adata = _adata()
    no_ctrl = adata[adata.obs["perturbation"].astype(str) != "control"].copy()
    with pytest.raises(InputError, match=r"no control cells.*--control"):
        load_perturbseq(_write(tmp_path, no_ctrl, "noctrl.h5ad"))
    with pytest.raises(InputError, match="no column 'guide'"):
        load_perturbseq(_write(tmp_path, adata), perturbation_key="guide")
    two = synthetic_perturbation(contexts=("A", "B"), cells_per_condition=12)
    with pytest.raises(InputError, match="--subset cell_type="):
        load_perturbseq(_write(tmp_path, two, "two.h5ad"))
    s = load_perturbseq(_write(tmp_path, adata))
    with pytest.raises(InputError, match=r"did not measure.*NOPE"):
        run_loop(s, tmp_path / "x", config=CFG, pool=["G1", "NOPE"])
    with pytest.raises(InputError, match="larger than the pool of 16"):
        run_loop(s, tmp_path / "y", config=LoopConfig(rounds=6, batch_size=3))
    with pytest.raises(InputError, match="simulated lab only"):
        run_loop(s, tmp_path / "z", config=LoopConfig(rounds=2, batch_size=3, backend="pylabrobot"))


def _code(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(args)
    return int(e.value.code)


def test_cli_perturbseq_setting(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = _write(tmp_path, _adata())
    out = tmp_path / "run"
    args = ["lab", "run", str(f), "-o", str(out), "--rounds", "3", "--batch-size", "3",
            "--strategy", "random", "--strategy", "ucb_thompson", "--gi-map", str(_gi(tmp_path)),
            "--synergy-quantile", "0.03"]  # fmt: skip
    assert _code(args) == 0
    text = capsys.readouterr().out
    assert "ucb_thompson: 9 tested" in text
    assert "synergy found" in text
    report = (out / "report.html").read_text()
    assert "Response model on the untested pool" in report
    pool = tmp_path / "pool.txt"
    pool.write_text("G1\nG2+G9\n")
    assert _code([*args[:3], "-o", str(tmp_path / "e"), "--pool", str(pool)]) == 2
    assert "did not measure" in capsys.readouterr().err
    assert _code([*args[:3], "-o", str(tmp_path / "e2"), "--rounds", "9"]) == 2
    assert "larger than the pool" in capsys.readouterr().err
    no_ctrl = _adata()
    no_ctrl = no_ctrl[no_ctrl.obs["perturbation"].astype(str) != "control"].copy()
    g = _write(tmp_path, no_ctrl, "noctrl.h5ad")
    assert _code(["lab", "run", str(g), "-o", str(tmp_path / "e3")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert "no control cells" in err
    assert "Traceback" not in err


def test_mc_dropout_has_spread_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = X[:, 0] * 2 + rng.normal(0, 0.1, 60)
    Xp = rng.normal(size=(30, 4))
    a = mc_dropout_samples(X, y, Xp, n_samples=16, seed=3)
    assert a.shape == (16, 30)
    assert (a.std(axis=0) > 0).all()
    np.testing.assert_array_equal(a, mc_dropout_samples(X, y, Xp, n_samples=16, seed=3))
    assert not np.allclose(a, mc_dropout_samples(X, y, Xp, n_samples=16, seed=4))
    assert np.corrcoef(a.mean(0), Xp[:, 0])[0, 1] > 0.9  # it learned the signal
    from lifelm.lab.features import GeneFeatures

    genes = np.array([f"g{i}" for i in range(90)])
    feats = GeneFeatures(genes, np.vstack([X, Xp]), tuple(f"coexpression:c{i}" for i in range(4)))
    obs = Observations(tuple(genes[:60]), y, np.zeros(60, dtype=np.int64))
    for strategy in ("ucb_thompson",):
        sel = select_batch(strategy, pool=list(genes[60:]), features=feats, obs=obs,
                           batch_size=5, round_index=1, seed=0, surrogate="mc_dropout",
                           mc_samples=8, direction="up")  # fmt: skip
        assert len(set(sel.genes)) == 5
        assert (sel.sd > 0).all()
        assert "MC-dropout" in sel.note
    top = select_batch("greedy", pool=list(genes[60:]), features=feats, obs=obs, batch_size=5,
                       round_index=1, seed=0, surrogate="mc_dropout", direction="up")  # fmt: skip
    best = set(genes[60:][np.argsort(-Xp[:, 0])[:10]])
    assert len(set(top.genes) & best) >= 4


@pytest.mark.data
def test_norman_perturbseq_loop_on_real_cells(shared_data: Path, tmp_path: Path) -> None:
    """Norman 2019 (PerturBench devel, K562 CRISPRa): 33 perturbations, synergy from the GI map."""
    f = (
        shared_data
        / "singlecell/perturbation/perturbench_devel_norman2019_mcfaline2023_500hvg.h5ad"
    )
    gi = shared_data / "screens/norman2019_gi/processed_emap.csv"
    if not f.is_file() or not gi.is_file():
        pytest.skip("Norman 2019 Perturb-seq file or GI map absent")
    out = tmp_path / "norman"
    code = _code(["lab", "run", str(f), "--subset", "dataset=norman19", "--gi-map", str(gi),
                  "-o", str(out), "--rounds", "3", "--batch-size", "4", "--strategy", "greedy"])  # fmt: skip
    assert code == 0
    curve = pd.read_csv(out / "greedy" / "curve.csv")
    assert curve.hits_in_pool.iloc[0] == 4  # ceil(10 % of 33)
    assert curve.synergy_in_pool.iloc[0] == 6
    acc = pd.read_csv(out / "greedy" / "response_accuracy.csv")
    assert acc.pearson.between(-1, 1).all()


def test_gi_map_pair_screen_profiles_and_resume(tmp_path: Path) -> None:
    from lifelm.lab.gimap import PairProfileLearner, load_gi_screen, pair_features

    genes = [f"g{i:02d}" for i in range(24)]
    rng = np.random.default_rng(1)
    hub = rng.normal(0, 1, 24) - 2.0 * (np.arange(24) < 4)  # g00..g03 take part in synergy
    m = hub[:, None] + hub[None, :] + rng.normal(0, 0.3, (24, 24))
    m = (m + m.T) / 2
    f = tmp_path / "gi.csv"
    pd.DataFrame(m, index=genes, columns=genes).to_csv(f)
    s = load_gi_screen(f, quantile=0.1)
    assert len(s.genes) == 24 * 23 // 2
    assert s.hits == set(s.genes[s.scores <= np.quantile(s.scores, 0.1)])
    hub_hits = [h for h in s.hits if set(h.split("+")) & {"g00", "g01", "g02", "g03"}]
    assert len(hub_hits) > 0.8 * len(s.hits)
    assert s.direction == "down"
    learner = PairProfileLearner()
    learner.observe(
        0, {"tested": np.array(["g00+g01", "g00+g02"]), "score": np.array([-4.0, -2.0])}
    )
    x_train, x_pool, names = learner.features(["g00+g01", "g00+g02"], ["g00+g05", "g05+g06"])
    assert names[0] == "response:profile_mean_sum"
    assert x_pool[0, 0] == pytest.approx(-3.0)  # g00's mean over both tested pairs; g05 unseen
    assert x_pool[1].tolist() == [0.0] * len(names)
    assert x_train[0, 0] == pytest.approx(-2.0)  # its own score left out
    singles = pd.Series(rng.normal(0, 1, 24), index=genes)
    feats = pair_features(s, singles)
    cfg = LoopConfig(strategy="greedy", rounds=4, batch_size=20, seed=0, n_estimators=16,
                     feature_sources=ALL_SOURCES)  # fmt: skip
    full = run_loop(s, tmp_path / "a", config=cfg, features=feats, learner=PairProfileLearner())
    run_loop(
        s, tmp_path / "b", config=cfg, features=feats, learner=PairProfileLearner(), stop_after=2
    )
    res = run_loop(s, tmp_path / "b", config=cfg, features=feats, learner=PairProfileLearner(),
                   resume=True)  # fmt: skip
    assert res.batches == full.batches
    batch = json.loads((tmp_path / "a" / "rounds" / "round_003" / "batch.json").read_text())
    assert "10 features" in batch["model"]  # 5 single-phenotype + 5 profile columns
