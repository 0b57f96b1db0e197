"""Recipes: the typed YAML schema, per-tensor planning and the streaming executor behind `modmerge merge`."""

from modmerge.recipes.execute import MergeResult, merged_tensors, run_recipe
from modmerge.recipes.plan import MethodCall, plan_for_component, plan_tensors
from modmerge.recipes.schema import (
    MergeRecipe,
    ModelEntry,
    Override,
    dump_recipe,
    load_recipe,
    parse_recipe,
)

__all__ = [
    "MergeRecipe",
    "MergeResult",
    "MethodCall",
    "ModelEntry",
    "Override",
    "dump_recipe",
    "load_recipe",
    "merged_tensors",
    "parse_recipe",
    "plan_for_component",
    "plan_tensors",
    "run_recipe",
]
