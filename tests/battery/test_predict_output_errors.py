"""`predict --output` where it cannot be written: a read-only mount (EROFS, simulated in this
process), a full disk (ENOSPC), a path under a file. One line naming the file, exit 2, no
traceback, no output or temporary file left.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
from pathlib import Path

import pytest
from battery_support import assert_refused, invoke

from modmerge.library import Library

TASK = "has_color"


def _predict(library: Path, tmp_path: Path, out: Path):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"text": "the red cat near the bread", "task": TASK}) + "\n")
    config = Library.open(library).configurations[-1].id
    return invoke(["predict", library, "--config", config, "--input", inputs, "--output", out])


def _refuse_writes(monkeypatch, under: Path, code: int, *, named: bool) -> None:
    """Files opened for writing under ``under`` fail with ``code``: on open, naming the file (as
    a read-only mount does), or on write, naming none (as a full disk does)."""
    real_open = pathlib.Path.open

    def open_(self, mode="r", *args, **kwargs):
        if "w" in mode and str(self).startswith(str(under)):
            if named:
                raise OSError(code, os.strerror(code), str(self))
            file = real_open(self, mode, *args, **kwargs)
            file.close()
            raise OSError(code, os.strerror(code))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", open_)


@pytest.mark.parametrize(("code", "named", "reason"), [(errno.EROFS, True, "Read-only file system"),
                                                       (errno.ENOSPC, False, "No space left on device")],
                         ids=["read-only", "full-disk"])
def test_predict_output_that_cannot_be_written(sound_library, tmp_path, monkeypatch, code, named, reason):
    mount = tmp_path / "mount"
    mount.mkdir()
    out = mount / "predictions.jsonl"
    _refuse_writes(monkeypatch, mount, code, named=named)
    result = _predict(sound_library, tmp_path, out)
    assert result.exit_code == 2
    line = assert_refused(result, str(out), reason, leaves=[out])
    assert ".tmp-" not in line


def test_predict_output_under_a_file(sound_library, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    out = blocker / "predictions.jsonl"
    result = _predict(sound_library, tmp_path, out)
    assert result.exit_code == 2
    assert_refused(result, str(out), f"{blocker} is not a directory")
    assert blocker.read_text() == "a file"
