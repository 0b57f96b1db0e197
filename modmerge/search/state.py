"""The whole search state, serialisable to JSON and written atomically after each generation.

The state holds everything the next generation depends on: the configuration, every real
evaluation (which is also the surrogate's training data, in order), the current population and
Pareto archive (indices into the evaluations), the generator's bit-generator state, the
generation counter and the per-generation history. Resuming from it continues exactly as the
uninterrupted run would have.

Example::

    >>> import tempfile, pathlib
    >>> from modmerge.search.config import SearchConfig
    >>> s = SearchState(SearchConfig(hv_storage_ref=5.0, hv_performance_ref=0.0, budget=20), 2, 3)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "state.json"
    >>> save_state(s, path)
    >>> load_state(path) == s
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modmerge.atomic import write_json
from modmerge.errors import ModmergeError
from modmerge.experts.grouping import GroupingMatrix
from modmerge.objectives.evaluation import Evaluation
from modmerge.search.config import SearchConfig

__all__ = [
    "EvaluatedConfig",
    "GenerationRecord",
    "SearchState",
    "load_state",
    "save_state",
]

STATE_FORMAT = 1


@dataclass(frozen=True)
class EvaluatedConfig:
    """One real evaluation: the grouping matrix, its objectives and when it was evaluated.

    ``predicted_performance`` is the surrogate's guess before the evaluation (``None`` for the
    initial population and without the surrogate).
    """

    grouping: GroupingMatrix
    performance: float
    storage_cost: float
    per_task: dict[str, float] | list[float]
    seconds: float
    generation: int
    predicted_performance: float | None = None

    @classmethod
    def from_evaluation(
        cls, g: GroupingMatrix, ev: Evaluation, generation: int, predicted: float | None = None
    ) -> EvaluatedConfig:
        """Wrap an executor's :class:`~modmerge.search.problem.Evaluation` of ``g``."""
        per_task: dict[str, float] | list[float] = (
            {str(k): float(v) for k, v in ev.per_task.items()}
            if isinstance(ev.per_task, Mapping)
            else [float(v) for v in ev.per_task]
        )
        return cls(
            grouping=g,
            performance=float(ev.performance),
            storage_cost=float(ev.storage_cost),
            per_task=per_task,
            seconds=float(ev.seconds),
            generation=generation,
            predicted_performance=None if predicted is None else float(predicted),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the matrix as rows)."""
        data = asdict(self)
        data["grouping"] = self.grouping.to_list()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluatedConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "grouping": GroupingMatrix.from_json(data["grouping"])})


@dataclass(frozen=True)
class GenerationRecord:
    """What one generation did; generation 0 is the initial population.

    ``hypervolume`` is of the archive against the configuration's fixed reference point;
    ``surrogate_mae`` the mean absolute error of the surrogate's predictions on the matrices it
    sent for real evaluation this generation (``None`` where nothing was predicted).
    """

    generation: int
    evaluations: int
    new_evaluations: int
    candidates: int
    hypervolume: float
    archive_size: int
    best_performance: float
    least_storage: float
    surrogate_mae: float | None = None


@dataclass
class SearchState:
    """Everything a search needs to continue (see the module docstring)."""

    config: SearchConfig
    n_tasks: int
    n_units: int
    generation: int = 0
    rng_state: dict[str, Any] = field(default_factory=dict)
    records: list[EvaluatedConfig] = field(default_factory=list)
    population: list[int] = field(default_factory=list)
    archive: list[int] = field(default_factory=list)
    history: list[GenerationRecord] = field(default_factory=list)

    @property
    def evaluations(self) -> int:
        """Real evaluations spent so far."""
        return len(self.records)

    def pareto(self) -> list[EvaluatedConfig]:
        """The Pareto archive: every non-dominated real evaluation, by ascending storage cost."""
        return sorted(
            (self.records[i] for i in self.archive), key=lambda r: (r.storage_cost, -r.performance)
        )

    def generator(self) -> np.random.Generator:
        """A generator positioned where this state left off."""
        bit_generator = getattr(np.random, self.rng_state["bit_generator"])()
        bit_generator.state = self.rng_state
        return np.random.Generator(bit_generator)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the whole state."""
        return {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "n_tasks": self.n_tasks,
            "n_units": self.n_units,
            "generation": self.generation,
            "rng_state": self.rng_state,
            "records": [r.to_dict() for r in self.records],
            "population": list(self.population),
            "archive": list(self.archive),
            "history": [asdict(h) for h in self.history],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchState:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        if data.get("format") != STATE_FORMAT:
            raise ModmergeError(
                f"search state: format {data.get('format')!r} is not the supported {STATE_FORMAT}"
            )
        records = data["records"]
        for name in ("population", "archive"):
            bad = [i for i in data[name] if not isinstance(i, int) or not 0 <= i < len(records)]
            if bad:
                raise ValueError(f"{name} index {bad[0]!r} is not one of the {len(records)} evaluations")
        return cls(
            config=SearchConfig.from_dict(data["config"]),
            n_tasks=int(data["n_tasks"]),
            n_units=int(data["n_units"]),
            generation=int(data["generation"]),
            rng_state=data["rng_state"],
            records=[EvaluatedConfig.from_dict(r) for r in records],
            population=[int(i) for i in data["population"]],
            archive=[int(i) for i in data["archive"]],
            history=[GenerationRecord(**h) for h in data["history"]],
        )


def save_state(state: SearchState, path: str | os.PathLike[str]) -> None:
    """Write ``state`` as JSON atomically: a temporary file in the same folder, then ``os.replace``.

    A crash mid-write leaves the previous state file intact.
    """
    write_json(path, state.to_dict(), indent=None)


def load_state(path: str | os.PathLike[str]) -> SearchState:
    """Read a state written by :func:`save_state`; a missing or corrupt file is one clear error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModmergeError(f"search state {path}: file not found") from None
    except json.JSONDecodeError as err:
        raise ModmergeError(
            f"search state {path}: not valid JSON ({err.msg} at line {err.lineno})"
        ) from None
    try:
        return SearchState.from_dict(data)
    except (KeyError, TypeError, ValueError) as err:
        raise ModmergeError(
            f"search state {path}: malformed ({type(err).__name__}: {err})"
        ) from None
