"""CPU techniques for embedding (int8, torch.compile, bf16, worker processes): each switchable, each checked
against the plain fp32 path on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from lifelm._core.errors import InputError
from lifelm.data.cells.tokenizer import RankValueTokenizer
from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
from lifelm.tasks.cells import cpu_techniques
from lifelm.tasks.cells.cpu_techniques import CpuTechniques, quantize_int8
from lifelm.tasks.cells.embed import embed, embed_tokens
from lifelm.tasks.cells.model_io import CellModel
from lifelm.testing.synthetic import synthetic_cells

# int8 tolerance, stated: cell embeddings keep cosine >= 0.99 to fp32; the deletion scan of a
# cell keeps Spearman >= 0.9 over its genes and >= 3 of its fp32 top-5 genes in the int8 top-5.
INT8_MIN_COSINE = 0.99
INT8_MIN_SPEARMAN = 0.9
INT8_MIN_TOP5 = 3


@pytest.fixture(scope="module")
def model_and_cells():
    adata = synthetic_cells(n_cells=40, n_genes=120, n_types=3, seed=7)
    tok = RankValueTokenizer.fit(adata, max_length=128)
    torch.manual_seed(0)
    net = CellTransformer(
        CellTransformerConfig.from_name("test", vocab_size=tok.vocab_size, max_length=128)
    )
    with (
        torch.no_grad()
    ):  # weights larger than the init, so that cells and deletions differ clearly
        for p in net.parameters():
            p.mul_(4.0)
    net.eval()
    return CellModel(net, tok), adata


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_int8_accuracy_cost(model_and_cells):
    from lifelm.tasks.cells.perturb import scan_cells

    cm, adata = model_and_cells
    cells = cm.tokenizer.encode(adata)
    ref = embed_tokens(cm, cells, progress=False)
    q = embed_tokens(cm, cells, progress=False, techniques=CpuTechniques(quantize="int8"))
    assert not np.array_equal(ref, q)  # the technique ran
    assert _cos(ref, q).min() >= INT8_MIN_COSINE
    # the original network is untouched (quantisation works on a copy)
    assert isinstance(cm.trunk.blocks[0].attn.qkv, torch.nn.Linear)
    one = cells.subset(np.array([0]))
    fp = scan_cells(cm, one, progress=False).shift
    i8 = scan_cells(CellModel(quantize_int8(cm.trunk), cm.tokenizer), one, progress=False).shift
    rho = spearmanr(fp, i8).statistic
    top = len(set(np.argsort(-fp)[:5]) & set(np.argsort(-i8)[:5]))
    assert rho >= INT8_MIN_SPEARMAN, rho
    assert top >= INT8_MIN_TOP5, top


def test_bf16_used_or_skipped_with_message(model_and_cells, monkeypatch):
    cm, adata = model_and_cells
    plain = embed(adata, cm, device="cpu", copy=True).obsm["X_lifelm"]
    ok, _ = cpu_techniques.cpu_bf16_support()
    if ok:
        res = embed(adata, cm, device="cpu", copy=True, techniques=CpuTechniques(precision="bf16"))
        assert res.uns["lifelm"]["embed"]["techniques"]["precision"] == "bf16"
        emb = res.obsm["X_lifelm"]
        assert not np.array_equal(emb, plain)
        assert _cos(plain, emb).min() >= 0.99
    monkeypatch.setattr(cpu_techniques, "cpu_bf16_support", lambda: (False, "no avx512_bf16"))
    res = embed(adata, cm, device="cpu", copy=True, techniques=CpuTechniques(precision="bf16"))
    info = res.uns["lifelm"]["embed"]["techniques"]
    assert info["precision"] == "fp32"
    assert "bf16 skipped" in info["notes"][0]
    np.testing.assert_array_equal(res.obsm["X_lifelm"], plain)


def test_two_workers_equal_one_process(model_and_cells):
    cm, adata = model_and_cells
    cells = cm.tokenizer.encode(adata)
    plain = embed_tokens(cm, cells, batch_size=8, progress=False)
    two = embed_tokens(cm, cells, batch_size=8, progress=False, techniques=CpuTechniques(jobs=2))
    assert not np.isnan(two).any()
    np.testing.assert_allclose(two, plain, atol=1e-6, rtol=0)


def test_compile_matches_eager_and_falls_back(model_and_cells, monkeypatch, caplog):
    # the graph capture (dynamo + AOT autograd) without C++ code generation, which takes minutes
    # on a loaded 2-core machine; benchmarks/cpu_techniques.py runs the default inductor backend
    cm, adata = model_and_cells
    cells = cm.tokenizer.encode(adata).subset(np.arange(8))
    plain = embed_tokens(cm, cells, batch_size=8, progress=False)
    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda fn, **kw: real_compile(fn, backend="aot_eager", **kw)
    )
    comp = embed_tokens(
        cm, cells, batch_size=8, progress=False, techniques=CpuTechniques(compile=True)
    )
    np.testing.assert_allclose(comp, plain, atol=1e-5, rtol=0)

    def broken(fn, **kw):
        def run(*a):
            raise RuntimeError("no C compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level("WARNING", logger="lifelm"):
        again = embed_tokens(
            cm, cells, batch_size=8, progress=False, techniques=CpuTechniques(compile=True)
        )
    np.testing.assert_array_equal(again, plain)
    assert "torch.compile failed" in caplog.text


def test_bad_requests_are_refused():
    with pytest.raises(InputError, match="exclude"):
        CpuTechniques(quantize="int8", precision="bf16")
    with pytest.raises(InputError, match="jobs"):
        CpuTechniques(jobs=0)
    with pytest.raises(InputError, match="cores"):
        cpu_techniques.resolve(CpuTechniques(jobs=10_000), torch.device("cpu"))
