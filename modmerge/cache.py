"""Where modmerge keeps what it builds outside git, and how it fingerprints files.

Zoos, downloaded-from-wheel assets, benchmark checkpoints and statistics all live under one
cache root, so ``$MODMERGE_CACHE`` moves every one of them.

>>> default_cache_root({"MODMERGE_CACHE": "/tmp/mm"})
PosixPath('/tmp/mm')
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path


def default_cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$MODMERGE_CACHE`` if set, else the user's cache directory for modmerge."""
    env = os.environ if environ is None else environ
    if env.get("MODMERGE_CACHE"):
        return Path(env["MODMERGE_CACHE"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("modmerge"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
