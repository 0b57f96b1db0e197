"""Which merge method and parameters apply to each tensor, from a recipe and its overrides.

>>> from modmerge.components import Component
>>> plan_for_component(recipe, Component(stack="", layer=2, kind="attn"))  # doctest: +SKIP
MethodCall(method='ties', params=(('density', 0.5), ('scaling', 1.0)))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from modmerge.components import Component, ComponentMap
from modmerge.merging import MergeMethod, get_method
from modmerge.recipes.schema import MergeRecipe, Override


@dataclass(frozen=True)
class MethodCall:
    """A method name with validated parameters, hashable so equal calls can be grouped or cached."""

    method: str
    params: tuple[tuple[str, Any], ...]

    @property
    def merge_method(self) -> MergeMethod:
        return get_method(self.method)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @classmethod
    def build(cls, method: str, params: Mapping[str, Any] | None) -> MethodCall:
        resolved = get_method(method)
        return cls(method=resolved.name, params=tuple(sorted(resolved.validate_params(params).items())))


def _matches(override: Override, component: Component) -> bool:
    if override.kinds is not None and component.kind not in override.kinds:
        return False
    if override.layer_range is not None:
        start, end = override.layer_range
        if component.layer is None or not start <= component.layer < end:
            return False
    return override.components is None or any(fnmatchcase(component.id, pat) for pat in override.components)


def plan_for_component(recipe: MergeRecipe, component: Component) -> MethodCall:
    """The call for one component: the recipe's method, then every matching override in order."""
    method, params = recipe.method, dict(recipe.parameters)
    for override in recipe.overrides:
        if not _matches(override, component):
            continue
        if override.method is not None and get_method(override.method).name != get_method(method).name:
            method, params = override.method, dict(override.parameters)
        else:
            params.update(override.parameters)
    return MethodCall.build(method, params)


def plan_tensors(recipe: MergeRecipe, keys: Iterable[str], components: ComponentMap) -> dict[str, MethodCall]:
    """Map every tensor name to its :class:`MethodCall` (computed once per component)."""
    by_component: dict[Component, MethodCall] = {}
    plan: dict[str, MethodCall] = {}
    for key in keys:
        component = components.component_of(key)
        if component not in by_component:
            by_component[component] = plan_for_component(recipe, component)
        plan[key] = by_component[component]
    return plan
