"""Cross-check LifeLM's perturbation metrics against ArcInstitute's cell-eval on the same predictions.

Pearson-delta, MSE and the L1 discrimination score must agree; DE overlap is defined differently
(cell-eval calls DE genes on predicted cells with a Wilcoxon test and FDR; LifeLM ranks genes by
|predicted delta| against the true top-k by |Welch t|), so it is only checked to be a share.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from lifelm.data.cells.perturbation import (
    PerturbationData,
    make_split,
    split_condition,
    synthetic_perturbation,
)
from lifelm.evaluation.baselines.perturbation import TrainMean
from lifelm.evaluation.metrics.perturbation import score_predictions, top_de_genes

cell_eval = pytest.importorskip(
    "cell_eval", reason="cell-eval not installed (pip install 'lifelm[eval]')"
)


def _paired_anndata(
    data: PerturbationData, test: list[str], preds: list[np.ndarray]
) -> tuple[ad.AnnData, ad.AnnData]:
    ctx = split_condition(test[0])[0]
    ctrl = data.control_cells(ctx)
    real_x, pred_x, labels = [ctrl], [ctrl], ["non-targeting"] * len(ctrl)
    for cond, delta in zip(test, preds, strict=True):
        cells = data.cells(cond)
        real_x.append(cells)
        pred_x.append(np.clip(ctrl[: len(cells)] + delta, 0, None))  # cell-eval needs >= 0
        labels += [split_condition(cond)[1]] * len(cells)
    obs = pd.DataFrame({"target": labels}, index=[f"c{i}" for i in range(len(labels))])
    var = pd.DataFrame(index=data.genes)
    # pred control cells are the real ones; pred perturbed cells are as many as the real ones
    pred_obs = obs.copy()
    return ad.AnnData(np.concatenate(pred_x), obs=pred_obs, var=var), ad.AnnData(
        np.concatenate(real_x), obs=obs, var=var
    )


@pytest.mark.slow
def test_metrics_agree_with_cell_eval(tmp_path) -> None:
    data = PerturbationData.from_anndata(
        synthetic_perturbation(contexts=("A",), seed=2, cells_per_condition=60)
    )
    split = make_split(data, "unseen_single", seed=0, test_fraction=0.5)
    model = TrainMean().fit(data, split.train)
    test = list(split.test)
    rng = np.random.default_rng(0)
    preds = [
        model.predict_delta(c) + rng.normal(0, 0.2, len(data.genes)) for c in test
    ]  # distinct per pert
    pred, real = _paired_anndata(data, test, preds)
    # our metrics: the "control mean" is over the control cells of the context, as in cell-eval
    ctrl = data.control_cells("A")
    true = np.stack([data.cells(c).mean(0) - ctrl.mean(0) for c in test])
    pred_d = np.stack(
        [
            pred.X[pred.obs["target"].to_numpy() == split_condition(c)[1]].mean(0) - ctrl.mean(0)
            for c in test
        ]
    )
    de = [top_de_genes(data.cells(c), ctrl, 20) for c in test]
    genes = list(data.genes)
    ours = score_predictions(
        pred_d, true, de, exclude=[[genes.index(split_condition(c)[1])] for c in test]
    )

    evaluator = cell_eval.MetricsEvaluator(
        adata_pred=pred, adata_real=real, control_pert="non-targeting", pert_col="target",
        num_threads=1, outdir=str(tmp_path),
    )  # fmt: skip
    results, _ = evaluator.compute(profile="minimal", write_csv=False)
    res = results.to_pandas().set_index("perturbation")
    perts = [split_condition(c)[1] for c in test]
    assert np.allclose(res.loc[perts, "pearson_delta"].to_numpy(), ours["pearson"], atol=1e-4)
    assert np.allclose(res.loc[perts, "mse"].to_numpy(), ours["mse"], atol=1e-5)
    assert np.allclose(
        res.loc[perts, "discrimination_score_l1"].to_numpy(), ours["discrimination"], atol=1e-6
    )
    assert ((res.loc[perts, "overlap_at_N"] >= 0) & (res.loc[perts, "overlap_at_N"] <= 1)).all()
