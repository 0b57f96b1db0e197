"""Atomic writes: a failed write leaves the old file and no temporary behind."""

from __future__ import annotations

import json

import pytest

from modmerge.atomic import atomic_file, write_json, write_text


def test_write_json_replaces_the_file_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "out.json"
    write_json(path, {"x": 1})
    write_json(path, {"x": 2.5})
    assert json.loads(path.read_text()) == {"x": 2.5}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.md"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="killed"), atomic_file(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]
    with pytest.raises(TypeError):  # not serialisable: nothing written either
        write_json(path, {"x": object()})
    assert path.read_text() == "old\n" and len(list(tmp_path.iterdir())) == 1
