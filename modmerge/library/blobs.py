"""Content-addressed safetensors blobs: ``blobs/<sha256 of the file bytes>.safetensors``.

A blob's name is its checksum, so equal content is stored once and any change to the bytes
(tampering, truncation, a bad disk) is caught before a tensor is decoded. Only a regular file
inside ``blobs/`` is read, and only once its size matches the manifest's: a blob that is a FIFO,
a device or a symlink leading out of the library is refused before a byte is read.

>>> h, n = write_blob(Path("lib/blobs"), {"w": torch.ones(2)})  # doctest: +SKIP
>>> read_blob(Path("lib/blobs"), h)["w"]  # doctest: +SKIP
tensor([1., 1.])
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from modmerge.atomic import write_bytes
from modmerge.library.manifest import BLOB_NAME, LibraryError
from modmerge.regular_files import FileSizeError, UnsafeFileError, open_regular, read_regular

SUFFIX = ".safetensors"


def blob_path(blobs_dir: Path, digest: str) -> Path:
    """``blobs_dir/<digest>.safetensors``; LibraryError for a name that is not a sha256 hex digest."""
    if not BLOB_NAME.fullmatch(digest):
        raise LibraryError(f"{blobs_dir}: blob name {digest[:80]!r} is not a sha256 hex digest")
    return Path(blobs_dir) / f"{digest}{SUFFIX}"


def write_blob(blobs_dir: Path, state: Mapping[str, torch.Tensor]) -> tuple[str, int]:
    """Store ``state`` as a blob (once: an existing blob of the same hash is kept); -> (hash, bytes).

    No metadata goes into the file, so the hash depends on the tensors alone: the same module
    built twice, or by two configurations, is the same blob.

    >>> write_blob(tmp_path, {"w": torch.zeros(3)})  # doctest: +SKIP
    ('5d1c...', 88)
    """
    data = save({k: v.detach().contiguous().cpu() for k, v in state.items()})
    digest = hashlib.sha256(data).hexdigest()
    final = blob_path(blobs_dir, digest)
    if not final.exists():
        write_bytes(final, data)  # a crash never leaves a partial file under a valid-looking name
    return digest, len(data)


def read_blob(
    blobs_dir: Path, digest: str, *, size: int | None = None, verified: set[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors of blob ``digest``, its sha256 checked first (skipped if ``digest`` is in
    ``verified``, which the check then updates). ``size`` (the manifest's) is checked before
    anything is read. LibraryError names a missing, special, wrongly sized or corrupt blob.

    >>> read_blob(Path("lib/blobs"), "5d1c...", size=88, verified=set())  # doctest: +SKIP
    """
    path = blob_path(blobs_dir, digest)
    try:
        data = read_regular(path, root=blobs_dir, size=size)
    except FileSizeError as err:
        raise LibraryError(_wrong_size(path, err.size, size)) from None
    except UnsafeFileError as err:
        raise LibraryError(f"{path}: blob is not a regular file inside the library ({err})") from None
    except FileNotFoundError:
        raise LibraryError(f"{path}: blob is missing") from None
    except OSError as err:
        raise LibraryError(f"{path}: blob cannot be read ({err.strerror})") from None
    if verified is None or digest not in verified:
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise LibraryError(f"{path}: blob is corrupt (sha256 {actual[:12]}..., {len(data)} bytes): tampered or truncated")
        if verified is not None:
            verified.add(digest)
    try:
        return load(data)
    except (SafetensorError, ValueError) as err:
        raise LibraryError(f"{path}: blob is not a safetensors file ({str(err).splitlines()[0]})") from None


def check_blob(blobs_dir: Path, digest: str, size: int | None = None) -> str | None:
    """One line describing what is wrong with blob ``digest`` (missing, truncated, tampered), or None.

    >>> check_blob(Path("lib/blobs"), "5d1c...", 88)  # doctest: +SKIP
    """
    if not BLOB_NAME.fullmatch(digest):
        return f"{blobs_dir}: blob name {digest[:80]!r} is not a sha256 hex digest"
    path = blob_path(blobs_dir, digest)
    digest_now = hashlib.sha256()
    try:
        with open_regular(path, root=blobs_dir) as f:
            actual_size = os.fstat(f.fileno()).st_size
            if size is not None and actual_size != size:
                return _wrong_size(path, actual_size, size)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest_now.update(chunk)
    except UnsafeFileError as err:
        return f"{path}: blob is not a regular file inside the library ({err})"
    except FileNotFoundError:
        return f"{path}: blob is missing"
    except OSError as err:
        return f"{path}: blob cannot be read ({err.strerror})"
    if digest_now.hexdigest() != digest:
        return f"{path}: blob is tampered (sha256 {digest_now.hexdigest()[:12]}... does not match its name)"
    return None


def _wrong_size(path: Path, actual: int, expected: int | None) -> str:
    return f"{path}: blob is truncated or padded ({actual} bytes, manifest says {expected})"
