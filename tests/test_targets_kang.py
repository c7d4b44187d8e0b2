"""``targets`` keeps FDR control on real data: Kang 2018 (ctrl vs IFN-beta) with shuffled labels.

The shipped bug: with the ctrl/stim labels shuffled, 126 of 200 genes were called at FDR < 0.05.
Here a subsample of Kang's cells, a tiny random model (calibration is about the labels, not the
model) and three label shuffles: the share of genes at FDR < 0.05 must stay at or below 5 % for
the in-silico ranking and for the DE baseline, while the real labels give DE calls that include
interferon genes (the test has power).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from conftest import shared_file
from lifelm.tasks.cells import targets as T
from test_perturb import tiny_model

KANG = "singlecell/kang2018/kang2018_ifnb_scgen_valid_counts.h5ad"


@pytest.fixture(scope="module")
def kang():
    adata = ad.read_h5ad(shared_file(KANG))
    rng = np.random.default_rng(0)
    cd4 = np.flatnonzero(adata.obs["cell_type"].astype(str).to_numpy() == "CD4T")
    adata = adata[np.sort(rng.choice(cd4, 240, replace=False))].copy()  # one cell type
    x = adata.X.tocsc()
    keep = np.argsort(-np.asarray((x > 0).sum(0)).ravel())[:300]  # most detected genes
    adata = adata[:, np.sort(keep)].copy()
    return adata, tiny_model(adata, max_length=64, seed=0)


@pytest.mark.data
def test_kang_shuffled_labels_keep_fdr_control(kang) -> None:
    adata, model = kang
    kw = {"label_key": "condition", "start": "ctrl", "goal": "stim", "n_cells": 12,
          "max_candidates": 40, "n_null": 5, "device": "cpu", "copy": True, "progress": False}  # fmt: skip
    real = T.rank_targets(adata, model, **kw).uns["lifelm_targets"]
    g = real["genes"]
    assert real["design"]["all cells"]["kind"] == "pseudo-replicates"
    assert real["design"]["all cells"]["min_p"] * len(g) < 0.05  # a call is possible
    ifn = set(g.loc[g["de_q"] < 0.05, "gene"]) & {"ISG15", "IFI6", "IFIT3", "MX1", "IFITM3",
                                                   "ISG20", "LY6E", "IFIT1", "OAS1", "IRF7"}  # fmt: skip
    assert ifn, "the DE baseline finds no interferon gene with the real labels"
    rng = np.random.default_rng(1)
    fr, fr_de = [], []
    for seed in range(3):
        shuf = adata.copy()
        shuf.obs["condition"] = rng.permutation(shuf.obs["condition"].astype(str).to_numpy())
        r = T.rank_targets(shuf, model, seed=seed, **kw).uns["lifelm_targets"]["genes"]
        fr.append((r["q"] < 0.05).mean())
        fr_de.append((r["de_q"] < 0.05).mean())
    assert np.mean(fr) <= 0.05, fr
    assert np.mean(fr_de) <= 0.05, fr_de
