"""The layer rules of DESIGN.md, checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lifelm"

# layer -> prefixes (inside lifelm) and third-party packages it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "_core": (
        "io",
        "data",
        "models",
        "training",
        "tasks",
        "evaluation",
        "reports",
        "cli",
        "service",
        "testing",
        "cells",
        "genomes",
    ),
    "io": (
        "data",
        "models",
        "training",
        "tasks",
        "evaluation",
        "reports",
        "cli",
        "service",
        "cells",
        "genomes",
    ),
    "data": (
        "models",
        "training",
        "tasks",
        "evaluation",
        "reports",
        "cli",
        "service",
        "cells",
        "genomes",
    ),
    "models": (
        "io",
        "data",
        "training",
        "tasks",
        "evaluation",
        "reports",
        "cli",
        "service",
        "cells",
        "genomes",
        "testing",
    ),
    "training": ("tasks", "evaluation", "reports", "cli", "service", "cells", "genomes"),
    "tasks": ("cli", "service", "evaluation", "cells", "genomes"),
    "evaluation.metrics": ("models", "training", "tasks", "cli", "service", "cells", "genomes"),
    "evaluation": ("cli", "service"),
    "reports": ("cli", "service", "training"),
    "testing": ("cli", "service"),
    "service": ("cli", "client"),
    "client": (
        "io",
        "data",
        "models",
        "training",
        "tasks",
        "evaluation",
        "reports",
        "cli",
        "service",
        "cells",
        "genomes",
    ),
    "wetware": ("evaluation", "reports", "cli", "service", "cells", "genomes"),
    "lab": ("cli", "service"),
}
FORBIDDEN_THIRD_PARTY = {"models": ("anndata", "pandas", "h5py", "scanpy")}


def _layer(module: str) -> str | None:
    parts = module.split(".")[1:]
    for n in (2, 1):
        key = ".".join(parts[:n])
        if key in FORBIDDEN:
            return key
    return None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        out.append((".".join(rel.parts).removesuffix(".__init__"), path))
    return out


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda x: str(x))
def test_no_layer_back_edges(module: str, path: Path) -> None:
    layer = _layer(module)
    if layer is None:
        return
    bad = []
    for name in _imports(path):
        if name.startswith("lifelm."):
            target = name.split(".")[1:]
            for prefix in FORBIDDEN[layer]:
                if ".".join(target[: len(prefix.split("."))]) == prefix:
                    bad.append(name)
        top = name.split(".")[0]
        if top in FORBIDDEN_THIRD_PARTY.get(layer, ()):
            bad.append(name)
    assert not bad, (
        f"{module} (layer {layer}) imports {bad}, a back-edge in DESIGN.md's layer table"
    )


def test_relative_imports_are_not_used() -> None:
    """Relative imports would hide back-edges from the walk above."""
    for module, path in _modules():
        tree = ast.parse(path.read_text())
        rel = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]
        assert not rel, f"{module} uses a relative import; write lifelm.… in full"


def test_cli_is_not_imported_by_the_library() -> None:
    for module, path in _modules():
        if module.startswith("lifelm.cli") or module == "lifelm.__main__":  # the entry point
            continue
        assert not [n for n in _imports(path) if n.startswith("lifelm.cli")], module


def test_service_is_imported_by_nothing_but_the_cli() -> None:
    """The service is an adapter: only ``lifelm serve`` (cli/serve.py) starts it."""
    for module, path in _modules():
        if module.startswith(("lifelm.service", "lifelm.cli")):
            continue
        assert not [n for n in _imports(path) if n.startswith("lifelm.service")], module


def test_walk_catches_a_back_edge(tmp_path: Path) -> None:
    """The checker itself must fail on a planted back-edge (a test that cannot lose is no test)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import lifelm.models.cell_transformer\nimport anndata\n")
    names = _imports(bad)
    assert "lifelm.models.cell_transformer" in names
    assert _layer("lifelm.data.cells.tokenizer") == "data"
    assert any(n.startswith("lifelm.models") for n in names)
