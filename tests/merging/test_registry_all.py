"""Every registered method, new or old: documented specs and runnable defaults."""

from __future__ import annotations

import math

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging import REGISTRY, get_method

NAMES = REGISTRY.names()
MERGEKIT = (
    "slerp", "nuslerp", "multislerp", "karcher", "model_stock", "della", "della_linear", "sce",
    "nearswap", "arcee_fusion", "breadcrumbs_ties", "dare_linear", "dare_ties",
)


def _extra(method, seed: int = 0) -> dict:
    return {"generator": torch.Generator().manual_seed(seed)} if method.randomized else {}


def test_mergekit_methods_are_registered_once():
    assert set(MERGEKIT) <= set(NAMES)
    assert len(NAMES) == len(set(NAMES))


@pytest.mark.parametrize("name", NAMES)
def test_summary_citation_and_param_specs(name):
    method = get_method(name)
    assert method.summary and "\n" not in method.summary
    assert method.citation
    for spec in method.params:
        assert spec.help, f"{name}.{spec.name} has no help"
        assert isinstance(spec.default, spec.type)
        if spec.type is str:
            assert spec.choices and spec.default in spec.choices
        elif spec.type is not bool:
            assert spec.low is not None and spec.high is not None and spec.low <= spec.default <= spec.high
            lo, hi = spec.search or (spec.low, spec.high)
            assert spec.low <= lo < hi <= spec.high and math.isfinite(hi), f"{name}.{spec.name} search range"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_models", [2, 3])
def test_defaults_run_on_small_tensors(name, n_models):
    method = get_method(name)
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, generator=gen)
    models = [base + 0.1 * torch.randn(4, 6, generator=gen) for _ in range(n_models)]
    if method.max_models is not None and n_models > method.max_models:
        with pytest.raises(MergeMethodError, match=name):
            method(base, models, **method.validate_params(None), **_extra(method))
        return
    out = method(base, models, **method.validate_params(None), **_extra(method))
    assert out.shape == base.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
