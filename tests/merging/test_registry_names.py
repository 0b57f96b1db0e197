"""The registry's keyword-named parameters (``lambda_`` is ``lambda``) and ``max_models``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.registry import MergeRegistry, Param, merge_method


def _registry_with_scaled_sum() -> MergeRegistry:
    registry = MergeRegistry()

    @merge_method("scaled_sum", summary="s", citation="c", max_models=2, registry=registry)
    def scaled_sum(
        base: torch.Tensor,
        tensors: Sequence[torch.Tensor],
        *,
        lambda_: Annotated[float, Param(low=0.0, high=2.0, help="scale")] = 1.0,
        weights: Sequence[float] | None = None,
    ) -> torch.Tensor:
        return base + lambda_ * sum(tensors)

    return registry


def test_a_keyword_parameter_is_registered_without_its_underscore():
    method = _registry_with_scaled_sum().get("scaled_sum")
    assert method.param_names == ("lambda",)
    assert method.defaults() == {"lambda": 1.0}
    assert method.validate_params({"lambda": 0.5}) == {"lambda": 0.5}
    out = method(torch.zeros(2), [torch.ones(2)], **{"lambda": 0.5})
    assert torch.equal(out, torch.full((2,), 0.5))
    assert "lambda (float" in method.help_text()


def test_the_python_spelling_is_not_a_recipe_name():
    method = _registry_with_scaled_sum().get("scaled_sum")
    with pytest.raises(MergeMethodError, match="no parameter 'lambda_'"):
        method.validate_params({"lambda_": 0.5})


def test_max_models_is_recorded_and_shown():
    method = _registry_with_scaled_sum().get("scaled_sum")
    assert method.max_models == 2
    assert "at most 2 models" in method.help_text()
