"""write_model_directory: round trip, sharding, support files, atomicity and overwrite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from modmerge.checkpoints import TensorInfo, open_checkpoint, plan_shards, write_model_directory
from modmerge.errors import CheckpointError


def _specs(state: dict[str, torch.Tensor]) -> dict[str, TensorInfo]:
    return {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in state.items()}


def _stream(
    state: dict[str, torch.Tensor], fail_after: int | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    for i, item in enumerate(state.items()):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("merge failed mid-way")
        yield item


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.fixture
def bert_state(bert_zoo):
    base, _ = bert_zoo
    ckpt = open_checkpoint(base)
    return base, ckpt.config, {k: ckpt.get(k) for k in list(ckpt.keys())}


def test_round_trip_loads_with_transformers(bert_state, tmp_path):
    _, config, state = bert_state
    support = tmp_path / "support"  # the shared zoo directory must stay untouched
    support.mkdir()
    (support / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # stand-in tokenizer file
    seen: list[tuple[str, int]] = []
    out = write_model_directory(
        tmp_path / "merged",
        _stream(state),
        _specs(state),
        config=config,
        copy_files_from=support,
        metadata={"merged_by": "modmerge"},
        progress=lambda name, n: seen.append((name, n)),
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "vocab.txt",
    ]
    assert [name for name, _ in seen] == list(state)
    assert sum(n for _, n in seen) == sum(v.nbytes for v in state.values())
    loaded = load_file(out / "model.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    model = transformers.AutoModel.from_pretrained(out)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert open_checkpoint(out).source.metadata["merged_by"] == "modmerge"
    assert _siblings(out) == ["merged", "support"]  # no temporary directories left behind


def test_sharded_output_with_index(bert_state, tmp_path):
    _, config, state = bert_state
    limit = 8 * 1024
    specs = _specs(state)
    out = write_model_directory(
        tmp_path / "merged",
        reversed(list(state.items())),
        specs,
        config=config,
        max_shard_bytes=limit,
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    n = len(plan_shards(specs, limit))
    assert n > 2 and len(shards) == n and shards[0].name == f"model-00001-of-{n:05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(i.nbytes for i in specs.values())
    assert set(index["weight_map"]) == set(state)
    for shard in shards:
        content = load_file(shard)
        too_big = [k for k in content if specs[k].nbytes > limit]
        assert sum(v.nbytes for v in content.values()) <= limit or len(content) == len(too_big) == 1
        assert all(index["weight_map"][k] == shard.name for k in content)
    model = transformers.AutoModel.from_pretrained(out)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    reread = open_checkpoint(out)
    assert all(torch.equal(reread.get(k), v) for k, v in state.items())


def test_plan_shards_keeps_order_and_isolates_big_tensors():
    specs = {
        "a": TensorInfo((2,), torch.float32),
        "big": TensorInfo((10,), torch.float32),
        "c": TensorInfo((1,), torch.float32),
    }
    assert plan_shards(specs, 16) == [["a"], ["big"], ["c"]]
    assert plan_shards(specs, 1000) == [["a", "big", "c"]]


def test_support_files_never_include_weights(bert_state, tmp_path):
    _, _, state = bert_state
    src = tmp_path / "src"
    src.mkdir()
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "merges.txt",
        "spiece.model",
        "special_tokens_map.json",
        "generation_config.json",
        "preprocessor_config.json",
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "model.safetensors.index.json",
        "notes.md",
    ):
        (src / name).write_text("x")
    out = write_model_directory(tmp_path / "o", _stream(state), _specs(state), copy_files_from=src)
    assert sorted(p.name for p in out.iterdir()) == [
        "generation_config.json", "merges.txt", "model.safetensors", "preprocessor_config.json",
        "special_tokens_map.json", "spiece.model", "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    assert (out / "model.safetensors").read_bytes() != b"x"


def test_failure_mid_stream_leaves_nothing(bert_state, tmp_path):
    _, config, state = bert_state
    with pytest.raises(RuntimeError, match="merge failed mid-way"):
        write_model_directory(
            tmp_path / "merged", _stream(state, fail_after=3), _specs(state), config=config
        )
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_stream_keeps_previous_directory(bert_state, tmp_path):
    _, config, state = bert_state
    out = write_model_directory(tmp_path / "merged", _stream(state), _specs(state), config=config)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError):
        write_model_directory(
            out, _stream(state, fail_after=5), _specs(state), overwrite=True, max_shard_bytes=4096
        )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _siblings(out) == ["merged"]


def test_spec_mismatch_aborts_cleanly(bert_state, tmp_path):
    _, _, state = bert_state
    key = next(iter(state))
    bad = {**state, key: state[key].half()}
    with pytest.raises(
        CheckpointError, match=rf"model.safetensors: tensor '{key}' is .*torch.float16"
    ):
        write_model_directory(tmp_path / "m", _stream(bad), _specs(state))
    with pytest.raises(CheckpointError, match="tensor 'stray' is not in the declared specs"):
        write_model_directory(tmp_path / "m", iter([("stray", torch.zeros(1))]), _specs(state))
    short = dict(list(state.items())[:-1])
    with pytest.raises(CheckpointError, match="tensors never written"):
        write_model_directory(tmp_path / "m", _stream(short), _specs(state))
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_needs_overwrite(bert_state, tmp_path):
    _, config, state = bert_state
    out = tmp_path / "merged"
    out.mkdir()
    write_model_directory(out, _stream(state), _specs(state))  # empty directory is fine
    with pytest.raises(CheckpointError, match=rf"^{out}: directory exists and is not empty"):
        write_model_directory(out, _stream(state), _specs(state))
    (out / "stale.txt").write_text("old")
    doubled = {k: v * 2 if v.is_floating_point() else v for k, v in state.items()}
    write_model_directory(out, _stream(doubled), _specs(state), config=config, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    assert all(torch.equal(open_checkpoint(out).get(k), v) for k, v in doubled.items())
    assert _siblings(out) == ["merged"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="exists and is not a directory"):
        write_model_directory(tmp_path / "file", _stream(state), _specs(state))
