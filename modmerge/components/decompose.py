"""Decompose parameter names into components and group them into merge units.

``decompose(keys, arch)`` maps every name to a :class:`Component` (MERGE's ``theta^l``); no name
is ever dropped: one no rule explains becomes kind ``other`` and is listed in ``unmatched``.
``ComponentMap.units(granularity)`` then groups names into the units that are merged as one:
the whole model, one layer, or one component.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, get_args

from modmerge.components.architecture import Architecture, load_architecture
from modmerge.components.component import Component, check_kind, check_stack
from modmerge.errors import ComponentError

logger = logging.getLogger(__name__)

Granularity = Literal["model", "layer", "component"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
OTHER = Component("", None, "other")


class Rule(NamedTuple):
    """A user rule: a regex searched in the parameter name, the kind, and an optional stack.

    A named group ``(?P<layer>\\d+)`` gives the layer index. User rules are tried before the
    architecture's; plain tuples ``(pattern, kind)`` work too.

    >>> Rule(r"^adapter\\.(?P<layer>\\d+)\\.", "mlp")
    Rule(pattern='^adapter\\\\.(?P<layer>\\\\d+)\\\\.', kind='mlp', stack='')
    """

    pattern: str
    kind: str
    stack: str = ""


@dataclass(frozen=True)
class _CompiledRule:
    regex: re.Pattern[str]
    kind: str
    stack: str

    def match(self, key: str) -> Component | None:
        m = self.regex.search(key)
        if m is None:
            return None
        layer = m.group("layer") if "layer" in self.regex.groupindex else None
        return Component(self.stack, None if layer is None else int(layer), self.kind)


def _compile_rules(rules: Sequence[Rule | tuple[str, ...]]) -> list[_CompiledRule]:
    compiled = []
    for raw in rules:
        rule = Rule(*raw)
        where = f"rule {rule.pattern!r}"
        try:
            regex = re.compile(rule.pattern)
        except re.error as err:
            raise ComponentError(f"{where}: not a valid regular expression ({err})") from err
        check_kind(rule.kind, where)
        check_stack(rule.stack, where)
        compiled.append(_CompiledRule(regex, rule.kind, rule.stack))
    return compiled


@dataclass(frozen=True)
class ComponentMap:
    """Every parameter name of a model with its component, in the model's key order.

    >>> cmap = decompose(["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight"], "llama")
    >>> cmap.units("layer")
    {'embed': ['model.embed_tokens.weight'], 'layer0': ['model.layers.0.mlp.up_proj.weight']}
    """

    assignments: dict[str, Component]
    unmatched: tuple[str, ...] = ()
    architecture: str = ""
    _by_component: dict[Component, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[Component, list[str]] = {}
        for key, component in self.assignments.items():
            grouped.setdefault(component, []).append(key)
        object.__setattr__(self, "_by_component", {c: grouped[c] for c in sorted(grouped)})

    def keys(self) -> list[str]:
        """All parameter names, in the order they were given."""
        return list(self.assignments)

    def component_of(self, key: str) -> Component:
        """The component ``key`` belongs to."""
        try:
            return self.assignments[key]
        except KeyError:
            raise ComponentError(f"tensor {key!r} is not in this component map") from None

    def keys_of(self, component: Component | str) -> list[str]:
        """The names in ``component`` (a Component or its id), in key order."""
        if isinstance(component, str):
            component = Component.parse(component)
        if component not in self._by_component:
            raise ComponentError(f"component {component.id!r} has no parameters in this model")
        return list(self._by_component[component])

    def components(self) -> list[Component]:
        """Components present in the model, in model order."""
        return list(self._by_component)

    @functools.cached_property
    def has_layers(self) -> bool:
        """Whether any parameter carries a layer index."""
        return any(c.layer is not None for c in self._by_component)

    def units(
        self, granularity: Granularity, exclude_kinds: Sequence[str] = ()
    ) -> dict[str, list[str]]:
        """Group names into merge units, in model order; each kept name is in exactly one unit.

        ``model``: one unit ``"model"``. ``layer``: one unit per (stack, layer), and one per
        (stack, kind) for layer-free parts (``"embed"``, ``"norm"``, ``"head"``).
        ``component``: one unit per component id. Names of ``exclude_kinds`` (e.g. ``("head",)``)
        are left out; units left empty are dropped.
        """
        check_granularity(granularity, self)
        for kind in exclude_kinds:
            check_kind(kind, "exclude_kinds")
        excluded = set(exclude_kinds)
        units: dict[str, list[str]] = {}
        for component, keys in self._by_component.items():
            if component.kind in excluded:
                continue
            if granularity == "model":
                unit = "model"
            elif granularity == "layer":
                unit = component.layer_unit
            else:
                unit = component.id
            units.setdefault(unit, []).extend(keys)
        if granularity == "model" and "model" in units:
            # Keep the model's own key order for the single unit.
            kept = set(units["model"])
            units["model"] = [k for k in self.assignments if k in kept]
        return units


def check_granularity(granularity: str, component_map: ComponentMap) -> None:
    """Raise ComponentError if ``component_map`` cannot be split at ``granularity``.

    Callers can run this before loading any tensor; :meth:`ComponentMap.units` calls it too.
    """
    if granularity not in GRANULARITIES:
        raise ComponentError(
            f"unknown granularity {granularity!r} (expected one of {', '.join(GRANULARITIES)})"
        )
    if granularity != "model" and not component_map.has_layers:
        arch = f" ({component_map.architecture})" if component_map.architecture else ""
        raise ComponentError(
            f"cannot split this model{arch} at granularity {granularity!r}: no parameter "
            f"has a layer index; use 'model' or add rules with a (?P<layer>\\d+) group"
        )


def decompose(
    keys: Sequence[str],
    architecture: Architecture | str,
    extra_rules: Sequence[Rule | tuple[str, ...]] = (),
) -> ComponentMap:
    """Map every parameter name to its component.

    ``architecture`` is an :class:`Architecture` or a name/path for :func:`load_architecture`.
    ``extra_rules`` are tried first. Names no rule matches get kind ``other`` (no layer) and are
    reported in ``ComponentMap.unmatched`` (and logged), never dropped.

    >>> cmap = decompose(["bert.encoder.layer.0.attention.self.query.weight", "extra.w"], "bert")
    >>> [c.id for c in cmap.components()], cmap.unmatched
    (['layer0.attn', 'other'], ('extra.w',))
    """
    arch = (
        architecture if isinstance(architecture, Architecture) else load_architecture(architecture)
    )
    user_rules = _compile_rules(extra_rules)
    assignments: dict[str, Component] = {}
    unmatched: list[str] = []
    layered_prefixes: dict[Component, set[str]] = {}
    for key in keys:
        if key in assignments:
            raise ComponentError(f"tensor {key!r} is listed twice")
        component = next((c for c in (r.match(key) for r in user_rules) if c is not None), None)
        if component is None:
            found = arch.match_with_prefix(key)
            if found is not None:
                component, prefix = found
                if component.layer is not None:
                    layered_prefixes.setdefault(component, set()).add(prefix)
        if component is None:
            component = OTHER
            unmatched.append(key)
        assignments[key] = component
    mixed = [c for c, prefixes in layered_prefixes.items() if len(prefixes) > 1]
    if mixed:
        # Two towers folded into one layer component is almost always a missing rule.
        logger.warning(
            "%d component(s), e.g. %s, gather names under different prefixes %s; add rules "
            "with a stack to keep them apart",
            len(mixed),
            mixed[0].id,
            sorted(layered_prefixes[mixed[0]]),
        )
    if unmatched:
        logger.warning(
            "%d parameter(s) match no rule of architecture %s and are kind 'other', e.g. %r",
            len(unmatched),
            arch.name,
            unmatched[0],
        )
    return ComponentMap(assignments, tuple(unmatched), arch.name)
