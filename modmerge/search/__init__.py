"""MERGE search core: grouping matrices, K-means initialisation, surrogate-assisted NSGA-II.

The search works on an abstract :class:`SearchProblem` (storage cost ``C`` exact, performance
``P`` by real evaluation) and knows nothing about models. Modules, in the order data flows:

- :mod:`~modmerge.experts.grouping`: the canonical ``T x L`` :class:`GroupingMatrix`;
- :mod:`~modmerge.search.encoding`: renumbering-invariant surrogate features;
- :mod:`~modmerge.search.init`: K-means / random / mixed initial populations;
- :mod:`~modmerge.search.operators`: column crossover, partition mutations, tournaments;
- :mod:`~modmerge.search.surrogate`: the random-forest predictor of ``P``;
- :mod:`~modmerge.search.pareto`: non-dominated sorting, crowding, hypervolume (pymoo);
- :mod:`~modmerge.search.nsga`: the loop (Algorithm 1); :mod:`~modmerge.search.state`: resumable state;
- :mod:`~modmerge.search.representatives`: G1 / G2 / G3 of Table I;
- :mod:`~modmerge.search.outputs`: a run's ``pareto.json`` record and ``RUN_DIR`` files;
- :mod:`~modmerge.search.recipe`: the typed search recipe (its source a discriminated union);
- :mod:`~modmerge.search.driver`: the one run loop, for every source form;
  :mod:`~modmerge.search.test_phase`: the Pareto set's resumable test metrics;
- :mod:`~modmerge.search.api`: :func:`merge_search`, the same from Python.

Example::

    >>> GroupingMatrix.from_array([[3], [3], [1]]).groups(0)
    ((0, 1), (2,))
"""

from modmerge.experts.grouping import GroupingMatrix, canonical_column, count_configurations
from modmerge.search.config import SearchConfig
from modmerge.search.encoding import encode, encode_labels, encode_many, encoding_size
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
from modmerge.search.problem import Evaluation, Executor, LocalExecutor, SearchProblem
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
    "ParetoSolution",
    "PerformanceSurrogate",
    "Representatives",
    "SearchConfig",
    "SearchProblem",
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
    # The Python API pulls in checkpoints, merging, task pools and the driver (torch,
    # transformers): loaded on first use, so the search core stays light to import.
    if name in ("merge_search", "SearchResult", "ParetoSolution"):
        from modmerge.search import api

        return getattr(api, name)
    raise AttributeError(f"module 'modmerge.search' has no attribute {name!r}")
