"""SLERP, NuSLERP, Multi-SLERP and the Karcher mean: hand-computed tables (mergekit's semantics)."""

from __future__ import annotations

import math

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging import get_method

T = torch.tensor
R = math.sqrt(0.5)  # cos 45 deg = sin 45 deg


def _call(name, base, models, **params):
    method = get_method(name)
    weights = params.pop("weights", None)
    extra = {"weights": weights} if weights is not None else {}
    return method(T(base), [T(m) for m in models], **method.validate_params(params), **extra)


# --- slerp: endpoints (base, model) with one model, (model 0, model 1) with two -----------------
# With angle O between v0 and v1: s0 = sin((1-t)O) / sin O, s1 = sin(tO) / sin O.
A60 = [0.5, math.sqrt(3) / 2]  # 60 degrees from [1, 0]
A999 = [0.999, math.sqrt(1 - 0.999**2)]  # cos = 0.999, just below the 0.9995 lerp threshold
SLERP_CASES = [
    # orthogonal unit vectors, midpoint: the 45-degree unit vector
    ([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], 0.5, [R, R]),
    # norms 2 and 1: s0 = s1 = sin(45)/sin(90) = R, so 2R and R
    ([0.0, 0.0], [[2.0, 0.0], [0.0, 1.0]], 0.5, [2 * R, R]),
    # t = 1/3 at 90 degrees: s0 = sin(60 deg), s1 = sin(30 deg)
    ([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], 1 / 3, [math.sqrt(3) / 2, 0.5]),
    # 60 degrees, midpoint: s0 = s1 = sin(30)/sin(60) = 1/sqrt(3)
    ([0.0, 0.0], [[1.0, 0.0], A60], 0.5, [1.5 / math.sqrt(3), (math.sqrt(3) / 2) / math.sqrt(3)]),
    # cos 0.999 is still spherical: the midpoint is the unit vector at half the angle
    ([0.0, 0.0], [[1.0, 0.0], A999], 0.5, [math.cos(math.acos(0.999) / 2), math.sin(math.acos(0.999) / 2)]),
    # cos = 2 / sqrt(4.0004) > 0.9995: linear interpolation (1-t) v0 + t v1
    ([0.0, 0.0], [[1.0, 0.0], [2.0, 0.02]], 0.5, [1.5, 0.01]),
    # antiparallel (|cos| = 1): also linear, 0.75 * 1 + 0.25 * (-2)
    ([0.0, 0.0], [[1.0, 0.0], [-2.0, 0.0]], 0.25, [0.25, 0.0]),
    # t = 0 and t = 1 give the endpoints
    ([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], 0.0, [1.0, 0.0]),
    ([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], 1.0, [0.0, 1.0]),
    # a zero vector is not normalised: cos 0, weights of a right angle, R * [0, 1]
    ([0.0, 0.0], [[0.0, 0.0], [0.0, 1.0]], 0.5, [0.0, R]),
    # two models: the base is not used
    ([5.0, 5.0], [[1.0, 0.0], [0.0, 1.0]], 0.5, [R, R]),
    # one model: from the base (t = 0, mergekit's base_model) to the model
    ([1.0, 0.0], [[0.0, 1.0]], 0.5, [R, R]),
    ([1.0, 0.0], [[0.0, 1.0]], 1 / 3, [math.sqrt(3) / 2, 0.5]),
]


@pytest.mark.parametrize(("base", "models", "t", "expected"), SLERP_CASES)
def test_slerp_hand_computed(base, models, t, expected):
    torch.testing.assert_close(_call("slerp", base, models, t=t), T(expected))


def test_slerp_treats_a_matrix_as_one_vector():
    v0, v1 = T([[1.0, 0.0], [0.0, 0.0]]), T([[0.0, 0.0], [0.0, 1.0]])
    out = get_method("slerp")(torch.zeros(2, 2), [v0, v1], t=0.5)
    torch.testing.assert_close(out, T([[R, 0.0], [0.0, R]]))


@pytest.mark.parametrize("name", ["slerp", "nuslerp"])
def test_two_model_methods_refuse_three_in_one_line(name):
    with pytest.raises(MergeMethodError, match="two models") as info:
        get_method(name)(torch.zeros(2), [torch.ones(2)] * 3)
    assert "\n" not in str(info.value) and "multislerp" in str(info.value)
    assert get_method(name).max_models == 2


# --- nuslerp: t = w1 / (w0 + w1); task vectors around the base unless use_base is false --------
COS_FLAT = 2 / math.sqrt(10)  # [1, 0, 1, 0] . [0, 1, 2, 0] / (sqrt 2 * sqrt 5)
COS_COL1 = 2 / (math.sqrt(5) * 2)  # [1, 2] . [2, 0] / (sqrt 5 * 2)


def _midpoint(v0, v1, cos):
    """SLERP at t = 0.5 by the half-angle identity: (v0 + v1) / (2 cos(O / 2))."""
    return [(a + b) / (2 * math.sqrt((1 + cos) / 2)) for a, b in zip(v0, v1, strict=True)]


NUSLERP_CASES = [
    # no weights: t = 0.5
    ([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], {}, [R, R]),
    # weights 1, 3: t = 0.75, at 90 degrees [sin(22.5 deg), sin(67.5 deg)]
    ([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], {"weights": [1.0, 3.0]}, [math.sin(math.pi / 8), math.sin(3 * math.pi / 8)]),
    # weights summing to 0: t = 0.5 (mergekit's fallback)
    ([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], {"weights": [1.0, -1.0]}, [R, R]),
    # task vectors [1, 0] and [0, 1] around base [1, 1]
    ([1.0, 1.0], [[2.0, 1.0], [1.0, 2.0]], {}, [1 + R, 1 + R]),
    # use_base false: the models themselves, base unused
    ([1.0, 1.0], [[1.0, 0.0], [0.0, 1.0]], {"use_base": False}, [R, R]),
    # colinear task vectors (sin O = 0): linear, 0.5 * ([1, 0] + [3, 0])
    ([0.0, 0.0], [[1.0, 0.0], [3.0, 0.0]], {}, [2.0, 0.0]),
]


@pytest.mark.parametrize(("base", "models", "params", "expected"), NUSLERP_CASES)
def test_nuslerp_hand_computed(base, models, params, expected):
    torch.testing.assert_close(_call("nuslerp", base, models, **params), T(expected))


NUSLERP_MATRICES = [
    # flattened (default): one vector per tensor
    ({}, [_midpoint([1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 2.0, 0.0], COS_FLAT)]),
    # per row (last dimension): row 0 at 90 degrees, row 1 colinear -> linear [1.5, 0]
    ({"nuslerp_flatten": False}, [[R, R], [1.5, 0.0]]),
]


@pytest.mark.parametrize(("params", "expected"), NUSLERP_MATRICES)
def test_nuslerp_flatten_or_per_row(params, expected):
    a, b = [[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [2.0, 0.0]]
    out = _call("nuslerp", [[0.0, 0.0], [0.0, 0.0]], [a, b], **params)
    torch.testing.assert_close(out, T(expected).reshape(2, 2))


def test_nuslerp_row_wise_interpolates_along_dimension_zero():
    # columns: [1, 0] with [0, 1] (90 degrees) and [1, 2] with [2, 0]
    a, b = [[1.0, 1.0], [0.0, 2.0]], [[0.0, 2.0], [1.0, 0.0]]
    col1 = _midpoint([1.0, 2.0], [2.0, 0.0], COS_COL1)
    out = _call("nuslerp", [[0.0, 0.0], [0.0, 0.0]], [a, b], nuslerp_flatten=False, nuslerp_row_wise=True)
    torch.testing.assert_close(out, T([[R, col1[0]], [R, col1[1]]]))


def test_nuslerp_needs_exactly_two_models():
    with pytest.raises(MergeMethodError, match="exactly two"):
        get_method("nuslerp")(torch.zeros(2), [torch.ones(2)])


# --- multislerp: direction = normalised weighted mean of the unit vectors (the tangent-space ----
# mean at that point is 0 for any input), norm = weighted mean of the norms.
def _direction(weights, units):
    mean = [sum(w * u[i] for w, u in zip(weights, units, strict=True)) for i in range(len(units[0]))]
    norm = math.sqrt(sum(x * x for x in mean))
    return [x / norm for x in mean]


D31 = _direction([0.75, 0.25], [[1.0, 0.0], [0.0, 1.0]])
MULTISLERP_CASES = [
    # orthogonal unit vectors: the 45-degree unit vector
    ([0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], {}, [R, R]),
    # norms 2 and 4: same direction, norm 3
    ([0.0, 0.0], [[2.0, 0.0], [0.0, 4.0]], {}, [3 * R, 3 * R]),
    # weights 3:1 -> 0.75, 0.25; norm 0.75 * 2 + 0.25 * 4 = 2.5
    ([0.0, 0.0], [[2.0, 0.0], [0.0, 4.0]], {"weights": [3.0, 1.0]}, [2.5 * D31[0], 2.5 * D31[1]]),
    # around a base: task vectors [2, 0], [0, 4], then + base
    ([1.0, 1.0], [[3.0, 1.0], [1.0, 5.0]], {}, [1 + 3 * R, 1 + 3 * R]),
    # use_base false: the models themselves ([3, 1] and [1, 3] are symmetric; norm sqrt 10)
    ([1.0, 1.0], [[3.0, 1.0], [1.0, 3.0]], {"use_base": False}, [math.sqrt(10) * R, math.sqrt(10) * R]),
    # unnormalised weights 1, 1: the norm is the sum, 6
    ([0.0, 0.0], [[2.0, 0.0], [0.0, 4.0]], {"normalize_weights": False}, [6 * R, 6 * R]),
    # antipodal with equal weights: linear fallback 0.5 v0 + 0.5 v1
    ([0.0, 0.0], [[1.0, 0.0], [-1.0, 0.0]], {}, [0.0, 0.0]),
    # antipodal, weights 3:1: mean direction [1, 0], norm 1
    ([0.0, 0.0], [[1.0, 0.0], [-1.0, 0.0]], {"weights": [3.0, 1.0]}, [1.0, 0.0]),
    # three orthogonal unit vectors: the diagonal
    ([0.0, 0.0, 0.0], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], {}, [1 / math.sqrt(3)] * 3),
    # one model: returned as it is
    ([1.0, 1.0], [[3.0, -1.0]], {}, [3.0, -1.0]),
]


@pytest.mark.parametrize(("base", "models", "params", "expected"), MULTISLERP_CASES)
def test_multislerp_hand_computed(base, models, params, expected):
    torch.testing.assert_close(_call("multislerp", base, models, **params), T(expected))


def test_multislerp_raises_when_three_directions_cancel():
    with pytest.raises(MergeMethodError, match="cancel"):
        _call("multislerp", [0.0, 0.0], [[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])


# --- karcher: the weighted geodesic mean of the directions, scaled by the weighted mean norm -----
KARCHER_CASES = [
    # two directions, equal weights: the geodesic midpoint; norm (1 + 3) / 2
    ([[1.0, 0.0], [0.0, 3.0]], {}, [2 * R, 2 * R]),
    # weights 3:1: a quarter of the way along the 90-degree arc (22.5 degrees)
    ([[1.0, 0.0], [0.0, 1.0]], {"weights": [3.0, 1.0]}, [math.cos(math.pi / 8), math.sin(math.pi / 8)]),
    # three orthogonal directions: the diagonal, norm 1
    ([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.5]], {}, [7 / 6 / math.sqrt(3)] * 3),
    # a zero model counts only in the scale: direction [1, 0], norm (0 + 2) / 2
    ([[0.0, 0.0], [2.0, 0.0]], {}, [1.0, 0.0]),
    # all zero: zeros
    ([[0.0, 0.0], [0.0, 0.0]], {}, [0.0, 0.0]),
]


@pytest.mark.parametrize(("models", "params", "expected"), KARCHER_CASES)
def test_karcher_hand_computed(models, params, expected):
    out = _call("karcher", [9.0] * len(models[0]), models, **params)  # the base is never used
    torch.testing.assert_close(out, T(expected), atol=1e-5, rtol=1e-5)


def test_karcher_treats_models_with_norm_up_to_tol_as_zero():
    # tol = 1: [0.5, 0] has no direction, so the mean direction is [0, 1]; norm (0.5 + 2) / 2
    out = _call("karcher", [0.0, 0.0], [[0.5, 0.0], [0.0, 2.0]], tol=1.0)
    torch.testing.assert_close(out, T([0.0, 1.25]))


@pytest.mark.parametrize("name", ["slerp", "nuslerp", "multislerp", "karcher"])
def test_spherical_methods_give_float32_for_bf16(name):
    base = torch.zeros(3, dtype=torch.bfloat16)
    models = [T([1.0, 0.0, 0.5]).bfloat16(), T([0.0, 1.0, 0.5]).bfloat16()]
    out = get_method(name)(base, models, **get_method(name).validate_params(None))
    assert out.dtype == torch.float32 and out.shape == (3,)
