"""`merge` when the output cannot be written: a full disk (ENOSPC), a read-only mount (EROFS), an
OUT_DIR under a file. One line naming the file, exit 2, no traceback, nothing half-written.

A full disk and a read-only mount are simulated in this process: files opened for writing under
the case's folder refuse to write (ENOSPC, with no file name, as a real ``write`` gives it) or to
open (EROFS), and ``mkdir`` there fails with EROFS.
"""

from __future__ import annotations

import errno
import os
import pathlib
from pathlib import Path

import pytest
import yaml
from battery_support import assert_not_written, assert_refused, invoke


def _recipe(tmp_path: Path, bert_zoo) -> Path:
    base, tasks = bert_zoo
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"base_model": str(base), "models": [{"model": str(t)} for t in tasks],
                                    "method": "ties"}))
    return path


class _FullDisk:
    """A file opened for writing that takes ``room`` writes, then fails as a full disk does."""

    def __init__(self, file, room: int) -> None:
        self._file, self._room = file, room

    def write(self, data):
        if self._room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= 1
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def _fill_disk(monkeypatch, under: Path, *, room: int, only: str | None = None) -> None:
    real_open = pathlib.Path.open

    def open_(self, mode="r", *args, **kwargs):
        file = real_open(self, mode, *args, **kwargs)
        writing = "w" in mode and str(self).startswith(str(under)) and (only is None or only in self.name)
        return _FullDisk(file, room) if writing else file

    monkeypatch.setattr(pathlib.Path, "open", open_)


def _read_only(monkeypatch, under: Path) -> None:
    real_open, real_mkdir = pathlib.Path.open, pathlib.Path.mkdir

    def refuse(path: Path) -> None:
        if str(path).startswith(str(under)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def open_(self, mode="r", *args, **kwargs):
        if "w" in mode or "a" in mode or "+" in mode:
            refuse(self)
        return real_open(self, mode, *args, **kwargs)

    def mkdir(self, *args, **kwargs):
        if not self.is_dir():
            refuse(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", open_)
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)


@pytest.mark.parametrize(("room", "only", "culprit"), [
    (0, "model.safetensors", "model.safetensors"),  # the header does not fit
    (1, "model.safetensors", "model.safetensors"),  # the header fits, the first tensor does not
    (0, "config.json", "config.json"),
    (0, "modmerge.json", "modmerge.json"),
], ids=["weights-header", "weights-data", "config", "marker"])
def test_merge_on_a_full_disk(bert_zoo, tmp_path, monkeypatch, room, only, culprit):
    recipe = _recipe(tmp_path, bert_zoo)
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "merged"
    _fill_disk(monkeypatch, disk, room=room, only=only)
    result = invoke(["merge", recipe, out])
    assert result.exit_code == 2
    line = assert_refused(result, str(out / culprit), "No space left on device", leaves=[out])
    assert ".tmp-" not in line  # the file as the user will know it, not its staging name


def test_merge_on_a_read_only_mount(bert_zoo, tmp_path, monkeypatch):
    recipe = _recipe(tmp_path, bert_zoo)
    mount = tmp_path / "mount"
    mount.mkdir()
    out = mount / "merged"
    _read_only(monkeypatch, mount)
    result = invoke(["merge", recipe, out])
    assert result.exit_code == 2
    line = assert_refused(result, str(out), "Read-only file system", leaves=[out])
    assert ".tmp-" not in line


def test_merge_stats_json_on_a_read_only_mount(bert_zoo, tmp_path, monkeypatch):
    recipe = _recipe(tmp_path, bert_zoo)
    mount = tmp_path / "mount"
    mount.mkdir()
    stats = mount / "stats.json"
    _read_only(monkeypatch, mount)
    result = invoke(["merge", recipe, tmp_path / "merged", "--stats-json", stats])
    assert result.exit_code == 2
    assert_refused(result, str(stats), "Read-only file system", leaves=[stats])


@pytest.mark.parametrize("depth", ["parent", "grandparent"])
def test_merge_into_a_folder_under_a_file(bert_zoo, tmp_path, depth):
    recipe = _recipe(tmp_path, bert_zoo)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    out = blocker / "merged" if depth == "parent" else blocker / "runs" / "merged"
    result = invoke(["merge", recipe, out])
    assert result.exit_code == 2
    assert_refused(result, str(out), f"{blocker} is not a directory")
    assert blocker.read_text() == "a file, not a folder"
    assert_not_written(tmp_path / "merged")
