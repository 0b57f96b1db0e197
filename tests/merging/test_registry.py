"""The static merge methods as the registry sees them: names, parameter specs, error messages."""

from __future__ import annotations

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging import REGISTRY, get_method

STATIC = ("weight_averaging", "task_arithmetic", "ties", "dare", "breadcrumbs", "pcb")

# name -> {param: default}: the documented defaults, pinned.
DEFAULTS = {
    "weight_averaging": {},
    "task_arithmetic": {"scaling": 0.3},
    "ties": {"density": 0.2, "scaling": 1.0, "scope": "tensor", "count": "round", "zero_sign": "plus"},
    "dare": {"drop_rate": 0.9, "consensus": "none", "scaling": 0.3},
    "breadcrumbs": {"density": 0.1, "gamma": 0.01, "consensus": "none", "scaling": 0.3, "rank": "tensor",
                    "count": "round"},
    "pcb": {"drop_ratio": 0.9, "scaling": 1.0, "scope": "tensor", "variant": "paper"},
}

ACCEPTS = {
    "weight_averaging": {"weights"},
    "task_arithmetic": {"weights"},
    "ties": {"weights", "thresholds"},
    "dare": {"weights", "generator"},
    "breadcrumbs": {"weights"},
    "pcb": set(),
}


@pytest.mark.parametrize("name", STATIC)
def test_registered_with_citation_and_defaults(name):
    method = get_method(name)
    assert name in REGISTRY
    assert "arXiv:" in method.citation
    assert method.summary
    assert method.defaults() == DEFAULTS[name]
    assert set(method.accepts) == ACCEPTS[name]


def test_linear_is_an_alias_of_weight_averaging():
    assert get_method("linear") is get_method("weight_averaging")


@pytest.mark.parametrize("name", STATIC)
def test_param_specs_have_types_ranges_and_search_ranges(name):
    for spec in get_method(name).params:
        assert spec.help
        assert isinstance(spec.default, spec.type)
        if spec.type is str:
            assert spec.choices and spec.default in spec.choices
            continue
        assert spec.type is float
        assert spec.low is not None and spec.high is not None and spec.low <= spec.default <= spec.high
        assert spec.search is not None
        lo, hi = spec.search
        assert spec.low <= lo < hi <= spec.high, f"{name}.{spec.name} search range outside its bounds"


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("ties", {"densty": 0.5}, "densty"),
        ("ties", {"density": 1.5}, "density"),
        ("dare", {"drop_rate": -0.1}, "drop_rate"),
        ("dare", {"consensus": "majority"}, "consensus"),
        ("breadcrumbs", {"gamma": "high"}, "gamma"),
        ("pcb", {"drop_ratio": True}, "drop_ratio"),
        ("task_arithmetic", {"lambda": 0.3}, "lambda"),
        ("weight_averaging", {"scaling": 1.0}, "scaling"),
    ],
)
def test_bad_params_raise_naming_the_field(name, params, match):
    with pytest.raises(MergeMethodError, match=match) as info:
        get_method(name).validate_params(params)
    assert "\n" not in str(info.value)
    assert name in str(info.value)


@pytest.mark.parametrize("name", STATIC)
def test_defaults_run_on_a_tiny_tensor(name):
    method = get_method(name)
    base = torch.zeros(8)
    models = [torch.linspace(-1, 1, 8), torch.linspace(1, -0.5, 8)]
    extra = {"generator": torch.Generator().manual_seed(0)} if "generator" in method.accepts else {}
    out = method(base, models, **method.validate_params(None), **extra)
    assert out.shape == base.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
