"""The merge recipe: a typed YAML schema in the spirit of mergekit's.

Example recipe::

    base_model: ./minilm
    models:
      - model: ./airline
      - model: ./spam
        weight: 0.5
    method: ties
    parameters: {density: 0.2, scaling: 1.0}
    overrides:
      - kinds: [norm]
        method: weight_averaging
      - kinds: [attn]
        layer_range: [0, 3]          # half-open: layers 0, 1, 2
        parameters: {density: 0.5}
    dtype: bfloat16

Load with :func:`load_recipe`; every wrong field or value is a :class:`RecipeError` whose one line
names the file and the field. Method parameters are checked against the merge registry's specs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modmerge.errors import MergeMethodError, RecipeError, validation_line
from modmerge.merging import get_method

Kind = Literal["embed", "attn", "mlp", "norm", "head", "other"]
OutputDtype = Literal["auto", "float32", "float16", "bfloat16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    """One task-specific model: a model directory, a .safetensors file, a PEFT adapter or a hub id."""

    model: str
    name: str | None = None
    weight: float = 1.0
    statistics: str | None = Field(
        default=None, description="precomputed statistics file (Fisher / RegMean Gram) for data-dependent methods"
    )

    @model_validator(mode="after")
    def _finite_weight(self) -> ModelEntry:
        if not math.isfinite(self.weight):
            raise ValueError(f"weight of model '{self.model}' must be a finite number, got {self.weight}")
        return self


class Rule(_Strict):
    """A user component rule: a regex over parameter names (optional `(?P<layer>\\d+)` group) -> kind."""

    pattern: str
    kind: Kind
    stack: str = ""


class Override(_Strict):
    """A different method or parameters for some components. Selectors combine with AND."""

    kinds: list[Kind] | None = None
    layer_range: tuple[int, int] | None = Field(default=None, description="half-open [start, end)")
    components: list[str] | None = Field(default=None, description="component ids, shell-style globs allowed")
    method: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_selector(self) -> Override:
        if self.kinds is None and self.layer_range is None and self.components is None:
            raise ValueError("an override needs at least one of kinds, layer_range, components")
        if self.layer_range is not None and self.layer_range[0] >= self.layer_range[1]:
            raise ValueError(f"layer_range {list(self.layer_range)} is empty (it is half-open [start, end))")
        return self


class MergeRecipe(_Strict):
    """Everything `modmerge merge` needs; paths are relative to the recipe file."""

    base_model: str
    models: list[ModelEntry] = Field(min_length=1)
    method: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    overrides: list[Override] = Field(default_factory=list)
    dtype: OutputDtype = "auto"
    seed: int = 0
    architecture: str | None = None
    rules: list[Rule] = Field(default_factory=list)
    tokenizer_source: Literal["base"] | int = "base"
    max_shard_size: int = Field(default=4 * 2**30, gt=0, description="bytes per output shard")

    @field_validator("tokenizer_source")
    @classmethod
    def _tokenizer_index(cls, value: Literal["base"] | int) -> Literal["base"] | int:
        if isinstance(value, int) and value < 0:
            raise ValueError("tokenizer_source must be 'base' or a model index >= 0")
        return value

    @model_validator(mode="after")
    def _check_methods(self) -> MergeRecipe:
        _check_method(self.method, self.parameters, "method/parameters")
        for i, ov in enumerate(self.overrides):
            method = ov.method or self.method
            params = ov.parameters if ov.method else {**self.parameters, **ov.parameters}
            _check_method(method, params, f"overrides.{i}")
        if isinstance(self.tokenizer_source, int) and self.tokenizer_source >= len(self.models):
            raise ValueError(f"tokenizer_source {self.tokenizer_source} is not a model index (0..{len(self.models) - 1})")
        return self

    def resolve_paths(self, root: Path) -> MergeRecipe:
        """Return a copy whose local paths are made absolute against ``root`` (hub ids untouched)."""

        def fix(value: str | None) -> str | None:
            if value is None:
                return None
            expanded = Path(value).expanduser()
            if expanded.is_absolute():
                return str(expanded)
            candidate = root / expanded
            return str(candidate) if candidate.exists() else value

        models = [m.model_copy(update={"model": fix(m.model), "statistics": fix(m.statistics)}) for m in self.models]
        arch = self.architecture
        if arch and arch.endswith((".yaml", ".yml")):
            arch = fix(arch)
        return self.model_copy(update={"base_model": fix(self.base_model), "models": models, "architecture": arch})


def _check_method(name: str, params: dict[str, Any], where: str) -> None:
    try:
        get_method(name).validate_params(params)
    except MergeMethodError as err:
        raise ValueError(f"{where}: {err}") from None


def parse_recipe(data: Any, *, source: str = "recipe") -> MergeRecipe:
    """Validate a parsed YAML/JSON mapping. Raises RecipeError naming ``source`` and the field."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of fields, got {type(data).__name__}")
    try:
        return MergeRecipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(f"{source}: {validation_line(err)}") from None


def load_recipe(path: str | Path) -> MergeRecipe:
    """Read, validate and resolve a YAML recipe file.

    >>> recipe = load_recipe("examples/ties-bert.yaml")  # doctest: +SKIP
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}:{where} is not valid YAML") from None
    return parse_recipe(data, source=str(path)).resolve_paths(path.parent)


def dump_recipe(recipe: MergeRecipe) -> str:
    """YAML text for ``recipe`` (round-trips through :func:`parse_recipe`)."""
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
