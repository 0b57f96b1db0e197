"""Atomic file writes: a reader, or a process killed mid-write, sees the old file or the new one,
never half of one.

Every file modmerge writes in place (run states, outputs, manifests, caches, blobs) goes through
:func:`atomic_file`: the content is written to a hidden temporary sibling, flushed to disk, and
renamed over the target; on any error the temporary file is removed and the target is untouched.
Folders (model directories, expert libraries) are built in a :func:`staging_dir` beside the
target and renamed into place; a build killed outright (SIGKILL, power loss) cannot clean up, so
the next build of the same target removes what dead builds on this host left
(:func:`remove_dead_staging`).

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "out.json"
>>> write_json(path, {"a": 1})
>>> json.loads(path.read_text())
{'a': 1}
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modmerge.errors import OutputError

logger = logging.getLogger(__name__)
# a temporary file or staging folder (.NAME.tmp-...) or a replaced folder set aside (.NAME.old-...)
_STAGED = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-[^/]+$")


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` when the block ends
    without an error and is removed when it raises. The parent folder is created if missing.
    An :class:`OSError` (a full disk, a read-only mount) is raised as one :class:`OutputError`
    line naming ``path``.

    >>> with atomic_file(Path(tempfile.mkdtemp()) / "blob.bin") as tmp:  # doctest: +SKIP
    ...     tmp.write_bytes(data)
    """
    path = Path(path)
    make_parent(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        yield tmp
        with tmp.open("rb+") as fh:  # on disk before the rename: a crash keeps a whole file
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a read-only mount: one line naming the file
        _discard(tmp)
        raise output_error(err, path) from err
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    if not os.path.lexists(tmp):
        return
    try:
        tmp.unlink()
    except OSError as err:  # cleanup while the write's own error propagates: that one is raised
        logger.warning("could not remove temporary file %s (%s)", tmp, err)


def user_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with each temporary file or staging folder in it named as the target it stands
    for: what a message should name.

    >>> user_path("/runs/.merged.tmp-12@host-0a1b2c3d/model.safetensors")
    PosixPath('/runs/merged/model.safetensors')
    """
    return Path(*(m.group("name") if (m := _STAGED.match(part)) else part for part in Path(path).parts))


def output_error(err: OSError, target: str | os.PathLike[str]) -> OutputError:
    """``err``, raised while writing ``target``, as one :class:`OutputError` line naming the file
    (``err``'s own, else ``target``, staging names undone) and the reason.

    >>> str(output_error(OSError(errno.ENOSPC, "No space left on device"), "/runs/.out.json.tmp-0a1b2c3d"))
    '/runs/out.json: cannot write (No space left on device)'
    """
    if isinstance(err, OutputError):
        return err
    name = user_path(err.filename if isinstance(err.filename, str | os.PathLike) else target)
    return OutputError(f"{name}: cannot write ({err.strerror or err})", err.errno)


def make_parent(target: str | os.PathLike[str]) -> None:
    """Create the folders ``target`` goes in; a file where one should be, or a folder that cannot
    be made, is one :class:`OutputError` line naming them."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), target.parent)
        raise OutputError(f"{target}: cannot write: {blocker} is not a directory", errno.ENOTDIR) from None
    except OSError as err:
        raise output_error(err, target) from err


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


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def staging_dir(target: str | os.PathLike[str]) -> Path:
    """Create a hidden sibling folder to build ``target`` in, named after this process and host
    (``.NAME.tmp-PID@HOST-XXXXXXXX``), so a later build can tell a dead build's leftovers from a
    live one's. The parent folder is created if missing."""
    target = Path(target)
    make_parent(target)
    path = target.with_name(f".{target.name}.tmp-{os.getpid()}@{_host()}-{secrets.token_hex(4)}")
    try:
        path.mkdir()
    except OSError as err:
        raise output_error(err, target) from err
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_dead_staging(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the :func:`staging_dir` folders of ``target`` whose process, on this host, is gone;
    returns them. Folders of live processes and of other hosts (a shared file system) stay."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.tmp-(\d+)@(.+)-[0-9a-f]{{8}}$")
    removed = []
    if not target.parent.is_dir():
        return removed
    for path in target.parent.iterdir():
        match = pattern.match(path.name)
        if match and match.group(2) == _host() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed
