"""What a merge (or an export) may write over: its own earlier outputs, never someone else's
directory.

Every ``OUT_DIR`` that ``modmerge merge`` or ``modmerge export`` writes holds ``modmerge.json``
(:data:`MARKER`), written into the staging folder with the model, so it appears with the model or
not at all. ``overwrite`` replaces a directory only when that file is the directory's own regular
file and says one of :data:`WRITERS` wrote it; ``force`` replaces any directory.

>>> check_output_dir(Path("runs/notes"), overwrite=True, force=False)  # doctest: +SKIP
Traceback (most recent call last):
...
modmerge.errors.CheckpointError: runs/notes: not replaced: no modmerge merge or export wrote it (no modmerge.json); ...
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from modmerge.errors import CheckpointError
from modmerge.regular_files import read_regular

MARKER = "modmerge.json"
WRITTEN_BY = "modmerge merge"
WRITERS = (WRITTEN_BY, "modmerge export")
_MAX_MARKER_BYTES = 1 << 20


def marker_text(written_by: str = WRITTEN_BY) -> str:
    """The content of :data:`MARKER` for a model directory ``written_by`` one of :data:`WRITERS` now.

    >>> json.loads(marker_text("modmerge export"))["written_by"]
    'modmerge export'
    """
    if written_by not in WRITERS:
        raise ValueError(f"written_by must be one of {WRITERS}, got {written_by!r}")
    try:
        release = version("modmerge")
    except PackageNotFoundError:  # run from a checkout that was never installed
        release = "unknown"
    return json.dumps({"written_by": written_by, "format": 1, "modmerge_version": release}, indent=2) + "\n"


def written_by_merge(out_dir: Path) -> bool:
    """True when ``out_dir/modmerge.json`` is a regular file of ``out_dir`` saying a merge (or an
    export) wrote it."""
    try:
        data: Any = json.loads(read_regular(out_dir / MARKER, root=out_dir, max_bytes=_MAX_MARKER_BYTES))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("written_by") in WRITERS and data.get("format") == 1


def check_output_dir(out_dir: Path, *, overwrite: bool, force: bool) -> None:
    """Raise :class:`CheckpointError` unless a merge may write ``out_dir``: it is absent or empty;
    or ``overwrite`` and an earlier merge or export wrote it; or ``force``. Not a directory: always
    refused."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir}: exists and is not a directory")
    if not out_dir.is_dir() or not any(out_dir.iterdir()) or force:
        return
    if not overwrite:
        raise CheckpointError(f"{out_dir}: directory exists and is not empty (use --overwrite to replace an "
                              "earlier merge or export, --force for any directory)")
    if not written_by_merge(out_dir):
        raise CheckpointError(f"{out_dir}: not replaced: no modmerge merge or export wrote it (no valid {MARKER}); "
                              "use --force to replace it anyway")
