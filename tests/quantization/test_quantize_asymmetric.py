"""Asymmetric uniform quantisation (eq. 6): hand-computed values, error bound, units, storage."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load, save

from modmerge.errors import CheckpointError, CompatibilityError, RecipeError
from modmerge.quantization import QuantizedTensor, code_dtype, num_units, quantize


def test_hand_computed_two_bit_unit():
    # m = -0.3, M = 1.2: s = 1.5 / 3 = 0.5, z = round(0.3 / 0.5) = round(0.6) = 1.
    # w / s = [-0.6, 0.2, 1.0, 2.4] -> round [-1, 0, 1, 2] -> + z -> codes [0, 1, 2, 3].
    # w_hat = 0.5 * (q - 1) = [-0.5, 0.0, 0.5, 1.0]; errors [0.2, 0.1, 0.0, 0.2] <= s / 2 = 0.25.
    w = torch.tensor([[-0.3, 0.1, 0.5, 1.2]])
    q = quantize(w, bits=2)
    assert q.codes.dtype == torch.uint8
    assert q.codes.tolist() == [[0, 1, 2, 3]]
    assert q.zero_point.tolist() == [1]
    assert q.scale.dtype == torch.float32 and q.scale.shape == (1,)
    # The float32 scale is rounded up by at most one ulp, never down.
    assert 0.5 <= q.scale.item() <= 0.5 + 1e-7
    torch.testing.assert_close(q.dequantize(), torch.tensor([[-0.5, 0.0, 0.5, 1.0]]), atol=1e-6, rtol=0)
    assert q.dequantize().dtype == torch.float32


def test_hand_computed_exact_scale_and_positive_range():
    # m = -1, M = 2 at 2 bits: s = 1 exactly, z = 1, grid {-1, 0, 1, 2}; 0.6 rounds to 1.
    q = quantize(torch.tensor([[-1.0, 0.0, 0.6, 2.0]]), bits=2)
    assert q.scale.tolist() == [1.0] and q.zero_point.tolist() == [1]
    assert q.codes.tolist() == [[0, 1, 2, 3]]
    assert q.dequantize().tolist() == [[-1.0, 0.0, 1.0, 2.0]]


def test_zero_point_is_a_b_bit_code_so_zero_is_on_the_grid():
    # A range away from zero: m = 4, M = 7 widens to [0, 7]: s = 7/3, z = clamp(round(0), 0, 3) = 0.
    # w / s = [1.71, 2.14, 2.57, 3.0] -> codes [2, 2, 3, 3]; w_hat = s * q = [14/3, 14/3, 7, 7].
    q = quantize(torch.tensor([4.0, 5.0, 6.0, 7.0]), bits=2)
    assert q.zero_point.tolist() == [0] and q.codes.tolist() == [2, 2, 3, 3]
    torch.testing.assert_close(q.dequantize(), torch.tensor([14 / 3, 14 / 3, 7.0, 7.0]))
    # All negative: [-7, 0], s = 7/3, z = round(7 / s) = 3; w / s + z = [0, 0.43, 0.86, 1.29] -> [0, 0, 1, 1];
    # w_hat = s * (q - 3) = [-7, -7, -14/3, -14/3].
    q = quantize(torch.tensor([-7.0, -6.0, -5.0, -4.0]), bits=2)
    assert q.zero_point.tolist() == [3] and q.codes.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(q.dequantize(), torch.tensor([-7.0, -7.0, -14 / 3, -14 / 3]))
    # Any unit, any offset: z in [0, q_max], and the code z is exactly 0.
    gen = torch.Generator().manual_seed(3)
    for offset in (-50.0, -1.0, 0.0, 0.3, 1e4):
        w = torch.randn(5, 16, generator=gen) * 0.1 + offset
        q = quantize(w, bits=4, granularity="channel")
        assert bool(((q.zero_point >= 0) & (q.zero_point <= 15)).all())
        zero_codes = QuantizedTensor(q.zero_point.to(torch.uint8)[:, None].expand(5, 16).contiguous(), q.scale,
                                     q.zero_point, 4, "channel")
        assert torch.equal(zero_codes.dequantize(), torch.zeros(5, 16))
        _unit_errors_within_half_step(w, q)


def _unit_errors_within_half_step(w: torch.Tensor, q: QuantizedTensor) -> None:
    err = (q.dequantize() - w.float()).abs().reshape(q.num_units, -1)
    # s / 2 plus the final float32 rounding of the reconstruction.
    bound = q.scale[:, None].double() / 2 + torch.finfo(torch.float32).eps * w.float().abs().reshape(q.num_units, -1)
    assert bool((err.double() <= bound).all()), float((err.double() - bound).max())


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("offset", [0.0, 100.0, -3.5])
def test_error_at_most_half_a_step_for_random_tensors(granularity, offset):
    gen = torch.Generator().manual_seed(0)
    for shape in [(7,), (5, 9), (4, 3, 2, 2)]:
        w = torch.randn(shape, generator=gen) * 0.05 + offset
        q = quantize(w, bits=8, granularity=granularity)
        _unit_errors_within_half_step(w, q)
        assert int(q.codes.max()) <= 255
        # Per unit, the scale is the unit's range widened to hold 0, over 255 (rounded up to float32).
        rows = w.reshape(q.num_units, -1).double()
        wanted = (rows.amax(1).clamp(min=0) - rows.amin(1).clamp(max=0)) / 255
        assert bool((q.scale.double() >= wanted).all())
        torch.testing.assert_close(q.scale.double(), wanted, rtol=1e-6, atol=0)


def test_codes_are_the_argmin_over_the_grid():
    # Eq. (6) by brute force: the grid point nearest to each value, over all 2**b codes.
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 40, generator=gen)
    q = quantize(w, bits=3, granularity="channel")
    codes = torch.arange(8, dtype=torch.float64)
    grid = q.scale.double()[:, None] * (codes[None, :] - q.zero_point.double()[:, None])  # (6, 8)
    distance = (w.double()[:, :, None] - grid[:, None, :]).abs()  # (6, 40, 8)
    best = distance.min(dim=2).values
    chosen = distance.gather(2, q.codes.long()[:, :, None]).squeeze(2)
    assert torch.equal(chosen, best)


@pytest.mark.parametrize("value", [0.0, 1.0, -2.75, 3.0e-30, 123456.789])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_constant_units_reconstruct_exactly(value, granularity):
    w = torch.full((3, 4), value)
    q = quantize(w, bits=8, granularity=granularity)
    assert torch.equal(q.dequantize(), w)
    assert bool((q.scale > 0).all())


def test_constant_rows_among_varying_rows():
    w = torch.tensor([[2.0, 2.0, 2.0], [0.0, 1.0, -1.0], [-7.0, -7.0, -7.0]])
    deq = quantize(w, bits=4, granularity="channel").dequantize()
    assert torch.equal(deq[0], w[0]) and torch.equal(deq[2], w[2])


def test_nearly_constant_unit_is_within_half_a_step():
    # Range of one float32 ulp at 1.0, widened to [0, 1 + ulp]: z = 0 and the step is (1 + ulp) / 255.
    one = torch.tensor(1.0)
    w = torch.stack([one, torch.nextafter(one, torch.tensor(2.0)), one])
    q = quantize(w, bits=8)
    assert int(q.zero_point) == 0
    _unit_errors_within_half_step(w, q)


def test_units_by_granularity():
    w = torch.randn(4, 3, 2)
    assert quantize(w, granularity="channel").scale.shape == (4,)
    assert quantize(w, granularity="tensor").scale.shape == (1,)
    # 1-D and 0-D tensors are one unit even at channel granularity.
    assert quantize(torch.randn(6), granularity="channel").scale.shape == (1,)
    assert quantize(torch.tensor(0.5), granularity="channel").dequantize().shape == ()
    assert num_units((4, 3), "channel") == 4 and num_units((4,), "channel") == 1


def test_channel_units_are_independent():
    # Row 1 alone decides its scale: a huge row 0 does not coarsen it.
    w = torch.tensor([[0.0, 1000.0], [0.0, 1.0]])
    q = quantize(w, bits=8, granularity="channel")
    torch.testing.assert_close(q.scale, torch.tensor([1000.0 / 255, 1.0 / 255]))
    assert float((q.dequantize()[1] - w[1]).abs().max()) <= 1.0 / 510 + 1e-7


@pytest.mark.parametrize(("bits", "dtype"), [(1, torch.uint8), (4, torch.uint8), (8, torch.uint8), (12, torch.int16), (16, torch.int32)])
def test_code_dtype_and_range(bits, dtype):
    w = torch.randn(3, 50, generator=torch.Generator().manual_seed(bits))
    q = quantize(w, bits=bits, granularity="channel")
    assert q.codes.dtype == dtype == code_dtype(bits)
    assert int(q.codes.min()) == 0 and int(q.codes.max()) == 2**bits - 1  # the ends of each range
    _unit_errors_within_half_step(w, q)
    assert q.nbytes == q.codes.nbytes + 3 * 4 + 3 * 4


def test_bfloat16_input():
    w = torch.randn(5, 8).to(torch.bfloat16)
    q = quantize(w, granularity="channel")
    _unit_errors_within_half_step(w, q)


def test_state_round_trip_through_safetensors():
    w = torch.randn(5, 3, 2)
    q = quantize(w, bits=12, granularity="channel")
    state = load(save(q.to_state("layer.weight")))
    back = QuantizedTensor.from_state(state, "layer.weight")
    assert (back.bits, back.granularity) == (12, "channel")
    for field in ("codes", "scale", "zero_point"):
        assert torch.equal(getattr(back, field), getattr(q, field))
    assert torch.equal(back.dequantize(), q.dequantize())


def test_from_state_errors_name_the_tensor():
    state = quantize(torch.randn(2, 3), granularity="channel").to_state("w")
    with pytest.raises(CheckpointError, match=r"'w\.scale'"):
        QuantizedTensor.from_state({k: v for k, v in state.items() if k != "w.scale"}, "w")
    with pytest.raises(CheckpointError, match=r"'w\.scale'"):
        QuantizedTensor.from_state({**state, "w.scale": torch.ones(3)}, "w")
    with pytest.raises(CheckpointError, match=r"'w\.codes'"):
        QuantizedTensor.from_state({**state, "w.codes": state["w.codes"].to(torch.int32)}, "w")


@pytest.mark.parametrize("bits", [0, 17, True, 8.0])
def test_bad_bits(bits):
    with pytest.raises(RecipeError, match="'bits'"):
        quantize(torch.ones(2), bits=bits)


def test_bad_inputs():
    with pytest.raises(RecipeError, match="'granularity'"):
        quantize(torch.ones(2), granularity="row")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="'x'"):
        quantize(torch.tensor([1.0, float("nan")]), name="x")
    with pytest.raises(CompatibilityError, match="'x'"):
        quantize(torch.ones(2, dtype=torch.int64), name="x")
    with pytest.raises(CompatibilityError, match="empty"):
        quantize(torch.ones(0, 3))
