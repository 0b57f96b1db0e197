"""RegMean: hand-worked cases, an independent numpy form of the closed form, and its properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging import get_method

W1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
W2 = torch.tensor([[5.0, 6.0], [7.0, 8.0]])


def numpy_regmean(weights, grams, alpha, coefficients=None):
    """Independent form for Linear (out x in) weights: W = (sum c W_t G~_t)(sum c G~_t)^-1."""
    coefficients = coefficients or [1.0] * len(weights)
    reduced = [alpha * g + (1 - alpha) * np.diag(np.diag(g)) for g in (np.asarray(g, np.float64) for g in grams)]
    lhs = sum(c * g for c, g in zip(coefficients, reduced, strict=True))
    rhs = sum(c * np.asarray(w, np.float64) @ g for c, w, g in zip(coefficients, weights, reduced, strict=True))
    return rhs @ np.linalg.inv(lhs)


def merge(tensors, grams, **kwargs):
    method = get_method("regmean")
    params = method.validate_params({k: v for k, v in kwargs.items() if k in method.param_names})
    rest = {k: v for k, v in kwargs.items() if k not in method.param_names}
    return method(torch.zeros_like(tensors[0]), tensors, **params, stats=grams, **rest)


CASES = [
    # (id, grams, alpha, expected). Diagonal Grams: column j of W is a diag-weighted average,
    # col 0 weights (1, 3)/4, col 1 weights (3, 1)/4 -> [[(1+15)/4, (6+6)/4], [(3+21)/4, (12+8)/4]].
    ("diagonal", [torch.diag(torch.tensor([1.0, 3.0])), torch.diag(torch.tensor([3.0, 1.0]))], 0.9, [[4.0, 3.0], [6.0, 5.0]]),
    # alpha = 0 drops the off-diagonal entries: G1 -> diag(2, 2), G2 -> I -> (2 W1 + W2) / 3.
    ("alpha_zero", [torch.tensor([[2.0, 1.0], [1.0, 2.0]]), torch.eye(2)], 0.0, [[7.0 / 3.0, 10.0 / 3.0], [13.0 / 3.0, 16.0 / 3.0]]),
    # G = I for every model: plain average.
    ("identity", [torch.eye(2), torch.eye(2)], 0.5, [[3.0, 4.0], [5.0, 6.0]]),
]


@pytest.mark.parametrize(("grams", "alpha", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_regmean_cases(grams, alpha, expected):
    out = merge([W1, W2], grams, alpha=alpha)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor(expected))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
def test_matches_independent_numpy_formula(alpha):
    g1 = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    g2 = torch.tensor([[1.0, -0.5], [-0.5, 3.0]])
    out = merge([W1, W2], [g1, g2], alpha=alpha)
    expected = numpy_regmean([W1.numpy(), W2.numpy()], [g1.numpy(), g2.numpy()], alpha)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_weights_scale_each_models_gram():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(10, 3, generator=gen) for _ in range(2)]
    grams = [x.T @ x for x in xs]
    ws = [torch.randn(4, 3, generator=gen) for _ in range(2)]
    out = merge(ws, grams, alpha=0.7, weights=[3.0, 1.0])
    expected = numpy_regmean([w.numpy() for w in ws], [g.numpy() for g in grams], 0.7, [0.75, 0.25])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_conv1d_layout_is_the_transpose():
    gen = torch.Generator().manual_seed(1)
    grams = [(lambda x: x.T @ x)(torch.randn(8, 2, generator=gen)) for _ in range(2)]
    linear = [torch.randn(3, 2, generator=gen) for _ in range(2)]  # out x in: shape rule -> Linear
    out_linear = merge(linear, grams, alpha=0.8)
    out_conv1d = merge([w.T.contiguous() for w in linear], grams, alpha=0.8)  # in x out -> Conv1D
    assert out_conv1d.shape == (2, 3)
    torch.testing.assert_close(out_conv1d, out_linear.T)


def test_square_conv1d_needs_explicit_layout():
    g1, g2 = torch.tensor([[2.0, 1.0], [1.0, 2.0]]), torch.diag(torch.tensor([1.0, 3.0]))
    w1, w2 = torch.tensor([[1.0, -2.0], [0.5, 4.0]]), torch.tensor([[3.0, 1.0], [-1.0, 2.0]])
    expected = merge([w1, w2], [g1, g2], alpha=1.0)
    conv = merge([w1.T.contiguous(), w2.T.contiguous()], [g1, g2], alpha=1.0, layout="conv1d")
    torch.testing.assert_close(conv, expected.T)
    # "auto" reads a square weight as Linear, which differs here
    auto = merge([w1.T.contiguous(), w2.T.contiguous()], [g1, g2], alpha=1.0)
    assert not torch.allclose(auto, expected.T)


def test_identical_models_give_the_same_model():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(4, 3, generator=gen)
    grams = [(lambda x: x.T @ x)(torch.randn(6, 3, generator=gen)) for _ in range(3)]
    torch.testing.assert_close(merge([w, w, w], grams, alpha=0.9), w)


def test_shared_data_and_alpha_one_gives_average():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(20, 3, generator=gen)
    ws = [torch.randn(2, 3, generator=gen) for _ in range(3)]
    out = merge(ws, [x.T @ x] * 3, alpha=1.0)
    torch.testing.assert_close(out, torch.stack(ws).mean(0), rtol=1e-4, atol=1e-5)


def test_minimises_summed_output_error():
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(30, 5, generator=gen) * torch.rand(5, generator=gen) * 3 for _ in range(3)]
    ws = [torch.randn(4, 5, generator=gen) for _ in range(3)]

    def loss(w):
        return sum(((x @ w.T - x @ wt.T) ** 2).sum() for x, wt in zip(xs, ws, strict=True))

    merged = merge(ws, [x.T @ x for x in xs], alpha=1.0)
    assert loss(merged) <= loss(torch.stack(ws).mean(0))
    # first-order optimality: the gradient sum_t G_t (W^T - W_t^T) vanishes
    grad = sum(x.T @ x @ (merged.T - wt.T) for x, wt in zip(xs, ws, strict=True))
    assert grad.abs().max() < 1e-2
    # and small perturbations only increase the loss
    for _ in range(5):
        assert loss(merged) <= loss(merged + 1e-2 * torch.randn(4, 5, generator=gen))


def test_unseen_input_features_take_the_average():
    g1 = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # feature 1 never active in either model
    g2 = torch.tensor([[6.0, 0.0], [0.0, 0.0]])
    out = merge([W1, W2], [g1, g2], alpha=1.0)
    # column 0: (2*W1 + 6*W2)/8; column 1: plain average
    torch.testing.assert_close(out, torch.tensor([[4.0, 4.0], [6.0, 6.0]]))


def test_no_statistics_falls_back_to_weighted_average():
    bias1, bias2 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    out = merge([bias1, bias2], None, weights=[3.0, 1.0])
    torch.testing.assert_close(out, torch.tensor([1.5, 3.0]))


def test_singular_system_raises():
    rank_one = torch.ones(2, 2)
    with pytest.raises(MergeMethodError, match="singular"):
        merge([W1, W2], [rank_one, rank_one], alpha=1.0)


@pytest.mark.parametrize(
    ("tensors", "grams", "kwargs", "message"),
    [
        ([W1, W2], [torch.eye(2)], {}, "1 Gram matrices for 2 models"),
        ([W1, W2], [torch.eye(2), torch.eye(3)], {}, "model 1 Gram has shape"),
        ([torch.ones(2, 4)] * 2, [torch.eye(3)] * 2, {}, "either layout"),
        ([torch.ones(3, 2)] * 2, [torch.eye(2)] * 2, {"layout": "conv1d"}, "read as Conv1D"),
        ([torch.ones(2)] * 2, [torch.eye(2)] * 2, {}, "only 2-D weights"),
    ],
)
def test_bad_inputs_raise_one_line(tensors, grams, kwargs, message):
    with pytest.raises(MergeMethodError, match=message) as info:
        merge(tensors, grams, **kwargs)
    assert "\n" not in str(info.value)


def test_registered_with_statistics_need():
    method = get_method("regmean")
    assert method.needs == ("gram",)
    assert method.defaults() == {"alpha": 0.9, "layout": "auto"}
    with pytest.raises(MergeMethodError, match="layout"):
        method.validate_params({"layout": "columns"})
