"""benchmarks/search_ablations.py: the initial population's diversity measure."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ablations():
    path = Path(__file__).parents[2] / "benchmarks" / "search_ablations.py"
    spec = importlib.util.spec_from_file_location("search_ablations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diversity_ignores_group_numbers_and_spans_zero_to_one(ablations):
    merged = [[0, 0], [0, 0], [0, 0]]
    apart = [[0, 0], [1, 1], [2, 2]]
    renumbered = [[2, 2], [0, 0], [1, 1]]
    assert ablations.diversity([apart, renumbered]) == 0.0
    assert ablations.diversity([merged, apart]) == 1.0
    # task 2 leaves the group in unit 1: pairs (0, 2) and (1, 2) differ there, 2 of the 6 entries
    assert ablations.diversity([merged, [[0, 0], [0, 0], [0, 1]]]) == pytest.approx(2 / 6)
    assert ablations.diversity([merged]) == 0.0
