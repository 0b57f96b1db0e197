"""MERGE search core: grouping matrices, K-means initialisation, surrogate-assisted NSGA-II.

The search works on an abstract :class:`MergeProblem` (storage cost ``C`` exact, performance
``P`` by real evaluation) and knows nothing about models. Modules, in the order data flows:

- :mod:`~modmerge.search.grouping`: the canonical ``T x L`` :class:`GroupingMatrix`;
- :mod:`~modmerge.search.encoding`: renumbering-invariant surrogate features;
- :mod:`~modmerge.search.init`: K-means / random / mixed initial populations;
- :mod:`~modmerge.search.operators`: column crossover, partition mutations, tournaments;
- :mod:`~modmerge.search.surrogate`: the random-forest predictor of ``P``;
- :mod:`~modmerge.search.pareto`: non-dominated sorting, crowding, hypervolume (pymoo);
- :mod:`~modmerge.search.nsga`: the loop (Algorithm 1); :mod:`~modmerge.search.state`: resumable state;
- :mod:`~modmerge.search.representatives`: G1 / G2 / G3 of Table I;
- :mod:`~modmerge.search.outputs`: a run's ``pareto.json`` record and ``RUN_DIR`` files;
- :mod:`~modmerge.search.driver` (zoo recipes) and :mod:`~modmerge.search.api`
  (:func:`merge_search` on the user's own models, one evaluator callable per task).

Example::

    >>> GroupingMatrix.from_array([[3], [3], [1]]).groups(0)
    ((0, 1), (2,))
"""

from modmerge.search.config import SearchConfig
from modmerge.search.encoding import encode, encode_labels, encode_many, encoding_size
from modmerge.search.grouping import GroupingMatrix, canonical_column, count_configurations
from modmerge.search.init import (
    cluster_unit,
    kmeans_population,
    mixed_population,
    project,
    random_grouping,
    random_population,
)
from modmerge.search.nsga import GenerationCallback, resume_search, run_search
from modmerge.search.operators import binary_tournament, crossover, make_offspring, mutate
from modmerge.search.pareto import hypervolume, non_dominated, rank_and_crowding, survival
from modmerge.search.problem import Evaluation, Executor, LocalExecutor, MergeProblem
from modmerge.search.representatives import Representatives, select_representatives
from modmerge.search.state import (
    EvaluatedConfig,
    GenerationRecord,
    SearchState,
    load_state,
    save_state,
)
from modmerge.search.surrogate import PerformanceSurrogate, fit_surrogate

__all__ = [
    "EvaluatedConfig",
    "Evaluation",
    "Executor",
    "GenerationCallback",
    "GenerationRecord",
    "GroupingMatrix",
    "LocalExecutor",
    "MergeProblem",
    "ParetoSolution",
    "PerformanceSurrogate",
    "Representatives",
    "SearchConfig",
    "SearchResult",
    "SearchState",
    "binary_tournament",
    "canonical_column",
    "cluster_unit",
    "count_configurations",
    "crossover",
    "encode",
    "encode_labels",
    "encode_many",
    "encoding_size",
    "fit_surrogate",
    "hypervolume",
    "kmeans_population",
    "load_state",
    "make_offspring",
    "merge_search",
    "mixed_population",
    "mutate",
    "non_dominated",
    "project",
    "random_grouping",
    "random_population",
    "rank_and_crowding",
    "resume_search",
    "run_search",
    "save_state",
    "select_representatives",
    "survival",
]


def __getattr__(name: str) -> object:
    # The own-models API pulls in checkpoints, merging and the zoo driver: load it on first use,
    # which also keeps `modmerge.objectives` -> `modmerge.search.grouping` free of an import cycle.
    if name in ("merge_search", "SearchResult", "ParetoSolution"):
        from modmerge.search import api

        return getattr(api, name)
    raise AttributeError(f"module 'modmerge.search' has no attribute {name!r}")
