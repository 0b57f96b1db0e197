"""Content-addressed safetensors blobs: ``blobs/<sha256 of the file bytes>.safetensors``.

A blob's name is its checksum, so equal content is stored once and any change to the bytes
(tampering, truncation, a bad disk) is caught before a tensor is decoded.

>>> h, n = write_blob(Path("lib/blobs"), {"w": torch.ones(2)})  # doctest: +SKIP
>>> read_blob(Path("lib/blobs"), h)["w"]  # doctest: +SKIP
tensor([1., 1.])
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from modmerge.atomic import write_bytes
from modmerge.library.manifest import LibraryError

SUFFIX = ".safetensors"


def blob_path(blobs_dir: Path, digest: str) -> Path:
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


def read_blob(blobs_dir: Path, digest: str, *, verified: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of blob ``digest``, its sha256 checked first (skipped if ``digest`` is in
    ``verified``, which the check then updates). LibraryError names a missing or corrupt blob.

    >>> read_blob(Path("lib/blobs"), "5d1c...", verified=set())  # doctest: +SKIP
    """
    path = blob_path(blobs_dir, digest)
    try:
        data = path.read_bytes()
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
    path = blob_path(blobs_dir, digest)
    if not path.is_file():
        return f"{path}: blob is missing"
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"{path}: blob is truncated or padded ({actual_size} bytes, manifest says {size})"
    digest_now = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest_now.update(chunk)
    if digest_now.hexdigest() != digest:
        return f"{path}: blob is tampered (sha256 {digest_now.hexdigest()[:12]}... does not match its name)"
    return None
