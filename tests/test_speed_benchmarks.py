"""The Geneformer speed benchmarks' own logic, without Geneformer: data preparation, the
rebuilt dictionaries, the token-agreement check and the timing summaries.

The benchmarks import Geneformer only in their ``--worker`` role (another venv); here a few lines
of NumPy stand in for Geneformer's ranking (``argsort`` of ``count / n_counts * 1e4 / median``).
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tb():
    return _load("tokenizer_throughput")


# real Ensembl IDs so that LifeLM's gene mapping accepts them
GENES = [
    "ENSG00000000003",
    "ENSG00000000005",
    "ENSG00000000419",
    "ENSG00000000457",
    "ENSG00000000460",
    "ENSG00000000938",
    "ENSG00000000971",
    "ENSG00000001036",
]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """A small counts h5ad with pbmc3k's columns and V1-style Geneformer pickles."""
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.poisson(1.5, size=(40, len(GENES))).astype(np.int32))
    var = pd.DataFrame(
        {"gene_symbol": [f"G{i}" for i in range(len(GENES))], "gene_ids": GENES},
        index=[f"G{i}" for i in range(len(GENES))],
    )
    src = tmp_path / "src.h5ad"
    ad.AnnData(X=X, var=var, obs=pd.DataFrame(index=[f"c{i}" for i in range(40)])).write_h5ad(src)
    dicts = tmp_path / "gf"
    dicts.mkdir()
    tokens = {"<pad>": 0, "<mask>": 1, **{g: i + 2 for i, g in enumerate(GENES)}}
    medians = {g: float(m) for g, m in zip(GENES, rng.uniform(0.5, 3.0, len(GENES)), strict=True)}
    (dicts / "token_dictionary_gc30M.pkl").write_bytes(pickle.dumps(tokens))
    (dicts / "gene_median_dictionary_gc30M.pkl").write_bytes(pickle.dumps(medians))
    return src, dicts


def _reference_ranks(h5ad: Path, medians: dict[str, float]) -> dict[str, np.ndarray]:
    """Geneformer's per-cell ranking, re-expressed in NumPy, as ragged gene lists."""
    a = ad.read_h5ad(h5ad)
    X = sp.csr_matrix(a.X)
    ids = np.asarray(a.var["ensembl_id"])
    norm = np.array([medians[g] for g in ids])
    n_counts = a.obs["n_counts"].to_numpy()
    lists = []
    for i in range(X.shape[0]):
        row = X[i]
        v = row.data / n_counts[i] * 10_000 / norm[row.indices]
        lists.append(ids[row.indices][np.argsort(-v, kind="stable")])
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])])
    return {"genes": np.concatenate(lists), "offsets": offsets, "n_out": len(lists)}


def test_prepare_and_agreement(tb, files, tmp_path: Path) -> None:
    src, gf_dicts = files
    dest = tmp_path / "data" / "x.h5ad"
    dest.parent.mkdir()
    info = tb.prepare_h5ad(src, dest, replicate=3)
    assert info["n_cells"] == 120
    assert info["lifelm_mapped"] == len(GENES)
    a = ad.read_h5ad(dest)
    # Geneformer's required columns: totals over all genes, one ID per gene
    np.testing.assert_allclose(a.obs["n_counts"], np.asarray(a.X.sum(axis=1)).ravel())
    assert list(a.var["ensembl_id"]) == GENES
    assert a.obs_names.is_unique

    built = tmp_path / "dicts"
    dict_info = tb.build_dictionaries(gf_dicts, dest, built)
    assert dict_info["vocab_genes"] == len(GENES)
    v2 = pickle.loads((built / "v2_token.pkl").read_bytes())
    assert [v2[k] for k in ("<pad>", "<mask>", "<cls>", "<eos>")] == [0, 1, 2, 3]
    assert len(v2) == len(GENES) + 4

    tok = tb.lifelm_tokenizer(built)
    cells = tok.encode(ad.read_h5ad(dest))
    medians = pickle.loads((built / "v1_median.pkl").read_bytes())
    ref = _reference_ranks(dest, medians)
    agree = tb.agreement(cells, ref, tok, dest, set(GENES))
    assert agree["cells_same_length"] == 1.0
    assert agree["cells_tie_aware_equal"] == 1.0  # equal up to ties in the normalised value

    # a swapped pair of genes with different values is caught
    broken = dict(ref, genes=ref["genes"].copy())
    first = slice(ref["offsets"][0], ref["offsets"][1])
    broken["genes"][first] = broken["genes"][first][::-1]
    assert tb.agreement(cells, broken, tok, dest, set(GENES))["cells_tie_aware_equal"] < 1.0


def test_summaries(tb) -> None:
    s = tb.summary([[2.0, 1.0], [4.0, 3.0], [3.0, 2.0]], 100)
    assert s["best_s"] == 2.0
    assert s["median_s"] == 3.0
    assert s["cells_per_s_best"] == 50.0
    assert s["cells_per_cpu_s_best"] == 100.0
    with tb.Clock() as c:
        sum(range(1000))
    assert len(c.times) == 2
    assert all(t >= 0 for t in c.times)
    eb = _load("embed_throughput")
    assert eb.summary([[1.0, 0.5]], 10)["cells_per_cpu_s_best"] == 20.0
    assert set(eb.SHAPES) == {"geneformer-6l", "geneformer-12l"}
