"""The perturbation pipeline end to end on a tiny synthetic dataset, plus splits and loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.conftest import shared_file

from lifelm.data.cells.perturbation import (
    PerturbationData,
    PerturbationSplit,
    canonical_label,
    components,
    make_split,
    read_perturbation,
    split_condition,
    synthetic_perturbation,
)
from lifelm.evaluation.baselines.perturbation import Additive, Linear, default_baselines
from lifelm.evaluation.benchmarks.perturbation import (
    CEILING,
    markdown_table,
    plot_summary,
    run_split,
    summarize,
)


@pytest.fixture(scope="module")
def data() -> PerturbationData:
    return PerturbationData.from_anndata(synthetic_perturbation(seed=0), name="syn")


def test_labels() -> None:
    assert canonical_label("ctrl") == "control"
    assert canonical_label("KLF1+ctrl") == "KLF1"
    assert canonical_label("B+A") == "A+B"
    assert components("A+B") == ["A", "B"]


@pytest.mark.parametrize("kind", ["unseen_single", "unseen_combo", "unseen_context"])
def test_split_has_no_leakage(data: PerturbationData, kind: str, tmp_path: Path) -> None:
    split = make_split(data, kind, seed=3)  # type: ignore[arg-type]
    train, test = set(split.train), set(split.test)
    assert test
    assert train
    assert not train & test
    assert not set(split.dropped) & train
    if kind == "unseen_single":
        held = {split_condition(c)[1] for c in test}
        # no training condition (single or combo) contains a held-out gene
        assert not any(held & set(components(split_condition(c)[1])) for c in train)
    if kind == "unseen_combo":
        for c in test:
            ctx, pert = split_condition(c)
            assert "+" in pert
            assert all(f"{ctx}|{g}" in train for g in components(pert))
    if kind == "unseen_context":
        held_ctx = {split_condition(c)[0] for c in test}
        assert len(held_ctx) == 1
        assert not any(split_condition(c)[0] in held_ctx for c in train)
    # seeded and saved: same seed gives the same split, and JSON round-trips
    assert make_split(data, kind, seed=3) == split  # type: ignore[arg-type]
    assert PerturbationSplit.load(split.save(tmp_path / "s.json")) == split
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match=r"bad\.json"):
        PerturbationSplit.load(tmp_path / "bad.json")


def test_baselines_recover_known_structure(data: PerturbationData) -> None:
    split = make_split(data, "unseen_combo", seed=0)
    add = Additive().fit(data, split.train)
    test = split.test[0]
    true = data.deltas([test])[0]
    assert np.corrcoef(add.predict_delta(test), true)[0, 1] > 0.8  # effects are additive by design
    assert add.predict_delta(split.train[0].split("+")[0]) is None or "+" in split.train[0]
    ctx = make_split(data, "unseen_context", seed=0)
    lin = Linear().fit(data, ctx.train)
    assert lin.predict_delta(ctx.test[0]).shape == (len(data.genes),)


def test_whole_pipeline_in_seconds(data: PerturbationData, tmp_path: Path) -> None:
    frames = [
        run_split(data, make_split(data, k, seed=0), default_baselines())
        for k in ("unseen_single", "unseen_combo", "unseen_context")
    ]  # type: ignore[arg-type]
    import pandas as pd

    summary = summarize(pd.concat(frames))
    table = markdown_table(summary)
    assert "noise_ceiling" in table
    assert "additive" in table
    combo = summary[(summary["split"] == "unseen_combo")].set_index("method")
    # the additive baseline beats no-change on additive synthetic combos, and the ceiling is high
    assert combo.loc["additive", "mse_mean"] < combo.loc["control_mean", "mse_mean"]
    assert combo.loc[CEILING, "pearson_mean"] > 0.7
    assert plot_summary(summary, tmp_path / "p.png").stat().st_size > 1000


def test_bad_input_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.h5ad"):
        read_perturbation(tmp_path / "missing.h5ad", "kang")
    adata = synthetic_perturbation()
    adata.obs["perturbation"] = "G1"
    from lifelm.data.cells.perturbation import standardize

    with pytest.raises(ValueError, match="no control cells"):
        standardize(
            adata, perturbation_key="perturbation", control_values=("control",), source="x.h5ad"
        )


@pytest.mark.data
@pytest.mark.parametrize(
    ("rel", "preset", "n_ctx"),
    [
        ("singlecell/perturbation/norman2019_gears_format_50x50.h5ad", "gears", 1),
        ("singlecell/kang2018/kang2018_ifnb_scgen_valid_counts.h5ad", "kang", 7),
    ],
)
def test_real_loaders(rel: str, preset: str, n_ctx: int) -> None:
    adata = read_perturbation(shared_file(rel), preset)  # type: ignore[arg-type]
    labels = set(adata.obs["perturbation"].astype(str))
    assert "control" in labels
    assert not any("ctrl" in x for x in labels)
    assert adata.obs["context"].nunique() == n_ctx
    assert np.allclose(adata.X.data, np.round(adata.X.data))
    if preset == "kang":
        assert labels == {"control", "IFNB"}
        assert make_split(PerturbationData.from_anndata(adata), "unseen_context", seed=0).test
