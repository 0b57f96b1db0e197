"""NaN and Inf method parameters and model weights: refused with one line naming the method and
the parameter (or the model), exit 2, nothing written.

A range check written with ``<`` and ``>`` lets NaN through (every comparison with NaN is false):
``ties {scaling: .nan}`` used to write an all-NaN model, ``ties {density: .nan}`` to crash. Every
numeric parameter of every registered method is tried, through ``merge`` and through ``search``
(a zoo recipe and a suite recipe: both read parameters through the same registry specs).
"""

from __future__ import annotations

import math

import pytest
import yaml
from battery_support import assert_refused, invoke

from modmerge.merging import REGISTRY

NUMERIC = [(m.name, p.name) for m in REGISTRY for p in m.params if p.type in (float, int)]
VALUES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _write(path, fields: dict) -> str:
    path.write_text(yaml.safe_dump(fields))
    return str(path)


@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
@pytest.mark.parametrize(("method", "parameter"), NUMERIC, ids=[f"{m}-{p}" for m, p in NUMERIC])
def test_merge_refuses_a_non_finite_parameter(bert_zoo, tmp_path, method, parameter, value):
    base, tasks = bert_zoo
    recipe = _write(tmp_path / "recipe.yaml", {"base_model": str(base), "models": [{"model": str(t)} for t in tasks[:2]],
                                               "method": method, "parameters": {parameter: value}})
    out = tmp_path / "merged"
    result = invoke(["merge", recipe, out])
    assert result.exit_code == 2
    assert_refused(result, recipe, f"method '{method}' parameter '{parameter}'", "finite", leaves=[out])


def test_merge_refuses_a_non_finite_parameter_in_an_override(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    recipe = _write(tmp_path / "recipe.yaml", {
        "base_model": str(base), "models": [{"model": str(t)} for t in tasks], "method": "task_arithmetic",
        "overrides": [{"kinds": ["attn"], "method": "breadcrumbs", "parameters": {"gamma": math.nan}}]})
    out = tmp_path / "merged"
    result = invoke(["merge", recipe, out])
    assert_refused(result, recipe, "overrides.0", "method 'breadcrumbs' parameter 'gamma'", leaves=[out])


@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
def test_merge_refuses_a_non_finite_model_weight(bert_zoo, tmp_path, value):
    base, tasks = bert_zoo
    models = [{"model": str(tasks[0])}, {"model": str(tasks[1]), "weight": value}]
    recipe = _write(tmp_path / "recipe.yaml", {"base_model": str(base), "models": models, "method": "task_arithmetic"})
    out = tmp_path / "merged"
    result = invoke(["merge", recipe, out])
    assert result.exit_code == 2
    assert_refused(result, recipe, "models.1", f"weight of model '{tasks[1]}'", "finite", leaves=[out])


@pytest.mark.parametrize("form", ["zoo", "suite"])
@pytest.mark.parametrize(("method", "parameter"), [("ties", "scaling"), ("dare", "drop_rate"), ("pcb", "drop_ratio"),
                                                   ("breadcrumbs", "gamma"), ("task_arithmetic", "scaling")])
def test_search_refuses_a_non_finite_parameter(tmp_path, form, method, parameter):
    # the recipe is refused before its zoo or suite is opened, so neither needs to exist
    source = {"zoo": "tiny"} if form == "zoo" else {"suite": str(tmp_path / "suite.yaml")}
    recipe = _write(tmp_path / "search.yaml", {**source, "budget": 4, "population": 2, "method": method,
                                               "parameters": {parameter: math.nan}})
    out = tmp_path / "run"
    result = invoke(["search", recipe, "--out", out, "--cache", tmp_path / "cache"])
    assert result.exit_code == 2
    assert_refused(result, recipe, f"method '{method}' parameter '{parameter}'", "finite", leaves=[out])
