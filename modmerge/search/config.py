"""Settings of one MERGE search (paper defaults: population 20, 300 real evaluations).

Example::

    >>> cfg = SearchConfig(hv_storage_ref=9.0, hv_performance_ref=0.0, budget=60, population_size=10)
    >>> SearchConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> cfg.hv_reference
    (9.0, -0.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from modmerge.errors import RecipeError

__all__ = ["INITS", "SearchConfig"]

# Initial populations: the paper's K-means, the random ablation, half of each (not in the paper).
INITS = ("kmeans", "random", "mixed")


@dataclass(frozen=True)
class SearchConfig:
    """How the search runs. Validated on construction; every error names the field.

    The hypervolume reference point is fixed by the caller, once per problem (e.g. per zoo), so
    hypervolumes of different runs compare: ``(hv_storage_ref, -hv_performance_ref)`` in the
    minimised space ``(C, -P)``. Take a storage cost above every configuration's (e.g. the
    individual models' cost plus a margin) and a performance below every configuration's
    (e.g. 0 for accuracies); solutions outside the box add no volume.

    ``evals_per_generation`` caps the real evaluations of one generation (default: the
    population size); ``offspring_per_generation`` is how many candidates the surrogate screens
    (default: 5 x population). Without the surrogate (the ablation) each generation evaluates
    ``evals_per_generation`` offspring chosen by NSGA-II alone. ``mutation_rate`` is the chance
    that each unit is mutated (default 1/L, at least one unit per child).
    """

    hv_storage_ref: float
    hv_performance_ref: float
    population_size: int = 20
    budget: int = 300
    seed: int = 0
    surrogate: bool = True
    init: Literal["kmeans", "random", "mixed"] = "kmeans"
    kmeans_ks: tuple[int, ...] | None = None
    include_extremes: bool = True
    evals_per_generation: int | None = None
    offspring_per_generation: int | None = None
    crossover_prob: float = 0.9
    swap_prob: float = 0.5
    mutation_rate: float | None = None
    rf_trees: int = 100

    def __post_init__(self) -> None:
        if self.population_size < 1:
            raise RecipeError(f"search.population_size must be >= 1, got {self.population_size}")
        if self.budget < self.population_size:
            raise RecipeError(
                f"search.budget ({self.budget}) must be at least search.population_size "
                f"({self.population_size}): the initial population is evaluated for real"
            )
        if self.init not in INITS:
            raise RecipeError(f"search.init must be one of {', '.join(INITS)}, got {self.init!r}")
        for name in ("evals_per_generation", "offspring_per_generation"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeError(f"search.{name} must be >= 1, got {value}")
        for name in ("crossover_prob", "swap_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RecipeError(f"search.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.mutation_rate is not None and not 0.0 <= self.mutation_rate <= 1.0:
            raise RecipeError(f"search.mutation_rate must lie in [0, 1], got {self.mutation_rate}")
        if self.rf_trees < 1:
            raise RecipeError(f"search.rf_trees must be >= 1, got {self.rf_trees}")
        if self.kmeans_ks is not None:
            if not self.kmeans_ks or min(self.kmeans_ks) < 1:
                raise RecipeError(
                    f"search.kmeans_ks must be non-empty ints >= 1, got {self.kmeans_ks}"
                )
            object.__setattr__(self, "kmeans_ks", tuple(int(k) for k in self.kmeans_ks))

    @property
    def hv_reference(self) -> tuple[float, float]:
        """The hypervolume reference point in the minimised space ``(C, -P)``."""
        return (float(self.hv_storage_ref), -float(self.hv_performance_ref))

    @property
    def evals_cap(self) -> int:
        """Most real evaluations per generation."""
        return self.evals_per_generation or self.population_size

    @property
    def n_offspring(self) -> int:
        """Candidates screened by the surrogate per generation."""
        return self.offspring_per_generation or 5 * self.population_size

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        data = asdict(self)
        data["kmeans_ks"] = list(self.kmeans_ks) if self.kmeans_ks is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"search: unknown field(s) {unknown}")
        values = dict(data)
        if values.get("kmeans_ks") is not None:
            values["kmeans_ks"] = tuple(values["kmeans_ks"])
        return cls(**values)
