"""The one registry of merge methods.

A merge method is a pure function over tensors with one signature::

    fn(base: Tensor, tensors: Sequence[Tensor], *, <named parameters>, <reserved inputs>) -> Tensor

``base`` is the pretrained tensor, ``tensors`` the task-specific (fine-tuned) tensors of the same
name and shape, and the result is the merged tensor (full weights, not a delta), in float32.
Named parameters are keyword-only and annotated with :class:`Param`; the registry reads them
from the signature, so their name, type, default and range live in one place and feed recipe
validation, CLI help and the search space. A parameter whose name would be a Python keyword is
written with a trailing underscore and registered without it (``lambda_`` is ``lambda``, as in
mergekit's recipes). ``max_models`` records a method that merges at most that many models
(SLERP: 2), so planners that group models (the MERGE search, the baselines) can check up front.
``model_scope="concatenate"`` marks a method whose ``scope: model`` setting means one call on
every tensor the executor merges with it, flattened and concatenated (PCB over the whole model).

Reserved keyword inputs are supplied by the caller, never by a recipe:

- ``weights``: per-model weights (sequence of floats), where the method supports them;
- ``generator``: a seeded :class:`torch.Generator` for randomized methods (DARE);
- ``stats``: per-model statistics for this tensor (Fisher diagonals, RegMean Gram matrices);
- ``thresholds``: per-model magnitude thresholds for model-scope trimming (TIES "model" scope);
- ``stats_norms``: per-model L2 norms of the statistics over the whole model (Fisher
  normalisation over the model).

Example::

    >>> import torch
    >>> from modmerge.merging import get_method
    >>> ta = get_method("task_arithmetic")
    >>> params = ta.validate_params({"scaling": 0.5})
    >>> ta(torch.zeros(2), [torch.ones(2), torch.ones(2)], **params)
    tensor([1., 1.])
"""

from __future__ import annotations

import inspect
import keyword
import math
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, get_args, get_origin

import torch

from modmerge.errors import MergeMethodError

RESERVED_INPUTS = frozenset({"weights", "generator", "stats", "stats_norms", "thresholds"})
_PARAM_TYPES = (float, int, bool, str)


@dataclass(frozen=True)
class Param:
    """Metadata for a method parameter, attached with ``Annotated[type, Param(...)]``.

    ``low``/``high`` bound numeric values (inclusive); ``choices`` lists allowed strings;
    ``search`` is the range the Pareto search samples from (defaults to ``(low, high)``).
    """

    low: float | None = None
    high: float | None = None
    help: str = ""
    choices: tuple[str, ...] | None = None
    search: tuple[float, float] | None = None


@dataclass(frozen=True)
class ParamSpec:
    """One named parameter of a merge method, as read from its signature."""

    name: str
    type: type
    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""
    choices: tuple[str, ...] | None = None
    search: tuple[float, float] | None = None

    def coerce(self, value: Any, method: str) -> Any:
        """Return ``value`` converted to this parameter's type, or raise naming the field.

        Numbers must be finite (NaN and Inf are refused whatever the range) and within
        ``low``/``high``.

        >>> ParamSpec("scaling", float, 1.0, low=0.0, high=4.0).coerce(float("nan"), "ties")
        Traceback (most recent call last):
        ...
        modmerge.errors.MergeMethodError: method 'ties' parameter 'scaling' must be a finite number, got nan
        """
        where = f"method '{method}' parameter '{self.name}'"
        if self.type is bool:
            if not isinstance(value, bool):
                raise MergeMethodError(f"{where} must be true or false, got {value!r}")
            return value
        if self.type is str:
            if not isinstance(value, str):
                raise MergeMethodError(f"{where} must be a string, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise MergeMethodError(f"{where} must be one of {list(self.choices)}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MergeMethodError(f"{where} must be a number, got {value!r}")
        # before the range check: every comparison with NaN is false, so NaN would pass it
        if not math.isfinite(value):
            raise MergeMethodError(f"{where} must be a finite number, got {value}")
        if self.type is int and float(value) != int(value):
            raise MergeMethodError(f"{where} must be an integer, got {value!r}")
        value = self.type(value)
        if self.low is not None and value < self.low:
            raise MergeMethodError(f"{where} must be >= {self.low}, got {value}")
        if self.high is not None and value > self.high:
            raise MergeMethodError(f"{where} must be <= {self.high}, got {value}")
        return value

    def describe(self) -> str:
        """Short human description for CLI help and docs."""
        rng = ""
        if self.choices:
            rng = f" one of {', '.join(self.choices)}"
        elif self.low is not None or self.high is not None:
            rng = f" in [{self.low if self.low is not None else '-inf'}, {self.high if self.high is not None else 'inf'}]"
        return f"{self.name} ({self.type.__name__}, default {self.default!r}{rng}): {self.help}"


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: the function plus what the registry read about it."""

    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple[ParamSpec, ...]
    summary: str
    citation: str
    needs: tuple[str, ...] = ()
    randomized: bool = False
    accepts: frozenset[str] = field(default_factory=frozenset)
    limitations: str = ""
    max_models: int | None = None
    renamed: tuple[tuple[str, str], ...] = ()  # (registered name, Python argument name)
    model_scope: str | None = None  # "concatenate": scope 'model' merges the call's tensors as one

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def spec(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise MergeMethodError(
            f"method '{self.name}' has no parameter '{name}' (it has: {', '.join(self.param_names) or 'none'})"
        )

    def validate_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with ``params``; unknown names and bad values raise naming them."""
        out = self.defaults()
        for key, value in (params or {}).items():
            out[key] = self.spec(key).coerce(value, self.name)
        return out

    def __call__(self, base: torch.Tensor, tensors: Sequence[torch.Tensor], **kwargs: Any) -> torch.Tensor:
        extra = {k: v for k, v in kwargs.items() if k in RESERVED_INPUTS and k not in self.accepts}
        for key in extra:
            if extra[key] is not None:
                raise MergeMethodError(f"method '{self.name}' does not take '{key}'")
        arguments = dict(self.renamed)
        call = {arguments.get(k, k): v for k, v in kwargs.items() if k not in extra}
        return self.fn(base, tensors, **call)

    def help_text(self) -> str:
        lines = [f"{self.name}: {self.summary}", f"  source: {self.citation}"]
        if self.limitations:
            lines.append(f"  limitations: {self.limitations}")
        if self.max_models is not None:
            lines.append(f"  merges at most {self.max_models} models")
        if self.needs:
            lines.append(f"  needs statistics: {', '.join(self.needs)}")
        lines += [f"  - {p.describe()}" for p in self.params]
        return "\n".join(lines)


class MergeRegistry:
    """Name -> :class:`MergeMethod`. Filled once, at import, by :func:`merge_method`."""

    def __init__(self) -> None:
        self._methods: dict[str, MergeMethod] = {}
        self._aliases: dict[str, str] = {}

    def add(self, method: MergeMethod, aliases: Sequence[str] = ()) -> None:
        for key in (method.name, *aliases):
            if key in self._methods or key in self._aliases:
                raise MergeMethodError(f"merge method name '{key}' is registered twice")
        self._methods[method.name] = method
        for alias in aliases:
            self._aliases[alias] = method.name

    def get(self, name: str) -> MergeMethod:
        key = self._aliases.get(name, name)
        if key not in self._methods:
            raise MergeMethodError(
                f"unknown merge method '{name}' (known: {', '.join(sorted(self._methods))})"
            )
        return self._methods[key]

    def names(self) -> list[str]:
        return sorted(self._methods)

    def __iter__(self) -> Iterator[MergeMethod]:
        return iter(self._methods[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._methods or name in self._aliases


REGISTRY = MergeRegistry()


def _registered_name(argument: str) -> str:
    """``lambda_`` -> ``lambda``: recipes may name a parameter that Python cannot."""
    stem = argument[:-1]
    return stem if argument.endswith("_") and keyword.iskeyword(stem) else argument


def _param_spec(name: str, parameter: inspect.Parameter, hint: Any) -> ParamSpec:
    meta = Param()
    base_type = hint
    if get_origin(hint) is Annotated:
        base_type, *extras = get_args(hint)
        meta = next((e for e in extras if isinstance(e, Param)), meta)
    if base_type not in _PARAM_TYPES:
        raise TypeError(f"parameter '{name}' must be annotated float, int, bool or str, not {base_type}")
    if parameter.default is inspect.Parameter.empty:
        raise TypeError(f"parameter '{name}' needs a default")
    return ParamSpec(
        name=_registered_name(name),
        type=base_type,
        default=parameter.default,
        low=meta.low,
        high=meta.high,
        help=meta.help,
        choices=meta.choices,
        search=meta.search,
    )


def merge_method(
    name: str,
    *,
    summary: str,
    citation: str,
    aliases: Sequence[str] = (),
    needs: Sequence[str] = (),
    randomized: bool = False,
    limitations: str = "",
    max_models: int | None = None,
    model_scope: str | None = None,
    registry: MergeRegistry = REGISTRY,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Register ``fn`` as merge method ``name``, reading its parameters from the signature."""

    if model_scope not in (None, "concatenate"):
        raise TypeError(f"merge method '{name}': model_scope must be None or 'concatenate', not {model_scope!r}")

    def decorate(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        specs: list[ParamSpec] = []
        accepts: set[str] = set()
        for pname, parameter in signature.parameters.items():
            if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
                continue
            if pname in RESERVED_INPUTS:
                accepts.add(pname)
                continue
            specs.append(_param_spec(pname, parameter, hints[pname]))
        method = MergeMethod(
            name=name,
            fn=fn,
            params=tuple(specs),
            summary=summary,
            citation=citation,
            needs=tuple(needs),
            randomized=randomized,
            accepts=frozenset(accepts),
            limitations=limitations,
            max_models=max_models,
            model_scope=model_scope,
            renamed=tuple((_registered_name(a), a) for a in signature.parameters if _registered_name(a) != a),
        )
        registry.add(method, aliases)
        return fn

    return decorate


def get_method(name: str) -> MergeMethod:
    """Look up a registered merge method by name or alias (importing this module imports the
    :mod:`modmerge.merging` package first, which registers every method)."""
    return REGISTRY.get(name)
