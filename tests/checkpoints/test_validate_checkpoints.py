"""validate_checkpoints (structure, before any output) and check_finite (values, while streaming)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modmerge.checkpoints import check_finite, open_checkpoint, validate_checkpoints
from modmerge.errors import CheckpointError, CompatibilityError


def _edit(src: Path, dst: Path, *, tensors=None, config=None) -> Path:
    """Copy a model directory, then rewrite its tensors and/or config."""
    shutil.copytree(src, dst)
    if tensors is not None:
        state = tensors(load_file(dst / "model.safetensors"))
        save_file(state, dst / "model.safetensors")
    if config is not None:
        data = json.loads((dst / "config.json").read_text())
        data.update(config)
        (dst / "config.json").write_text(json.dumps(data))
    return dst


def test_matching_zoo_passes(bert_zoo):
    base, tasks = bert_zoo
    validate_checkpoints(open_checkpoint(base), [open_checkpoint(t) for t in tasks])


def test_missing_and_extra_keys_are_listed(bert_zoo, tmp_path):
    base, tasks = bert_zoo

    def drop_four_add_one(sd):
        for key in sorted(sd)[:4]:
            del sd[key]
        sd["extra.weight"] = torch.zeros(1)
        return sd

    bad = _edit(tasks[0], tmp_path / "bad", tensors=drop_four_add_one)
    dropped = sorted(load_file(base / "model.safetensors"))[:4]
    with pytest.raises(CompatibilityError) as info:
        validate_checkpoints(
            open_checkpoint(base), [open_checkpoint(tasks[1]), open_checkpoint(bad)]
        )
    msg = str(info.value)
    assert msg.startswith(f"{bad}: missing 4 tensor(s) the base has: ")
    assert all(repr(k) in msg for k in dropped[:3]) and "and 1 more" in msg
    assert "1 tensor(s) the base lacks: 'extra.weight'" in msg and "\n" not in msg


def test_keys_subset_only_checks_those(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    victim = "pooler.dense.weight"
    bad = _edit(
        tasks[0], tmp_path / "bad", tensors=lambda sd: {k: v for k, v in sd.items() if k != victim}
    )
    keep = [k for k in list(open_checkpoint(base).keys()) if k != victim]
    validate_checkpoints(open_checkpoint(base), [open_checkpoint(bad)], keys=keep)
    with pytest.raises(
        CompatibilityError, match=rf"{bad}: missing 1 tensor\(s\) the base has: '{victim}'"
    ):
        validate_checkpoints(open_checkpoint(base), [open_checkpoint(bad)], keys=[victim])
    with pytest.raises(CompatibilityError, match="base lacks requested tensors 'nope'"):
        validate_checkpoints(open_checkpoint(base), [open_checkpoint(bad)], keys=["nope"])


def test_shape_mismatch_names_file_tensor_and_shapes(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    key = "pooler.dense.bias"
    bad = _edit(tasks[0], tmp_path / "bad", tensors=lambda sd: {**sd, key: torch.zeros(17)})
    with pytest.raises(
        CompatibilityError, match=rf"^{bad}: tensor '{key}' has shape \(17,\), base .* has \(16,\)$"
    ):
        validate_checkpoints(open_checkpoint(base), [open_checkpoint(bad)])


def test_dtype_mismatch_names_file_tensor_and_dtypes(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    key = "pooler.dense.bias"
    bad = _edit(tasks[0], tmp_path / "bad", tensors=lambda sd: {**sd, key: sd[key].half()})
    with pytest.raises(
        CompatibilityError,
        match=rf"{bad}: tensor '{key}' has dtype torch.float16, base .* has torch.float32",
    ):
        validate_checkpoints(open_checkpoint(base), [open_checkpoint(bad)])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' differs from base 'bert'"),
        (
            {"architectures": ["GPT2Model"]},
            "architectures ['GPT2Model'] differs from base ['BertModel']",
        ),
        ({"hidden_size": 32}, "hidden_size 32 differs from base 16"),
        ({"num_hidden_layers": 3}, "num_hidden_layers 3 differs from base 2"),
    ],
)
def test_architecture_mismatch(bert_zoo, tmp_path, change, message):
    base, tasks = bert_zoo
    bad = _edit(tasks[0], tmp_path / "bad", config=change)
    with pytest.raises(CompatibilityError) as info:
        validate_checkpoints(open_checkpoint(base), [open_checkpoint(bad)])
    assert str(info.value) == f"{bad / 'config.json'}: {message}"


def test_architecture_skipped_without_configs(bert_zoo):
    base, tasks = bert_zoo
    bare = open_checkpoint(tasks[0] / "model.safetensors")
    validate_checkpoints(open_checkpoint(base), [bare])


def test_different_architectures_of_the_zoo(tiny_zoo_factory, bert_zoo):
    gpt_base, _ = tiny_zoo_factory("gpt2", 1)
    base, _ = bert_zoo
    with pytest.raises(
        CompatibilityError, match=r"gpt2.*/config.json: model_type 'gpt2' differs from base 'bert'"
    ):
        validate_checkpoints(open_checkpoint(base), [open_checkpoint(gpt_base)])


def test_truncated_and_corrupt_files_fail_on_open(bert_zoo, tmp_path):
    _, tasks = bert_zoo
    bad = shutil.copytree(tasks[0], tmp_path / "bad")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(
        CheckpointError, match=rf"{weights}: tensor '.*' ends at data byte .*truncated"
    ):
        open_checkpoint(bad)
    weights.write_bytes(weights.read_bytes()[:8] + b"\xff" * 40)
    with pytest.raises(CheckpointError, match=rf"{weights}: corrupt"):
        open_checkpoint(bad)


@pytest.mark.parametrize(
    ("values", "counts"),
    [([1.0, float("nan"), 2.0], "1 NaN, 0 Inf"), ([float("inf"), float("-inf")], "0 NaN, 2 Inf")],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float8_e5m2])
def test_check_finite_rejects_nan_inf(values, counts, dtype):
    tensor = torch.tensor(values).to(dtype)
    with pytest.raises(
        CheckpointError,
        match=rf"^task0/model.safetensors: tensor 'w.q' has NaN/Inf values \({counts}\)$",
    ):
        check_finite(tensor, label="task0/model.safetensors", key="w.q")


def test_check_finite_accepts_finite_and_integer_tensors():
    check_finite(torch.randn(5, 5), label="f", key="k")
    check_finite(torch.arange(5), label="f", key="k")
    check_finite(torch.zeros(0), label="f", key="k")
