"""The built wheel carries every resource file, and gene mapping works from it alone.

A non-editable install could not map gene symbols when ``package-data`` named ``*.tsv.gz``
while the GENCODE tables are ``*.csv.gz``. This test builds the wheel offline from a copy of the
source tree, unpacks it and maps genes in a subprocess that imports only the unpacked package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "src" / "lifelm" / "resources"


@pytest.mark.slow
def test_wheel_holds_every_resource_and_maps_genes(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    tree = tmp_path / "tree"  # build from a copy: nothing is written into the checkout
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, tree / name)
    shutil.copytree(
        ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    dist = tmp_path / "dist"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(dist), str(tree)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    (whl,) = dist.glob("lifelm-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    resources = sorted(p.name for p in RESOURCES.iterdir() if p.is_file())
    assert any(n.endswith(".csv.gz") for n in resources)
    missing = [n for n in resources if f"lifelm/resources/{n}" not in names]
    assert not missing, f"resource files missing from the wheel: {missing}"

    site = tmp_path / "site"
    zipfile.ZipFile(whl).extractall(site)
    code = (
        "import lifelm, pandas as pd\n"
        "from lifelm.data.cells.genes import map_genes\n"
        "print(lifelm.__file__)\n"
        "m = map_genes(pd.DataFrame(index=['CD3E', 'MS4A1', 'NOTAGENE']), species='homo_sapiens')\n"
        "print(m.n_mapped, [str(g) for g in m.ids[:2]])\n"
        "m = map_genes(pd.DataFrame(index=['Cd3e', 'Ms4a1']), species='mus_musculus')\n"
        "print(m.n_mapped)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(site)), lines[0]  # the unpacked wheel, not the checkout
    assert lines[1] == "2 ['ENSG00000198851', 'ENSG00000156738']", lines[1]
    assert lines[2] == "2"
