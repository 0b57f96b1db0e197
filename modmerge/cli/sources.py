"""Opening task sources from the command line: a suite file, or a built benchmark zoo by name.

The core never opens a zoo itself (it reads any :class:`~modmerge.tasks.source.TaskSource`);
this is the one place, with the zoo builders, that knows benchmark zoos exist.

>>> open_source("examples/own-models/suite.yaml", cache=None).name  # doctest: +SKIP
'suite'
>>> open_source("vision", cache=None).name  # doctest: +SKIP
'vision'
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modmerge.cache import default_cache_root
from modmerge.tasks.source import TaskSource, reopen


def is_suite_path(name: str) -> bool:
    """A command's SOURCE argument names a suite file when it ends in .yaml/.yml or is a file."""
    return name.endswith((".yaml", ".yml")) or Path(name).is_file()


def open_source(name: str, cache: Path | None, *, allow_pickle: bool = False) -> TaskSource:
    """The suite file ``name``, or the built zoo called ``name`` in the cache root ``cache``."""
    root = cache or default_cache_root()
    if is_suite_path(name):
        from modmerge.tasks.suite_source import open_suite

        return open_suite(name, cache_root=root, allow_pickle=allow_pickle)
    from modmerge.zoo.store import ZooStore

    return ZooStore(root).load(name)


def reopen_source(description: Mapping[str, Any], cache: Path | None) -> TaskSource:
    """The source a run directory or library recorded (``{"suite": path}`` or ``{"zoo": name}``);
    ``cache`` overrides the zoo store a record names."""
    from modmerge.tasks.suite_source import open_suite
    from modmerge.zoo.store import ZooStore

    root = cache or default_cache_root()

    def zoo(d: Mapping[str, Any]) -> TaskSource:
        store = ZooStore(cache) if cache else (ZooStore(Path(d["store"])) if d.get("store") else ZooStore(root))
        return store.load(str(d["zoo"]))

    return reopen(description, {"suite": lambda d: open_suite(d["suite"], cache_root=root), "zoo": zoo})
