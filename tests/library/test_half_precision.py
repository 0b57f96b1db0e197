"""A bfloat16 checkpoint: eq. (8)'s b_plus is 16 and modules keep the checkpoint's dtype."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modmerge.experts.grouping import GroupingMatrix
from modmerge.library import build_library
from modmerge.objectives.performance import modules_of
from modmerge.objectives.problem import MergeProblem
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.search.driver import run_search_recipe
from modmerge.search.recipe import SearchRecipe
from modmerge.tasks.suite_source import open_suite


@pytest.fixture(scope="module")
def bf16_suite(own_suite, tmp_path_factory) -> Path:
    """The own-models suite with every checkpoint's floating tensors stored as bfloat16."""
    root = tmp_path_factory.mktemp("bf16") / "suite"
    shutil.copytree(own_suite.parent, root)
    for path in root.rglob("*.safetensors"):
        state = load_file(path)
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}, path,
                  metadata={"format": "pt"})
    for path in root.rglob("config.json"):
        config = json.loads(path.read_text())
        config["torch_dtype"] = config["dtype"] = "bfloat16"
        path.write_text(json.dumps(config))
    return root / own_suite.name


def _problem(suite: Path, mode: str) -> MergeProblem:
    return MergeProblem.from_source(open_suite(suite), MethodCall.build("task_arithmetic", {}),
                                    QuantConfig(bits=8, mode=mode), limit=8, prefix_cache_bytes=0)


def test_an_8_bit_unit_costs_half_of_a_bf16_unit(bf16_suite):
    full, quantised = _problem(bf16_suite, "never"), _problem(bf16_suite, "always")
    assert full.full_bits == 16 == quantised.full_bits
    merged = GroupingMatrix.all_merged(full.n_tasks, full.n_units)
    d = full.body_parameters
    for unit in full.unit_ids[:4]:
        key = next(k for k in modules_of(merged, full.unit_ids) if k.unit == unit)
        numel = sum(full.pretrained[k].numel() for k in full.units[unit])
        tensors = len(full.units[unit])  # tensor granularity: one quantisation unit per tensor
        assert full.module_cost(key) == pytest.approx(16 * numel / (16 * d))  # b_u = b_plus: no metadata
        # eq. (8): 8 d_u / (16 d) + 2 / d per unit = half of full, plus the metadata
        assert quantised.module_cost(key) == pytest.approx(8 * numel / (16 * d) + 2 * tensors / d)
        assert quantised.module_cost(key) - 2 * tensors / d == pytest.approx(0.5 * full.module_cost(key))
        module = full.builder.module(key)
        assert all(t.full_part.dtype == torch.bfloat16 for t in module.tensors.values())


def test_library_stores_unquantised_units_at_the_checkpoints_bytes(bf16_suite, tmp_path):
    recipe = SearchRecipe(suite=str(bf16_suite), method="task_arithmetic", budget=2, population=2, runs=1,
                          validation_limit=8, test_limit=8, surrogate=False, init="random",
                          quantization={"bits": 8, "granularity": "tensor", "mode": "never"}, prefix_cache_bytes=0)
    run_search_recipe(recipe, tmp_path / "run", source=open_suite(bf16_suite))
    library = build_library(tmp_path / "run", tmp_path / "lib", source=open_suite(bf16_suite))
    manifest = library.manifest
    assert manifest.pretrained_body_bits == 16 * manifest.body_parameters
    pretrained = load_file(bf16_suite.parent / "models" / "base" / "model.safetensors")
    for digest, entry in manifest.modules.items():
        blob = load_file(tmp_path / "lib" / "blobs" / f"{digest}.safetensors")
        stored = {name: blob[f"{name}.full"] for name in entry.tensors}
        assert all(v.dtype == torch.bfloat16 for v in stored.values())
        assert set(entry.dtypes.values()) == {"bfloat16"}
        # the data bytes equal the checkpoint's bytes for the same tensors (2 bytes per value)
        assert sum(v.nbytes for v in stored.values()) == sum(pretrained[name].nbytes for name in entry.tensors)
