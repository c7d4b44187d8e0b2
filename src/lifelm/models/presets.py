"""Named presets, looked up the same way for every model (gpt-fast's ``from_name``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lifelm._core.errors import InputError


class UnknownPresetError(InputError):
    """A preset name that no model config defines."""


def lookup_preset(
    presets: Mapping[str, Mapping[str, Any]], name: str, *, family: str
) -> dict[str, Any]:
    """The fields of preset ``name``, or an error listing the choices.

    >>> lookup_preset({"test": {"n_layers": 2}}, "test", family="cell model")
    {'n_layers': 2}
    """
    if name not in presets:
        raise UnknownPresetError(
            f"unknown {family} preset {name!r}; choose one of {', '.join(presets)}"
        )
    return dict(presets[name])
