"""In-silico perturbation: operators, exact batched scan, resume, first-order screen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lifelm.data.cells.datasets import pad_cells
from lifelm.data.cells.perturb_ops import (
    applicable,
    perturb_cell,
    perturb_combination,
    positions,
)
from lifelm.data.cells.tokenizer import RankValueTokenizer
from lifelm.models.cell_transformer import CellTransformer, CellTransformerConfig
from lifelm.tasks.cells import perturb as P
from lifelm.tasks.cells.model_io import CellModel, sidecar
from lifelm.tasks.cells.perturb import scan as S
from lifelm.testing.synthetic import synthetic_cells


def tiny_model(adata, *, max_length: int = 64, seed: int = 0) -> CellModel:
    """A randomly initialised 'test' preset model with a tokenizer fitted on ``adata``."""
    tok = RankValueTokenizer.fit(adata, max_length=max_length)
    torch.manual_seed(seed)
    cfg = CellTransformerConfig.from_name("test", vocab_size=tok.vocab_size, max_length=max_length)
    net = CellTransformer(cfg).eval()
    return CellModel(net, tok, sidecar(cfg, tok))


@pytest.fixture(scope="module")
def setup():
    adata = synthetic_cells(40, 80, n_types=2, seed=1)
    model = tiny_model(adata)
    cells = model.tokenizer.encode(adata)
    return adata, model, cells


# ----------------------------------------------------------------------------- operators


@pytest.mark.parametrize("kind", ["delete", "overexpress", "knockdown"])
def test_vectorised_operator_matches_one_at_a_time(kind: str) -> None:
    rng = np.random.default_rng(0)
    cell = rng.permutation(np.arange(3, 40))[:20]
    genes = cell if kind != "overexpress" else np.concatenate([cell[::3], [50, 51]])
    rows = perturb_cell(cell, genes, kind, fraction=0.4, max_genes=20)
    for i, g in enumerate(genes):
        t, s = perturb_combination(cell, [g], kind, fraction=0.4, max_genes=20)
        np.testing.assert_array_equal(rows.row(i), t)
        np.testing.assert_array_equal(rows.source[i, : rows.lengths[i]], s)
        # source lines each kept gene up with its original position
        ok = s >= 0
        np.testing.assert_array_equal(cell[s[ok]], t[ok])


def test_operator_semantics() -> None:
    cell = np.array([10, 11, 12, 13, 14])
    assert perturb_cell(cell, np.array([12]), "delete").row(0).tolist() == [10, 11, 13, 14]
    assert perturb_cell(cell, np.array([13]), "overexpress").row(0).tolist() == [13, 10, 11, 12, 14]
    full = perturb_cell(cell, np.array([99]), "overexpress", max_genes=5)
    assert full.row(0).tolist() == [99, 10, 11, 12, 13]  # context full: the last gene drops
    assert perturb_cell(cell, np.array([10]), "knockdown", fraction=1.0).row(0).tolist() == [
        11,
        12,
        13,
        14,
        10,
    ]
    assert perturb_cell(cell, np.array([10]), "knockdown", fraction=0.0).row(0).tolist() == list(
        cell
    )
    t, _ = perturb_combination(cell, [14, 11], "delete")
    assert t.tolist() == [10, 12, 13]
    t, s = perturb_combination(cell, [99, 12], "overexpress")
    assert t.tolist() == [99, 12, 10, 11, 13, 14]
    assert s[0] == -1
    assert positions(cell, np.array([12, 7])).tolist() == [2, -1]
    assert applicable(cell, np.array([12, 7]), "delete").tolist() == [True, False]


def test_operator_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="not expressed"):
        perturb_cell(np.array([10, 11]), np.array([12]), "delete")
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb_cell(np.array([10, 11]), np.array([10]), "explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="repeats"):
        perturb_combination(np.array([10, 11]), [10, 10], "delete")


# ----------------------------------------------------------------------------- exact scan


def _loop_reference(model: CellModel, cell: np.ndarray, kind: str, genes) -> np.ndarray:
    """One perturbation per forward pass, no batching: the faithful reference."""
    trunk = model.trunk
    with torch.no_grad():
        e0 = trunk.embed(pad_cells([cell], 10_000))[0]
        out = []
        for g in genes:
            t, _ = perturb_combination(cell, [g], kind, max_genes=trunk.config.max_length - 1)
            e = trunk.embed(pad_cells([t], 10_000))[0]
            out.append(1 - torch.cosine_similarity(e, e0, dim=0).item())
    return np.array(out)


def test_exact_scan_matches_one_perturbation_per_forward(setup) -> None:
    _, model, cells = setup
    sub = cells.subset(np.arange(2))
    res = P.scan_cells(model, sub, config=P.ScanConfig(max_tokens=4096), progress=False)
    for i in range(2):
        rows = np.flatnonzero(res.cell == i)
        assert len(rows) == len(sub[i])  # every expressed gene, nothing else
        rows = rows[:12]  # the loop reference is slow: a dozen genes per cell is enough
        ref = _loop_reference(model, sub[i], "delete", res.target_tokens()[rows])
        np.testing.assert_allclose(res.shift[rows], ref, atol=2e-6)


def test_results_do_not_depend_on_batching(setup) -> None:
    _, model, cells = setup
    sub = cells.subset(np.arange(6))
    cfg_big = P.ScanConfig(max_tokens=1_000_000, cells_per_part=6, keep_embeddings=True)
    cfg_small = P.ScanConfig(max_tokens=300, cells_per_part=2, keep_embeddings=True)
    a = P.scan_cells(model, sub, config=cfg_big, progress=False)
    b = P.scan_cells(model, sub, config=cfg_small, progress=False)
    ka = np.lexsort((a.target, a.cell))
    kb = np.lexsort((b.target, b.cell))
    np.testing.assert_array_equal(a.target[ka], b.target[kb])
    np.testing.assert_allclose(a.shift[ka], b.shift[kb], atol=1e-6)
    np.testing.assert_allclose(a.perturbed[ka], b.perturbed[kb], atol=1e-5)


def test_overexpression_and_combinations(setup) -> None:
    _, model, cells = setup
    sub = cells.subset(np.arange(2))
    g = [int(sub[0][5]), int(sub[0][-1]), 3]
    targets = [(g[0],), (g[2],), (g[0], g[1])]
    res = P.scan_cells(model, sub, targets, config=P.ScanConfig(kind="overexpress"), progress=False)
    assert len(res.shift) == 2 * len(targets)  # overexpression applies to every cell
    assert (res.shift[res.target == 0] > 0).all()
    with pytest.raises(ValueError, match="explicit gene list"):
        P.scan_cells(model, sub, config=P.ScanConfig(kind="overexpress"), progress=False)


def test_gene_shifts_line_up_with_original_genes(setup) -> None:
    _, model, cells = setup
    sub = cells.subset(np.arange(2))
    # knock-down by fraction 0 changes nothing: every gene's shift must be ~0
    res = P.scan_cells(
        model,
        sub,
        config=P.ScanConfig(kind="knockdown", fraction=0.0, gene_shifts=True),
        progress=False,
    )
    assert res.gene_shift is not None
    assert len(res.gene_shift) > 0
    assert np.abs(res.gene_shift.astype(np.float32)).max() < 1e-3
    res = P.scan_cells(model, sub, config=P.ScanConfig(gene_shifts=True), progress=False)
    r0 = slice(res.gs_offsets[0], res.gs_offsets[1])
    assert len(res.affected[r0]) == len(sub[int(res.cell[0])]) - 1  # all but the deleted gene
    assert res.target_tokens()[0] not in res.affected[r0]
    table = P.responders(res, model, int(res.target[0]))
    assert len(table) > 0
    assert (table["mean_shift"] >= 0).all()


def test_resume_skips_finished_cells(setup, tmp_path: Path, monkeypatch) -> None:
    _, model, cells = setup
    sub = cells.subset(np.arange(6))
    cfg = P.ScanConfig(cells_per_part=2)
    full = P.scan_cells(model, sub, config=cfg, progress=False)
    calls = {"n": 0}
    real = S._scan_group

    def dying(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kw)

    monkeypatch.setattr(S, "_scan_group", dying)
    with pytest.raises(KeyboardInterrupt):
        P.scan_cells(model, sub, config=cfg, out_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("part-*.npz"))) == 1
    seen: list[list[int]] = []

    def counting(plan, group):
        seen.append(list(group))
        return real(plan, group)

    monkeypatch.setattr(S, "_scan_group", counting)
    res = P.scan_cells(model, sub, config=cfg, out_dir=tmp_path, progress=False)
    assert sum(len(g) for g in seen) == 4  # the 2 finished cells were not recomputed
    ka, kb = np.lexsort((full.target, full.cell)), np.lexsort((res.target, res.cell))
    np.testing.assert_allclose(full.shift[ka], res.shift[kb], atol=1e-6)
    with pytest.raises(ValueError, match="different scan"):
        P.scan_cells(
            model, sub, config=P.ScanConfig(kind="knockdown"), out_dir=tmp_path, progress=False
        )


def test_scan_folder_is_locked_and_refuses_other_cells(setup, tmp_path: Path) -> None:
    from lifelm._core.runfolder import FolderLockedError, lock_folder

    _, model, cells = setup
    sub = cells.subset(np.arange(3))
    cfg = P.ScanConfig(cells_per_part=2)
    with lock_folder(tmp_path), pytest.raises(FolderLockedError, match="another LifeLM process"):
        P.scan_cells(model, sub, config=cfg, out_dir=tmp_path, progress=False)
    first = P.scan_cells(model, sub, config=cfg, out_dir=tmp_path, progress=False)
    again = P.scan_cells(model, sub, config=cfg, out_dir=tmp_path, progress=False)  # same inputs
    assert again.info["rows_computed"] == 0
    np.testing.assert_array_equal(first.shift, again.shift)
    with pytest.raises(P.ScanFolderMismatchError, match="cells_sha256"):
        P.scan_cells(
            model, cells.subset(np.arange(1, 4)), config=cfg, out_dir=tmp_path, progress=False
        )


# ----------------------------------------------------------------------------- screen


def test_gated_embedding_equals_embed_at_gate_one(setup) -> None:
    _, model, cells = setup
    ids = pad_cells([cells[0], cells[1]], 64)
    with torch.no_grad():
        a = model.trunk.embed(ids)
        b = model.trunk.embed(ids, gate=torch.ones(ids.shape))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_screen_agrees_with_exact_and_fast_scan_recovers_top(setup) -> None:
    _, model, cells = setup
    sub = cells.subset(np.arange(4))
    exact = P.scan_cells(model, sub, progress=False)
    est = P.screen_deletions(model, sub, n_directions=31, progress=False)
    from scipy.stats import spearmanr

    tok = exact.target_tokens()
    rhos = []
    for i in range(4):
        rows = np.flatnonzero(exact.cell == i)
        order = {t: j for j, t in enumerate(sub[i].tolist())}
        screen = est[i][[order[t] for t in tok[rows]]]
        rhos.append(spearmanr(screen, exact.shift[rows]).statistic)
    assert np.mean(rhos) > 0.5, rhos  # first order ranks deletions like the exact scan
    rec = P.topk_recovery(exact, est, sub, k=5, top=20)
    assert rec >= 0.5
    fast, _ = P.fast_scan(model, sub, top=10, progress=False)
    assert all((fast.cell == i).sum() == min(10, len(sub[i])) for i in range(4))
    # the fast path's rows are exact values
    key = {(c, t): s for c, t, s in zip(exact.cell, tok, exact.shift, strict=True)}
    for c, t, s in zip(fast.cell, fast.target_tokens(), fast.shift, strict=True):
        assert abs(key[(c, t)] - s) < 1e-6


def test_perturb_writes_anndata_keys(setup) -> None:
    adata, model, _ = setup
    sym = P.gene_names(model, np.array([5]))[1][0]
    out = P.perturb(
        adata[:5].copy(),
        model,
        genes=[sym],
        kind="overexpress",
        device="cpu",
        copy=True,
        progress=False,
    )
    table = out.uns["lifelm_perturb"]["genes"]
    assert table["gene"].tolist() == [sym]
    assert table["n_cells"].iloc[0] == 5
    assert np.isfinite(out.obs["lifelm_perturb_max_shift"]).all()
    meta = out.uns["lifelm"]["perturb"]
    assert meta["tokenizer_sha256"] == model.tokenizer.hash()
    assert (meta["method"], meta["n_cells"]) == ("exact", 5)
    assert '"overexpress"' in meta["settings"]
    with pytest.raises(KeyError, match="not in the model vocabulary"):
        P.resolve_genes(model, ["NOT_A_GENE"])


def test_perturb_screen_method_recomputes_top_candidates_exactly(setup) -> None:
    adata, model, _ = setup
    out = P.perturb(
        adata[:3].copy(), model, method="screen", screen="rank", top=5, device="cpu", copy=True,
        progress=False,
    )  # fmt: skip
    table = out.uns["lifelm_perturb"]["genes"]
    assert table["n_cells"].sum() == 15  # 5 candidates in each of 3 cells
    gene = P.gene_names(model, np.array([5]))[1][0]
    with pytest.raises(ValueError, match="scans every expressed gene"):
        P.perturb(adata[:3].copy(), model, genes=[gene], method="screen", device="cpu", copy=True)
