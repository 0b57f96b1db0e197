"""`library build RUN LIB_DIR` replaces LIB_DIR only when it is an expert library (its manifest.json
opens as one), or fills it when it is absent or empty. Anything else, a zoo directory with its own
manifest.json included, is refused with one line naming it, exit 2, and left byte-identical.

It used to take any directory holding a file named manifest.json for a library and delete it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from battery_support import assert_refused, invoke, snapshot

from modmerge.library import Library


def _build(run_dir: Path, lib_dir: Path, tiny_zoo, *extra: str):
    return invoke(["library", "build", run_dir, lib_dir, "--cache", tiny_zoo.root.parent.parent, *extra])


# each maker: (the tiny zoo's directory, a library's directory, the target to make)
Maker = Callable[[Path, Path, Path], None]


def _zoo(zoo_dir: Path, _library: Path, target: Path) -> None:
    shutil.copytree(zoo_dir, target)


def _manifest(text: str) -> Maker:
    def make(_zoo_dir: Path, _library: Path, target: Path) -> None:
        target.mkdir()
        (target / "manifest.json").write_text(text)
        (target / "notes.txt").write_text("mine")

    return make


def _symlinked_manifest(_zoo_dir: Path, library: Path, target: Path) -> None:
    """A manifest.json that points at another library's: not a library of its own."""
    target.mkdir()
    (target / "manifest.json").symlink_to(library / "manifest.json")
    (target / "notes.txt").write_text("mine")


def _files(_zoo_dir: Path, _library: Path, target: Path) -> None:
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"weights")


NOT_LIBRARIES = {
    "zoo-directory": _zoo,
    "manifest-not-json": _manifest("{not json"),
    "another-format": _manifest(json.dumps({"format": 99, "configurations": []})),
    "some-other-manifest": _manifest(json.dumps({"name": "my dataset", "files": ["a.csv"]})),
    "symlinked-manifest": _symlinked_manifest,
    "no-manifest": _files,
}


@pytest.mark.parametrize("make", NOT_LIBRARIES.values(), ids=NOT_LIBRARIES.keys())
def test_library_build_refuses_a_directory_that_is_not_a_library(sound_run, sound_library, tiny_zoo, tmp_path, make):
    target = tmp_path / "target"
    make(tiny_zoo.root, sound_library, target)
    before = snapshot(target)
    result = _build(sound_run, target, tiny_zoo, "--no-router")
    assert result.exit_code == 2
    assert_refused(result, str(target), "not an expert library", "not replaced")
    assert snapshot(target) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".target.")] == []


def test_library_build_refuses_before_training_a_router(sound_run, tiny_zoo, tmp_path, monkeypatch):
    import modmerge.reuse.router as router

    def no_training(*args, **kwargs):
        raise AssertionError("the router was trained for a build that is refused")

    monkeypatch.setattr(router, "fit_router", no_training)
    target = tmp_path / "target"
    _zoo(tiny_zoo.root, tmp_path, target)
    assert_refused(_build(sound_run, target, tiny_zoo), str(target), "not an expert library")


@pytest.mark.parametrize("state", ["absent", "empty", "a-library"])
def test_library_build_fills_an_absent_or_empty_directory_and_replaces_a_library(
        sound_run, sound_library, tiny_zoo, tmp_path, state):
    target = tmp_path / "target"
    if state == "empty":
        target.mkdir()
    elif state == "a-library":
        shutil.copytree(sound_library, target)
        (target / "stale.txt").write_text("from the old library")
    result = _build(sound_run, target, tiny_zoo, "--no-router")
    assert result.exit_code == 0, result.output
    assert not (target / "stale.txt").exists()
    assert Library.open(target, verify=True).verify() == []
