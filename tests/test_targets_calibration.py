"""``targets`` statistics hold under the null, find planted effects, and refuse bad designs.

Synthetic data made here, tiny random models (``test_perturb.tiny_model``). Under permuted
state labels the share of genes at FDR < 0.05 must stay at or below 5 % on average; with a
planted goal-state gene that gene must be called.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from lifelm._core.errors import LifeLMError
from lifelm.tasks.cells import targets as T
from lifelm.tasks.cells.de import TooFewReplicatesError, make_design, permutation_pvalues
from lifelm.testing.synthetic import synthetic_cells
from test_perturb import tiny_model

FAST = {"n_null": 4, "device": "cpu", "copy": True, "progress": False}


@pytest.fixture(scope="module")
def null_data():
    """Two cell types, 10 donors, no state effect at all (the labels are drawn per test)."""
    adata = synthetic_cells(100, 40, n_types=2, seed=11)
    adata.obs["donor"] = [f"d{i % 10}" for i in range(100)]
    return adata, tiny_model(adata, seed=5)


def _shuffled(adata, seed: int, *, within_donor: bool):
    a = adata.copy()
    rng = np.random.default_rng(seed)
    lab = np.array(["start", "goal"] * (a.n_obs // 2))
    if within_donor:  # every donor keeps half its cells in each state
        out = np.empty(a.n_obs, dtype=object)
        for d in np.unique(a.obs["donor"]):
            idx = np.flatnonzero(a.obs["donor"].to_numpy() == d)
            out[idx] = rng.permutation(np.resize(["start", "goal"], len(idx)))
        lab = out
    else:
        lab = rng.permutation(lab)
    a.obs["state"] = lab
    return a


def test_permutation_pvalues_are_uniform_for_exchangeable_units() -> None:
    rng = np.random.default_rng(0)
    state = np.repeat([1, 0], 60)
    design = make_design(state, None, n_pseudo=5, seed=1)
    assert design.exhaustive
    assert len(design.labellings) == 252
    assert (design.labellings[0] == design.unit_start).all()
    ps = []
    for _ in range(200):  # 200 independent null genes, unit values i.i.d.
        x = rng.normal(size=(design.n_units, 1))
        _, p = permutation_pvalues(lambda lab, x=x: lab @ x / 5 - (~lab) @ x / 5,
                                   design.labellings)  # fmt: skip
        ps.append(p[0])
    ps = np.array(ps)
    assert 0.02 <= (ps < 0.05).mean() <= 0.09  # about 5 %
    assert 0.4 <= np.median(ps) <= 0.6
    assert ps.min() >= 1 / 252


@pytest.mark.parametrize("within_donor", [False, True], ids=["pseudo-replicates", "donors"])
def test_shuffled_labels_keep_fdr_at_five_percent(null_data, within_donor: bool) -> None:
    adata, model = null_data
    fractions, fractions_de, p_small = [], [], []
    for seed in range(3):
        a = _shuffled(adata, seed, within_donor=within_donor)
        out = T.rank_targets(
            a, model, label_key="state", start="start", goal="goal", n_cells=12, seed=seed,
            donor_key="donor" if within_donor else None, n_pseudo=6, min_unit_cells=3, **FAST,
        )  # fmt: skip
        res = out.uns["lifelm_targets"]
        g = res["genes"]
        assert len(g) >= 20
        assert g["p"].between(0, 1).all()
        assert g["p"].min() >= res["design"]["all cells"]["min_p"]
        # the test can reject: one gene at the smallest p would pass BH on its own
        assert res["design"]["all cells"]["min_p"] * len(g) < 0.05
        fractions.append((g["q"] < 0.05).mean())
        p_small.append((g["p"] < 0.05).mean())
        fractions_de.append((g["de_q"] < 0.05).mean())
        kind = res["design"]["all cells"]["kind"]
        assert kind == ("paired donors" if within_donor else "pseudo-replicates")
        if not within_donor:
            assert any("anti-conservative" in w for w in res["warnings"])
    assert np.mean(fractions) <= 0.05, fractions
    assert np.mean(fractions_de) <= 0.05, fractions_de
    assert np.mean(p_small) <= 0.15, p_small  # p-values not piled up near 0


@pytest.fixture(scope="module")
def planted():
    """Goal cells have gene X forced to the top rank; 10 donors with cells in both states."""
    adata = synthetic_cells(100, 60, n_types=2, seed=3)
    x = adata.X.toarray()
    x_gene = int(np.argsort((x > 0).mean(0))[10])
    goal = np.arange(100) % 10 >= 5
    x[goal, x_gene] = x[goal].sum(1) * 5
    adata.X = sp.csr_matrix(x)
    adata.obs["state"] = np.where(goal, "goal", "start")
    adata.obs["donor"] = [f"d{i // 10}" for i in range(100)]
    model = tiny_model(adata, seed=2)
    return adata, model, adata.var["gene_symbol"].iloc[x_gene]


def test_planted_gene_is_found_by_both_rankings(planted) -> None:
    adata, model, symbol = planted
    sym = adata.var["gene_symbol"].tolist()
    genes = [symbol, *[s for s in sym if s != symbol][:19]]
    out = T.rank_targets(
        adata, model, label_key="state", start="start", goal="goal", genes=genes,
        donor_key="donor", n_cells=30, method="insilico", **FAST,
    )  # fmt: skip
    res = out.uns["lifelm_targets"]
    g = res["genes"].set_index("gene")
    assert res["design"]["all cells"]["kind"] == "paired donors"
    assert res["design"]["all cells"]["n_labellings"] == 1024  # all swaps of 10 donors
    assert g.loc[symbol, "rank_insilico"] == 1
    assert g.loc[symbol, "effect"] > 0.3
    assert g.loc[symbol, "q"] < 0.05  # power: the planted gene is called
    assert g.loc[symbol, "rank_de"] == 1
    assert g.loc[symbol, "de_q"] < 0.05
    assert g.loc[symbol, "de_log2fc"] > 3
    assert (g["q"] >= g["p"] - 1e-12).all()
    assert (g["q"] < 0.05).mean() < 0.5  # not everything
    assert res["method"] == "insilico"
    assert (res["genes"]["rank"] == res["genes"]["rank_insilico"]).all()
    assert set(res["comparison"].columns) >= {"fold", "insilico", "de"}
    assert res["winner"] in ("insilico", "de")
    assert res["verdict"]


def test_method_auto_follows_the_held_out_winner(planted, tmp_path) -> None:
    adata, model, _symbol = planted
    out = T.rank_targets(
        adata, model, label_key="state", start="start", goal="goal", donor_key="donor",
        n_cells=10, method="auto", **FAST,
    )  # fmt: skip
    res = out.uns["lifelm_targets"]
    assert out.uns["lifelm"]["targets"] is res
    assert {"de_log2fc", "de_p", "de_q", "rank_de"} <= set(res["genes"].columns)
    assert res["method"] == res["winner"]
    rank_col = "rank_de" if res["winner"] == "de" else "rank_insilico"
    assert (res["genes"]["rank"] == res["genes"][rank_col]).all()
    assert res["genes"]["rank"].tolist() == list(range(1, len(res["genes"]) + 1))
    if res["winner"] == "de":
        assert "agrees less" in res["verdict"]
        assert "DE" in res["verdict"]
    out.write_h5ad(tmp_path / "out.h5ad")  # the results survive a round trip
    back = ad.read_h5ad(tmp_path / "out.h5ad").uns["lifelm"]["targets"]
    assert list(back["genes"]["gene"]) == list(res["genes"]["gene"])
    header = T.header_lines(res)
    assert all(line.startswith("# ") for line in header)
    assert any("test unit" in line and "paired donors" in line for line in header)
    assert any("DE baseline" in line for line in header)


def test_bad_states_and_designs_are_clear_errors(planted) -> None:
    adata, model, _ = planted
    kw = {"device": "cpu", "progress": False}
    with pytest.raises(LifeLMError, match=r"both .start..*--goal"):
        T.rank_targets(adata, model, label_key="state", start="start", goal="start", **kw)
    with pytest.raises(LifeLMError, match=r"no column .nope..*--label-key"):
        T.rank_targets(adata, model, label_key="nope", start="a", goal="b", **kw)
    with pytest.raises(LifeLMError, match="no cells labelled 'sick'"):
        T.rank_targets(adata, model, label_key="state", start="sick", goal="goal", **kw)
    with pytest.raises(LifeLMError, match="--donor-key"):
        T.rank_targets(adata, model, label_key="state", start="start", goal="goal",
                       donor_key="patient", **kw)  # fmt: skip
    a = adata.copy()
    a.obs["donor"] = [f"d{i % 3}" for i in range(a.n_obs)]  # 3 paired donors: 8 labellings
    with pytest.raises(TooFewReplicatesError, match=r"8 distinct labellings.*--donor-key"):
        T.rank_targets(a, model, label_key="state", start="start", goal="goal",
                       donor_key="donor", **kw)  # fmt: skip
    a = adata.copy()
    lab = a.obs["state"].to_numpy().copy()
    lab[np.flatnonzero(lab == "goal")[5:]] = "other"  # 5 goal cells left
    a.obs["state"] = lab
    with pytest.raises(TooFewReplicatesError, match="goal state has 5 cells"):
        T.rank_targets(a, model, label_key="state", start="start", goal="goal", **kw)


def test_groupby_runs_per_cell_type_and_composition_is_warned(null_data) -> None:
    adata, model = null_data
    a = adata.copy()
    types = a.obs["cell_type"].astype(str).to_numpy()
    first = types == types[0]
    rng = np.random.default_rng(0)
    # start cells mostly of the first type, goal cells mostly of the other
    a.obs["state"] = np.where(rng.random(a.n_obs) < np.where(first, 0.85, 0.15), "start", "goal")
    out = T.rank_targets(a, model, label_key="state", start="start", goal="goal", n_cells=8,
                         n_pseudo=3, **FAST)  # fmt: skip
    warn = out.uns["lifelm_targets"]["warnings"]
    assert any("cell-type mix" in w and "--groupby cell_type" in w for w in warn)
    out = T.rank_targets(a, model, label_key="state", start="start", goal="goal", n_cells=8,
                         groupby="cell_type", n_pseudo=3, **FAST)  # fmt: skip
    res = out.uns["lifelm_targets"]
    g = res["genes"]
    assert "group" in g.columns
    assert set(g["group"]) <= set(types)
    assert len(set(g["group"])) >= 1
    assert not any("cell-type mix" in w for w in res["warnings"])
    for _, sub in g.groupby("group"):
        assert sorted(sub["rank"]) == list(range(1, len(sub) + 1))
