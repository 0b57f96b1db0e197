"""The random-forest surrogate learns P on the synthetic problem and is reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from search_synthetic import SyntheticProblem

from modmerge.errors import ModmergeError
from modmerge.search import fit_surrogate, random_population


def test_surrogate_predicts_held_out_performance():
    problem = SyntheticProblem(n_tasks=4, n_units=6)
    gs = random_population(4, 6, 200, np.random.default_rng(0))
    p = np.array([e.performance for e in problem.evaluate(gs)])
    model = fit_surrogate(gs[:150], p[:150], random_state=0, n_estimators=50)
    guess = model.predict(gs[150:])
    corr = np.corrcoef(guess, p[150:])[0, 1]
    assert corr > 0.7
    # better than predicting the training mean
    assert np.mean((guess - p[150:]) ** 2) < np.mean((p[:150].mean() - p[150:]) ** 2)


def test_surrogate_is_deterministic_given_random_state():
    problem = SyntheticProblem()
    gs = random_population(4, 6, 40, np.random.default_rng(1))
    p = [e.performance for e in problem.evaluate(gs)]
    a = fit_surrogate(gs, p, random_state=3, n_estimators=10).predict(gs)
    b = fit_surrogate(gs, p, random_state=3, n_estimators=10).predict(gs)
    np.testing.assert_array_equal(a, b)


def test_surrogate_errors():
    gs = random_population(4, 6, 3, np.random.default_rng(1))
    with pytest.raises(ModmergeError, match="3 matrices but 2"):
        fit_surrogate(gs, [0.1, 0.2], random_state=0)
    with pytest.raises(ModmergeError, match="zero"):
        fit_surrogate([], [], random_state=0)
    assert fit_surrogate(gs, [0.1, 0.2, 0.3], random_state=0).predict([]).shape == (0,)
