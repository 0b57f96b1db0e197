"""Bad checkpoints given to `modmerge merge`: refused with one line naming the file (and the
tensor), exit 2, no traceback, no output directory.

The library-level messages are pinned in tests/checkpoints/test_validate_checkpoints.py (keys,
shapes, dtypes, architecture, truncated and corrupt files, NaN/Inf) and the benign pickle opt-in
in tests/test_cli.py::test_pickle_needs_opt_in; these cases are what a user of the CLI sees.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from battery_support import assert_refused, invoke
from safetensors.torch import load_file, save_file

EMBEDDING = "embeddings.word_embeddings.weight"
POOLER = "pooler.dense.weight"


def _recipe(tmp_path: Path, base: Path, models: list[Path]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"base_model": str(base), "models": [{"model": str(m)} for m in models],
                                    "method": "ties", "parameters": {"density": 0.5}}))
    return path


def _edited(src: Path, dst: Path, tensors: Callable[[dict], dict]) -> Path:
    shutil.copytree(src, dst)
    save_file(tensors(load_file(dst / "model.safetensors")), dst / "model.safetensors")
    return dst


def _bigger_vocabulary(src: Path, dst: Path) -> Path:
    """A model whose tokenizer gained a word: one more embedding row, and the config says so."""
    model = _edited(src, dst, lambda sd: {**sd, EMBEDDING: torch.cat([sd[EMBEDDING], sd[EMBEDDING][:1]])})
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 1}))
    return model


def _poisoned(value: float) -> Callable[[Path, Path], Path]:
    def make(src: Path, dst: Path) -> Path:
        def poison(sd: dict) -> dict:
            weight = sd[POOLER].clone()
            weight[3, 5] = value
            return {**sd, POOLER: weight}

        return _edited(src, dst, poison)

    return make


def _cut(keep: Callable[[bytes], bytes]) -> Callable[[Path, Path], Path]:
    def make(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        weights = dst / "model.safetensors"
        weights.write_bytes(keep(weights.read_bytes()))
        return dst

    return make


# (case, how the bad copy of a fine-tuned model is made, what the one line must name besides it)
CASES = [
    ("vocabulary", _bigger_vocabulary, [EMBEDDING, "(65, 16)", "(64, 16)"]),
    ("missing-tensor", lambda s, d: _edited(s, d, lambda sd: {k: v for k, v in sd.items() if k != POOLER}),
     ["missing 1 tensor", POOLER]),
    ("extra-tensor", lambda s, d: _edited(s, d, lambda sd: {**sd, "adapter.extra.bias": torch.zeros(3)}),
     ["the base lacks", "adapter.extra.bias"]),
    ("shape", lambda s, d: _edited(s, d, lambda sd: {**sd, POOLER: sd[POOLER][:, :8].contiguous()}),
     [POOLER, "shape (16, 8)"]),
    ("nan-weight", _poisoned(float("nan")), [POOLER, "1 NaN, 0 Inf"]),
    ("inf-weight", _poisoned(float("-inf")), [POOLER, "0 NaN, 1 Inf"]),
    ("truncated", _cut(lambda data: data[:-64]), ["model.safetensors", "truncated"]),
    ("corrupt-header", _cut(lambda data: data[:8] + b"{garbage" + data[16:]), ["model.safetensors", "corrupt"]),
    ("empty-file", _cut(lambda data: b""), ["model.safetensors", "not a safetensors file"]),
]


@pytest.mark.parametrize(("make", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_merge_refuses_a_bad_checkpoint_naming_it(bert_zoo, tmp_path, make, needles):
    base, tasks = bert_zoo
    bad = make(tasks[1], tmp_path / "bad-model")
    out = tmp_path / "merged"
    result = invoke(["merge", _recipe(tmp_path, base, [tasks[0], bad]), out])
    assert result.exit_code == 2
    assert_refused(result, str(bad), *needles, leaves=[out])


class _RunsAShellCommand:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickled_model(src: Path, dst: Path, payload: object) -> Path:
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    torch.save(payload, dst / "pytorch_model.bin")
    return dst


@pytest.mark.parametrize("allow_pickle", [False, True], ids=["refused", "allow-pickle"])
@pytest.mark.parametrize("command", ["merge", "inspect"])
def test_a_malicious_pickle_never_runs(bert_zoo, tmp_path, command, allow_pickle):
    """--allow-pickle loads with weights_only=True, so even an opted-in pickle cannot call os.system."""
    base, tasks = bert_zoo
    marker = tmp_path / "PWNED"
    evil = _pickled_model(tasks[0], tmp_path / "evil", {POOLER: _RunsAShellCommand(marker)})
    out = tmp_path / "merged"
    args = ["merge", _recipe(tmp_path, base, [evil]), out] if command == "merge" else ["inspect", evil]
    result = invoke([*args, *(["--allow-pickle"] if allow_pickle else [])])
    needle = "cannot load pickle checkpoint" if allow_pickle else "--allow-pickle"
    assert_refused(result, str(evil / "pytorch_model.bin"), needle, leaves=[out])
    assert not marker.exists()


def test_a_truncated_pickle_is_one_line_even_when_allowed(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    model = _pickled_model(tasks[0], tmp_path / "pickled", load_file(tasks[0] / "model.safetensors"))
    weights = model / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[:500])
    out = tmp_path / "merged"
    result = invoke(["merge", _recipe(tmp_path, base, [model]), out, "--allow-pickle"])
    assert_refused(result, str(weights), "cannot load pickle checkpoint", leaves=[out])
