"""Initial populations: K-means over homologous units' task vectors (the paper), random, or mixed.

For each unit ``l`` the ``T`` task vectors ``tau_t^l`` are clustered; tasks whose vectors point
the same way (cosine geometry: rows are L2-normalised first) land in one group, so they are
merged in that unit. One clustering per ``k`` gives one grouping matrix per ``k``; further
members vary ``k`` per unit around a global ``k`` until the population holds ``size`` distinct
matrices. Task vectors of large units can first be shrunk with :func:`project`.

Example::

    >>> rng = np.random.default_rng(0)
    >>> vecs = [np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])] * 2
    >>> pop = kmeans_population(vecs, size=4, ks=[2], rng=rng)
    >>> GroupingMatrix.from_array([[0, 0], [0, 0], [1, 1]]) in pop
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from modmerge.errors import ModmergeError
from modmerge.experts.grouping import GroupingMatrix, canonical_column, count_configurations

__all__ = [
    "cluster_unit",
    "kmeans_population",
    "mixed_population",
    "project",
    "random_grouping",
    "random_population",
]

_TRIES_PER_MEMBER = 50


def project(vectors: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Shrink ``T x d`` task vectors to ``T x dim`` with one random sign-hash projection.

    Each coordinate goes to a random bucket with a random sign (a count sketch), which keeps
    inner products, hence cosines, in expectation; it costs ``O(T d)`` time and ``O(d)`` memory,
    unlike a dense Gaussian matrix that would be ``d x dim``. Vectors with ``d <= dim`` are
    returned unchanged (as float64).

    >>> project(np.ones((2, 1000)), 16, np.random.default_rng(0)).shape
    (2, 16)
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ModmergeError(f"project: expected a 2-D T x d array, got shape {vectors.shape}")
    if dim < 1:
        raise ModmergeError(f"project: dim must be >= 1, got {dim}")
    n_tasks, d = vectors.shape
    if d <= dim:
        return vectors.copy()
    buckets = rng.integers(0, dim, size=d)
    signs = rng.integers(0, 2, size=d).astype(np.float64) * 2.0 - 1.0
    return np.stack(
        [np.bincount(buckets, weights=vectors[t] * signs, minlength=dim) for t in range(n_tasks)]
    )


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # A zero task vector (the task left this unit untouched) stays at the origin.
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _kmeans_labels(vectors: np.ndarray, k: int, seed: int, n_init: int) -> tuple[int, ...]:
    x = _normalise_rows(np.asarray(vectors, dtype=np.float64))
    n_tasks = x.shape[0]
    k_eff = min(k, n_tasks, len(np.unique(x, axis=0)))
    if k_eff <= 1:
        return (0,) * n_tasks
    if k_eff >= n_tasks:
        return tuple(range(n_tasks))
    model = KMeans(n_clusters=k_eff, n_init=n_init, random_state=seed).fit(x)
    return canonical_column(model.labels_)


def cluster_unit(vectors: np.ndarray, k: int, seed: int, *, n_init: int = 4) -> tuple[int, ...]:
    """Canonical group labels of one unit's ``T`` task vectors from K-means with ``k`` clusters.

    Rows are L2-normalised first. ``k`` is capped by the number of distinct vectors (K-means
    cannot make more clusters than points); ``k = 1`` merges all, ``k >= T`` keeps all apart.

    >>> cluster_unit(np.array([[1.0, 0.0], [2.0, 0.1], [0.0, 3.0]]), 2, seed=0)
    (0, 0, 1)
    """
    # T points are tiny: starting OpenMP threads costs ~20x the clustering itself.
    with threadpool_limits(limits=1):
        return _kmeans_labels(vectors, k, seed, n_init)


def _check_size(n_tasks: int, n_units: int, size: int) -> None:
    if size < 1:
        raise ModmergeError(f"population size must be >= 1, got {size}")
    if size > count_configurations(n_tasks, n_units):
        raise ModmergeError(
            f"population size {size} exceeds the {count_configurations(n_tasks, n_units)} distinct "
            f"grouping matrices of {n_tasks} tasks x {n_units} units"
        )


def _add(population: list[GroupingMatrix], size: int, g: GroupingMatrix) -> None:
    """Append ``g`` if there is room and it is new."""
    if len(population) < size and g not in population:
        population.append(g)


def _fill(population: list[GroupingMatrix], size: int, draw: Callable[[], GroupingMatrix]) -> None:
    """Append distinct draws until ``size`` members or the try budget is spent."""
    seen = set(population)
    for _ in range(_TRIES_PER_MEMBER * size):
        if len(population) >= size:
            return
        g = draw()
        if g not in seen:
            seen.add(g)
            population.append(g)


def random_grouping(n_tasks: int, n_units: int, rng: np.random.Generator) -> GroupingMatrix:
    """A random matrix: per unit, ``k`` uniform in ``1..T``, then each task's label uniform in ``0..k-1``.

    >>> random_grouping(3, 4, np.random.default_rng(0)).n_units
    4
    """
    ks = rng.integers(1, n_tasks + 1, size=n_units)
    return GroupingMatrix.from_columns([rng.integers(0, k, size=n_tasks) for k in ks])


def random_population(
    n_tasks: int,
    n_units: int,
    size: int,
    rng: np.random.Generator,
    *,
    include_extremes: bool = True,
) -> list[GroupingMatrix]:
    """``size`` distinct random matrices (the ``--init random`` ablation).

    With ``include_extremes`` the all-merged and individual matrices come first, as in
    :func:`kmeans_population`, so the two initialisations differ only in the K-means prior.

    >>> len(random_population(3, 4, 10, np.random.default_rng(0)))
    10
    """
    _check_size(n_tasks, n_units, size)
    population: list[GroupingMatrix] = []
    if include_extremes:
        _add(population, size, GroupingMatrix.all_merged(n_tasks, n_units))
        _add(population, size, GroupingMatrix.individual(n_tasks, n_units))
    _fill(population, size, lambda: random_grouping(n_tasks, n_units, rng))
    if len(population) < size:
        raise ModmergeError(f"could only draw {len(population)} distinct matrices of {size}")
    return population


def kmeans_population(
    unit_vectors: Sequence[np.ndarray],
    size: int,
    ks: Sequence[int] | None,
    rng: np.random.Generator,
    *,
    include_extremes: bool = True,
) -> list[GroupingMatrix]:
    """``size`` distinct matrices from K-means over each unit's ``T x d_l`` task vectors.

    Order: all-merged and individual (with ``include_extremes``), then one matrix per ``k`` in
    ``ks`` (default ``1..T``) with the same ``k`` in every unit, then variations where each unit
    draws its own ``k`` from ``{k-1, k, k+1}`` (clipped to ``1..T``) around a global ``k`` from
    ``ks``; random matrices top the population up if the variations run dry.

    >>> vecs = [np.eye(3)] * 2
    >>> len(kmeans_population(vecs, 5, None, np.random.default_rng(0)))
    5
    """
    if not unit_vectors:
        raise ModmergeError("K-means initialisation: no unit task vectors given")
    n_tasks, n_units = int(np.shape(unit_vectors[0])[0]), len(unit_vectors)
    for unit, v in enumerate(unit_vectors):
        if np.ndim(v) != 2 or np.shape(v)[0] != n_tasks:
            raise ModmergeError(
                f"K-means initialisation: unit {unit} vectors have shape {np.shape(v)}, "
                f"expected ({n_tasks}, d)"
            )
    _check_size(n_tasks, n_units, size)
    k_values = sorted({int(k) for k in ks}) if ks is not None else list(range(1, n_tasks + 1))
    if not k_values or k_values[0] < 1 or k_values[-1] > n_tasks:
        raise ModmergeError(f"K-means initialisation: ks must lie in 1..{n_tasks}, got {ks}")

    seeds = rng.integers(0, 2**31 - 1, size=n_units)
    cache: dict[tuple[int, int], tuple[int, ...]] = {}

    def labels(unit: int, k: int) -> tuple[int, ...]:
        if (unit, k) not in cache:
            cache[unit, k] = _kmeans_labels(unit_vectors[unit], k, int(seeds[unit]), 4)
        return cache[unit, k]

    def matrix(per_unit_k: Sequence[int]) -> GroupingMatrix:
        return GroupingMatrix.from_columns([labels(u, int(k)) for u, k in enumerate(per_unit_k)])

    def variation() -> GroupingMatrix:
        k = int(rng.choice(k_values))
        per_unit = np.clip(k + rng.integers(-1, 2, size=n_units), 1, n_tasks)
        return matrix(per_unit)

    population: list[GroupingMatrix] = []
    if include_extremes:
        _add(population, size, GroupingMatrix.all_merged(n_tasks, n_units))
        _add(population, size, GroupingMatrix.individual(n_tasks, n_units))
    # One thread limit around all fits: setting it up scans the loaded libraries (~5 ms), and
    # OpenMP threads on T points cost ~20x the clustering itself.
    with threadpool_limits(limits=1):
        for k in k_values:
            _add(population, size, matrix([k] * n_units))
        _fill(population, size, variation)
    _fill(population, size, lambda: random_grouping(n_tasks, n_units, rng))
    if len(population) < size:
        raise ModmergeError(f"could only draw {len(population)} distinct matrices of {size}")
    return population


def mixed_population(
    unit_vectors: Sequence[np.ndarray],
    size: int,
    ks: Sequence[int] | None,
    rng: np.random.Generator,
    *,
    include_extremes: bool = True,
) -> list[GroupingMatrix]:
    """Half K-means, half random: the first ``ceil(size / 2)`` members as
    :func:`kmeans_population` makes them (extremes, one matrix per ``k``, variations), the rest
    distinct random matrices. Not in the paper: the initialisation ablation found K-means'
    population better at the start but far less diverse than a random one, which overtook it
    within 100 evaluations; this keeps the K-means prior's spread of storage costs and adds the
    random members' diversity. Measured on the ``vision`` zoo (MERGE-TA, 5 runs each, see
    benchmarks/RESULTS.md): hypervolume at 300 evaluations 5.9835 ± 0.0064, between K-means
    (5.9803 ± 0.0025) and random (5.9901 ± 0.0039), so it does not beat random there.

    >>> pop = mixed_population([np.eye(3)] * 4, 8, None, np.random.default_rng(0))
    >>> len(pop), len(set(pop))
    (8, 8)
    """
    if not unit_vectors:
        raise ModmergeError("mixed initialisation: no unit task vectors given")
    n_tasks, n_units = int(np.shape(unit_vectors[0])[0]), len(unit_vectors)
    _check_size(n_tasks, n_units, size)
    population = kmeans_population(unit_vectors, (size + 1) // 2, ks, rng, include_extremes=include_extremes)
    _fill(population, size, lambda: random_grouping(n_tasks, n_units, rng))
    if len(population) < size:
        raise ModmergeError(f"could only draw {len(population)} distinct matrices of {size}")
    return population
