"""Library blobs that are special files or unsafe names: refused with one line, never read.

A blob symlinked to /dev/zero used to be read until MemoryError, a FIFO blob hung its reader,
and a manifest's ``../`` or absolute blob name reached outside the library (only the sha256
check stopped it). Each case here must fail fast, naming the blob.
"""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest
from click.testing import CliRunner
from serve_battery_support import build_tiny_library

from modmerge.cli import main
from modmerge.library import Library, LibraryError
from modmerge.library.blobs import blob_path

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")


@pytest.fixture(scope="module")
def tiny_lib(tiny_zoo, tmp_path_factory):
    return build_tiny_library(tiny_zoo, tmp_path_factory.mktemp("blobs_battery"))


@pytest.fixture
def lib_dir(tiny_lib, tmp_path):
    return shutil.copytree(tiny_lib, tmp_path / "lib", symlinks=True)


def head_of(lib_dir, index=0):
    """(task name, head blob path) of the manifest's task ``index``."""
    task = Library.open(lib_dir).tasks[index]
    return task.name, blob_path(lib_dir / "blobs", task.head)


def within(seconds, fn):
    """fn() run in a daemon thread; fails (instead of hanging the suite) if it takes over ``seconds``."""
    box = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the test below
            box["error"] = err

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (blocked on a special file?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def make_special(path, kind, tmp_path):
    real = path.read_bytes()
    path.unlink()
    if kind == "dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "outside_same_bytes":  # the right bytes, so only confinement can stop it
        (tmp_path / "outside.safetensors").write_bytes(real)
        path.symlink_to(tmp_path / "outside.safetensors")
    elif kind == "directory":
        path.mkdir()


REASONS = {"dev_zero": "outside", "fifo": "a FIFO", "outside_same_bytes": "outside", "directory": "a directory"}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_special_blobs_are_refused_before_reading(lib_dir, tmp_path, kind):
    task, head = head_of(lib_dir)
    make_special(head, kind, tmp_path)
    lib = Library.open(lib_dir)
    with pytest.raises(LibraryError) as err:
        within(20, lambda: lib.head_state(task))
    message = str(err.value)
    assert message.startswith(f"{head}: blob is not a regular file inside the library (")
    assert REASONS[kind] in message and "\n" not in message
    problems = within(20, lib.verify)
    assert problems == [message], problems


@pytest.mark.parametrize("kind", ["dev_zero", "fifo"])
def test_predict_on_a_special_blob_is_one_line(lib_dir, tmp_path, kind):
    task, head = head_of(lib_dir)
    make_special(head, kind, tmp_path)
    (tmp_path / "in.jsonl").write_text('{"text": "a red fox"}\n')
    args = ["predict", str(lib_dir), "--config", "c0", "--task", task, "--input", str(tmp_path / "in.jsonl"),
            "--output", str(tmp_path / "out.jsonl")]
    result = within(60, lambda: CliRunner().invoke(main, args))
    assert result.exit_code == 2, result.output
    assert f"error: {head}: blob is not a regular file inside the library" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out.jsonl").exists()


def test_a_symlink_that_stays_inside_blobs_still_loads(lib_dir):
    task, head = head_of(lib_dir)
    head.rename(head.with_name("kept-aside.bin"))
    head.symlink_to("kept-aside.bin")
    assert Library.open(lib_dir).head_state(task)


def test_blob_sizes_are_checked_before_reading(lib_dir):
    task, head = head_of(lib_dir)
    size = head.stat().st_size
    with head.open("ab") as f:
        f.write(b"\0" * 1000)
    with pytest.raises(LibraryError, match=rf"blob is truncated or padded \({size + 1000} bytes, manifest says {size}\)"):
        Library.open(lib_dir).head_state(task)


def edit_manifest(lib_dir, change):
    path = lib_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def rename_module(manifest, new):
    old = next(iter(manifest["modules"]))
    manifest["modules"][new] = manifest["modules"].pop(old)
    for hashes in [*manifest["chains"].values(), *(c["modules"] for c in manifest["configurations"])]:
        hashes[:] = [new if h == old else h for h in hashes]


@pytest.mark.parametrize(("change", "culprit"), [
    (lambda m: m["tasks"][0].update(head="../../outside"), "task '{task}' head: blob name '../../outside'"),
    (lambda m: m["tasks"][0].update(head="/etc/passwd"), "task '{task}' head: blob name '/etc/passwd'"),
    (lambda m: rename_module(m, "../" + "a" * 61), "modules: blob name '../aaaa"),
    (lambda m: m["tasks"][0].update(head="A" * 64), "task '{task}' head: blob name 'AAAA"),
], ids=["head-dotdot", "head-absolute", "module-dotdot", "head-uppercase"])
def test_unsafe_blob_names_are_refused_at_open(lib_dir, change, culprit):
    task, _ = head_of(lib_dir)
    edit_manifest(lib_dir, change)
    with pytest.raises(LibraryError) as err:
        Library.open(lib_dir)
    message = str(err.value)
    assert message.startswith(f"{lib_dir / 'manifest.json'}: {culprit.format(task=task)}"), message
    assert message.endswith("is not a sha256 hex digest") and "\n" not in message


def test_special_manifest_and_backbone_files_are_refused_at_open(lib_dir):
    config = lib_dir / "backbone" / "config.json"
    config.unlink()
    config.symlink_to("/dev/zero")
    with pytest.raises(LibraryError, match=r"backbone/config.json: backbone file is not a regular file inside"):
        within(20, lambda: Library.open(lib_dir))
    manifest = lib_dir / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)
    with pytest.raises(LibraryError, match=r"manifest.json: not a regular file inside the library \(a FIFO\)"):
        within(20, lambda: Library.open(lib_dir))
