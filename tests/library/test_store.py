"""Opening a library, checked blob loads, verify(), accounting."""

from __future__ import annotations

import json

import pytest

from modmerge.library import Library, LibraryError
from modmerge.library.blobs import blob_path


def module_of(lib: Library) -> str:
    return lib.configurations[0].modules[0]


def test_tampered_truncated_and_missing_blobs_are_named(lib_copy):
    lib = lib_copy
    modules = lib.configurations[0].modules
    tampered, truncated, missing = modules[0], modules[1], modules[2]
    path = blob_path(lib.blobs_dir, tampered)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(data))
    short = blob_path(lib.blobs_dir, truncated)
    short.write_bytes(short.read_bytes()[:-7])
    blob_path(lib.blobs_dir, missing).unlink()
    problems = lib.verify()
    assert len(problems) == 3
    assert any(tampered in p and "tampered" in p for p in problems)
    assert any(truncated in p and "truncated" in p for p in problems)
    assert any(missing in p and "missing" in p for p in problems)
    # the manifest's size is checked before a byte is read: truncation is named as such
    for digest, needle in ((tampered, "corrupt"), (truncated, "truncated or padded"), (missing, "missing")):
        with pytest.raises(LibraryError, match=f"{digest}.safetensors: blob is {needle}"):
            lib.module_state(digest)
    with pytest.raises(LibraryError, match=f"{tampered}.safetensors: blob is tampered .*and 2 more"):
        Library.open(lib.root, verify=True)
    sound = modules[3]
    assert lib.module_state(sound)  # the rest still loads


def test_a_tampered_head_is_refused(lib_copy):
    lib = lib_copy
    head = lib.manifest.task("has_animal").head
    path = blob_path(lib.blobs_dir, head)
    path.write_bytes(path.read_bytes().replace(b"classifier", b"classifiex", 1))
    with pytest.raises(LibraryError, match=f"{head}.safetensors: blob is corrupt"):
        lib.head_state("has_animal")
    assert lib.head_state("has_color")["classifier.bias"].numel() == 2


def test_verify_reports_unresolvable_references(lib_copy):
    data = json.loads((lib_copy.root / "manifest.json").read_text())
    first = data["configurations"][0]
    task = next(iter(first["chains"]))
    first["chains"][task] = "f" * 64
    chain = next(iter(data["chains"]))
    data["chains"][chain] = ["0" * 64]
    (lib_copy.root / "manifest.json").write_text(json.dumps(data))
    (lib_copy.backbone_dir / "config.json").unlink()
    problems = Library.open(lib_copy.root).verify()
    assert any(f"task '{task}' refers to unknown chain ffffffffffff" in p for p in problems)
    assert any("refers to unknown module 0000" in p for p in problems)
    assert any(p.endswith("config.json: missing") for p in problems)


@pytest.mark.parametrize(
    ("content", "needle"),
    [(None, "manifest.json: missing"), ("{not json", "unreadable manifest"), ("[1]", "must be a JSON object"),
     ('{"format": 2}', "unknown library format 2"), ('{"format": 1, "zoo": "tiny"}', "manifest.json: backbone")],
)
def test_open_refuses_bad_manifests(tmp_path, content, needle):
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(LibraryError, match=needle) as err:
        Library.open(tmp_path)
    assert "\n" not in str(err.value)


def test_lookups_name_what_is_missing(chosen_lib):
    lib = chosen_lib
    with pytest.raises(LibraryError, match="no configuration 'c9' \\(configurations: c0, c1\\)"):
        lib.chain("c9", "has_color")
    with pytest.raises(LibraryError, match="has no task 'nope'"):
        lib.chain("c0", "nope")
    with pytest.raises(LibraryError, match="has no task 'nope'"):
        lib.head_state("nope")
    with pytest.raises(LibraryError, match="no expert chain 'abc'"):
        lib.chain_modules("abc")
    with pytest.raises(LibraryError, match="no module blob 'abc'"):
        lib.module_state("abc")
    with pytest.raises(LibraryError, match="must be a number"):
        lib.select(float("nan"))


def test_bytes_on_disk_and_description(chosen_lib):
    lib = chosen_lib
    rows = lib.describe()
    assert [r["id"] for r in rows] == [c.id for c in lib.configurations]
    for c, row in zip(lib.configurations, rows, strict=True):
        files = sum(blob_path(lib.blobs_dir, h).stat().st_size for h in c.modules)
        assert lib.bytes_on_disk(c.id) == row["bytes_on_disk"] == files
        assert row["disk_ratio"] == pytest.approx(files / (c.storage_cost * lib.pretrained_body_bytes()))
        # the files hold what eq. (8) counts plus safetensors headers and masks: a little more, never less
        assert 1.0 < row["disk_ratio"] < 3.0
        assert row["modules"] == len(c.modules)
    assert lib.pretrained_body_bytes() * 8 == lib.manifest.pretrained_body_bits == 32 * lib.manifest.body_parameters
