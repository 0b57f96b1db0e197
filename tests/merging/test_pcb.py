"""PCB-Merging: the paper's formulas written out in plain Python, against the tensor version."""

from __future__ import annotations

import math

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging import get_method

T = torch.tensor


def _norm(xs: list[float]) -> list[float]:
    lo, hi = min(xs), max(xs)
    return [0.0] * len(xs) if hi == lo else [(x - lo) / (hi - lo) for x in xs]


def _softmax(xs: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def _pcb_by_formula(base: list[float], models: list[list[float]], drop_ratio: float, scaling: float) -> list[float]:
    """Du et al. 2024: intra Softmax(N Norm(t_i t_i)), inter sum_j Softmax(Norm(t_i t_j)),
    keep the top (1 - r) of b_i = intra * inter, tau_m = sum b_hat tau / sum b_hat."""
    taus = [[m - b for m, b in zip(model, base, strict=True)] for model in models]
    n, d = len(taus), len(base)
    keep = max(1, math.floor((1 - drop_ratio) * d + 0.5 + 1e-9))
    b_hat = []
    for ti in taus:
        intra = _softmax([n * v for v in _norm([a * a for a in ti])])
        inter = [0.0] * d
        for tj in taus:
            inter = [s + v for s, v in zip(inter, _softmax(_norm([a * b for a, b in zip(ti, tj, strict=True)])), strict=True)]
        score = [a * b for a, b in zip(intra, inter, strict=True)]
        cut = sorted(score, reverse=True)[keep - 1]
        b_hat.append([s if s >= cut else 0.0 for s in score])
    merged = []
    for e in range(d):
        den = sum(b[e] for b in b_hat)
        num = sum(b[e] * t[e] for b, t in zip(b_hat, taus, strict=True))
        merged.append(num / den if den > 0 else 0.0)
    return [b + scaling * m for b, m in zip(base, merged, strict=True)]


CASES = [
    # Each task keeps 1 of 4 entries: task 1 its dominant entry 0 (tau 3), task 2 entry 3 (tau 2).
    # Only one task survives per entry, so the score weights cancel: theta = base + [3, 0, 0, 2].
    ([0.0, 0.0, 0.0, 0.0], [[3.0, 0.1, 0.2, 0.0], [0.0, 0.1, -0.3, 2.0]], 0.75, 1.0, [3.0, 0.0, 0.0, 2.0]),
    # Same with a non-zero base and lambda 0.5: base + 0.5 * [3, 0, 0, 2].
    ([1.0, 1.0, 1.0, 1.0], [[4.0, 1.1, 1.2, 1.0], [1.0, 1.1, 0.7, 3.0]], 0.75, 0.5, [2.5, 1.0, 1.0, 2.0]),
    # No drop, one model: tau_m = b tau / b = tau.
    ([0.5, -0.5, 0.0], [[1.5, -2.5, 0.25]], 0.0, 1.0, [1.5, -2.5, 0.25]),
    # Identical models: every weighted mean of equal values is that value.
    ([0.0, 0.0, 0.0], [[1.0, -2.0, 0.5], [1.0, -2.0, 0.5]], 0.0, 1.0, [1.0, -2.0, 0.5]),
    # Overlapping survivors: expected value from the formula written out above.
    ([0.0] * 5, [[0.8, -0.2, 0.5, 0.1, -0.6], [0.4, 0.3, -0.5, 0.9, -0.2], [-0.3, 0.2, 0.6, 0.05, -0.7]], 0.4, 1.0, None),
    ([0.1, 0.2, 0.3, 0.4, 0.5], [[0.9, 0.0, 0.8, 0.5, -0.1], [0.5, 0.5, -0.2, 1.3, 0.3]], 0.6, 0.7, None),
]


@pytest.mark.parametrize(("base", "models", "drop_ratio", "scaling", "expected"), CASES)
def test_pcb_hand_computed(base, models, drop_ratio, scaling, expected):
    by_formula = _pcb_by_formula(base, models, drop_ratio, scaling)
    if expected is not None:
        assert by_formula == pytest.approx(expected, abs=1e-12)
    out = get_method("pcb")(T(base), [T(m) for m in models], drop_ratio=drop_ratio, scaling=scaling)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, T(by_formula), rtol=1e-5, atol=1e-6)


def test_pcb_keeps_the_requested_fraction_per_task():
    # Three random tasks, drop 0.5 of 8: each task contributes exactly 4 entries (no ties in
    # random scores); entries no task kept stay at the base.
    g = torch.Generator().manual_seed(4)
    base = torch.randn(2, 4, generator=g)
    models = [base + torch.randn(2, 4, generator=g) for _ in range(3)]
    out = get_method("pcb")(base, models, drop_ratio=0.5, scaling=1.0)
    expected = _pcb_by_formula(base.flatten().tolist(), [m.flatten().tolist() for m in models], 0.5, 1.0)
    torch.testing.assert_close(out.flatten(), T(expected), rtol=1e-5, atol=1e-5)


def test_pcb_bf16_input_fp32_output_and_inputs_untouched():
    base = torch.zeros(6, dtype=torch.bfloat16)
    models = [torch.linspace(-1, 1, 6).bfloat16(), torch.linspace(1, -0.5, 6).bfloat16()]
    before = [m.clone() for m in models]
    out = get_method("pcb")(base, models)
    assert out.dtype == torch.float32
    assert all(torch.equal(m, b) for m, b in zip(models, before, strict=True))


def test_pcb_takes_no_weights():
    with pytest.raises(MergeMethodError, match="weights"):
        get_method("pcb")(torch.zeros(2), [torch.ones(2)], weights=[1.0])
