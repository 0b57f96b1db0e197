"""The hand-written safetensors reader (validation, zero-copy) and the streaming writer."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modmerge.checkpoints import (
    SafetensorsFile,
    StreamingSafetensorsWriter,
    TensorInfo,
    read_safetensors_header,
)
from modmerge.checkpoints.safetensors_io import DTYPES
from modmerge.errors import CheckpointError


def _sample(dtype: torch.dtype, shape: tuple[int, ...] = (3, 5)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    return torch.randint(0, 100, shape, generator=gen).to(dtype)


# uint16/32/64 have too few torch kernels for safetensors' own writer to round-trip them.
ROUND_TRIP_DTYPES = [
    d for d in DTYPES.values() if d not in (torch.uint16, torch.uint32, torch.uint64)
]


def _write_raw(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("dtype", ROUND_TRIP_DTYPES, ids=str)
def test_reads_every_dtype_written_by_safetensors(tmp_path, dtype):
    tensors = {"x": _sample(dtype), "scalar": _sample(dtype, ()), "empty": _sample(dtype, (0, 4))}
    save_file(tensors, tmp_path / "m.safetensors")
    src = SafetensorsFile(tmp_path / "m.safetensors")
    assert sorted(src.keys()) == ["empty", "scalar", "x"]
    for key, ref in tensors.items():
        assert src.info(key) == TensorInfo(tuple(ref.shape), dtype)
        got = src.get(key)
        assert got.dtype == dtype and got.shape == ref.shape
        assert torch.equal(_bytes(got), _bytes(ref)), key


def _bytes(t: torch.Tensor) -> torch.Tensor:
    # Compare raw bytes so NaN-free equality holds for every dtype, float8 included.
    return t.reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=str)
def test_own_writer_and_reader_round_trip_every_dtype(tmp_path, dtype):
    ref = (
        torch.randint(0, 2, (4, 3), dtype=torch.uint8).view(torch.bool)
        if dtype == torch.bool
        else (torch.arange(24, dtype=torch.uint8).view(dtype).reshape(-1))
    )
    path = tmp_path / "o.safetensors"
    with StreamingSafetensorsWriter(path, {"t": TensorInfo(tuple(ref.shape), dtype)}) as out:
        out.write("t", ref)
    assert torch.equal(_bytes(SafetensorsFile(path).get("t")), _bytes(ref))


def test_get_is_zero_copy_view_of_the_mapping(tmp_path):
    save_file(
        {"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(7)}, tmp_path / "m.safetensors"
    )
    src = SafetensorsFile(tmp_path / "m.safetensors")
    first, second = src.get("a"), src.get("a")
    assert first.data_ptr() == second.data_ptr()  # same mapped bytes, nothing copied
    entry = src.header.tensors["a"]
    mapped = torch.frombuffer(src._map, dtype=torch.uint8)  # the whole mapping
    assert first.data_ptr() == mapped.data_ptr() + src.header.data_start + entry.begin
    first[0, 0] = 99.0  # copy-on-write mapping: visible to views, never to the file
    assert second[0, 0] == 99.0
    assert load_file(tmp_path / "m.safetensors")["a"][0, 0] == 0.0


def test_header_metadata_and_offsets(tmp_path):
    save_file(
        {"w": torch.zeros(2, 3)}, tmp_path / "m.safetensors", metadata={"format": "pt", "k": "v"}
    )
    header = read_safetensors_header(tmp_path / "m.safetensors")
    assert header.metadata == {"format": "pt", "k": "v"}
    entry = header.tensors["w"]
    assert (entry.begin, entry.end, entry.info.shape) == (0, 24, (2, 3))


def test_truncated_file_names_file_and_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(4), "b": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(
        CheckpointError, match=r"m\.safetensors: tensor 'b' ends at data byte .*truncated"
    ):
        SafetensorsFile(path)


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"", "truncated"),
        (
            {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "tensor 'a' has 8 data bytes",
        ),
        (
            {"a": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "tensor 'a' has unsupported dtype",
        ),
        (
            {"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "tensor 'a' has a malformed shape",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}},
            b"\0" * 8,
            "malformed data_offsets",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "tensor 'b' overlaps tensor 'a'",
        ),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
    ],
)
def test_invalid_headers(tmp_path, header, data, match):
    path = _write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=match) as info:
        read_safetensors_header(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"abc", "not a safetensors file"),
        (struct.pack("<Q", 10_000) + b"{}", "corrupt or truncated safetensors header"),
        (struct.pack("<Q", 5) + b"{nope", "invalid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_corrupt_prefix_or_json(tmp_path, payload, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=match):
        SafetensorsFile(path)


def test_missing_key_names_file(tmp_path):
    save_file({"a": torch.ones(1)}, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"m\.safetensors: no tensor 'zz'"):
        SafetensorsFile(tmp_path / "m.safetensors").get("zz")


def test_misaligned_tensor_is_copied_correctly(tmp_path):
    # A 3-byte bool tensor first pushes the float32 one off a 4-byte boundary.
    flags = torch.tensor([True, False, True])
    vals = torch.tensor([1.5, -2.0])
    header = {
        "f": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]},
        "v": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    data = flags.numpy().tobytes() + vals.numpy().tobytes()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    src = SafetensorsFile(path)
    assert torch.equal(src.get("v"), vals) and torch.equal(src.get("f"), flags)


def test_streaming_writer_round_trip_in_any_order(tmp_path):
    tensors = {
        "flags": _sample(torch.bool, (5,)),
        "half": _sample(torch.float16, (3, 3)),
        "big": _sample(torch.float32, (4, 6)),
        "ids": _sample(torch.int64, (2,)),
        "bf": _sample(torch.bfloat16, (7,)),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(3.0),
        "strided": torch.arange(12.0).reshape(3, 4).T,  # non-contiguous input
    }
    specs = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}
    path = tmp_path / "out.safetensors"
    with StreamingSafetensorsWriter(path, specs, {"note": "x"}) as out:
        for key in reversed(list(tensors)):
            out.write(key, tensors[key])
    loaded = load_file(path)
    assert loaded.keys() == tensors.keys()
    for key, ref in tensors.items():
        assert torch.equal(loaded[key], ref), key
    ours = SafetensorsFile(path)
    assert ours.metadata == {"format": "pt", "note": "x"}
    for key in list(
        ours.keys()
    ):  # widest-first layout keeps every tensor aligned for zero-copy reads
        entry = ours.header.tensors[key]
        assert (ours.header.data_start + entry.begin) % entry.info.dtype.itemsize == 0


def test_streaming_writer_rejects_mismatches(tmp_path):
    specs = {"a": TensorInfo((2,), torch.float32), "b": TensorInfo((1,), torch.float32)}
    out = StreamingSafetensorsWriter(tmp_path / "o.safetensors", specs)
    with pytest.raises(
        CheckpointError, match=r"tensor 'a' is \(3,\) torch.float32, declared \(2,\)"
    ):
        out.write("a", torch.zeros(3))
    with pytest.raises(CheckpointError, match=r"tensor 'a' is .*torch\.float16"):
        out.write("a", torch.zeros(2, dtype=torch.float16))
    with pytest.raises(CheckpointError, match="tensor 'zz' is not in the declared specs"):
        out.write("zz", torch.zeros(1))
    out.write("a", torch.zeros(2))
    with pytest.raises(CheckpointError, match="tensor 'a' was written twice"):
        out.write("a", torch.zeros(2))
    with pytest.raises(CheckpointError, match="tensors never written: 'b'"):
        out.close()


def test_streaming_writer_aborts_on_exception(tmp_path):
    path = tmp_path / "o.safetensors"
    with (
        pytest.raises(RuntimeError),
        StreamingSafetensorsWriter(path, {"a": TensorInfo((2,), torch.float32)}),
    ):
        raise RuntimeError("boom")
    assert not path.exists()
