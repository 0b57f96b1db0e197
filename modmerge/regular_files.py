"""Opening files that a user (or a client) named: regular files only, inside a root when given.

A path that resolves to a FIFO would block a reader forever, a device such as ``/dev/zero``
would feed it without end, and a symlink may lead out of the folder it was meant to stay in.
:func:`open_regular` refuses all three before a byte is read (FIFOs are opened non-blocking,
then checked with ``fstat``); :func:`read_regular` also bounds how much it reads.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "a.bin"
>>> _ = path.write_bytes(b"abc")
>>> read_regular(path, size=3)
b'abc'
>>> read_regular(path, size=4)
Traceback (most recent call last):
...
modmerge.regular_files.FileSizeError: 3 bytes, expected 4
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class UnsafeFileError(OSError):
    """The path is not a regular file, or it resolves outside the root it must stay in.

    The message is the reason alone (``"a FIFO"``, ``"outside /srv/lib"``); callers put the path
    and what the file was for in front of it.
    """


class FileSizeError(UnsafeFileError):
    """A regular file whose size is not the expected one, or over the limit."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


def is_within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True when ``path``, symlinks resolved, is ``root`` or lies under it (also resolved).

    >>> is_within("/srv/lib/blobs/../x", "/srv/lib"), is_within("/srv/lib/../etc", "/srv/lib")
    (True, False)
    """
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def open_regular(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file (inside ``root`` when given).

    Raises FileNotFoundError / PermissionError as ``open`` does, and :class:`UnsafeFileError`
    for a directory, FIFO, device or socket, or a path that resolves outside ``root``.

    >>> with open_regular("/etc/hostname") as f:  # doctest: +SKIP
    ...     f.read()
    """
    real = os.path.realpath(path)
    if root is not None and not Path(real).is_relative_to(os.path.realpath(root)):
        raise UnsafeFileError(f"outside {root}")
    _require_regular(os.stat(real).st_mode)  # a device is never even opened (opening some has effects)
    # O_NONBLOCK: a FIFO swapped in since the stat opens at once instead of waiting for a writer;
    # O_NOFOLLOW: nor can the name resolved above have become a symlink
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(real, flags)
    try:
        _require_regular(os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _require_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise UnsafeFileError(next((name for test, name in _KINDS if test(mode)), "not a regular file"))


def read_regular(
    path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None, size: int | None = None,
    max_bytes: int | None = None,
) -> bytes:
    """The bytes of regular file ``path`` (see :func:`open_regular`), its size checked before
    reading: exactly ``size`` bytes when given, at most ``max_bytes`` when given.

    >>> read_regular("/dev/zero", max_bytes=10)  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    modmerge.regular_files.UnsafeFileError: a character device
    """
    with open_regular(path, root=root) as f:
        actual = os.fstat(f.fileno()).st_size
        if size is not None and actual != size:
            raise FileSizeError(f"{actual} bytes, expected {size}", actual)
        if max_bytes is not None and actual > max_bytes:
            raise FileSizeError(f"{actual} bytes, over the limit of {max_bytes}", actual)
        data = f.read(actual + 1)  # one byte more shows a file that grew since fstat
    if len(data) != actual:
        raise FileSizeError(f"changed size while read ({len(data)} bytes read, {actual} at open)", len(data))
    return data
