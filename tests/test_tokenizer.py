"""Rank-value tokenizer: checked against a per-cell reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from lifelm.data.cells.genes import GeneMappingError
from lifelm.data.cells.tokenizer import (
    N_SPECIAL,
    RankValueTokenizer,
    TokenizerError,
    _segment_medians,
)
from lifelm.io.h5ad import read_h5ad
from lifelm.testing.synthetic import synthetic_cells


def _reference_tokens(
    counts: np.ndarray, genes: list[str], tok: RankValueTokenizer, cell: int
) -> list[int]:
    """Geneformer's per-cell recipe, written plainly: normalise, divide by medians, sort."""
    row = counts[cell].astype(float)
    norm = row / row.sum() * tok.target_sum
    pairs = []
    for j, g in enumerate(genes):
        if row[j] > 0 and g in tok.vocab:
            pairs.append((-(norm[j] / tok.medians[tok.vocab[g]]), tok.vocab[g]))
    pairs.sort()
    return [N_SPECIAL + v for _, v in pairs][: tok.max_length - 1]


def _values(
    tokens: list[int], counts: np.ndarray, genes: list[str], tok: RankValueTokenizer
) -> np.ndarray:
    col = {g: j for j, g in enumerate(genes)}
    row = counts.astype(float)
    norm = row / row.sum() * tok.target_sum
    return np.array(
        [norm[col[tok.genes[t - N_SPECIAL]]] / tok.medians[t - N_SPECIAL] for t in tokens]
    )


def test_medians_are_the_nonzero_medians_of_normalised_counts() -> None:
    a = synthetic_cells(200, 50, seed=1)
    tok = RankValueTokenizer.fit(a)
    x = a.X.toarray().astype(float)
    norm = x / x.sum(1, keepdims=True) * 1e4
    for g in range(0, 50, 7):
        col = norm[:, g]
        j = tok.vocab[a.var_names[g]]
        assert tok.medians[j] == pytest.approx(np.median(col[col > 0]), rel=1e-9)


def test_segment_median_even_and_odd_groups() -> None:
    cols = np.array([0, 0, 0, 1, 1, 2])
    vals = np.array([3.0, 1.0, 2.0, 10.0, 20.0, 5.0])
    np.testing.assert_allclose(_segment_medians(cols, vals, 4), [2.0, 15.0, 5.0, 0.0])


def test_tokens_match_the_per_cell_reference() -> None:
    a = synthetic_cells(60, 120, seed=2)
    tok = RankValueTokenizer.fit(a, max_length=40)
    cells = tok.encode(a)
    x = a.X.toarray()
    genes = list(a.var_names)
    for i in range(0, 60, 5):
        ref = _reference_tokens(x, genes, tok, i)
        got = cells[i].tolist()
        # same ranked values (genes whose values agree to float32 precision may swap, nothing else)
        np.testing.assert_allclose(
            _values(got, x[i], genes, tok), _values(ref, x[i], genes, tok), rtol=1e-6
        )
        assert sorted(got[:-1]) == sorted(ref[:-1]) or got == ref
    assert cells.report["truncated_cells"] == int(((x > 0).sum(1) > 39).sum())
    np.testing.assert_array_equal(cells.n_genes, (x > 0).sum(1))


def test_backed_and_chunked_encoding_equal_in_memory(tmp_path) -> None:
    a = synthetic_cells(150, 80, seed=3)
    tok = RankValueTokenizer.fit(a)
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    mem = tok.encode(a)
    backed = tok.encode(read_h5ad(path, backed=True), chunk=37)
    np.testing.assert_array_equal(mem.tokens, backed.tokens)
    np.testing.assert_array_equal(mem.offsets, backed.offsets)


def test_duplicated_genes_are_summed_before_ranking() -> None:
    a = synthetic_cells(40, 30, seed=4)
    tok = RankValueTokenizer.fit(a)
    dup = a[:, [0, 0, *range(1, 30)]].copy()
    dup.var_names = [dup.var["gene_symbol"].iloc[0] + ".1", *dup.var_names[1:]]
    dup.X = sp.csr_matrix(dup.X.toarray() * np.r_[[1, 1], np.full(29, 2)])  # split gene 0 in halves
    double = a.copy()
    double.X = sp.csr_matrix(a.X.toarray() * 2)
    np.testing.assert_array_equal(tok.encode(dup).tokens, tok.encode(double).tokens)


def test_round_trip_and_hash_guard() -> None:
    tok = RankValueTokenizer.fit(synthetic_cells(80, 40, seed=5))
    d = tok.to_dict()
    again = RankValueTokenizer.from_dict(d)
    assert again.hash() == tok.hash()
    d["medians"][0] *= 2
    with pytest.raises(TokenizerError, match="hash mismatch"):
        RankValueTokenizer.from_dict(d)


def test_low_vocabulary_coverage_is_an_error() -> None:
    a = synthetic_cells(80, 100, seed=6)
    tok = RankValueTokenizer.fit(a[:, :40].copy())
    with pytest.raises(
        TokenizerError, match="only 40% of its 100 genes are in the model vocabulary"
    ):
        tok.encode(a)


def test_unmappable_genes_are_an_error_with_the_fix() -> None:
    a = synthetic_cells(20, 30, seed=7)
    a.var_names = [f"gene{i}" for i in range(30)]
    a.var = a.var.drop(columns="gene_symbol")
    with pytest.raises(GeneMappingError, match="put Ensembl IDs in var"):
        RankValueTokenizer.fit(a)


def test_empty_cells_are_counted_not_dropped() -> None:
    a = synthetic_cells(30, 40, seed=8)
    x = a.X.toarray()
    x[3] = 0
    a.X = sp.csr_matrix(x)
    cells = RankValueTokenizer.fit(a).encode(a)
    assert len(cells) == 30
    assert cells.report["empty_cells"] == 1
    assert len(cells[3]) == 0


def test_subset_keeps_cells_in_order() -> None:
    a = synthetic_cells(25, 30, seed=9)
    cells = RankValueTokenizer.fit(a).encode(a)
    sub = cells.subset(np.array([4, 1, 20]))
    for k, i in enumerate([4, 1, 20]):
        np.testing.assert_array_equal(sub[k], cells[i])


def test_species_mismatch_is_named() -> None:
    human = synthetic_cells(40, 60, seed=10)
    mouse = synthetic_cells(40, 60, seed=10, species="mus_musculus")
    tok = RankValueTokenizer.fit(human)
    with pytest.raises(
        TokenizerError, match="mus_musculus Ensembl IDs but the model was trained on homo_sapiens"
    ):
        tok.encode(mouse)
