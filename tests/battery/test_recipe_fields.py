"""Wrong recipe fields through the CLI: one line naming the field, exit 2, nothing written.

Already covered elsewhere, and not repeated here: the merge schema's message per field
(tests/recipes/test_schema.py), `merge` with an out-of-range parameter, an unknown method or an
unknown field (tests/test_cli.py), search recipes of a user's own models through `search`
(tests/search/test_merge_search.py::test_cli_recipe_errors_are_one_line) and the zoo search
recipe's fields in Python (tests/search/test_search_driver.py::test_bad_search_recipe). What is
added: the field types and shapes a hand-edited YAML gets wrong, through `merge` and `search`.
"""

from __future__ import annotations

import pytest
import yaml
from battery_support import assert_refused, invoke


@pytest.fixture
def merge_recipe(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    good = {"base_model": str(base), "models": [{"model": str(t)} for t in tasks], "method": "ties"}

    def write(**changes) -> str:
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump({k: v for k, v in {**good, **changes}.items() if v is not None}))
        return str(path)

    return write


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"base_model": None}, "base_model: Field required"),
        ({"models": "task0"}, "models: Input should be a valid list"),
        ({"models": [{"model": "x", "weight": "heavy"}]}, "models.0.weight: Input should be a valid number"),
        ({"method": ["ties"]}, "method: Input should be a valid string"),
        ({"parameters": [0.2]}, "parameters: Input should be a valid dictionary"),
        ({"seed": "zero"}, "seed: Input should be a valid integer"),
        ({"dtype": "int4"}, "dtype: Input should be"),
        ({"overrides": [{"kinds": ["attn"], "metod": "ties"}]}, "overrides.0.metod: unknown field"),
        ({"overrides": [{"kinds": ["attn"], "layer_range": "0-3"}]}, "overrides.0.layer_range"),
        ({"overrides": [{"kinds": ["attn"], "layer_range": [2, 1]}]}, "layer_range [2, 1] is empty"),
        ({"tokenizer_source": 7}, "tokenizer_source 7 is not a model index"),
    ],
    ids=["no-base", "models-not-a-list", "weight-not-a-number", "method-a-list", "parameters-a-list",
         "seed-a-word", "dtype", "override-unknown-field", "layer-range-a-string", "layer-range-empty",
         "tokenizer-source"],
)
def test_merge_recipe_field(merge_recipe, tmp_path, changes, needle):
    recipe = merge_recipe(**changes)
    result = invoke(["merge", recipe, tmp_path / "merged"])
    assert result.exit_code == 2
    assert_refused(result, recipe, needle, leaves=[tmp_path / "merged"])


@pytest.mark.parametrize(
    ("text", "needle"),
    [("- base_model\n- models\n", "must be a mapping of fields, got list"), ("base_model: [base\n", "not valid YAML"),
     (None, "recipe file not found")],
    ids=["a-list", "bad-yaml", "missing-file"],
)
def test_merge_recipe_file(tmp_path, text, needle):
    recipe = tmp_path / "recipe.yaml"
    if text is not None:
        recipe.write_text(text)
    result = invoke(["merge", recipe, tmp_path / "merged"])
    assert result.exit_code == 2
    assert_refused(result, str(recipe), needle, leaves=[tmp_path / "merged"])


ZOO_SEARCH = {"zoo": "tiny", "budget": 4, "population": 2, "validation_limit": 16, "test_limit": 16}


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"budgett": 4}, "budgett: unknown field"),
        ({"population": "many"}, "population: Input should be a valid integer"),
        ({"runs": 0}, "runs: Input should be greater than or equal to 1"),
        ({"method": "ties", "parameters": {"densty": 0.2}}, "no parameter 'densty'"),
        ({"quantization": {"bitz": 8}}, "quantization has unknown field 'bitz'"),
        ({"quantization": {"bits": 0}}, "bits"),
        ({"quantization": {"mode": "sometimes"}}, "'mode' must be one of"),
        ({"granularity": "block"}, "granularity"),
        ({"executor": "slurm"}, "executor: Input should be 'local' or 'ray'"),
        ({"precision": "int8"}, "precision: Input should be"),
        ({"cache_bytes": -1}, "cache_bytes: Input should be greater than 0"),
    ],
    ids=["unknown-field", "population-a-word", "no-runs", "unknown-parameter", "quantization-unknown-field",
         "zero-bits", "quantization-mode", "granularity", "executor", "precision", "negative-cache"],
)
def test_search_recipe_field(tiny_zoo, tmp_path, changes, needle):
    recipe = tmp_path / "search.yaml"
    recipe.write_text(yaml.safe_dump({**ZOO_SEARCH, **changes}))
    out = tmp_path / "run"
    result = invoke(["search", recipe, "--out", out, "--cache", tiny_zoo.root.parent.parent])
    assert result.exit_code == 2
    assert_refused(result, str(recipe), needle, leaves=[out])
