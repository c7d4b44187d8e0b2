"""Rich progress bars that stay quiet off rank 0 and when output is not a terminal in CI logs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lifelm._core.runtime import dist_env

T = TypeVar("T")


def make_progress(*, disable: bool = False) -> Progress:
    """A progress bar with a free-text field (``{task.fields[info]}``) for loss and cells/s."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=disable or not dist_env().is_main,
        transient=False,
    )


def track(
    items: Iterable[T], *, description: str, total: int | None = None, disable: bool = False
) -> Iterator[T]:
    """Iterate with a progress bar (rank 0 only)."""
    with make_progress(disable=disable) as progress:
        task = progress.add_task(description, total=total, info="")
        for item in items:
            yield item
            progress.advance(task)
