"""Task metrics: pure functions of (labels, predictions) tensors, returning a float in [-1, 1].

Classification metrics take integer class ids; :func:`pearson_spearman` takes real values
(regression heads). Scores are fractions, not percentages (reports multiply by 100).
:data:`METRICS` maps the names a :class:`~modmerge.tasks.spec.TaskEntry` (and a task suite's
``metric`` field) may carry to them.

Example::

    >>> import torch
    >>> METRICS["accuracy"](torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    0.6666666666666666
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from modmerge.errors import ModmergeError

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def _pair(labels: torch.Tensor, predictions: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    labels, predictions = torch.as_tensor(labels).flatten(), torch.as_tensor(predictions).flatten()
    if labels.numel() != predictions.numel():
        raise ModmergeError(f"metric '{name}': {labels.numel()} labels but {predictions.numel()} predictions")
    if labels.numel() == 0:
        raise ModmergeError(f"metric '{name}': no examples to score")
    return labels, predictions


def _confusion(labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """C x C counts (rows: true class, columns: predicted class), float64."""
    labels, predictions = labels.long(), predictions.long()
    n = int(max(labels.max(), predictions.max())) + 1
    flat = torch.bincount(labels * n + predictions, minlength=n * n)
    return flat.reshape(n, n).double()


def accuracy(labels: torch.Tensor, predictions: torch.Tensor) -> float:
    """Fraction of exact matches.

    >>> accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 0]))
    0.5
    """
    labels, predictions = _pair(labels, predictions, "accuracy")
    return float((labels.long() == predictions.long()).double().mean())


def mcc(labels: torch.Tensor, predictions: torch.Tensor) -> float:
    """Matthews correlation coefficient, multi-class (Gorodkin's R_K), as in scikit-learn.

    0.0 when it is undefined (all labels or all predictions in one class).

    >>> round(mcc(torch.tensor([1, 1, 1, 0]), torch.tensor([1, 0, 1, 1])), 4)
    -0.3333
    """
    labels, predictions = _pair(labels, predictions, "mcc")
    c = _confusion(labels, predictions)
    t, p = c.sum(1), c.sum(0)  # true and predicted counts per class
    n, correct = c.sum(), torch.trace(c)
    cov_yp = correct * n - (t * p).sum()
    cov_yy, cov_pp = n * n - (t * t).sum(), n * n - (p * p).sum()
    denominator = torch.sqrt(cov_yy * cov_pp)
    return float(cov_yp / denominator) if denominator > 0 else 0.0


def macro_f1(labels: torch.Tensor, predictions: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions.

    A class with no true and no predicted example is not counted (scikit-learn's behaviour).

    >>> round(macro_f1(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])), 4)
    0.7333
    """
    labels, predictions = _pair(labels, predictions, "macro_f1")
    c = _confusion(labels, predictions)
    tp, t, p = torch.diagonal(c), c.sum(1), c.sum(0)
    present = (t + p) > 0
    f1 = torch.where(t + p > 0, 2 * tp / (t + p).clamp_min(1), torch.zeros_like(tp))
    return float(f1[present].mean())


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = torch.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties given their average rank."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    # Positions where a run of equal values starts; every run gets the mean of its positions.
    starts = torch.ones_like(sorted_x, dtype=torch.bool)
    starts[1:] = sorted_x[1:] != sorted_x[:-1]
    run_id = torch.cumsum(starts.long(), 0) - 1
    positions = torch.arange(1, len(x) + 1, dtype=torch.float64)
    run_sum = torch.zeros(int(run_id[-1]) + 1, dtype=torch.float64).index_add_(0, run_id, positions)
    run_len = torch.bincount(run_id).double()
    ranks[order] = (run_sum / run_len)[run_id]
    return ranks


def pearson_spearman(labels: torch.Tensor, predictions: torch.Tensor) -> float:
    """Mean of the Pearson and Spearman correlations (GLUE's STS-B score).

    A correlation with a constant input is undefined and counts as 0.0.

    >>> pearson_spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.5]))  # doctest: +ELLIPSIS
    0.99...
    """
    labels, predictions = _pair(labels, predictions, "pearson_spearman")
    pearson = _pearson(labels, predictions)
    spearman = _pearson(_ranks(labels), _ranks(predictions))
    return (pearson + spearman) / 2


def pearson(labels: torch.Tensor, predictions: torch.Tensor) -> float:
    """Pearson correlation of real-valued predictions (0.0 for a constant input).

    >>> pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0]))
    1.0
    """
    labels, predictions = _pair(labels, predictions, "pearson")
    return _pearson(labels, predictions)


def spearman(labels: torch.Tensor, predictions: torch.Tensor) -> float:
    """Spearman rank correlation, ties at their average rank (0.0 for a constant input).

    >>> spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 5.0, 9.0]))
    1.0
    """
    labels, predictions = _pair(labels, predictions, "spearman")
    return _pearson(_ranks(labels), _ranks(predictions))


METRICS: Mapping[str, Metric] = {
    "accuracy": accuracy,
    "mcc": mcc,
    "macro_f1": macro_f1,
    "f1_macro": macro_f1,  # the task-suite spelling
    "pearson": pearson,
    "spearman": spearman,
    "pearson_spearman": pearson_spearman,
}

# Metrics scored on real-valued outputs (a regression head) rather than on class ids.
REGRESSION_METRICS = frozenset({"pearson", "spearman", "pearson_spearman"})


def get_metric(name: str) -> Metric:
    """The metric function called ``name``; a one-line error lists the known names.

    >>> get_metric("mcc") is mcc
    True
    """
    try:
        return METRICS[name]
    except KeyError:
        raise ModmergeError(f"unknown metric '{name}'; known: {', '.join(METRICS)}") from None
