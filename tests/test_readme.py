"""What the README promises: two set-up commands and a Python quickstart that runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lifelm.testing.synthetic import synthetic_cells

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_first_screen_has_the_two_commands_and_make_has_them() -> None:
    first = README.split("---")[0]
    assert "make demo" in first
    assert "make test" in first
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M)
    assert re.search(r"^test:", makefile, re.M)
    assert "torch==2.13.0" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_python_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)  # type: ignore[union-attr]
    assert len(code.strip().splitlines()) <= 5
    # same code, test-sized: a tiny model and a few steps on generated cells
    code = code.replace('preset="tiny"', 'preset="test"').replace(
        "max_steps=300", "max_steps=3, progress=False"
    )
    monkeypatch.chdir(tmp_path)
    synthetic_cells(120, 60, n_types=3).write_h5ad("pbmc3k.h5ad")
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "pbmc" / "model" / "model.safetensors").is_file()
