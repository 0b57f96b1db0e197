"""The `modmerge` command line: thin wrappers that parse arguments and call the library.

Every :class:`~modmerge.errors.ModmergeError` becomes one line on stderr and exit status 2. The
``main`` group and what the commands share are in :mod:`modmerge.cli.common`; importing a
command module registers its commands on it, in pipeline order.
"""

from modmerge.cli import library, lora, pipeline, reuse, serve  # noqa: F401  (registers the commands)
from modmerge.cli.common import main

__all__ = ["main"]
