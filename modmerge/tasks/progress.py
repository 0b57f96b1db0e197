"""The progress display zoo builders and task pools draw on, passed in explicitly (never global).

The CLI creates one :class:`rich.progress.Progress` (:func:`make_progress`) and hands it down;
library code only adds bars through :func:`progress_task`, and does nothing without a display.

Example::

    >>> with progress_task(None, "no display", 3) as advance:
    ...     advance(1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def make_progress() -> Progress:
    """A rich progress display with count, elapsed and remaining time (the caller starts it).

    >>> with make_progress() as progress:  # doctest: +SKIP
    ...     build_zoo("tiny", ZooStore.default(), progress=progress)
    """
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn())


@contextmanager
def progress_task(
    progress: Progress | None, description: str, total: int, *, transient: bool = False
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)`` for one bar; a no-op without a display. ``transient`` bars vanish
    when done (evaluations, which a search runs hundreds of times)."""
    if progress is None:
        yield lambda n=1: None
        return
    task_id = progress.add_task(description, total=total)
    try:
        yield lambda n=1: progress.advance(task_id, n)
    finally:
        if transient:
            progress.remove_task(task_id)
