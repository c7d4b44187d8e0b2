"""Reading counts and mapping gene identities: the errors a user meets first."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lifelm.data.cells.counts import NotCountsError, find_counts
from lifelm.data.cells.genes import GeneMappingError, gene_table, map_genes
from lifelm.io.h5ad import H5adError, read_h5ad
from lifelm.testing.synthetic import synthetic_cells


def test_counts_found_in_x_then_layer_then_raw() -> None:
    a = synthetic_cells(50, 80)
    assert find_counts(a).name == "X"
    logged = a.copy()
    logged.layers["counts"] = logged.X.copy()
    logged.X = sp.csr_matrix(np.log1p(logged.X.toarray() / 3.0))
    assert find_counts(logged).name == "layers['counts']"
    raw_only = ad.AnnData(X=logged.X.copy(), var=a.var.copy())
    raw_only.raw = a.copy()
    assert find_counts(raw_only).name == "raw.X"


def test_log_data_is_refused_with_the_layer_named_and_the_fix() -> None:
    a = synthetic_cells(50, 80)
    a.X = sp.csr_matrix(np.log1p(a.X.toarray() / 7.0))
    with pytest.raises(NotCountsError) as err:
        find_counts(a)
    msg = str(err.value)
    assert "X looks log-normalized" in msg
    assert "layers['counts']" in msg
    assert "--layer counts" in msg


def test_negative_values_are_reported_as_scaled_data() -> None:
    a = synthetic_cells(30, 40)
    a.X = sp.csr_matrix(a.X.toarray() - 1.0)
    with pytest.raises(NotCountsError, match="negative values"):
        find_counts(a, "X")


def test_missing_layer_lists_what_exists() -> None:
    with pytest.raises(NotCountsError, match="layer 'counts' not found; available: X"):
        find_counts(synthetic_cells(10, 20), "counts")


def test_read_h5ad_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(H5adError, match="no such file"):
        read_h5ad(tmp_path / "missing.h5ad")
    bad = tmp_path / "cells.h5ad"
    bad.write_text("gene,cell\n")
    with pytest.raises(H5adError, match=r"cells\.h5ad: not an HDF5"):
        read_h5ad(bad)


def test_backed_reading_matches_memory(tmp_path) -> None:
    a = synthetic_cells(120, 60)
    path = tmp_path / "a.h5ad"
    a.write_h5ad(path)
    b = read_h5ad(path, backed=True)
    src = find_counts(b)
    assert src.path == str(path)
    got = sp.vstack([blk for _, blk in src.chunks(chunk=50)])
    np.testing.assert_array_equal(got.toarray(), a.X.toarray())


def test_symbols_map_through_gencode_with_duplicates_and_unmapped() -> None:
    table = gene_table("homo_sapiens")
    assert table.version == "GENCODE v48"
    var = pd.DataFrame(index=["CD3E", "MS4A1", "CD3E.1", "NOT_A_GENE", "LYZ"])
    m = map_genes(var)
    assert m.ids[0] == table.symbol_to_id["CD3E"]
    assert m.ids[2] == m.ids[0]  # Seurat make.unique suffix undone → duplicate
    assert m.duplicated == {m.ids[0]: ["CD3E", "CD3E.1"]}
    assert m.unmapped == ["NOT_A_GENE"]
    assert m.n_mapped == 4
    assert "1 unmapped" in m.summary()


def test_ensembl_versions_are_stripped_and_species_detected() -> None:
    var = pd.DataFrame(index=["ENSMUSG00000051951.5", "ENSMUSG00000025900"])
    m = map_genes(var)
    assert m.species == "mus_musculus"
    assert list(m.ids) == ["ENSMUSG00000051951", "ENSMUSG00000025900"]


def test_id_column_wins_and_symbols_fill_gaps() -> None:
    var = pd.DataFrame(
        {"gene_ids": ["ENSG00000198851", np.nan, "ENSG00000090382"]}, index=["CD3E", "MS4A1", "LYZ"]
    )
    m = map_genes(var)
    assert m.source.startswith("gene_ids")
    assert m.ids[1] == gene_table().symbol_to_id["MS4A1"]


def test_unknown_species_table_is_a_clear_error() -> None:
    with pytest.raises(GeneMappingError, match="no GENCODE table"):
        gene_table("danio_rerio")  # type: ignore[arg-type]
