"""Task metrics against hand-computed values and, where installed, scikit-learn / scipy."""

from __future__ import annotations

import math

import pytest
import torch

from modmerge.errors import ModmergeError
from modmerge.tasks.metrics import METRICS, accuracy, get_metric, macro_f1, mcc, pearson_spearman

T = torch.tensor


def test_table_names_every_metric_a_manifest_may_carry():
    from typing import get_args

    from modmerge.tasks.spec import MetricName

    assert set(METRICS) == set(get_args(MetricName))
    assert get_metric("accuracy") is accuracy
    with pytest.raises(ModmergeError, match="unknown metric 'f2'"):
        get_metric("f2")


@pytest.mark.parametrize(
    ("fn", "labels", "preds", "expected"),
    [
        (accuracy, [0, 1, 2, 2], [0, 1, 1, 2], 0.75),
        # Binary MCC: TP=2 (1,1), TN=1, FP=1, FN=0 -> (2*1 - 1*0) / sqrt(3*2*1*2) = 2 / sqrt(12)
        (mcc, [1, 1, 0, 0], [1, 1, 1, 0], 2 / math.sqrt(12)),
        (mcc, [0, 1, 0, 1], [0, 1, 0, 1], 1.0),
        (mcc, [0, 1, 0, 1], [1, 0, 1, 0], -1.0),
        (mcc, [0, 0, 1, 1], [1, 1, 1, 1], 0.0),  # constant predictions: undefined -> 0
        # Class 0: P=1/1, R=1/2 -> F1 2/3; class 1: P=2/3, R=1 -> F1 4/5; class 2 absent everywhere.
        (macro_f1, [0, 0, 1, 1], [0, 1, 1, 1], (2 / 3 + 4 / 5) / 2),
        # Predicting an absent class counts it (F1 0), as scikit-learn does.
        (macro_f1, [0, 0], [0, 2], (2 / 3 + 0.0) / 2),
        (pearson_spearman, [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0], 1.0),
        (pearson_spearman, [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], -1.0),
        (pearson_spearman, [1.0, 2.0, 3.0], [5.0, 5.0, 5.0], 0.0),  # constant: undefined -> 0
    ],
)
def test_hand_computed(fn, labels, preds, expected):
    assert fn(T(labels), T(preds)) == pytest.approx(expected, abs=1e-12)


def test_multiclass_mcc_hand_computed():
    # Confusion rows = true: [[2,1,0],[0,1,1],[1,0,2]]; Gorodkin: (c*s - sum p_k t_k) / sqrt(...)
    labels = T([0, 0, 0, 1, 1, 2, 2, 2])
    preds = T([0, 0, 1, 1, 2, 0, 2, 2])
    c, s = 5, 8
    t, p = [3, 2, 3], [3, 2, 3]
    num = c * s - sum(a * b for a, b in zip(t, p, strict=True))
    den = math.sqrt((s * s - sum(a * a for a in t)) * (s * s - sum(b * b for b in p)))
    assert mcc(labels, preds) == pytest.approx(num / den)


def test_spearman_averages_tied_ranks():
    # Ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4]; against themselves the correlation is 1.
    x = T([1.0, 2.0, 2.0, 3.0])
    assert pearson_spearman(x, x) == pytest.approx(1.0)


def test_errors_name_the_metric():
    with pytest.raises(ModmergeError, match="metric 'accuracy': 2 labels but 3 predictions"):
        accuracy(T([0, 1]), T([0, 1, 1]))
    with pytest.raises(ModmergeError, match="no examples"):
        mcc(T([]), T([]))


def test_agrees_with_scikit_learn_and_scipy():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    for classes in (2, 3, 7):
        labels = torch.randint(0, classes, (500,), generator=gen)
        preds = torch.where(torch.rand(500, generator=gen) < 0.6, labels, torch.randint(0, classes, (500,), generator=gen))
        assert accuracy(labels, preds) == pytest.approx(sklearn_metrics.accuracy_score(labels, preds))
        assert mcc(labels, preds) == pytest.approx(sklearn_metrics.matthews_corrcoef(labels, preds))
        assert macro_f1(labels, preds) == pytest.approx(sklearn_metrics.f1_score(labels, preds, average="macro"))
    x = torch.randn(300, generator=gen)
    y = (x + 0.5 * torch.randn(300, generator=gen)).round(decimals=1)  # rounding creates ties
    expected = (stats.pearsonr(x, y).statistic + stats.spearmanr(x, y).statistic) / 2
    assert pearson_spearman(x, y) == pytest.approx(expected)
