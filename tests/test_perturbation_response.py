"""The response model and the cell-model baselines on a tiny synthetic dataset with a random cell model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelm.data.cells.genes import gene_table
from lifelm.data.cells.perturbation import PerturbationData, make_split, synthetic_perturbation
from lifelm.data.cells.tokenizer import RankValueTokenizer
from lifelm.evaluation.baselines.perturbation import Linear, TrainMean
from lifelm.evaluation.benchmarks.perturbation import run_split, summarize
from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
from lifelm.models.response import ResponseModel, ResponseModelConfig
from lifelm.tasks.cells.model_io import CellModel
from lifelm.tasks.cells.respond import (
    PerturbationResponder,
    ResponseTrainConfig,
    cell_model_features,
)


@pytest.fixture(scope="module")
def setup() -> tuple[PerturbationData, CellModel]:
    table = gene_table("homo_sapiens")
    symbols = sorted(s for s in table.symbol_to_id if s.isalpha() and s.isupper())[:60]
    rename = {f"G{i}": s for i, s in enumerate(symbols)}
    adata = synthetic_perturbation(n_genes=60, seed=1)
    adata.var_names = [rename[g] for g in adata.var_names]
    adata.obs["perturbation"] = [
        "+".join(rename.get(p, p) for p in str(lab).split("+")) for lab in adata.obs["perturbation"]
    ]
    data = PerturbationData.from_anndata(adata, name="syn")
    tok = RankValueTokenizer(
        genes=np.array([table.symbol_to_id[s] for s in symbols]), medians=np.ones(60), max_length=64
    )
    torch.manual_seed(0)
    net = CellTransformer(
        CellTransformerConfig.from_name("test", vocab_size=tok.vocab_size, max_length=64)
    )
    return data, CellModel(net.eval(), tok)


def test_response_model_shapes_and_prior() -> None:
    cfg = ResponseModelConfig(n_genes=7, gene_dim=5, context_dim=3, n_stimuli=1, d_model=8)
    model = ResponseModel(cfg).eval()
    model.prior.fill_(0.5)
    out = model(
        torch.randn(7, 5), torch.randn(2, 2, 5), torch.ones(2, 2), torch.zeros(2, 1, dtype=torch.long),
        torch.zeros(2, 1), torch.randn(2, 3),
    )  # fmt: skip
    assert out["delta"].shape == (2, 7)
    assert out["log_scale"].shape == (2, 7)
    assert torch.allclose(
        out["delta"], torch.full((2, 7), 0.5)
    )  # untrained = the prior (train mean)


def test_responder_trains_and_samples(setup: tuple[PerturbationData, CellModel]) -> None:
    data, cm = setup
    feats = cell_model_features(cm, data, max_cells=20)
    assert set(feats.context_vectors) == {"A", "B"}
    assert len(feats.gene_vectors) == 60
    split = make_split(data, "unseen_combo", seed=0)
    untrained = PerturbationResponder(feats, ResponseTrainConfig(epochs=0)).fit(data, split.train)
    mean = TrainMean().fit(data, split.train)
    # zero epochs: the response model is exactly the pooled train-mean delta
    pooled = data.deltas(split.train).mean(0)
    assert np.allclose(untrained.predict_delta(split.test[0]), pooled, atol=1e-5)
    assert mean.predict_delta(split.test[0]).shape == pooled.shape
    trained = PerturbationResponder(feats, ResponseTrainConfig(epochs=25)).fit(data, split.train)
    true = data.deltas(list(split.train))
    fit_err = np.mean(
        [(trained.predict_delta(c) - t) ** 2 for c, t in zip(split.train, true, strict=True)]
    )
    assert fit_err < np.mean((true - pooled) ** 2)  # it learns the training conditions
    cells = trained.sample_cells(split.test[0], 15)
    assert cells.shape == (15, len(data.genes))
    assert (cells >= 0).all()


def test_cell_model_methods_in_the_benchmark(setup: tuple[PerturbationData, CellModel]) -> None:
    data, cm = setup
    feats = cell_model_features(cm, data, max_cells=20)
    split = make_split(data, "unseen_single", seed=0)
    methods = [
        Linear(gene_embeddings=feats.gene_vectors, name="linear_cellmodel"),
        PerturbationResponder(feats, ResponseTrainConfig(epochs=15)),
    ]
    summary = summarize(run_split(data, split, methods)).set_index("method")
    assert {"linear_cellmodel", "lifelm_response", "noise_ceiling"} <= set(summary.index)
    assert np.isfinite(summary.loc["lifelm_response", "mse_mean"])
