"""K-means, random and mixed initial populations, and the random projection."""

from __future__ import annotations

import numpy as np
import pytest
from search_synthetic import SyntheticProblem

from modmerge.errors import ModmergeError
from modmerge.search import (
    GroupingMatrix,
    cluster_unit,
    kmeans_population,
    mixed_population,
    project,
    random_grouping,
    random_population,
)


def test_project_keeps_cosines_roughly():
    rng = np.random.default_rng(0)
    a = rng.normal(size=20_000)
    b = a + 0.3 * rng.normal(size=20_000)
    c = rng.normal(size=20_000)
    p = project(np.stack([a, b, c]), 512, np.random.default_rng(1))
    assert p.shape == (3, 512)

    def cos(x, y):
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    assert abs(cos(p[0], p[1]) - cos(a, b)) < 0.1
    assert abs(cos(p[0], p[2]) - cos(a, c)) < 0.1


def test_project_small_vectors_unchanged():
    v = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(project(v, 8, np.random.default_rng(0)), v)


def test_cluster_unit_cosine_geometry_and_edge_cases():
    # same direction, different lengths: one cluster under cosine geometry
    v = np.array([[1.0, 0.0], [10.0, 0.5], [0.0, 1.0], [0.1, 5.0]])
    assert cluster_unit(v, 2, seed=0) == (0, 0, 1, 1)
    assert cluster_unit(v, 1, seed=0) == (0, 0, 0, 0)
    assert cluster_unit(v, 4, seed=0) == (0, 1, 2, 3)
    # identical vectors cannot be split into more clusters than distinct points
    assert cluster_unit(np.ones((3, 2)), 2, seed=0) == (0, 0, 0)


def test_kmeans_population_recovers_planted_clusters():
    problem = SyntheticProblem(n_tasks=4, n_units=6)
    pop = kmeans_population(problem.unit_vectors(), 12, None, np.random.default_rng(0))
    assert len(pop) == 12 and len(set(pop)) == 12
    assert pop[0] == GroupingMatrix.all_merged(4, 6)
    assert pop[1] == GroupingMatrix.individual(4, 6)
    assert problem.planted() in pop  # k = 2 in every unit finds the two families
    # order: extremes, then k = 1 (a duplicate of all-merged, skipped), k = 2, k = 3 ...
    assert pop[2] == problem.planted()
    assert pop[3].n_groups_per_unit() == (3,) * 6


def test_kmeans_population_is_seeded():
    vecs = SyntheticProblem(n_tasks=5, n_units=4).unit_vectors()
    a = kmeans_population(vecs, 15, [2, 3], np.random.default_rng(7))
    b = kmeans_population(vecs, 15, [2, 3], np.random.default_rng(7))
    assert a == b


def test_kmeans_population_without_extremes_and_given_ks():
    problem = SyntheticProblem(n_tasks=4, n_units=3)
    pop = kmeans_population(
        problem.unit_vectors(), 3, [2], np.random.default_rng(0), include_extremes=False
    )
    assert pop[0] == problem.planted()
    assert len(set(pop)) == 3


def test_kmeans_population_errors():
    vecs = [np.eye(3), np.eye(3)]
    with pytest.raises(ModmergeError, match="exceeds"):
        kmeans_population(vecs, 26, None, np.random.default_rng(0))  # Bell(3)^2 = 25
    with pytest.raises(ModmergeError, match="unit 1"):
        kmeans_population([np.eye(3), np.eye(2)], 4, None, np.random.default_rng(0))
    with pytest.raises(ModmergeError, match="ks"):
        kmeans_population(vecs, 4, [5], np.random.default_rng(0))


def test_kmeans_population_can_fill_the_whole_space():
    pop = kmeans_population([np.eye(3), np.eye(3)], 25, None, np.random.default_rng(0))
    assert len(set(pop)) == 25


def test_random_population():
    pop = random_population(4, 5, 30, np.random.default_rng(0))
    assert len(set(pop)) == 30
    assert pop[:2] == [GroupingMatrix.all_merged(4, 5), GroupingMatrix.individual(4, 5)]
    assert random_population(4, 5, 30, np.random.default_rng(0)) == pop
    g = random_grouping(4, 5, np.random.default_rng(3))
    assert (g.n_tasks, g.n_units) == (4, 5)


def test_mixed_population_is_half_kmeans_then_random():
    problem = SyntheticProblem(n_tasks=4, n_units=6)
    vecs = problem.unit_vectors()
    pop = mixed_population(vecs, 12, None, np.random.default_rng(0))
    assert len(set(pop)) == 12
    # the first ceil(12 / 2) members are what K-means alone would start with
    assert pop[:6] == kmeans_population(vecs, 6, None, np.random.default_rng(0))
    assert problem.planted() in pop[:6]
    # the rest are random draws: per unit k uniform, so they mostly differ from every K-means member
    kmeans_only = set(kmeans_population(vecs, 12, None, np.random.default_rng(0)))
    assert len(set(pop[6:]) - kmeans_only) >= 4
    assert mixed_population(vecs, 12, None, np.random.default_rng(0)) == pop
    assert len(mixed_population(vecs, 7, None, np.random.default_rng(1))) == 7


def test_mixed_population_errors():
    with pytest.raises(ModmergeError, match="exceeds"):
        mixed_population([np.eye(3), np.eye(3)], 26, None, np.random.default_rng(0))
    with pytest.raises(ModmergeError, match="no unit task vectors"):
        mixed_population([], 4, None, np.random.default_rng(0))
