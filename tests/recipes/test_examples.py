"""Every bundled example recipe is valid against the schema and the merge registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modmerge.recipes import parse_recipe

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_recipe_parses(path):
    recipe = parse_recipe(yaml.safe_load(path.read_text()), source=str(path))
    assert recipe.models
