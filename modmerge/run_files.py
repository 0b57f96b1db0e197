"""The typed files of a search run directory: ``pareto.json`` and ``history.json``.

The search writes them through these models (so what it writes is what the readers expect),
and the library build and the reports parse them with the same models: a file that does not
match is one :class:`RunFileError` line naming the file and the field, not a ``KeyError``
somewhere later. Fields added after a run was written have defaults, so older run directories
still parse; unknown fields are kept and ignored.

>>> sol = SolutionEntry(grouping=[[0], [1]], storage_cost=2.0, generation=0,
...                     validation=Figures(mean=0.5, per_task={"a": 0.4, "b": 0.6}))
>>> sol.figures.mean  # test figures when there are some, else validation's
0.5
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from modmerge.errors import ModmergeError, validation_line

__all__ = ["Backbone", "Bars", "CostRecord", "Figures", "HistoryFile", "HistoryRun", "ParetoFile", "RunEntry",
           "RunFileError", "SolutionEntry", "read_history_file", "read_pareto_file"]

_KEEP = ConfigDict(extra="allow")


class RunFileError(ModmergeError):
    """A run directory's ``pareto.json`` or ``history.json`` is missing, not JSON, or malformed."""


class Figures(BaseModel):
    """A configuration's metric on one split: the mean over tasks and each task's."""

    model_config = _KEEP
    mean: float
    per_task: dict[str, float]


class SolutionEntry(BaseModel):
    """One Pareto configuration of a run."""

    model_config = _KEEP
    grouping: list[list[int]]
    storage_cost: float
    validation: Figures
    test: Figures | None = None
    generation: int = 0

    @property
    def figures(self) -> Figures:
        """The test figures, or validation's when the run had no test split."""
        return self.test if self.test is not None else self.validation


class CostRecord(BaseModel):
    """The work an evaluation phase did against a naive evaluator's (``EvaluationCounters``)."""

    model_config = _KEEP
    real_evaluations: int = 0
    task_runs: int = 0
    task_runs_naive: int = 0
    layer_forwards: int = 0
    layer_forwards_naive: int = 0
    prefix_hits: int = 0
    modules_built: int = 0
    modules_naive: int = 0
    seconds: float = 0.0


class RunEntry(BaseModel):
    """One seeded run: its Pareto set, its representatives G1/G2/G3 (None: none qualified or no
    bar) and its cost (None where it was not counted)."""

    model_config = _KEEP
    seed: int
    solutions: list[SolutionEntry]
    representatives: dict[str, SolutionEntry | None] = {}
    evaluation_cost: CostRecord | None = None
    test_cost: CostRecord | None = None


class Backbone(BaseModel):
    model_config = _KEEP
    name: str | None = None
    model_type: str | None = None
    self_pretrained: bool = False


class Bars(BaseModel):
    """G1's and G2's bars: F on the whole model, and the best baseline (validation P)."""

    model_config = _KEEP
    base_method_validation: float | None = None
    best_baseline_validation: float | None = None
    best_baseline_validation_limit: int | None = None


class ParetoFile(BaseModel):
    """``pareto.json``: what the search ran on, its recipe, and every run's Pareto set.

    ``source`` reopens the task source (``{"suite": path}`` or ``{"zoo": name, "store": root}``);
    an evaluator-form run has none and names its checkpoints (``pretrained``, ``models``).
    """

    model_config = _KEEP
    backbone: Backbone = Backbone()
    zoo: str | None = None
    source: dict[str, Any] | None = None
    pretrained: str | None = None
    models: dict[str, str] | None = None
    tasks: list[str]
    recipe: dict[str, Any]
    units: list[str]
    hv_reference: dict[str, float] = {}
    bars: Bars = Bars()
    runs: list[RunEntry]

    @property
    def subject(self) -> str:
        """What the search ran on, in words.

        >>> ParetoFile(tasks=[], recipe={}, units=[], runs=[], source={"suite": "s.yaml"}).subject
        'the suite s.yaml'
        """
        if self.source and "suite" in self.source:
            return f"the suite {self.source['suite']}"
        name = self.zoo or (self.source or {}).get("zoo")
        return f"the `{name}` zoo" if name else "the user's models"

    @property
    def split(self) -> str:
        """The split the reported figures are on: test, or validation when no run has test figures."""
        sols = [s for r in self.runs for s in r.solutions]
        return "validation" if sols and all(s.test is None for s in sols) else "test"


class HistoryRun(BaseModel):
    model_config = _KEEP
    seed: int
    generations: list[dict[str, Any]]


class HistoryFile(BaseModel):
    """``history.json``: per run, per generation, what the search did (``GenerationRecord``)."""

    model_config = _KEEP
    runs: list[HistoryRun]


def _read(path: Path, model: type[BaseModel]) -> Any:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFileError(f"{path}: not found (is {path.parent} a search run directory?)") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RunFileError(f"{path}: not the JSON a search writes ({type(err).__name__})") from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise RunFileError(f"{path}: {validation_line(err)}") from None


def read_pareto_file(path: str | Path) -> ParetoFile:
    """``pareto.json`` parsed; one :class:`RunFileError` line when it is missing or malformed."""
    return _read(Path(path), ParetoFile)


def read_history_file(path: str | Path) -> HistoryFile:
    """``history.json`` parsed; one :class:`RunFileError` line when it is missing or malformed."""
    return _read(Path(path), HistoryFile)
