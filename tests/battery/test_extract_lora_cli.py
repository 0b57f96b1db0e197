"""`modmerge extract-lora` as a user runs it: a good run prints the per-kind errors and the
adapter's size; bad input (every bad checkpoint `merge` refuses, a rank below 1, a used OUT, a
missing file, a pickle without --allow-pickle) is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from battery_support import assert_refused, invoke
from safetensors.torch import load_file
from test_checkpoints_bad import CASES

from modmerge.checkpoints import open_checkpoint


def test_extract_lora_writes_a_peft_adapter_and_reports_it(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    out, stats = tmp_path / "lora", tmp_path / "stats.json"
    result = invoke(["extract-lora", base, tasks[0], out, "--rank", "4", "--dtype", "bfloat16", "--stats-json", stats])
    assert result.exit_code == 0, result.output
    assert "relative Frobenius error" in result.output and "encoder.layer.*.attention.self.query" in result.output
    assert "wrote" in result.output and "adapter" in result.output and "saved whole" in result.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(base.resolve())
    figures = json.loads(stats.read_text())
    assert figures["adapter_bytes"] == (out / "adapter_model.safetensors").stat().st_size
    assert all(0 < m["relative_error"] < 1 for m in figures["modules"])
    # the adapter names its base, so modmerge opens it alone
    with open_checkpoint(out) as dense:
        assert dense.get("encoder.layer.0.attention.self.query.weight").shape == (16, 16)
    refused = invoke(["extract-lora", base, tasks[0], out])
    assert_refused(refused, str(out), "not empty")
    again = invoke(["extract-lora", base, tasks[1], out, "--overwrite", "--energy", "0.5", "--embeddings", "lora"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "adapter_config.json").read_text())["rank_pattern"]


@pytest.mark.parametrize(("make", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_extract_lora_refuses_a_bad_checkpoint_naming_it(bert_zoo, tmp_path, make, needles):
    base, tasks = bert_zoo
    bad = make(tasks[1], tmp_path / "bad-model")
    out = tmp_path / "lora"
    assert_refused(invoke(["extract-lora", base, bad, out]), str(bad), *needles, leaves=[out])


@pytest.mark.parametrize(("args", "needles"), [
    (["--rank", "0"], ["rank must be a whole number of at least 1, got 0"]),
    (["--rank", "-2"], ["got -2"]),
    (["--energy", "0"], ["energy must be in (0, 1]"]),
    (["--device", "gpu0"], ["'gpu0' is not a torch device"]),
])
def test_extract_lora_refuses_bad_options(bert_zoo, tmp_path, args, needles):
    base, tasks = bert_zoo
    out = tmp_path / "lora"
    assert_refused(invoke(["extract-lora", base, tasks[0], out, *args]), *needles, leaves=[out])


def test_extract_lora_refuses_missing_and_mismatched_models(bert_zoo, tiny_zoo_factory, tmp_path):
    base, _ = bert_zoo
    out = tmp_path / "lora"
    assert_refused(invoke(["extract-lora", base, tmp_path / "nope", out]), "nope", "no such file", leaves=[out])
    gpt2_base, _ = tiny_zoo_factory("gpt2", 1)
    assert_refused(invoke(["extract-lora", base, gpt2_base, out]), "model_type 'gpt2'", leaves=[out])
    assert_refused(invoke(["extract-lora", base, base, out]), "no linear weight differs", leaves=[out])


def test_a_used_out_dir_is_left_as_it_was(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    out = tmp_path / "lora"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_refused(invoke(["extract-lora", base, tasks[0], out]), str(out), "not empty")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lora.tmp-")]


def test_pickles_need_allow_pickle(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tasks[0] / "config.json", pickled / "config.json")
    torch.save(load_file(tasks[0] / "model.safetensors"), pickled / "pytorch_model.bin")
    out = tmp_path / "lora"
    assert_refused(invoke(["extract-lora", base, pickled, out]), "--allow-pickle", leaves=[out])
    allowed = invoke(["extract-lora", base, pickled, out, "--allow-pickle", "--rank", "2"])
    assert allowed.exit_code == 0, allowed.output
    assert (out / "adapter_model.safetensors").is_file()
