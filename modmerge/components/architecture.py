"""Architectures as data: YAML files of name templates mapping parameter names to components.

A file lists rules; the first rule whose template matches a parameter name decides its
component. ``{layer}`` stands for an integer layer index and ``*`` for any characters; a name may
carry any leading prefix of plain dotted identifiers (``bert.``, ``vision_model.``,
``base_model.model.``), so task wrappers need no rules of their own::

    name: bert
    model_types: [bert, roberta]
    rules:
      - {template: "embeddings.*", kind: embed}
      - {template: "encoder.layer.{layer}.attention.*", kind: attn}
      - {template: "classifier.*", kind: head}
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from modmerge.components.component import Component, check_kind, check_stack
from modmerge.errors import ComponentError

logger = logging.getLogger(__name__)

_PACKAGE = "modmerge.components"
_FOLDER = "architectures"
# A prefix is whole identifier segments, never a numbered one, so a template cannot match deep
# inside another layer's path (e.g. "dense.*" cannot match "encoder.layer.0.output.dense.weight").
_PREFIX = r"(?P<_prefix>(?:[A-Za-z_][A-Za-z0-9_]*\.)*)"


def _template_regex(template: str) -> re.Pattern[str]:
    if template.count("{layer}") > 1:
        raise ValueError(f"template {template!r} uses {{layer}} more than once")
    rest = template.replace("{layer}", "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"template {template!r} has a placeholder other than {{layer}}")
    pieces = [re.escape(p).replace(r"\*", ".*") for p in template.split("{layer}")]
    return re.compile(_PREFIX + r"(?P<layer>\d+)".join(pieces))


class ArchRule(BaseModel):
    """One template rule of an architecture file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    template: str
    kind: str
    stack: str = ""

    @field_validator("template")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        if not value:
            raise ValueError("template is empty")
        _template_regex(value)
        return value

    @field_validator("kind")
    @classmethod
    def _valid_kind(cls, value: str) -> str:
        try:
            check_kind(value, "rule")
        except ComponentError as err:
            raise ValueError(str(err)) from None
        return value

    @field_validator("stack")
    @classmethod
    def _valid_stack(cls, value: str) -> str:
        try:
            check_stack(value, "rule")
        except ComponentError as err:
            raise ValueError(str(err)) from None
        return value

    @functools.cached_property
    def regex(self) -> re.Pattern[str]:
        """The compiled template (anchored with :meth:`re.Pattern.fullmatch`)."""
        return _template_regex(self.template)


class Architecture(BaseModel):
    """A named set of template rules, plus the HF ``model_type`` values it covers.

    >>> arch = load_architecture("llama")
    >>> arch.match("model.layers.3.mlp.up_proj.weight")
    Component(stack='', layer=3, kind='mlp')
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    model_types: tuple[str, ...] = ()
    description: str = ""
    rules: tuple[ArchRule, ...]

    @model_validator(mode="after")
    def _has_rules(self) -> Architecture:
        if not self.rules:
            raise ValueError("rules is empty")
        return self

    def match_with_prefix(self, key: str) -> tuple[Component, str] | None:
        """The component of ``key`` and the wrapper prefix it carried, or None if no rule matches."""
        for rule in self.rules:
            m = rule.regex.fullmatch(key)
            if m is not None:
                layer = m.group("layer") if "layer" in m.re.groupindex else None
                component = Component(rule.stack, None if layer is None else int(layer), rule.kind)
                return component, m.group("_prefix")
        return None

    def match(self, key: str) -> Component | None:
        """The component of ``key`` by the first matching rule, or None."""
        found = self.match_with_prefix(key)
        return None if found is None else found[0]


def _parse_architecture(text: str, label: str) -> Architecture:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ComponentError(f"{label}: not valid YAML ({first})") from err
    if not isinstance(data, dict):
        raise ComponentError(f"{label}: expected a mapping with 'name' and 'rules'")
    try:
        return Architecture.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        field_part = f"field '{where}': " if where else ""
        raise ComponentError(f"{label}: {field_part}{first['msg']}") from err


def builtin_architectures() -> list[str]:
    """Names of the architecture files shipped with modmerge, sorted.

    >>> "bert" in builtin_architectures()
    True
    """
    folder = resources.files(_PACKAGE).joinpath(_FOLDER)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


@functools.cache
def _load_builtin(name: str) -> Architecture:
    # Architectures are frozen, so sharing one parsed copy per name is safe.
    file = resources.files(_PACKAGE).joinpath(_FOLDER, f"{name}.yaml")
    return _parse_architecture(file.read_text(encoding="utf-8"), f"architecture file {name}.yaml")


def load_architecture(name_or_path: str | Path) -> Architecture:
    """A built-in architecture by name (``"t5"``) or a user YAML file by path.

    >>> load_architecture("t5").name
    't5'
    """
    name = str(name_or_path)
    if name in builtin_architectures():
        return _load_builtin(name)
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ComponentError(f"{path}: cannot read architecture file ({err.strerror})") from err
        return _parse_architecture(text, str(path))
    raise ComponentError(
        f"unknown architecture {name!r} (built-ins: {', '.join(builtin_architectures())}; "
        f"or give a path to a .yaml file)"
    )


def _fit(arch: Architecture, keys: Sequence[str]) -> tuple[int, int]:
    """How well ``arch`` explains ``keys``: (matched keys, -total prefix length)."""
    matched, prefix_chars = 0, 0
    for key in keys:
        found = arch.match_with_prefix(key)
        if found is not None:
            matched += 1
            prefix_chars += len(found[1])
    return matched, -prefix_chars


def detect_architecture(config: Mapping[str, Any] | None, keys: Sequence[str]) -> Architecture:
    """The built-in architecture for a model: by ``config["model_type"]``, else by key names.

    By keys, the built-in matching the most keys wins; a tie goes to the one whose templates
    explain more of each name (shorter leftover prefixes), then to the name order.

    >>> detect_architecture({"model_type": "roberta"}, []).name
    'bert'
    >>> detect_architecture(None, ["transformer.h.0.attn.c_attn.weight"]).name
    'gpt2'
    """
    names = builtin_architectures()
    model_type = (config or {}).get("model_type")
    if model_type:
        for name in names:
            arch = _load_builtin(name)
            if model_type in arch.model_types:
                return arch
        logger.info(
            "no built-in architecture lists model_type %r; detecting by key names", model_type
        )
    best: tuple[tuple[int, int], Architecture] | None = None
    for name in names:
        arch = _load_builtin(name)
        fit = _fit(arch, keys)
        if fit[0] > 0 and (best is None or fit > best[0]):
            best = (fit, arch)
    if best is None:
        shown = f"model_type {model_type!r}, " if model_type else ""
        sample = keys[0] if keys else "(no keys)"
        raise ComponentError(
            f"no built-in architecture matches this model ({shown}first key {sample!r}); "
            f"pass an architecture file or rules"
        )
    return best[1]
