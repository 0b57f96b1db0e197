"""Safetensors without the library: a validating header parser, a zero-copy mmap reader and a
streaming writer.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data section) plus
an optional ``"__metadata__"`` string map, then the raw little-endian tensor bytes.

We parse it ourselves so a read is a ``torch.frombuffer`` view into a private (copy-on-write)
memory map: no bytes are copied until someone writes to the tensor, which keeps a merge of
T+1 checkpoints bounded by memory bandwidth rather than by allocation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch

from modmerge.atomic import output_error
from modmerge.checkpoints.source import TensorInfo
from modmerge.errors import CheckpointError

logger = logging.getLogger(__name__)

# The format's dtype names; float8 kinds only where this torch build has them.
_DTYPE_NAMES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr) for name, attr in _DTYPE_NAMES.items() if hasattr(torch, attr)
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}

# The reference implementation refuses headers above 100 MB; a larger length means corruption.
_MAX_HEADER_BYTES = 100 * 2**20


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: its shape/dtype and its byte range in the data section."""

    info: TensorInfo
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed, validated header. ``data_start`` is the file offset of the data section."""

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate a safetensors header without reading any tensor data.

    Checks that the JSON parses, every dtype is known, each tensor's byte length equals
    ``numel * itemsize``, the byte ranges do not overlap and lie inside the file (so a
    truncated download is caught here, not at read time).

    Example::

        >>> header = read_safetensors_header("model.safetensors")  # doctest: +SKIP
        >>> header.tensors["embeddings.word_embeddings.weight"].info.shape  # doctest: +SKIP
        (30522, 768)
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors header (claims {header_len} bytes, "
                    f"file has {size})"
                )
            raw = f.read(header_len)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read safetensors file ({err})") from err
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header (invalid JSON: {err})") from err
    if not isinstance(parsed, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = parsed.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(
            f"{path}: corrupt safetensors header (__metadata__ must map str to str)"
        )
    data_start = 8 + header_len
    tensors = {name: _parse_entry(path, name, entry) for name, entry in parsed.items()}
    _check_layout(path, tensors, size - data_start)
    return SafetensorsHeader(tensors=tensors, metadata=dict(metadata), data_start=data_start)


def _parse_entry(path: Path, name: str, entry: object) -> TensorEntry:
    where = f"{path}: tensor '{name}'"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where} has a malformed header entry")
    dtype_name = entry.get("dtype")
    if dtype_name not in DTYPES:
        raise CheckpointError(f"{where} has unsupported dtype {dtype_name!r}")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise CheckpointError(f"{where} has a malformed shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{where} has malformed data_offsets {offsets!r}")
    info = TensorInfo(tuple(shape), DTYPES[dtype_name])
    if offsets[1] - offsets[0] != info.nbytes:
        raise CheckpointError(
            f"{where} has {offsets[1] - offsets[0]} data bytes but shape {tuple(shape)} of "
            f"{dtype_name} needs {info.nbytes}"
        )
    return TensorEntry(info=info, begin=offsets[0], end=offsets[1])


def _check_layout(path: Path, tensors: Mapping[str, TensorEntry], data_len: int) -> None:
    prev_name, prev_end = "", 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin < prev_end:
            raise CheckpointError(
                f"{path}: tensor '{name}' overlaps tensor '{prev_name}' (corrupt header)"
            )
        if entry.end > data_len:
            raise CheckpointError(
                f"{path}: tensor '{name}' ends at data byte {entry.end} but the file holds only "
                f"{data_len} data bytes (truncated?)"
            )
        prev_name, prev_end = name, max(prev_end, entry.end)


class SafetensorsFile:
    """A lazy :class:`TensorSource` over one safetensors file.

    ``get`` returns a view into a copy-on-write memory map: no bytes are read until touched, two
    calls share storage, and writing to a tensor never changes the file.

    Example::

        >>> src = SafetensorsFile("model.safetensors")  # doctest: +SKIP
        >>> w = src.get("lm_head.weight")  # zero-copy view  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.label = str(self.path)
        self.header = read_safetensors_header(self.path)
        self._map: mmap.mmap | None = None
        if self.header.tensors:
            try:
                with self.path.open("rb") as f:
                    self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except (OSError, ValueError) as err:
                raise CheckpointError(f"{self.path}: cannot memory-map file ({err})") from err

    @property
    def metadata(self) -> dict[str, str]:
        return self.header.metadata

    def keys(self) -> list[str]:
        return list(self.header.tensors)

    def info(self, key: str) -> TensorInfo:
        return self._entry(key).info

    def get(self, key: str) -> torch.Tensor:
        entry = self._entry(key)
        info = entry.info
        if info.numel == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        if self._map is None:
            raise CheckpointError(f"{self.path}: tensor '{key}' read after the file was closed")
        offset = self.header.data_start + entry.begin
        if offset % info.dtype.itemsize == 0:
            flat = torch.frombuffer(self._map, dtype=info.dtype, count=info.numel, offset=offset)
        else:
            # A misaligned view is legal but slow or unsafe for some kernels; copy just this one.
            raw = torch.frombuffer(self._map, dtype=torch.uint8, count=info.nbytes, offset=offset)
            flat = raw.clone().view(info.dtype)
        return flat.reshape(info.shape)

    def release(self, key: str) -> None:
        """Drop ``key``'s pages from this process's resident memory (they stay in the page cache).

        The map is private and never written, so a later touch simply faults the same bytes
        back in from the file: releasing is always safe, and it keeps a merge's peak RSS near
        the tensors in flight instead of every byte read so far.
        """
        if self._map is None or key not in self.header.tensors:
            return
        entry = self.header.tensors[key]
        start = self.header.data_start + entry.begin
        page = mmap.PAGESIZE
        aligned = start - start % page
        length = self.header.data_start + entry.end - aligned
        if length > 0:
            self._map.madvise(mmap.MADV_DONTNEED, aligned, length)

    def close(self) -> None:
        # Tensors handed out keep the map alive through the buffer protocol, so closing it
        # explicitly would fail while they live; dropping our reference lets it go with them.
        self._map = None

    def _entry(self, key: str) -> TensorEntry:
        try:
            return self.header.tensors[key]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor '{key}'") from None


def _layout(specs: Mapping[str, TensorInfo]) -> dict[str, tuple[int, int]]:
    # Widest dtypes first so every tensor starts at a multiple of its itemsize (the header is
    # padded to 8 bytes), which keeps readers of our output on the zero-copy path.
    order = sorted(specs, key=lambda name: -specs[name].dtype.itemsize)
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for name in order:
        offsets[name] = (pos, pos + specs[name].nbytes)
        pos += specs[name].nbytes
    return offsets


class StreamingSafetensorsWriter:
    """Write a safetensors file one tensor at a time, never holding the whole model.

    The specs are known up front, so the header (with every offset) is written on open and each
    ``write(name, tensor)`` puts that tensor's bytes at its place, in any order. ``close()``
    checks every spec was written; leaving the ``with`` block by an exception deletes the file.

    Example::

        >>> specs = {"w": TensorInfo((2, 2), torch.float32)}
        >>> with StreamingSafetensorsWriter("/tmp/x.safetensors", specs) as out:  # doctest: +SKIP
        ...     out.write("w", torch.eye(2))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        specs: Mapping[str, TensorInfo],
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.specs = dict(specs)
        for name, info in self.specs.items():
            if info.dtype not in DTYPE_NAMES:
                raise CheckpointError(
                    f"{self.path}: tensor '{name}' has unsupported dtype {info.dtype}"
                )
        self._offsets = _layout(self.specs)
        self._written: set[str] = set()
        header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
        for name in self.specs:
            info = self.specs[name]
            header[name] = {
                "dtype": DTYPE_NAMES[info.dtype],
                "shape": list(info.shape),
                "data_offsets": list(self._offsets[name]),
            }
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._data_start = 8 + len(raw)
        try:
            self._file = self.path.open("wb")
        except OSError as err:
            raise output_error(err, self.path) from err
        try:
            self._file.write(struct.pack("<Q", len(raw)) + raw)
            total = sum(end - begin for begin, end in self._offsets.values())
            # Size the file now so bytes written out of order never leave it short.
            self._file.truncate(self._data_start + total)
        except OSError as err:
            self.abort()
            raise output_error(err, self.path) from err

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one tensor's bytes; it must match its spec's shape and dtype exactly."""
        where = f"{self.path}: tensor '{name}'"
        if name not in self.specs:
            raise CheckpointError(f"{where} is not in the declared specs")
        if name in self._written:
            raise CheckpointError(f"{where} was written twice")
        info = self.specs[name]
        if tuple(tensor.shape) != info.shape or tensor.dtype != info.dtype:
            raise CheckpointError(
                f"{where} is {tuple(tensor.shape)} {tensor.dtype}, declared {info.shape} {info.dtype}"
            )
        begin, _ = self._offsets[name]
        if info.numel:
            flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            try:
                self._file.seek(self._data_start + begin)
                self._file.write(memoryview(flat.numpy()))
            except OSError as err:  # a write names no file: this one is named
                raise output_error(err, self.path) from err
        self._written.add(name)

    def close(self) -> None:
        """Finish the file; raises CheckpointError if a declared tensor was never written."""
        if self._file.closed:
            return
        try:
            self._file.close()  # flushes: a full disk may show only now
        except OSError as err:
            raise output_error(err, self.path) from err
        missing = [name for name in self.specs if name not in self._written]
        if missing:
            shown = ", ".join(repr(m) for m in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise CheckpointError(f"{self.path}: tensors never written: {shown}{more}")

    def abort(self) -> None:
        """Close and delete the partial file."""
        # The write already failed, and on a full disk the flush in close() fails again: the
        # first error is the one raised, and the file is deleted either way.
        with contextlib.suppress(OSError):
            self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> StreamingSafetensorsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
