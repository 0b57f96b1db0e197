"""What every ``modmerge`` command shares: the ``main`` group, the one-line error wrapper, the
``--cache`` option and progress bars.

Every :class:`~modmerge.errors.ModmergeError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from modmerge.errors import ModmergeError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)


def friendly(fn: F) -> F:
    """Turn library errors into one line and a non-zero exit (no traceback for user mistakes)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModmergeError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@click.group()
@click.version_option(package_name="modmerge")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """modmerge: fine-grained model merging (MERGE) from the command line."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


CACHE_OPTION = click.option(
    "--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Cache directory (default: $MODMERGE_CACHE or the user cache dir).",
)


def task_progress(*, transient: bool = False) -> Progress:
    """A progress bar on stderr; a ``transient`` one is cleared when done (as ``merge``'s is)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
    )
