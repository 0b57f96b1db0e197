"""Reading an expert library: configurations, the budget rule, expert chains and checked blobs.

Every blob is checked against its sha256 name the first time this :class:`Library` loads it
(later loads skip the hash), so a tampered or truncated module is an error naming the blob,
never silently wrong weights. Opening refuses a manifest whose blob names are not sha256
digests (a ``../`` or absolute name would reach outside ``blobs/``), and a backbone file that
is not a regular file inside the library (a FIFO would hang its reader, ``/dev/zero`` feed it
forever).

>>> lib = Library.open("libs/vision-ta")  # doctest: +SKIP
>>> config = lib.select(0.5)  # highest validation performance with storage cost <= 0.5  # doctest: +SKIP
>>> state = {}  # doctest: +SKIP
>>> for blob in lib.chain_modules(lib.chain(config.id, "mnist")):  # doctest: +SKIP
...     state.update(lib.module_state(blob))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from modmerge.errors import CheckpointError, validation_line
from modmerge.library.blobs import blob_path, check_blob, read_blob
from modmerge.library.manifest import FORMAT, ConfigEntry, LibraryError, LibraryManifest, TaskInfo
from modmerge.quantization import CompressedTensor
from modmerge.regular_files import UnsafeFileError, open_regular, read_regular

MANIFEST = "manifest.json"
# far above any real manifest (a few MiB for hundreds of modules); stops a runaway read
MAX_MANIFEST_BYTES = 256 << 20


class Library:
    """An opened expert library directory (see :mod:`modmerge.library`)."""

    def __init__(self, root: Path, manifest: LibraryManifest) -> None:
        self.root, self.manifest = Path(root), manifest
        self._verified: set[str] = set()
        self._sizes = manifest.blob_sizes()

    @classmethod
    def open(cls, lib_dir: str | Path, *, verify: bool = False) -> Library:
        """Read and validate ``lib_dir/manifest.json``; with ``verify`` also check every blob.

        >>> Library.open("libs/tiny", verify=True).configurations[0].id  # doctest: +SKIP
        'c0'
        """
        root = Path(lib_dir)
        path = root / MANIFEST
        try:
            data = json.loads(read_regular(path, root=root, max_bytes=MAX_MANIFEST_BYTES))
        except FileNotFoundError:
            why = "no such directory" if not root.exists() else "not an expert library, or its build did not finish"
            raise LibraryError(f"{path}: missing ({why})") from None
        except UnsafeFileError as err:
            raise LibraryError(f"{path}: not a regular file inside the library ({err})") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LibraryError(f"{path}: unreadable manifest ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise LibraryError(f"{path}: manifest must be a JSON object")
        if data.get("format") != FORMAT:
            raise LibraryError(f"{path}: unknown library format {data.get('format')!r} (this modmerge reads {FORMAT})")
        try:
            manifest = LibraryManifest.model_validate(data)
        except ValidationError as err:
            raise LibraryError(f"{path}: {validation_line(err)}") from None
        unsafe = manifest.unsafe_blob_name()
        if unsafe is not None:
            raise LibraryError(f"{path}: {unsafe}")
        _check_backbone_files(root / "backbone", root)
        lib = cls(root, manifest)
        if verify:
            problems = lib.verify()
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise LibraryError(f"{problems[0]}{more}")
        return lib

    # -- what the library holds --------------------------------------------------------------
    @property
    def configurations(self) -> list[ConfigEntry]:
        return self.manifest.configurations

    @property
    def tasks(self) -> list[TaskInfo]:
        return self.manifest.tasks

    @property
    def backbone_dir(self) -> Path:
        """The backbone's config and tokenizer/processor files (no weights)."""
        return self.root / "backbone"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    def config(self, config_id: str) -> ConfigEntry:
        for entry in self.configurations:
            if entry.id == config_id:
                return entry
        ids = ", ".join(c.id for c in self.configurations)
        raise LibraryError(f"{self.root}: no configuration '{config_id}' (configurations: {ids})")

    def select(self, budget: float) -> ConfigEntry:
        """The configuration with the highest validation performance whose storage cost is at
        most ``budget`` (ties: the cheaper one). LibraryError names the smallest cost if none fits.

        >>> lib.select(1.0).storage_cost <= 1.0  # doctest: +SKIP
        True
        """
        if math.isnan(budget):
            raise LibraryError(f"{self.root}: storage budget must be a number, got nan")
        fits = [c for c in self.configurations if c.storage_cost <= budget]
        if not fits:
            cheapest = min(self.configurations, key=lambda c: c.storage_cost)
            raise LibraryError(
                f"{self.root}: no configuration fits storage budget {budget:g}; the smallest storage cost "
                f"available is {cheapest.storage_cost:.6g} (configuration {cheapest.id})"
            )
        return max(fits, key=lambda c: (float(c.validation.get("mean", -math.inf)), -c.storage_cost))

    def chain(self, config_id: str, task: str) -> str:
        """Task ``task``'s expert chain id in configuration ``config_id``."""
        entry = self.config(config_id)
        if task not in entry.chains:
            raise LibraryError(f"{self.root}: configuration {config_id} has no task '{task}' "
                               f"(tasks: {', '.join(entry.chains)})")
        return entry.chains[task]

    def chain_modules(self, chain_id: str) -> list[str]:
        """The module blob hashes of an expert chain, in unit order."""
        try:
            return list(self.manifest.chains[chain_id])
        except KeyError:
            raise LibraryError(f"{self.root}: no expert chain '{chain_id}'") from None

    # -- tensors -----------------------------------------------------------------------------
    def module_state(self, digest: str) -> dict[str, torch.Tensor]:
        """A module's DEQUANTISED float32 tensors by body parameter name (blob hash checked once).

        >>> sorted(lib.module_state(lib.chain_modules(chain_id)[0]))[:1]  # doctest: +SKIP
        ['embeddings.LayerNorm.bias']
        """
        entry = self.manifest.modules.get(digest)
        if entry is None:
            raise LibraryError(f"{self.root}: no module blob '{digest}'")
        state = self._read(digest)
        try:
            return {name: CompressedTensor.from_state(state, name).dequantize() for name in entry.tensors}
        except CheckpointError as err:
            raise LibraryError(f"{blob_path(self.blobs_dir, digest)}: {err}") from None

    def head_state(self, task: str) -> dict[str, torch.Tensor]:
        """Task ``task``'s head: ``classifier.*`` and, for BERT-like bodies, its own ``pooler.*``."""
        return self._read(self.manifest.task(task).head)

    def router_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """(router weights, router config as stored: ``RouterConfig.from_dict`` reads it), or None
        when the library was built without a router. Its test accuracy is ``manifest.router.test_accuracy``."""
        router = self.manifest.router
        if router is None:
            return None
        return self._read(router.blob), dict(router.config)

    # -- integrity and accounting ------------------------------------------------------------
    def router_backbone_state(self) -> dict[str, torch.Tensor] | None:
        """The pretrained body the router reads features from (hash checked), or None when the
        library has no router or was built before it stored one."""
        router = self.manifest.router
        if router is None or router.backbone_blob is None:
            return None
        return self._read(router.backbone_blob)

    def _read(self, digest: str) -> dict[str, torch.Tensor]:
        return read_blob(self.blobs_dir, digest, size=self._sizes.get(digest), verified=self._verified)

    def verify(self) -> list[str]:
        """Every problem found, one line each: missing, truncated or tampered blobs, and
        references the manifest cannot resolve. Empty when the library is sound.

        >>> Library.open("libs/tiny").verify()  # doctest: +SKIP
        []
        """
        problems = []
        for digest, size in self.manifest.blob_sizes().items():
            problem = check_blob(self.blobs_dir, digest, size)
            if problem is None:
                self._verified.add(digest)
            else:
                self._verified.discard(digest)
                problems.append(problem)
        for cid, hashes in self.manifest.chains.items():
            problems += [f"{self.root}: chain {cid[:12]} refers to unknown module {h}"
                         for h in hashes if h not in self.manifest.modules]
        for c in self.configurations:
            problems += [f"{self.root}: configuration {c.id} task '{t}' refers to unknown chain {cid[:12]}"
                         for t, cid in c.chains.items() if cid not in self.manifest.chains]
        if not (self.backbone_dir / "config.json").is_file():
            problems.append(f"{self.backbone_dir / 'config.json'}: missing")
        return problems

    @property
    def blob_count(self) -> int:
        return len(self.manifest.blob_sizes())

    def bytes_on_disk(self, config_id: str) -> int:
        """Bytes of the module blob files configuration ``config_id`` uses (heads and router excluded,
        as eq. 8 excludes them)."""
        total = 0
        for digest in self.config(config_id).modules:
            path = blob_path(self.blobs_dir, digest)
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                raise LibraryError(f"{path}: blob is missing") from None
        return total

    def pretrained_body_bytes(self) -> int:
        """Bytes of one pretrained body in its checkpoint's dtype: eq. (8)'s unit of storage."""
        return self.manifest.pretrained_body_bits // 8

    def describe(self) -> list[dict[str, Any]]:
        """One row per configuration: what ``modmerge library ls`` shows.

        ``disk_ratio`` is bytes on disk / (storage cost x pretrained body bytes): 1.0 would mean the
        files hold exactly what eq. (8) counts; above 1 is file overhead (safetensors headers,
        per-tensor quantisation masks and metadata).

        >>> Library.open("libs/tiny").describe()[0]["modules"]  # doctest: +SKIP
        14
        """
        body = self.pretrained_body_bytes()
        rows = []
        for c in self.configurations:
            disk = self.bytes_on_disk(c.id)
            rows.append({
                "id": c.id, "storage_cost": c.storage_cost, "bytes_on_disk": disk,
                "disk_ratio": disk / (c.storage_cost * body) if c.storage_cost > 0 else None,
                "validation": c.validation.get("mean"), "test": None if c.test is None else c.test.get("mean"),
                "modules": len(c.modules), "chains": len(set(c.chains.values())),
            })
        return rows


def _check_backbone_files(backbone: Path, root: Path) -> None:
    """LibraryError naming the first backbone file that is not a regular file inside ``root``:
    transformers reads these by name, and would block on a FIFO or read a device forever."""
    if not backbone.is_dir():
        return  # verify() names a missing backbone/config.json
    for entry in sorted(backbone.rglob("*")):
        if entry.is_dir() and not entry.is_symlink():
            continue
        try:
            open_regular(entry, root=root).close()
        except UnsafeFileError as err:
            raise LibraryError(f"{entry}: backbone file is not a regular file inside the library ({err})") from None
        except OSError as err:
            raise LibraryError(f"{entry}: backbone file cannot be read ({err.strerror})") from None
