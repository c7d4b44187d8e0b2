"""CPU techniques in the in-silico perturbation path (``perturb``, ``targets``), on a tiny random
Geneformer-format model: the same switches as ``embed`` (int8, bf16, pinned workers), each checked
against the plain fp32 scan.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from lifelm.tasks.cells import cpu_techniques
from lifelm.tasks.cells.cpu_techniques import CpuTechniques
from lifelm.tasks.cells.perturb import ScanConfig, ScanFolderMismatchError, scan_cells
from lifelm.testing.synthetic import synthetic_cells

pytest.importorskip("transformers")
from tests.test_geneformer_import import write_geneformer

# Stated tolerances of the deletion scan against fp32 (measured on this model: int8 max |shift
# difference| 6 % of the largest shift, Spearman 0.997 over all rows, >= 0.955 in every cell;
# bf16 0.9 %, 0.9999, >= 0.998):
TOL = {
    # technique: (max |shift - fp32 shift| / max fp32 shift, Spearman all rows, Spearman per cell)
    "int8": (0.10, 0.98, 0.90),
    "bf16": (0.03, 0.995, 0.98),
}


@pytest.fixture(scope="module")
def gf_model(tmp_path_factory):
    from lifelm.tasks.cells.model_io import load_cell_model

    adata = synthetic_cells(n_cells=6, n_genes=60, n_types=3, mean_library=400.0, seed=3)
    folder = tmp_path_factory.mktemp("gf_v1")
    write_geneformer(folder, adata, version="V1", max_position=64)
    cm = load_cell_model(folder, dictionaries=folder)
    cells = cm.tokenizer.encode(adata)
    fp32 = scan_cells(cm, cells, progress=False)
    return cm, cells, fp32, adata, folder


@pytest.mark.parametrize("name", ["int8", "bf16"])
def test_deletion_shifts_within_tolerance_of_fp32(gf_model, name):
    cm, cells, fp, _, _ = gf_model
    tech = CpuTechniques(quantize="int8") if name == "int8" else CpuTechniques(precision="bf16")
    if name == "bf16" and not cpu_techniques.cpu_bf16_support()[0]:
        pytest.skip("this CPU has no native bf16 (the skip path is tested below)")
    res = scan_cells(cm, cells, config=ScanConfig(techniques=tech), progress=False)
    assert res.info["techniques"]["quantize" if name == "int8" else "precision"] == name
    np.testing.assert_array_equal(res.cell, fp.cell)
    np.testing.assert_array_equal(res.target, fp.target)
    assert not np.array_equal(res.shift, fp.shift)  # the technique ran
    max_rel, min_rho, min_cell_rho = TOL[name]
    assert np.abs(res.shift - fp.shift).max() <= max_rel * fp.shift.max()
    assert spearmanr(res.shift, fp.shift).statistic >= min_rho
    for c in np.unique(fp.cell):
        rho = spearmanr(res.shift[res.cell == c], fp.shift[fp.cell == c]).statistic
        assert rho >= min_cell_rho, (c, rho)
    # the model itself is untouched: a plain scan afterwards is fp32 again (1e-6: batch-mates)
    again = scan_cells(cm, cells.subset(np.array([0])), progress=False)
    np.testing.assert_allclose(again.shift, fp.shift[fp.cell == 0], atol=1e-6, rtol=0)


def test_bf16_skipped_with_a_note_where_absent(gf_model, monkeypatch):
    cm, cells, fp, _, _ = gf_model
    monkeypatch.setattr(cpu_techniques, "cpu_bf16_support", lambda: (False, "no avx512_bf16"))
    res = scan_cells(
        cm, cells, config=ScanConfig(techniques=CpuTechniques(precision="bf16")), progress=False
    )
    assert res.info["techniques"]["precision"] == "fp32"
    assert "bf16 skipped" in res.info["techniques"]["notes"][0]
    np.testing.assert_array_equal(res.shift, fp.shift)


def test_worker_path_equals_one_process_and_resume_checks_int8(gf_model, tmp_path, monkeypatch):
    """``-j N``: the scan's groups go to pinned workers through ``run_pinned`` (the runner that
    embedding's workers use; its processes are tested in test_cpu_techniques.py). Here each
    "worker" runs in this process on a pickled copy of the plan, as a spawned one receives it."""
    import pickle

    from lifelm.tasks.cells.perturb import scan as scan_mod

    cm, cells, fp, _, _ = gf_model
    seen = []

    def in_process(setup, shared, items, jobs):
        seen.append((jobs, [list(g) for g in items]))
        work = setup(pickle.loads(pickle.dumps(shared)))  # what a spawned worker gets
        for k in reversed(range(len(items))):  # workers finish out of order
            yield k, work(items[k])

    monkeypatch.setattr(scan_mod, "run_pinned", in_process)
    monkeypatch.setattr(cpu_techniques, "_allowed_cores", lambda: [0, 1])
    cfg = ScanConfig(techniques=CpuTechniques(jobs=2))
    res = scan_cells(cm, cells, config=cfg, out_dir=tmp_path / "scan", progress=False)
    assert seen[0][0] == 2
    assert len(seen[0][1]) == 2  # 6 cells: two groups of 3 for 2 workers
    assert len(list((tmp_path / "scan").glob("part-*.npz"))) == 2
    key = np.lexsort((res.target, res.cell))
    ref = np.lexsort((fp.target, fp.cell))
    np.testing.assert_array_equal(res.cell[key], fp.cell[ref])
    np.testing.assert_array_equal(res.target[key], fp.target[ref])
    np.testing.assert_allclose(res.shift[key], fp.shift[ref], atol=1e-6, rtol=0)
    mem = scan_cells(cm, cells, config=cfg, progress=False)  # in memory: parts in group order
    np.testing.assert_allclose(np.sort(mem.shift), np.sort(fp.shift), atol=1e-6, rtol=0)
    # jobs and compile do not change the numbers, so a resume may change them; int8 does
    again = scan_cells(cm, cells, out_dir=tmp_path / "scan", progress=False)
    assert again.info["rows_computed"] == 0
    with pytest.raises(ScanFolderMismatchError, match="cpu_quantize"):
        scan_cells(
            cm,
            cells,
            config=ScanConfig(techniques=CpuTechniques(quantize="int8")),
            out_dir=tmp_path / "scan",
            progress=False,
        )


def test_cli_perturb_and_targets_take_embeds_switches(gf_model, tmp_path, capsys):
    from lifelm.cli import main

    folder = gf_model[4]
    cells = synthetic_cells(n_cells=40, n_genes=60, n_types=2, mean_library=400.0, seed=3)
    cells.obs["state"] = np.where(np.arange(40) % 2 == 0, "start", "goal")
    h5 = tmp_path / "cells.h5ad"
    cells.write_h5ad(h5)

    def run(*args: str) -> int:
        try:
            main(["cells", *args])
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    model = tmp_path / "m"
    assert run("import-model", "geneformer", str(folder), "-o", str(model)) == 0
    base = ("-m", str(model), "--device", "cpu", "--quantize", "int8")
    assert run("perturb", str(h5), "-o", str(tmp_path / "p"), "--max-cells", "3", *base) == 0
    table = (tmp_path / "p" / "perturb_genes.tsv").read_text().splitlines()
    assert len(table) > 10
    scan_manifest = json.loads((tmp_path / "p" / "scan" / "manifest.json").read_text())
    assert scan_manifest["settings"]["settings"]["cpu_quantize"] == "int8"
    targets = ("--label-key", "state", "--start", "start", "--goal", "goal", "--n-cells", "8")
    code = run("targets", str(h5), "-o", str(tmp_path / "t"), *targets, "--n-null", "3", *base)
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "t" / "targets.tsv").is_file()
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["settings"]["cpu_quantize"] == "int8"
    # int8 and bf16 exclude each other: one line, exit 2, before any work
    capsys.readouterr()
    code = run("perturb", str(h5), "-o", str(tmp_path / "q"), *base, "--precision", "bf16")
    assert code == 2
    err = capsys.readouterr().err
    assert "exclude each other" in err
    assert "Traceback" not in err
