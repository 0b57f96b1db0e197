"""The search recipe: what a MERGE search runs on (its **source**) and how it searches.

The source is one of three forms, a discriminated union; each form takes only its own fields,
so a field that means nothing for the form is an error, never silently recorded as used:

- ``suite: FILE``, the user's task suite (models and data; :mod:`modmerge.tasks.suite`), or
  ``zoo: NAME``, a built benchmark zoo. Both take the data settings ``validation_limit``,
  ``test_limit``, ``precision`` and ``device``.
- ``pretrained`` + ``models`` + ``evaluators`` (and optionally ``test_evaluators``,
  ``statistics``, ``architecture``, ``rules``, ``allow_pickle``): checkpoints scored by one
  evaluator callable per task (``package.module:function``), for what no data file expresses.

In YAML the form's fields sit at the top level beside the search settings; ``model_dump()``
writes them the same way (``search_recipe.json``, the ``recipe`` of ``pareto.json``).

>>> recipe = SearchRecipe(suite="suite.yaml", budget=40, population=8)
>>> recipe.source.form, recipe.source.validation_limit
('suite', 200)
>>> validated_recipe({"suite": "suite.yaml", "evaluators": {"a": "m:f"}}, where="search.yaml")
Traceback (most recent call last):
...
modmerge.errors.RecipeError: search.yaml: recipe: evaluators: means nothing with suite (it is a field of the evaluator form)
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)

from modmerge.atomic import write_json
from modmerge.errors import ModmergeError, RecipeError, validation_line
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.recipes.schema import Rule

__all__ = [
    "RECIPE_FILE",
    "RESUMABLE_CHANGES",
    "BaselineFigures",
    "ModelsForm",
    "SearchRecipe",
    "SuiteForm",
    "ZooForm",
    "baseline_figures",
    "check_resume",
    "import_callable",
    "load_search_recipe",
    "resolve_evaluators",
    "save_recipe",
    "validated_recipe",
]

_FORM = ConfigDict(extra="forbid", frozen=True)
Precision = Literal["float32", "bfloat16", "float16"]


class _DataSettings(BaseModel):
    """How a task source's data are evaluated."""

    model_config = _FORM

    validation_limit: int | None = Field(default=200, ge=1, description="examples per task for P (eq. 7)")
    test_limit: int | None = Field(default=None, ge=1, description="examples per task for the test figures")
    precision: Precision = Field(
        default="float32", description="what every evaluation forward runs at; the lower ones under torch.autocast "
        "(approximate metrics; faster only on hardware with units for them: bfloat16 evaluated MiniLM tasks "
        "1.9x faster on an AVX-512-BF16 CPU, 2.4x slower without BF16; the task pool warns when slower)")
    device: str = "cpu"


class SuiteForm(_DataSettings):
    """A task suite file: the user's models and data."""

    form: Literal["suite"] = "suite"
    suite: str


class ZooForm(_DataSettings):
    """A built benchmark zoo, by name (the CLI opens it)."""

    form: Literal["zoo"] = "zoo"
    zoo: str


class ModelsForm(BaseModel):
    """Checkpoints and one evaluator callable per task."""

    model_config = _FORM

    form: Literal["models"] = "models"
    pretrained: str
    models: dict[str, str]
    evaluators: dict[str, str] = Field(description="task -> 'package.module:function'")
    test_evaluators: dict[str, str] | None = Field(default=None, description="optional, same form, for the test figures")
    statistics: dict[str, str] | None = Field(default=None, description="task -> statistics file (Fisher, RegMean)")
    architecture: str | None = None
    rules: list[Rule] = Field(default_factory=list)
    allow_pickle: bool = False

    @model_validator(mode="after")
    def _per_task(self) -> ModelsForm:
        tasks = list(self.models)
        for field_name in ("evaluators", "test_evaluators", "statistics"):
            names = getattr(self, field_name)
            if names is None:
                continue
            absent = [t for t in tasks if t not in names]
            if absent:
                raise ValueError(f"{field_name}: task '{absent[0]}' of models has none")
            unknown = [t for t in names if t not in tasks]
            if unknown:
                raise ValueError(f"{field_name}: '{unknown[0]}' is not a task of models ({', '.join(tasks)})")
        return self


Source = Annotated[SuiteForm | ZooForm | ModelsForm, Field(discriminator="form")]
_FORMS: dict[str, type[BaseModel]] = {"suite": SuiteForm, "zoo": ZooForm, "models": ModelsForm}
_FORM_FIELDS = {name: set(cls.model_fields) - {"form"} for name, cls in _FORMS.items()}
_ALL_FORM_FIELDS = set().union(*_FORM_FIELDS.values())
_MODELS_KEYS = ("pretrained", "models", "evaluators")


def _form_of(data: Mapping[str, Any]) -> str:
    if data.get("suite") is not None and data.get("zoo") is not None:
        raise ValueError("give either suite or zoo, not both")
    if data.get("suite") is not None:
        return "suite"
    if data.get("zoo") is not None:
        return "zoo"
    given = [k for k in _MODELS_KEYS if data.get(k) is not None]
    if not given:
        raise ValueError("give suite (or zoo), or pretrained + models + evaluators")
    missing = [k for k in _MODELS_KEYS if data.get(k) is None]
    if missing:
        raise ValueError(f"{missing[0]}: required with pretrained/models (the own-models form)")
    return "models"


class SearchRecipe(BaseModel):
    """A search recipe; every field has the paper's default where the paper gives one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Source
    method: str = "task_arithmetic"
    parameters: dict[str, Any] = Field(default_factory=dict)
    quantization: dict[str, Any] = Field(default_factory=lambda: {"bits": 8, "granularity": "tensor", "mode": "conditional"})
    granularity: Literal["model", "layer", "component"] = "component"
    budget: int = Field(default=300, ge=1)
    population: int = Field(default=20, ge=2)
    seed: int = 0
    runs: int = Field(default=1, ge=1)
    surrogate: bool = True
    init: Literal["kmeans", "random", "mixed"] = Field(
        default="kmeans", description="initial population: K-means (the paper), random (ablation), mixed (half each)")
    executor: Literal["local", "ray"] = "local"
    workers: int = Field(default=2, ge=1, description="Ray workers (executor: ray)")
    ray_address: str | None = None
    baselines: str | None = None
    cache_bytes: int = Field(default=2 * 2**30, gt=0)
    prefix_cache_bytes: int = Field(default=512 * 2**20, ge=0, description="hidden states by chain prefix; 0 disables")

    @model_validator(mode="before")
    @classmethod
    def _gather_source(cls, data: Any) -> Any:
        """Flat fields (as in YAML) become the ``source`` of their form; another form's field is an error."""
        if not isinstance(data, Mapping) or "source" in data:
            return data
        form = _form_of(data)
        for name in data:
            if name in _ALL_FORM_FIELDS and name not in _FORM_FIELDS[form]:
                if form == "models":
                    raise ValueError(f"{name}: means nothing in the evaluator form (evaluator callables run their own "
                                     "forwards on their own data); use a task suite, or set it inside the evaluators")
                raise ValueError(f"{name}: means nothing with {form} (it is a field of the evaluator form)")
        source = {"form": form, **{k: v for k, v in data.items() if k in _FORM_FIELDS[form]}}
        return {"source": source, **{k: v for k, v in data.items() if k not in _ALL_FORM_FIELDS}}

    @model_serializer(mode="wrap")
    def _flat(self, handler: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        out = handler(self)
        source = dict(out.pop("source"))
        source.pop("form", None)
        return {**source, **out}

    @property
    def has_source(self) -> bool:
        """The recipe runs on a task source (a suite or a zoo), not on evaluator callables."""
        return self.source.form != "models"

    def call(self) -> MethodCall:
        return MethodCall.build(self.method, self.parameters)

    def quant(self) -> QuantConfig:
        return QuantConfig.from_dict(self.quantization)


def validated_recipe(fields: Mapping[str, Any], *, where: str) -> SearchRecipe:
    """``fields`` as a :class:`SearchRecipe`, its method and quantisation checked; errors are one
    :class:`RecipeError` line starting with ``where``."""
    try:
        recipe = SearchRecipe.model_validate(dict(fields))
        recipe.call()
        recipe.quant()
    except ValidationError as err:
        line = validation_line(err)
        for form in _FORMS:  # a form's fields are written at the top level: name them so
            line = line.replace(f"source.{form}.", "")
        raise RecipeError(f"{where}: {line}") from None
    except (ModmergeError, ValueError, TypeError) as err:  # method / quantisation errors carry one line
        raise RecipeError(f"{where}: {err}") from None
    if recipe.budget < recipe.population:
        raise RecipeError(f"{where}: budget {recipe.budget} is smaller than the population {recipe.population}")
    return recipe


def load_search_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchRecipe:
    """Read and validate a search recipe; ``overrides`` (from CLI flags) win over the file.
    Local paths in it are relative to the recipe file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: cannot read the recipe ({err})") from None
    except yaml.YAMLError:
        raise RecipeError(f"{path}: not valid YAML") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a search recipe must be a mapping of fields, got {type(data).__name__}")
    data = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    if isinstance(data.get("baselines"), str) and not Path(data["baselines"]).is_absolute():
        data["baselines"] = str(path.parent / data["baselines"])
    _resolve_model_paths(data, path.parent)
    recipe = validated_recipe(data, where=str(path))
    if isinstance(recipe.source, ModelsForm):
        # Imported now so a wrong dotted path fails before any checkpoint is opened.
        resolve_evaluators(recipe.source.evaluators, source=f"{path}: evaluators")
        resolve_evaluators(recipe.source.test_evaluators or {}, source=f"{path}: test_evaluators")
    return recipe


def _resolve_model_paths(data: dict[str, Any], root: Path) -> None:
    """Local checkpoint paths are relative to the recipe file (hub ids and absolute paths untouched)."""

    def fix(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        candidate = root / Path(value).expanduser()
        return str(candidate) if not Path(value).expanduser().is_absolute() and candidate.exists() else value

    for field_name in ("pretrained", "suite"):
        if field_name in data:
            data[field_name] = fix(data[field_name])
    for field_name in ("models", "statistics"):
        if isinstance(data.get(field_name), dict):
            data[field_name] = {k: fix(v) for k, v in data[field_name].items()}
    if isinstance(data.get("architecture"), str) and data["architecture"].endswith((".yaml", ".yml")):
        data["architecture"] = fix(data["architecture"])


def import_callable(path: str, *, source: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (attributes may be dotted: ``module:Class.method``).

    >>> import_callable("math:sqrt", source="evaluators.a")(4.0)
    2.0
    >>> import_callable("math.sqrt", source="evaluators.a")
    Traceback (most recent call last):
    ...
    modmerge.errors.RecipeError: evaluators.a: 'math.sqrt' is not of the form 'package.module:function'
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise RecipeError(f"{source}: {path!r} is not of the form 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise RecipeError(f"{source}: cannot import module '{module_name}' of {path!r} ({err})") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise RecipeError(f"{source}: module '{module_name}' has no '{attr}' ({path!r})")
        target = getattr(target, part)
    if not callable(target):
        raise RecipeError(f"{source}: {path!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def resolve_evaluators(paths: Mapping[str, str], *, source: str = "evaluators") -> dict[str, Callable[..., float]]:
    """Import each task's evaluator by dotted path; errors name the task and the path.

    >>> resolve_evaluators({"a": "math:nope"})
    Traceback (most recent call last):
    ...
    modmerge.errors.RecipeError: evaluators.a: module 'math' has no 'nope' ('math:nope')
    """
    return {task: import_callable(p, source=f"{source}.{task}") for task, p in paths.items()}


@dataclass(frozen=True)
class BaselineFigures:
    """What a search takes from a ``baselines.json``: validation P of F on the whole model, the
    best merged baseline's validation P, the rows (for the summary and plot), and the validation
    subset size the file chose hyperparameters on."""

    base: float | None = None
    best: float | None = None
    rows: tuple[dict, ...] = ()
    val_limit: int | None = None


def baseline_figures(path: str | None, method: str) -> BaselineFigures:
    """The figures of the baselines file at ``path`` (read once); empty without a file. A
    missing, unreadable or malformed file is one :class:`RecipeError` line naming it."""
    if not path:
        return BaselineFigures()
    try:
        payload = json.loads(Path(path).read_text())
        rows = payload["methods"]
        merged = [r for r in rows if r.get("method") and r.get("validation_mean") is not None]
        return BaselineFigures(
            base=next((float(r["validation_mean"]) for r in merged if r["method"] == method), None),
            best=max((float(r["validation_mean"]) for r in merged), default=None),
            rows=tuple(rows),
            val_limit=(payload.get("protocol") or {}).get("val_limit"),
        )
    except FileNotFoundError:
        raise RecipeError(f"baselines: {path}: no such file (run `modmerge baselines` first)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"baselines: {path}: cannot read it ({err})") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RecipeError(f"baselines: {path}: not a baselines.json written by `modmerge baselines`") from None


# Recipe fields that do not change what a run's objective values mean: a resumed search may change them.
RECIPE_FILE = "search_recipe.json"
RESUMABLE_CHANGES = frozenset({"runs", "budget", "executor", "workers", "ray_address", "device", "baselines",
                               "cache_bytes", "prefix_cache_bytes", "test_limit"})


def saved_recipe(out_dir: Path) -> dict[str, Any] | None:
    """The recipe fields saved in ``out_dir`` by :func:`save_recipe` (None when there are none);
    a damaged file is one :class:`RecipeError` line naming it."""
    path = out_dir / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise RecipeError(f"{path}: damaged (not the JSON a search writes); search into a new --out") from None
    if not isinstance(saved, dict):
        raise RecipeError(f"{path}: damaged (not a mapping of recipe fields); search into a new --out")
    return saved


def check_resume(recipe: SearchRecipe, out_dir: Path, resume: bool) -> None:
    """Refuse ``--resume`` of ``out_dir`` with a recipe whose objective differs from the one saved
    there by :func:`save_recipe` (method, parameters, quantisation, granularity, validation subset,
    precision, seed, ...); fields in :data:`RESUMABLE_CHANGES` may change. Reads only.

    >>> check_resume(recipe, Path("runs/a"), resume=True)  # doctest: +SKIP
    RecipeError: --resume runs/a: it was searched with precision='float32', the recipe gives 'bfloat16'; ...
    """
    saved = saved_recipe(out_dir) if resume else None
    if saved is None:
        return
    fields = {**SearchRecipe.model_fields, **_FORMS[recipe.source.form].model_fields}
    defaults = {name: f.get_default(call_default_factory=True) for name, f in fields.items() if not f.is_required()}
    for name, value in recipe.model_dump(mode="json").items():
        before = saved.get(name, defaults.get(name))
        if name not in RESUMABLE_CHANGES and before != value:
            raise RecipeError(
                f"--resume {out_dir}: it was searched with {name}={before!r}, the recipe gives {value!r}; "
                "resume with the same settings or search into a new --out"
            )


def save_recipe(recipe: SearchRecipe, out_dir: Path) -> None:
    """Keep the recipe a search runs with as ``out_dir/search_recipe.json`` (for :func:`check_resume`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RECIPE_FILE, recipe.model_dump(mode="json"))
