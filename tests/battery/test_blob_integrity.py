"""Tampered, truncated and missing library blobs, caught by `library verify` and when a command
loads them (`export`, `predict`): exit 2, one line naming the blob, nothing written.

Covered elsewhere and not repeated: the library-level checks of all three at verify and at load,
and a tampered head (tests/library/test_store.py), and `library verify` on truncated blobs through
the CLI (tests/library/test_library_cli.py::test_build_ls_verify).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from battery_support import assert_refused, invoke

from modmerge.library import Library
from modmerge.library.blobs import blob_path

TASK = "has_color"


@pytest.fixture
def library(sound_library, tmp_path) -> Library:
    return Library.open(shutil.copytree(sound_library, tmp_path / "lib"))


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    path.write_bytes(bytes(data))


DAMAGE: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # kind: (how, what verify calls it, what a load calls it)
    "tampered": (_tamper, "tampered", "corrupt"),
    # a load checks the manifest's size before reading: truncation is named as such
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-7]), "truncated", "truncated or padded"),
    "missing": (lambda p: p.unlink(), "missing", "missing"),
}


def _damage_a_module(lib: Library, kind: str) -> str:
    """Damage the first module of the best configuration's chain for TASK; return its digest."""
    config = lib.configurations[-1]
    digest = lib.chain_modules(lib.chain(config.id, TASK))[0]
    DAMAGE[kind][0](blob_path(lib.blobs_dir, digest))
    return digest


@pytest.mark.parametrize("kind", ["tampered", "missing"])
def test_library_verify_names_the_damaged_module(library, kind):
    digest = _damage_a_module(library, kind)
    result = invoke(["library", "verify", library.root])
    assert result.exit_code == 2
    assert_refused(result, digest, DAMAGE[kind][1])


def test_library_verify_names_a_tampered_head(library):
    head = library.manifest.task(TASK).head
    _tamper(blob_path(library.blobs_dir, head))
    assert_refused(invoke(["library", "verify", library.root]), head, "tampered")


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_export_refuses_a_damaged_module(library, tmp_path, kind):
    digest = _damage_a_module(library, kind)
    out = tmp_path / "exported"
    result = invoke(["export", library.root, "--config", library.configurations[-1].id, "--task", TASK, out])
    assert result.exit_code == 2
    assert_refused(result, f"{digest}.safetensors", f"blob is {DAMAGE[kind][2]}", leaves=[out])


def test_predict_refuses_a_damaged_module_and_writes_no_output(library, tmp_path):
    digest = _damage_a_module(library, "tampered")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"text": "the red cat near the bread", "task": TASK}) + "\n")
    out = tmp_path / "out.jsonl"
    result = invoke(["predict", library.root, "--config", library.configurations[-1].id, "--input", inputs,
                     "--output", out])
    assert result.exit_code == 2
    assert_refused(result, f"{digest}.safetensors", "blob is corrupt", leaves=[out])
