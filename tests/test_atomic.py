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


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_staging_left_by_a_dead_build_is_removed_by_the_next_one(tmp_path):
    import os
    import socket

    import torch

    from modmerge.atomic import _host, remove_dead_staging, staging_dir
    from modmerge.checkpoints import TensorInfo, write_model_directory

    target = tmp_path / "merged"
    live = staging_dir(target)  # this process's: a build in progress
    assert live.name.startswith(f".merged.tmp-{os.getpid()}@") and live.is_dir()
    dead = tmp_path / f".merged.tmp-{_dead_pid()}@{_host()}-0123abcd"
    elsewhere = tmp_path / f".merged.tmp-{_dead_pid()}@not-{socket.gethostname()}x-0123abcd"
    other = tmp_path / f".other.tmp-{_dead_pid()}@{_host()}-0123abcd"
    for path in (dead, elsewhere, other):
        (path / "part").mkdir(parents=True)
    assert remove_dead_staging(target) == [dead]
    assert live.is_dir() and elsewhere.is_dir() and other.is_dir() and not dead.exists()

    (dead / "part").mkdir(parents=True)  # a model directory build cleans up too
    tensor = torch.zeros(2)
    write_model_directory(target, [("w", tensor)], {"w": TensorInfo((2,), torch.float32)})
    assert not dead.exists() and (target / "model.safetensors").is_file()
