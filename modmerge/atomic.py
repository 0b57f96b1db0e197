"""Atomic file writes: a reader, or a process killed mid-write, sees the old file or the new one,
never half of one.

Every file modmerge writes in place (run states, outputs, manifests, caches, blobs) goes through
:func:`atomic_file`: the content is written to a hidden temporary sibling, flushed to disk, and
renamed over the target; on any error the temporary file is removed and the target is untouched.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "out.json"
>>> write_json(path, {"a": 1})
>>> json.loads(path.read_text())
{'a': 1}
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` when the block ends
    without an error and is removed when it raises. The parent folder is created if missing.

    >>> with atomic_file(Path(tempfile.mkdtemp()) / "blob.bin") as tmp:  # doctest: +SKIP
    ...     tmp.write_bytes(data)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        yield tmp
        with tmp.open("rb+") as fh:  # on disk before the rename: a crash keeps a whole file
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """``data`` as the content of ``path``, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """``text`` (UTF-8) as the content of ``path``, atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], payload: Any, *, indent: int | None = 2) -> None:
    """``payload`` as JSON, atomically (numpy and torch scalars are written as floats)."""
    write_text(path, json.dumps(payload, indent=indent, default=float) + "\n")
