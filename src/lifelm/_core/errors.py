"""The one base class for errors a user can fix.

Every error that names a file, a field and a fix derives from :class:`LifeLMError`. The CLI
prints such errors as one message and exits with status 2, without a traceback (``--debug``
shows one); anything else is a bug and is reported as an internal error.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path


class LifeLMError(Exception):
    """An error caused by the input or the environment, with a message that says how to fix it."""


class InputError(LifeLMError, ValueError):
    """Bad input data or settings (a file, a column, an option)."""


class OutputError(LifeLMError, OSError):
    """An output path that cannot be written (a folder where a file is expected, read-only, full)."""


class NumericalError(LifeLMError, ArithmeticError):
    """A result that is NaN, infinite or empty, which is refused rather than written."""


@contextlib.contextmanager
def naming(path: object) -> Iterator[None]:
    """Make every :class:`LifeLMError` raised in the block name ``path`` (the file it is about).

    Functions that take an in-memory AnnData cannot know which file it came from and say
    "the AnnData"; the command that read the file wraps the call so the message names it.

    >>> try:
    ...     with naming("cells.h5ad"):
    ...         raise InputError("the AnnData: 0 cells")
    ... except InputError as e:
    ...     print(e)
    cells.h5ad: 0 cells
    """
    try:
        yield
    except LifeLMError as e:
        msg = str(e)
        where = str(path)
        first = msg.split(": ", 1)[0]
        named = Path(first.split(":")[0])
        names_a_file = "/" in first and (named.exists() or named.parent.is_dir())
        if where not in msg and not names_a_file:  # e.g. a checkpoint error names its own file
            msg = _ANNDATA.sub("", msg, count=1)
            e.args = (f"{where}: {msg}",)
        raise


_ANNDATA = re.compile(r"^(the AnnData|AnnData \(\d+×\d+\)): ")
