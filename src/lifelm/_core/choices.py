"""Checked narrowing of a free string (a CLI option's value, a JSON field) to a fixed set of choices."""

from __future__ import annotations

from typing import TypeVar

from lifelm._core.errors import InputError

T = TypeVar("T", bound=str)


def one_of(value: str, allowed: tuple[T, ...], *, what: str) -> T:
    """``value`` as one of ``allowed`` (e.g. ``typing.get_args`` of a ``Literal`` type).

    Raises
    ------
    InputError
        When ``value`` is none of them; the message names ``what`` and the choices.
    """
    for choice in allowed:
        if value == choice:
            return choice
    raise InputError(f"{what}={value!r} is not a valid choice; use one of {', '.join(allowed)}")
