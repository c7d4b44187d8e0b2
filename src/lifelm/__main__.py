"""``python -m lifelm`` is the ``lifelm`` command (useful under ``torchrun -m``)."""

from __future__ import annotations

from lifelm.cli import main

main()
