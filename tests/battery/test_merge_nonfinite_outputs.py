"""Merged values that are NaN or Inf though every input is finite: refused with one line naming the
tensor and the method, exit 2, nothing written, whatever the method.

Only linear merges used to scan their output (their inputs' NaN/Inf reach it, so one scan stands
for T+1); a TIES merge whose output overflowed float16 was written with Inf in it.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from battery_support import assert_refused, invoke
from safetensors.torch import load_file, save_file

from modmerge.merging import REGISTRY, MergeMethod
from modmerge.merging.statistics import save_statistics

EMBEDDING = "embeddings.word_embeddings.weight"  # the one (64, 16) tensor of the tiny BERT
POOLER = "pooler.dense.weight"


def _recipe(tmp_path, base, models, **fields) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"base_model": str(base), "models": models, **fields}))
    return str(path)


@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_method_output_is_scanned(bert_zoo, tmp_path, monkeypatch, name):
    """Each method stands in for one that goes wrong: it returns the base with one NaN and one Inf
    in the word embeddings, so only the scan of the merged output can find them."""
    base, tasks = bert_zoo

    def broken(self, b, ts, **kwargs):
        out = b.float().clone()
        if tuple(b.shape) == (64, 16):
            out[0, 0], out[1, 1] = float("nan"), float("inf")
        return out

    monkeypatch.setattr(MergeMethod, "__call__", broken)
    models = []
    for i, task in enumerate(tasks[:2]):
        entry = {"model": str(task)}
        if REGISTRY.get(name).needs:  # read, never used by the stand-in
            entry["statistics"] = str(save_statistics(tmp_path / f"stats{i}.safetensors", {"unused": torch.ones(1)}))
        models.append(entry)
    out = tmp_path / "merged"
    result = invoke(["merge", _recipe(tmp_path, base, models, method=name), out])
    assert result.exit_code == 2
    assert_refused(result, f"tensor '{EMBEDDING}'", f"method '{name}'", "1 NaN, 1 Inf", "inputs are finite",
                   leaves=[out])


def test_a_ties_merge_that_overflows_float16_is_refused(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    big = tmp_path / "big"
    shutil.copytree(tasks[0], big)
    weights = load_file(big / "model.safetensors")
    weights[POOLER] = weights[POOLER].clone()
    weights[POOLER][3, 5] = 60000.0  # finite in float32 and float16; x4 is not in float16
    save_file(weights, big / "model.safetensors")
    out = tmp_path / "merged"
    recipe = _recipe(tmp_path, base, [{"model": str(big)}, {"model": str(tasks[1])}], method="ties",
                     parameters={"density": 1.0, "scaling": 4.0}, dtype="float16")
    result = invoke(["merge", recipe, out])
    assert result.exit_code == 2
    assert_refused(result, f"tensor '{POOLER}'", "method 'ties'", "0 NaN, 1 Inf", "torch.float16", leaves=[out])
