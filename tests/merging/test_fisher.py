"""Fisher merging: literal cases worked out by hand from sum_t w_t F_t theta_t / sum_t w_t F_t."""

from __future__ import annotations

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging import get_method

T1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
T2 = torch.tensor([[5.0, 6.0], [7.0, 8.0]])
ONES = torch.ones(2, 2)

CASES = [
    # (id, fisher per model, weights, params, expected)
    (
        # elementwise: (1*1+1*5)/2, (0->floor, 1*6)/1, (2*3+0->floor)/2, (1*4+3*8)/4
        "elementwise",
        [torch.tensor([[1.0, 0.0], [2.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 3.0]])],
        None,
        {"epsilon": 1e-10},
        [[3.0, 6.0], [3.0, 7.0]],
    ),
    (
        # equal Fisher, weights 3:1 -> (3 T1 + T2) / 4
        "weights",
        [ONES, ONES],
        [3.0, 1.0],
        {},
        [[2.0, 3.0], [4.0, 5.0]],
    ),
    (
        # F1 = 1 everywhere (sum 4), F2 = diag(8) (sum 16). Unnormalised: diagonal (1*T1 + 8*T2)/9,
        # off-diagonal F2 is floored -> T1.
        "unnormalized",
        [ONES, torch.diag(torch.tensor([8.0, 8.0]))],
        None,
        {"epsilon": 1e-10},
        [[41.0 / 9.0, 2.0], [3.0, (4.0 + 64.0) / 9.0]],
    ),
    (
        # normalize per tensor: ||F1|| = 2, ||F2|| = sqrt(128) = 8 sqrt(2), so c = (1/2, 1/(8 sqrt 2));
        # diagonal (T1/2 + T2/sqrt(2)) / (1/2 + 1/sqrt(2)); off-diagonal F2 is floored -> T1
        "normalized_per_tensor",
        [ONES, torch.diag(torch.tensor([8.0, 8.0]))],
        None,
        {"epsilon": 1e-10, "normalize": True, "norm_scope": "tensor"},
        [[(0.5 + 5 * 2**-0.5) / (0.5 + 2**-0.5), 2.0], [3.0, (2.0 + 8 * 2**-0.5) / (0.5 + 2**-0.5)]],
    ),
    (
        # all Fisher zero: everything is at the floor -> plain average
        "all_zero_fisher",
        [torch.zeros(2, 2), torch.zeros(2, 2)],
        None,
        {},
        [[3.0, 4.0], [5.0, 6.0]],
    ),
    (
        # a large floor swamps small Fisher values: 0.1 vs 1 floored to 1 each -> average
        "large_floor",
        [torch.full((2, 2), 0.1), torch.full((2, 2), 0.5)],
        None,
        {"epsilon": 1.0},
        [[3.0, 4.0], [5.0, 6.0]],
    ),
]


@pytest.mark.parametrize(("fisher", "weights", "params", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_fisher_cases(fisher, weights, params, expected):
    method = get_method("fisher")
    out = method(torch.zeros(2, 2), [T1, T2], **method.validate_params(params), stats=fisher, weights=weights)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-6, rtol=1e-6)


def test_registered_with_statistics_need():
    method = get_method("fisher")
    assert method.needs == ("fisher",)
    assert {"stats", "weights"} <= method.accepts
    assert method.defaults() == {"epsilon": 1e-6, "normalize": False, "norm_scope": "model"}
    with pytest.raises(MergeMethodError, match="epsilon"):
        method.validate_params({"epsilon": -1.0})


def test_equal_fisher_is_plain_average():
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(3, 4, generator=gen) for _ in range(3)]
    fisher = torch.rand(3, 4, generator=gen) + 0.1
    out = get_method("fisher")(torch.zeros(3, 4), tensors, stats=[fisher] * 3)
    torch.testing.assert_close(out, torch.stack(tensors).mean(0))


def test_identical_models_give_the_same_model():
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(5, generator=gen)
    stats = [torch.rand(5, generator=gen) for _ in range(3)]
    out = get_method("fisher")(torch.zeros(5), [theta] * 3, stats=stats, weights=[0.2, 0.5, 0.3])
    torch.testing.assert_close(out, theta)


def test_scaling_every_fisher_by_one_constant_changes_nothing():
    gen = torch.Generator().manual_seed(2)
    tensors = [torch.randn(6, generator=gen) for _ in range(2)]
    stats = [torch.rand(6, generator=gen) + 0.01 for _ in range(2)]
    method = get_method("fisher")
    a = method(torch.zeros(6), tensors, stats=stats, epsilon=1e-12)
    b = method(torch.zeros(6), tensors, stats=[1000.0 * s for s in stats], epsilon=1e-12)
    torch.testing.assert_close(a, b)


def test_normalize_removes_per_model_scale():
    gen = torch.Generator().manual_seed(3)
    tensors = [torch.randn(6, generator=gen) for _ in range(2)]
    fisher = torch.rand(6, generator=gen) + 0.01
    method = get_method("fisher")
    for scope, norms in (("tensor", None), ("model", [3.0, 150.0])):
        out = method(torch.zeros(6), tensors, stats=[fisher, 50.0 * fisher], normalize=True, norm_scope=scope,
                     stats_norms=norms, epsilon=1e-12)
        torch.testing.assert_close(out, (tensors[0] + tensors[1]) / 2)


def test_no_statistics_falls_back_to_weighted_average():
    out = get_method("fisher")(torch.zeros(2, 2), [T1, T2], stats=None, weights=[1.0, 3.0])
    torch.testing.assert_close(out, 0.25 * T1 + 0.75 * T2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stats": [ONES]}, "1 Fisher tensors for 2 models"),
        ({"stats": [ONES, torch.ones(3)]}, "model 1 Fisher has shape"),
        ({"stats": [ONES, ONES], "weights": [1.0, -1.0]}, "non-negative"),
        ({"stats": [ONES, ONES], "weights": [1.0]}, "1 weights for 2 models"),
    ],
)
def test_bad_inputs_raise_one_line(kwargs, message):
    with pytest.raises(MergeMethodError, match=message) as info:
        get_method("fisher")(torch.zeros(2, 2), [T1, T2], **kwargs)
    assert "\n" not in str(info.value)


def test_mismatched_model_shapes_raise():
    with pytest.raises(MergeMethodError, match="model 1 tensor has shape"):
        get_method("fisher")(torch.zeros(2, 2), [T1, torch.ones(3)], stats=None)


def _realistic_fishers(gen: torch.Generator, shape: tuple[int, ...]) -> list[torch.Tensor]:
    """Diagonal Fishers with a BERT-like spread: log-normal around 1e-6, two models 30x apart."""
    return [torch.exp(torch.randn(shape, generator=gen) * 2.0 - 14.0) * scale for scale in (1.0, 30.0)]


def test_normalize_floors_the_raw_fisher_on_a_768x3072_tensor():
    """Reference formula written out (Matena & Raffel's code, RegMean's 'param' norm):
    c_t = w_t / ||F_t||_2, merged = sum_t c_t max(F_t, eps) theta_t / sum_t c_t max(F_t, eps)."""
    gen = torch.Generator().manual_seed(4)
    shape = (768, 3072)
    thetas = [torch.randn(shape, generator=gen) for _ in range(2)]
    fishers = _realistic_fishers(gen, shape)
    f64 = [f.double() for f in fishers]
    c = [0.5 / torch.sqrt((f * f).sum()) for f in f64]
    floored = [torch.maximum(f, torch.tensor(1e-6, dtype=torch.float64)) for f in f64]
    expected = (c[0] * floored[0] * thetas[0].double() + c[1] * floored[1] * thetas[1].double()) / (
        c[0] * floored[0] + c[1] * floored[1]
    )
    method = get_method("fisher")
    params = method.validate_params({"normalize": True, "norm_scope": "tensor"})
    out = method(torch.zeros(shape), thetas, **params, stats=fishers)
    torch.testing.assert_close(out, expected.float(), atol=1e-6, rtol=1e-6)
    # the merge is not the plain average the old divide-by-sum-then-floor collapsed to
    assert float((out - (thetas[0] + thetas[1]) / 2).abs().mean()) > 0.1


def test_whole_model_norm_over_every_tensor_of_each_model():
    """norm_scope 'model': c_t = w_t / sqrt(sum over the model's tensors of ||F_t||^2)."""
    gen = torch.Generator().manual_seed(5)
    shapes = {"a": (768, 3072), "b": (3072,)}
    thetas = {k: [torch.randn(s, generator=gen) for _ in range(2)] for k, s in shapes.items()}
    fishers = {k: _realistic_fishers(gen, s) for k, s in shapes.items()}
    norms = [float(torch.sqrt(sum((fishers[k][t].double() ** 2).sum() for k in shapes))) for t in range(2)]
    method = get_method("fisher")
    params = method.validate_params({"normalize": True})
    for key in shapes:
        f = [x.double() for x in fishers[key]]
        fl = [torch.clamp(x, min=1e-6) for x in f]
        th = [x.double() for x in thetas[key]]
        expected = (fl[0] * th[0] / norms[0] + fl[1] * th[1] / norms[1]) / (fl[0] / norms[0] + fl[1] / norms[1])
        out = method(torch.zeros(shapes[key]), thetas[key], **params, stats=fishers[key], stats_norms=norms)
        torch.testing.assert_close(out, expected.float(), atol=1e-6, rtol=1e-6)


def test_whole_model_norm_needs_the_norms_or_a_positive_norm():
    method = get_method("fisher")
    with pytest.raises(MergeMethodError, match="stats_norms"):
        method(torch.zeros(2, 2), [T1, T2], stats=[ONES, ONES], normalize=True)
    with pytest.raises(MergeMethodError, match=r"model 0 has Fisher norm 0\.0"):
        method(torch.zeros(2, 2), [T1, T2], stats=[ONES, ONES], normalize=True, stats_norms=[0.0, 1.0])
    # every norm 0 (no model reaches this tensor): the floored average
    out = method(torch.zeros(2, 2), [T1, T2], stats=[torch.zeros(2, 2)] * 2, normalize=True, norm_scope="tensor")
    torch.testing.assert_close(out, (T1 + T2) / 2)
