"""The Fisher estimators against formulas written out by hand on tiny linear models."""

from __future__ import annotations

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.fisher_statistics import compute_fisher


class Linear(torch.nn.Module):
    def __init__(self, outputs: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, outputs, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _batches(x: torch.Tensor, y: torch.Tensor | None) -> list[dict[str, torch.Tensor]]:
    batches = [{"x": x[:3]}, {"x": x[3:]}]
    if y is not None:
        batches[0]["labels"], batches[1]["labels"] = y[:3], y[3:]
    return batches


def test_default_is_the_exact_expectation_over_the_models_softmax():
    """F = mean_x sum_c p_c(x) ((e_c - p(x)) x^T)^2: d log softmax(Wx)_c / dW = (e_c - p) x^T."""
    torch.manual_seed(0)
    model = Linear(4)
    x = torch.randn(5, 3)
    fisher = compute_fisher(model, _batches(x, torch.tensor([0, 1, 2, 3, 0])))  # labels are ignored
    with torch.no_grad():
        p = torch.softmax(x @ model.linear.weight.T, dim=-1)  # (5, 4)
    expected = torch.zeros(4, 3)
    for n in range(5):
        for c in range(4):
            score = (torch.eye(4)[c] - p[n])[:, None] * x[n][None, :]
            expected += p[n, c] * score**2
    torch.testing.assert_close(fisher["linear.weight"], expected / 5)
    assert fisher.metadata["estimator"] == "expected" and fisher.metadata["n_examples"] == "5"


def test_sampled_labels_average_to_the_expected_fisher():
    torch.manual_seed(1)
    model = Linear(3)
    x = torch.randn(5, 3)
    expected = compute_fisher(model, _batches(x, None))["linear.weight"]
    g = torch.Generator().manual_seed(0)
    draws = [compute_fisher(model, _batches(x, None), estimator="sampled", generator=g)["linear.weight"]
             for _ in range(400)]
    torch.testing.assert_close(torch.stack(draws).mean(0), expected, rtol=0.15, atol=0.01)


def test_regression_head_uses_a_gaussian_likelihood():
    """One output f = w.x: expected F = mean x^2 (the score is (y - f) x, Var(y) = 1);
    empirical F = mean ((y - f) x)^2, the gradient of the squared error with f as the mean."""
    torch.manual_seed(2)
    model = Linear(1)
    x = torch.randn(5, 3)
    y = torch.randn(5)
    with torch.no_grad():
        f = (x @ model.linear.weight.T).reshape(-1)
    expected = compute_fisher(model, _batches(x, y))
    torch.testing.assert_close(expected["linear.weight"], (x**2).mean(0, keepdim=True))
    empirical = compute_fisher(model, _batches(x, y), estimator="empirical")
    torch.testing.assert_close(empirical["linear.weight"], (((y - f)[:, None] * x) ** 2).mean(0, keepdim=True))
    # without labels a one-output head is read as regression too (the num_labels == 1 convention)
    torch.testing.assert_close(compute_fisher(model, _batches(x, None))["linear.weight"], expected["linear.weight"])
    g = torch.Generator().manual_seed(0)
    draws = [compute_fisher(model, _batches(x, None), estimator="sampled", generator=g)["linear.weight"]
             for _ in range(400)]
    torch.testing.assert_close(torch.stack(draws).mean(0), expected["linear.weight"], rtol=0.15, atol=0.01)


def test_token_level_expectation_skips_ignored_positions():
    """Positions labelled -100 add nothing; the others add sum_c p_c (d log p_c)^2 each."""

    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x)  # (1, length, 2)

    torch.manual_seed(3)
    model = Tokens()
    x = torch.randn(1, 4, 3)
    labels = torch.tensor([[0, -100, 1, -100]])
    fisher = compute_fisher(model, [{"x": x, "labels": labels}])["linear.weight"]
    with torch.no_grad():
        p = torch.softmax(x[0] @ model.linear.weight.T, dim=-1)
    expected = torch.zeros(2, 3)
    for pos in (0, 2):
        for c in range(2):
            expected += p[pos, c] * ((torch.eye(2)[c] - p[pos])[:, None] * x[0, pos][None, :]) ** 2
    torch.testing.assert_close(fisher, expected)


def test_bad_estimator_and_too_many_classes_raise():
    with pytest.raises(MergeMethodError, match="estimator"):
        compute_fisher(Linear(2), [{"x": torch.ones(1, 3)}], estimator="true")
    with pytest.raises(MergeMethodError, match="sampled"):
        compute_fisher(torch.nn.Linear(3, 5000), [{"input": torch.ones(1, 3)}])
