"""The scverse call-shape convention, checked over the public API (as scanpy's own test does).

Every public function that takes an AnnData takes it first; at most three positional
parameters; ``copy`` and ``key_added`` keyword-only; no boolean parameter that can be given
positionally. Classes and re-exported readers are skipped.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

import lifelm.cells

POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _public_functions(module) -> list[tuple[str, Callable]]:
    return [
        (name, obj) for name in module.__all__ if inspect.isfunction(obj := getattr(module, name))
    ]


FUNCTIONS = _public_functions(lifelm.cells)


def test_the_public_api_has_functions_to_check() -> None:
    assert len(FUNCTIONS) >= 5


@pytest.mark.parametrize(("name", "fn"), FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_call_shape(name: str, fn: Callable) -> None:
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in POSITIONAL]
    assert len(positional) <= 3, f"{name}: {len(positional)} positional parameters (at most 3)"
    for p in params:
        if p.name in ("copy", "key_added", "inplace"):
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, (
                f"{name}: {p.name} must be keyword-only"
            )
        if p.kind in POSITIONAL:
            is_bool = p.annotation in (bool, "bool") or isinstance(p.default, bool)
            assert not is_bool, f"{name}: boolean parameter {p.name} can be given positionally"
    takes_adata = [p for p in params if p.name == "adata"]
    if takes_adata:
        assert params[0].name == "adata", f"{name}: the AnnData must be the first parameter"


@pytest.mark.parametrize(("name", "fn"), FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_documented(name: str, fn: Callable) -> None:
    doc = inspect.getdoc(fn) or ""
    assert len(doc.splitlines()) >= 3, f"{name}: a public function needs a real docstring"
