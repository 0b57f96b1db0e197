"""Weight averaging and task arithmetic: hand-computed cases plus exactness properties."""

from __future__ import annotations

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging import get_method
from modmerge.merging.linear import linear_combination

T = torch.tensor

# (method, params, weights, base, models, expected): expected written out from the formula.
CASES = [
    # soup: (theta_1 + theta_2) / 2
    ("weight_averaging", {}, None, T([0.0, 0.0, 0.0]), [T([1.0, 2.0, 3.0]), T([3.0, 4.0, 5.0])], [2.0, 3.0, 4.0]),
    # (1 * [1,2,3] + 3 * [3,4,5]) / 4 = [10, 14, 18] / 4
    ("weight_averaging", {}, [1.0, 3.0], T([9.0, 9.0, 9.0]), [T([1.0, 2.0, 3.0]), T([3.0, 4.0, 5.0])], [2.5, 3.5, 4.5]),
    # alias "linear", three models: ([0,3] + [3,3] + [6,0]) / 3
    ("linear", {}, None, T([0.0, 0.0]), [T([0.0, 3.0]), T([3.0, 3.0]), T([6.0, 0.0])], [3.0, 2.0]),
    # TA: base [0,1,2]; tau_1 = [1,0,2], tau_2 = [0,2,0]; base + 0.5 * [1,2,2]
    ("task_arithmetic", {"scaling": 0.5}, None, T([0.0, 1.0, 2.0]), [T([1.0, 1.0, 4.0]), T([0.0, 3.0, 2.0])], [0.5, 2.0, 3.0]),
    # TA weighted: base + 1 * (1 * [1,0,2] + 0.5 * [0,2,0]) = [0,1,2] + [1,1,2]
    ("task_arithmetic", {"scaling": 1.0}, [1.0, 0.5], T([0.0, 1.0, 2.0]), [T([1.0, 1.0, 4.0]), T([0.0, 3.0, 2.0])], [1.0, 2.0, 4.0]),
    # TA default lambda 0.3: base 1 + 0.3 * (2 + 4) = 2.8
    ("task_arithmetic", {}, None, T([1.0]), [T([3.0]), T([5.0])], [2.8]),
    # TA negation (lambda < 0 forgets a task): 1 - 1 * (3 - 1)
    ("task_arithmetic", {"scaling": -1.0}, None, T([1.0]), [T([3.0])], [-1.0]),
]


@pytest.mark.parametrize(("name", "params", "weights", "base", "models", "expected"), CASES)
def test_hand_computed(name, params, weights, base, models, expected):
    method = get_method(name)
    out = method(base, models, **method.validate_params(params), weights=weights)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, T(expected))


@pytest.mark.parametrize("n_models", [1, 2, 3, 5])
def test_averaging_identical_models_returns_them(n_models):
    theta = torch.randn(7, generator=torch.Generator().manual_seed(n_models))
    out = get_method("weight_averaging")(torch.zeros(7), [theta] * n_models)
    torch.testing.assert_close(out, theta)
    if n_models in (1, 2):  # sum then one division by a power of two: exact
        assert torch.equal(out, theta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_task_arithmetic_zero_scaling_returns_base(dtype):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, generator=g).to(dtype)
    models = [torch.randn(6, generator=g).to(dtype) for _ in range(3)]
    out = get_method("task_arithmetic")(base, models, scaling=0.0)
    assert torch.equal(out, base.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_task_arithmetic_one_model_scaling_one_is_bit_identical(dtype):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(4, 8, generator=g).to(dtype)
    model = (torch.randn(4, 8, generator=g) * 1e3).to(dtype)
    model[0, 0] = -0.0
    out = get_method("task_arithmetic")(base, [model], scaling=1.0)
    assert out.dtype == torch.float32
    assert torch.equal(out, model.float())
    assert torch.signbit(out[0, 0])  # -0.0 survives: no 0 + x rewrite


def test_inputs_are_not_modified_and_output_is_a_new_buffer():
    base, model = torch.ones(3), torch.tensor([1.0, 2.0, 3.0])
    before = (base.clone(), model.clone())
    for name in ("weight_averaging", "task_arithmetic"):
        out = get_method(name)(base, [model], **({"scaling": 1.0} if name == "task_arithmetic" else {}))
        assert out.data_ptr() not in (base.data_ptr(), model.data_ptr())
        out.add_(1.0)
    assert torch.equal(base, before[0]) and torch.equal(model, before[1])


def test_bf16_inputs_give_fp32_outputs():
    base = torch.zeros(3, dtype=torch.bfloat16)
    models = [torch.ones(3, dtype=torch.bfloat16), torch.full((3,), 2.0, dtype=torch.bfloat16)]
    for name in ("weight_averaging", "task_arithmetic"):
        assert get_method(name)(base, models).dtype == torch.float32


def test_linear_combination_skips_zero_coefficients():
    nan = torch.tensor([float("nan")])
    out = linear_combination([T([2.0]), nan], [0.5, 0.0])
    assert torch.equal(out, T([1.0]))  # the NaN term is never touched


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("task_arithmetic", {"weights": [1.0]}, "weights"),
        ("weight_averaging", {"weights": [1.0, -1.0]}, "sums to 0"),
    ],
)
def test_bad_inputs_name_the_field(name, kwargs, match):
    with pytest.raises(MergeMethodError, match=match):
        get_method(name)(torch.zeros(2), [torch.ones(2), torch.ones(2)], **kwargs)


def test_shape_mismatch_names_the_model():
    with pytest.raises(MergeMethodError, match="model 1"):
        get_method("task_arithmetic")(torch.zeros(2), [torch.ones(2), torch.ones(3)])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("coefficients", [[0.3, 0.3, 0.3], [1.0, -0.7, 0.0], [1.0, 1.0, 1.0]])
def test_chunked_half_precision_sum_is_bit_identical_to_the_plain_sum(dtype, coefficients):
    from modmerge.merging.linear import _CHUNK, linear_combination

    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(3 * _CHUNK + 17, generator=gen).to(dtype) for _ in coefficients]
    expected = None
    for t, c in zip(tensors, coefficients, strict=True):
        if c == 0.0:
            continue
        if expected is None:
            expected = t.to(torch.float32) if c == 1.0 else t.to(torch.float32).mul_(c)
        else:
            expected.add_(t, alpha=c)
    got = linear_combination(tensors, coefficients)
    assert got.dtype == torch.float32 and torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_task_arithmetic_of_16_models_is_within_1e6_of_float64(dtype):
    """theta_0 + lambda * sum_t (theta_t - theta_0), the reference computed in float64 by hand."""
    gen = torch.Generator().manual_seed(16)
    base = (torch.randn(768, 768, generator=gen) * 2.0).to(dtype)
    models = [(base.double() + 0.01 * torch.randn(768, 768, generator=gen, dtype=torch.float64)).to(dtype)
              for _ in range(16)]
    expected = base.double() + 0.3 * sum(m.double() - base.double() for m in models)
    out = get_method("task_arithmetic")(base, models, scaling=0.3)
    assert out.dtype == torch.float32
    assert float((out.double() - expected).abs().max()) < 1e-6
