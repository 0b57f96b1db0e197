"""Every registered merge method is usable as F in the MERGE search and as a baselines row."""

from __future__ import annotations

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.experts.modules import ExpertBuilder, ModuleKey
from modmerge.merging import REGISTRY, get_method
from modmerge.objectives.baselines import BASELINES, merge_bodies, run_baselines
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall

NAMES = REGISTRY.names()


def test_every_method_is_a_baselines_row_and_every_grid_validates():
    assert {b.method for b in BASELINES if b.method} == set(NAMES)
    assert len({b.name for b in BASELINES}) == len(BASELINES)
    for baseline in BASELINES:
        if baseline.method is not None:
            for params in baseline.grid():
                MethodCall.build(baseline.method, params)


def _states(n_tasks: int):
    gen = torch.Generator().manual_seed(2)
    pretrained = {"layer.weight": torch.randn(5, 4, generator=gen), "layer.bias": torch.randn(5, generator=gen)}
    tasks = [{k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in pretrained.items()} for _ in range(n_tasks)]
    return pretrained, tasks


def _first_grid_point(name: str) -> dict:
    """A representative setting: the first grid point of the method's baselines row."""
    row = next(b for b in BASELINES if b.method == name)
    return row.grid(points=2)[0]


@pytest.mark.parametrize("name", NAMES)
def test_usable_as_f_for_a_two_task_module_and_as_a_baselines_merge(name):
    pretrained, tasks = _states(2)
    call = MethodCall.build(name, _first_grid_point(name))
    builder = ExpertBuilder(pretrained, tasks, {"layer": list(pretrained)}, call, QuantConfig(mode="never"))
    module = builder.dense(ModuleKey(unit="layer", members=(0, 1)))
    assert all(torch.isfinite(t).all() for t in module.values())
    merged = merge_bodies(pretrained, tasks, list(pretrained), call)
    assert set(merged) == set(pretrained)
    torch.testing.assert_close(merged["layer.weight"], module["layer.weight"])


@pytest.mark.parametrize("name", [n for n in NAMES if get_method(n).max_models is not None])
def test_a_search_over_more_tasks_than_f_merges_fails_up_front(name):
    pretrained, tasks = _states(3)
    with pytest.raises(MergeMethodError, match="at most 2 models") as info:
        ExpertBuilder(pretrained, tasks, {"layer": list(pretrained)}, MethodCall.build(name, {}), QuantConfig())
    assert "\n" not in str(info.value)


def test_baselines_skip_rows_whose_method_cannot_merge_every_task(tiny_zoo, caplog):
    rows = [b for b in BASELINES if b.method in ("slerp", "nearswap")]
    assert run_baselines(tiny_zoo, baselines=rows, val_limit=4, test_limit=4) == []
    assert "SLERP skipped: slerp merges at most 2 models" in caplog.text
