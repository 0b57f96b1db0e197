"""Recipe schema: valid recipes parse and round-trip; every wrong field is one line naming it."""

from __future__ import annotations

import pytest
import yaml

from modmerge.errors import RecipeError
from modmerge.recipes.schema import dump_recipe, load_recipe, parse_recipe

GOOD = {
    "base_model": "base",
    "models": [{"model": "a"}, {"model": "b", "weight": 0.5}],
    "method": "ties",
    "parameters": {"density": 0.2, "scaling": 1.0},
    "overrides": [
        {"kinds": ["norm"], "method": "weight_averaging"},
        {"kinds": ["attn"], "layer_range": [0, 3], "parameters": {"density": 0.5}},
    ],
    "dtype": "bfloat16",
}


def test_good_recipe_parses_and_round_trips():
    recipe = parse_recipe(GOOD)
    assert recipe.method == "ties"
    assert recipe.models[1].weight == 0.5
    assert recipe.overrides[1].layer_range == (0, 3)
    again = parse_recipe(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"methd": "ties"}, "methd: unknown field"),
        ({"method": "no_such"}, "unknown merge method 'no_such'"),
        ({"parameters": {"densty": 0.2}}, "no parameter 'densty'"),
        ({"parameters": {"density": 1.5}}, "parameter 'density' must be <= 1"),
        ({"parameters": {"density": "high"}}, "parameter 'density' must be a number"),
        ({"models": []}, "models: List should have at least 1 item"),
        ({"dtype": "int8"}, "dtype: Input should be"),
        ({"overrides": [{"method": "ties"}]}, "needs at least one of kinds, layer_range, components"),
        ({"overrides": [{"kinds": ["attention"]}]}, "overrides.0.kinds.0"),
        ({"overrides": [{"kinds": ["attn"], "layer_range": [3, 3]}]}, "is empty"),
        ({"overrides": [{"kinds": ["attn"], "parameters": {"drop": 1}}]}, "overrides.0"),
        ({"tokenizer_source": 5}, "tokenizer_source 5 is not a model index"),
        ({"models": [{"model": "a", "wieght": 1}]}, "models.0.wieght: unknown field"),
    ],
)
def test_bad_recipe_is_one_line_naming_the_field(change, expected):
    with pytest.raises(RecipeError) as info:
        parse_recipe({**GOOD, **change}, source="r.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("r.yaml: ")
    assert expected in message


def test_not_a_mapping():
    with pytest.raises(RecipeError, match="must be a mapping"):
        parse_recipe(["base_model"])


def test_load_resolves_relative_paths_and_reports_bad_yaml(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({**GOOD, "base_model": "base"}))
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.base_model == str(tmp_path / "base")
    assert recipe.models[0].model == "a"  # not a local path: kept as given (a hub id)
    (tmp_path / "bad.yaml").write_text("base_model: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
