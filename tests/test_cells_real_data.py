"""Every file in shared/data/singlecell either tokenizes or fails with a message that says why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifelm.data.cells.tokenizer import RankValueTokenizer, TokenizerError
from lifelm.io.h5ad import read_h5ad

pytestmark = pytest.mark.data

# file -> None (tokenizes) or a fragment of the expected error
EXPECTED = {
    "pbmc3k/pbmc3k_seurat_counts.h5ad": None,
    "pbmc_zheng2017_sorted/zheng2017_sorted_pbmc_3500.h5ad": None,
    "kang2018/kang2018_ctrl_12k_muscat.h5ad": None,
    "kang2018/kang2018_ifnb_harmony_2k.h5ad": None,
    "kang2018/kang2018_ifnb_scgen_valid_counts.h5ad": None,
    "pbmc_ding2020_dropseq_indrops/ding2020_pbmc_dropseq_indrops_2000hvg.h5ad": None,
    "perturbation/papalexi2021_eccite_thp1_sceptre_299genes.h5ad": None,
    # K562 / glioblastoma HVGs: too few of them are expressed in PBMCs to share a PBMC vocabulary
    "perturbation/perturbench_devel_norman2019_mcfaline2023_500hvg.h5ad": "in the model vocabulary",
    "perturbation/norman2019_gears_format_50x50.h5ad": "in the model vocabulary",
    # MERFISH mouse brain: mouse genes against a human model
    "fixtures/cellxgene_mouse_brain_merfish_1k.h5ad": "mus_musculus Ensembl IDs",
}


@pytest.fixture(scope="module")
def pbmc_tokenizer(shared_data: Path) -> RankValueTokenizer:
    pbmc = read_h5ad(shared_data / "singlecell/pbmc3k/pbmc3k_seurat_counts.h5ad")
    return RankValueTokenizer.fit(pbmc[:500].copy())


def test_the_table_covers_every_shared_file(shared_data: Path) -> None:
    found = {
        str(p.relative_to(shared_data / "singlecell"))
        for p in (shared_data / "singlecell").glob("*/*.h5ad")
    }
    assert found == set(EXPECTED), found ^ set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_file_tokenizes_or_fails_clearly(
    shared_data: Path, pbmc_tokenizer: RankValueTokenizer, name: str
) -> None:
    backed = read_h5ad(shared_data / "singlecell" / name, backed=True)
    adata = backed[:400].to_memory()
    expected = EXPECTED[name]
    if expected is None:
        cells = pbmc_tokenizer.encode(adata)
        assert len(cells) == adata.n_obs
        assert cells.report["empty_cells"] < 0.05 * adata.n_obs
        assert np.median(cells.n_genes) > 20
    else:
        with pytest.raises(TokenizerError, match=expected) as err:
            pbmc_tokenizer.encode(adata)
        assert name.split("/")[-1] in str(err.value) or "AnnData" in str(err.value)
