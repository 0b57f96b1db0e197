"""open_checkpoint: files, HF directories (single and sharded), pickles and hub ids."""

from __future__ import annotations

import json
import shutil

import huggingface_hub.constants
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tiny_models import tiny_config

from modmerge.checkpoints import Checkpoint, ShardedSource, open_checkpoint
from modmerge.errors import CheckpointError


def _state(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    return {k: ckpt.get(k) for k in list(ckpt.keys())}


def test_hf_directory(bert_zoo):
    base, _ = bert_zoo
    with open_checkpoint(base) as ckpt:
        ref = load_file(base / "model.safetensors")
        assert set(ckpt.keys()) == set(ref)
        assert all(torch.equal(ckpt.get(k), v) for k, v in ref.items())
        assert ckpt.config["model_type"] == "bert"
        assert ckpt.directory == base and ckpt.files == [base / "model.safetensors"]


def test_single_safetensors_file_has_no_config(bert_zoo):
    base, _ = bert_zoo
    ckpt = open_checkpoint(str(base / "model.safetensors"))
    assert ckpt.config is None and ckpt.directory is None
    assert ckpt.label == str(base / "model.safetensors")


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.BertModel(tiny_config("bert"))
    out = tmp_path_factory.mktemp("sharded") / "bert"
    model.save_pretrained(out, max_shard_size="20KB")
    return out, model.state_dict()


def test_sharded_directory_is_one_source(sharded_dir):
    path, state = sharded_dir
    assert (path / "model.safetensors.index.json").is_file()
    ckpt = open_checkpoint(path)
    assert isinstance(ckpt.source, ShardedSource) and len(ckpt.files) > 1
    got = _state(ckpt)
    assert set(got) == set(load_file_all(path))
    for key, value in got.items():
        assert torch.equal(value, state[key]), key


def load_file_all(path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def test_missing_shard_is_a_clear_error(sharded_dir, tmp_path):
    path, _ = sharded_dir
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    victim = sorted(copy.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(
        CheckpointError, match=rf"index.json: shard file '{victim.name}' is missing"
    ):
        open_checkpoint(copy)


def test_index_naming_a_key_missing_from_its_shard(sharded_dir, tmp_path):
    path, _ = sharded_dir
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    index = json.loads((copy / "model.safetensors.index.json").read_text())
    shard = next(iter(index["weight_map"].values()))
    index["weight_map"]["ghost.weight"] = shard
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"tensor 'ghost\.weight' listed in the index is missing"
    ):
        open_checkpoint(copy)


def test_several_safetensors_without_index_refused(tmp_path):
    save_file({"a": torch.ones(1)}, tmp_path / "x.safetensors")
    save_file({"b": torch.ones(1)}, tmp_path / "y.safetensors")
    with pytest.raises(
        CheckpointError, match=r"2 \.safetensors files but no model\.safetensors\.index\.json"
    ):
        open_checkpoint(tmp_path)


def test_empty_directory_and_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no model weights found"):
        open_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such file or directory"):
        open_checkpoint(tmp_path / "nope")


# --- pickles ----------------------------------------------------------------


@pytest.fixture
def pickle_dir(tmp_path):
    state = {"w": torch.randn(3, 2), "b": torch.arange(4)}
    (tmp_path / "model").mkdir()
    torch.save(state, tmp_path / "model" / "pytorch_model.bin")
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "toy"}))
    return tmp_path / "model", state


def test_pickle_directory_refused_without_opt_in(pickle_dir):
    path, _ = pickle_dir
    with pytest.raises(
        CheckpointError,
        match=r"pytorch_model.bin: pickle .*allow_pickle=True \(CLI: --allow-pickle\)",
    ):
        open_checkpoint(path)
    with pytest.raises(CheckpointError, match="allow_pickle"):
        open_checkpoint(path / "pytorch_model.bin")


@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_pickle_allowed(pickle_dir, tmp_path, suffix):
    path, state = pickle_dir
    ckpt = open_checkpoint(path, allow_pickle=True)
    assert ckpt.config == {"model_type": "toy"}
    assert all(torch.equal(ckpt.get(k), v) for k, v in state.items())
    single = tmp_path / f"weights{suffix}"
    torch.save({"state_dict": state, "epoch": 3}, single)  # Lightning-style wrapper
    ckpt = open_checkpoint(single, allow_pickle=True)
    assert set(ckpt.keys()) == set(state) and ckpt.info("w").shape == (3, 2)


def test_pickle_with_arbitrary_objects_is_refused_even_when_allowed(tmp_path):
    torch.save({"w": torch.ones(1), "opt": torch.optim.SGD}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt: cannot load pickle checkpoint"):
        open_checkpoint(tmp_path / "evil.pt", allow_pickle=True)


def test_sharded_pickle_directory(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.zeros(3)}, tmp_path / "pytorch_model-00002-of-00002.bin")
    weight_map = {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="allow_pickle"):
        open_checkpoint(tmp_path)
    ckpt = open_checkpoint(tmp_path, allow_pickle=True)
    assert ckpt.keys() == ["a", "b"] and torch.equal(ckpt.get("b"), torch.zeros(3))


# --- hub ids through a fake local cache ---------------------------------------


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, bert_zoo):
    """A Hugging Face cache holding ``tiny-org/bert`` at refs/main, with the hub offline."""
    cache = tmp_path / "hf_cache"
    repo = cache / "models--tiny-org--bert"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(bert_zoo[0], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these at import time; the env vars alone would come too late.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return repo / "snapshots" / commit, commit


def test_hub_id_resolves_from_cache(fake_hub, bert_zoo):
    snapshot, commit = fake_hub
    ckpt = open_checkpoint("tiny-org/bert")
    assert ckpt.directory == snapshot and ckpt.config["model_type"] == "bert"
    ref = load_file(bert_zoo[0] / "model.safetensors")
    assert all(torch.equal(ckpt.get(k), v) for k, v in ref.items())
    assert open_checkpoint("tiny-org/bert", revision=commit).directory == snapshot


def test_unresolvable_hub_id_names_the_id(fake_hub):
    with pytest.raises(
        CheckpointError, match=r"^tiny-org/missing: not a local path and cannot be resolved"
    ):
        open_checkpoint("tiny-org/missing")
    with pytest.raises(CheckpointError, match=r"^tiny-org/bert@v9: not a local path"):
        open_checkpoint("tiny-org/bert", revision="v9")
