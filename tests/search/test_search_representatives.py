"""G1 / G2 / G3 of Table I."""

from __future__ import annotations

from types import SimpleNamespace

from modmerge.search import select_representatives


def sol(c, p):
    return SimpleNamespace(storage_cost=c, performance=p)


FRONT = [sol(0.25, 0.55), sol(0.31, 0.62), sol(0.85, 0.79), sol(1.2, 0.80), sol(1.7, 0.84)]


def test_table_one_choices():
    reps = select_representatives(FRONT, base_performance=0.60, best_baseline_performance=0.78)
    assert reps.g1 is FRONT[1]  # least storage with P > 0.60
    assert reps.g2 is FRONT[2]  # least storage with P > 0.78
    assert reps.g3 is FRONT[4]  # highest P


def test_beating_is_strict_and_none_when_nothing_qualifies():
    reps = select_representatives(FRONT, base_performance=0.84, best_baseline_performance=0.9)
    assert reps.g1 is None and reps.g2 is None
    assert reps.g3 is FRONT[4]
    empty = select_representatives([], base_performance=0.5, best_baseline_performance=0.5)
    assert (empty.g1, empty.g2, empty.g3) == (None, None, None)


def test_missing_reference_gives_none():
    reps = select_representatives(FRONT, base_performance=None, best_baseline_performance=None)
    assert reps.g1 is None and reps.g2 is None and reps.g3 is FRONT[4]


def test_ties():
    a, b = sol(0.5, 0.7), sol(0.5, 0.8)
    c = sol(0.9, 0.8)
    reps = select_representatives([a, b, c], base_performance=0.6, best_baseline_performance=0.6)
    assert reps.g1 is b  # same storage: higher P
    assert reps.g3 is b  # same P: lower storage
