"""The one base class for errors a user can fix.

Every error that names a file, a field and a fix derives from :class:`LifeLMError`. The CLI
prints such errors as one message and exits with status 2, without a traceback (``--debug``
shows one); anything else is a bug and is reported as an internal error.
"""

from __future__ import annotations


class LifeLMError(Exception):
    """An error caused by the input or the environment, with a message that says how to fix it."""


class InputError(LifeLMError, ValueError):
    """Bad input data or settings (a file, a column, an option)."""


class OutputError(LifeLMError, OSError):
    """An output path that cannot be written (a folder where a file is expected, read-only, full)."""


class NumericalError(LifeLMError, ArithmeticError):
    """A result that is NaN, infinite or empty, which is refused rather than written."""
