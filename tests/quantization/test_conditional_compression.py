"""Conditional compression Q: the range criterion, modes, mixed units, storage round trip, config."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load, save

from modmerge.errors import CheckpointError, CompatibilityError, RecipeError
from modmerge.quantization import (
    CompressedTensor,
    QuantConfig,
    UnitBits,
    compress,
    dynamic_ranges,
    module_storage_bits,
    units_to_quantise,
)

SOURCES = [torch.tensor([-2.0, 2.0, 0.0]), torch.tensor([-1.0, 3.0, 1.0])]  # ranges 4 and 4: mean 4


def test_dynamic_ranges_per_unit():
    w = torch.tensor([[0.0, 2.0, -1.0], [5.0, 5.0, 5.0]])
    assert dynamic_ranges(w, "channel").tolist() == [3.0, 0.0]
    assert dynamic_ranges(w, "tensor").tolist() == [6.0]
    assert dynamic_ranges(torch.tensor([1.0, 4.0]), "channel").tolist() == [3.0]


def test_smaller_range_is_quantised_larger_is_not():
    narrower = compress(torch.tensor([-1.5, 2.0, 0.5]), SOURCES)  # range 3.5 <= 4
    assert narrower.quantised.tolist() == [True]
    assert narrower.quantized_part is not None and narrower.full_part is None
    wider = compress(torch.tensor([-3.0, 3.0, 0.0]), SOURCES)  # range 6 > 4
    assert wider.quantised.tolist() == [False]
    assert wider.quantized_part is None
    assert torch.equal(wider.dequantize(), torch.tensor([-3.0, 3.0, 0.0]))


def test_equal_range_is_quantised():
    assert compress(torch.tensor([-2.0, 2.0, 1.0]), SOURCES).quantised.tolist() == [True]


def test_singleton_group_is_quantised_in_conditional_mode():
    own = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    for granularity in ("tensor", "channel"):
        c = compress(own, [own], granularity=granularity)
        assert bool(c.quantised.all())
        assert c.full_part is None


def test_modes_always_and_never_ignore_the_values():
    wide = torch.tensor([-30.0, 30.0, 0.0])
    assert compress(wide, SOURCES, mode="always").quantised.tolist() == [True]
    assert compress(wide, [], mode="always").quantised.tolist() == [True]  # no sources needed
    kept = compress(torch.tensor([0.0, 0.1, 0.2]), SOURCES, mode="never")
    assert kept.quantised.tolist() == [False]
    assert torch.equal(kept.dequantize(), torch.tensor([0.0, 0.1, 0.2]))


def test_weight_average_always_passes_the_criterion():
    # max of a mean <= mean of maxima and min of a mean >= mean of minima, per unit.
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        sources = [torch.randn(6, 10, generator=gen) * (1 + i) for i in range(3)]
        average = torch.stack(sources).mean(0)
        assert bool(units_to_quantise(average, sources, granularity="channel").all())


def test_equal_range_up_to_float32_rounding_is_quantised():
    # Small fine-tuning keeps each row's argmax/argmin, so averaging leaves the range unchanged in
    # exact arithmetic; the float32 mean can still come out an ulp wider. That must not flip Q.
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200, 4, generator=gen)
    sources = [a, a + 1e-3 * torch.randn(200, 4, generator=gen), a + 1e-3 * torch.randn(200, 4, generator=gen)]
    merged = torch.stack(sources).mean(0)
    mean_range = torch.stack([dynamic_ranges(s, "channel") for s in sources]).mean(0)
    assert not bool((dynamic_ranges(merged, "channel") <= mean_range).all())  # rounding did widen some
    assert bool(units_to_quantise(merged, sources, granularity="channel").all())
    # A real widening (1e-5 of the magnitude) is not absorbed by the slack.
    x = torch.tensor([-1.0, 0.25, 1.0])
    assert units_to_quantise(x, [x, x]).tolist() == [True]
    assert units_to_quantise(x * (1 + 1e-5), [x, x]).tolist() == [False]


def _mixed() -> tuple[torch.Tensor, CompressedTensor]:
    source = torch.tensor([[0.0, 2.0, 1.0], [0.0, 4.0, 2.0], [-1.0, 1.0, 0.0], [5.0, 6.0, 5.5]])
    merged = torch.tensor([[0.0, 1.0, 0.5], [0.0, 9.0, 3.0], [-0.5, 0.5, 0.1], [4.0, 7.0, 5.0]])
    # Row ranges: merged [1, 9, 1, 3] vs source [2, 4, 2, 1] -> quantise rows 0 and 2 only.
    return merged, compress(merged, [source], bits=8, granularity="channel")


def test_per_channel_mixed_units():
    merged, c = _mixed()
    assert c.quantised.tolist() == [True, False, True, False]
    assert c.quantized_part is not None and c.quantized_part.shape == (2, 3)
    assert c.full_part is not None and torch.equal(c.full_part, merged[[1, 3]])
    deq = c.dequantize()
    assert torch.equal(deq[[1, 3]], merged[[1, 3]])  # full-precision rows exactly
    step = c.quantized_part.scale
    assert bool(((deq[[0, 2]] - merged[[0, 2]]).abs() <= step[:, None] / 2 + 1e-7).all())
    assert c.unit_bits() == (UnitBits(3, 8, True), UnitBits(3, 32, False), UnitBits(3, 8, True), UnitBits(3, 32, False))
    assert c.unit_bits() == module_storage_bits((4, 3), 8, "channel", c.quantised)
    assert c.nbytes == 6 * 1 + 2 * 4 + 2 * 4 + 6 * 4


def test_mixed_units_round_trip_through_safetensors():
    _, c = _mixed()
    state = load(save(c.to_state("enc.w")))
    assert set(state) == {"enc.w.qmeta", "enc.w.mask", "enc.w.codes", "enc.w.scale", "enc.w.zero_point", "enc.w.full"}
    back = CompressedTensor.from_state(state, "enc.w")
    assert (back.shape, back.bits, back.granularity) == ((4, 3), 8, "channel")
    assert torch.equal(back.quantised, c.quantised)
    assert torch.equal(back.dequantize(), c.dequantize())
    assert back.unit_bits() == c.unit_bits()


@pytest.mark.parametrize(
    ("shape", "granularity", "mode"),
    [((3, 2, 2), "channel", "always"), ((3, 2, 2), "channel", "never"), ((6,), "channel", "always"),
     ((), "tensor", "never"), ((2, 5), "tensor", "always")],
)
def test_round_trip_shapes_and_modes(shape, granularity, mode):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    c = compress(w, [], granularity=granularity, mode=mode, bits=4)
    back = CompressedTensor.from_state(load(save(c.to_state("p"))), "p")
    assert back.shape == tuple(shape)
    assert torch.equal(back.dequantize(), c.dequantize())
    assert back.unit_bits() == c.unit_bits()


def test_full_precision_units_keep_the_merged_dtype():
    w = torch.randn(3, 4).to(torch.bfloat16)
    c = compress(w, [], granularity="channel", mode="never")
    assert c.full_part is not None and c.full_part.dtype == torch.bfloat16
    assert {u.bits for u in c.unit_bits()} == {16}
    assert c.dequantize().dtype == torch.float32


def test_from_state_errors_name_the_tensor():
    _, c = _mixed()
    state = c.to_state("w")
    with pytest.raises(CheckpointError, match=r"'w\.mask'"):
        CompressedTensor.from_state({k: v for k, v in state.items() if k != "w.mask"}, "w")
    with pytest.raises(CheckpointError, match=r"'w\.codes'.*'w\.mask'"):
        CompressedTensor.from_state({**state, "w.mask": torch.tensor([True, True, True, False])}, "w")
    with pytest.raises(CheckpointError, match=r"'w\.full'"):
        CompressedTensor.from_state({**state, "w.full": state["w.full"][:1]}, "w")
    with pytest.raises(CheckpointError, match=r"'w\.qmeta'"):
        CompressedTensor.from_state({**state, "w.qmeta": torch.tensor([40, 0], dtype=torch.int32)}, "w")


def test_compress_input_errors():
    with pytest.raises(CompatibilityError, match=r"'q\.weight'.*source 0"):
        compress(torch.ones(2, 3), [torch.ones(3, 2)], name="q.weight")
    with pytest.raises(CompatibilityError, match="needs the group's source tensors"):
        compress(torch.ones(2), [])
    with pytest.raises(RecipeError, match="either config"):
        compress(torch.ones(2), [torch.ones(2)], bits=4, config=QuantConfig())
    with pytest.raises(RecipeError, match="'mode'"):
        compress(torch.ones(2), [torch.ones(2)], mode="sometimes")  # type: ignore[arg-type]


def test_config_drives_compress():
    w = torch.randn(4, 5, generator=torch.Generator().manual_seed(4))
    c = compress(w, [w], config=QuantConfig(bits=4, granularity="channel", mode="always"))
    assert (c.bits, c.granularity) == (4, "channel") and c.quantised.tolist() == [True] * 4
    assert compress(w, [w]).bits == 8 and compress(w, [w]).granularity == "tensor"


def test_quant_config_validation_and_json():
    config = QuantConfig(bits=4, granularity="channel", mode="never")
    assert QuantConfig.from_json(config.to_json()) == config
    assert QuantConfig.from_dict(config.to_dict()) == config
    assert hash(config) == hash(QuantConfig(bits=4, granularity="channel", mode="never"))
    assert QuantConfig() == QuantConfig(bits=8, granularity="tensor", mode="conditional")
    with pytest.raises(RecipeError, match="'bits'"):
        QuantConfig(bits=33)
    with pytest.raises(RecipeError, match="'granularity'"):
        QuantConfig(granularity="row")  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match="'mode'"):
        QuantConfig(mode="maybe")  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match="'scheme'"):
        QuantConfig.from_dict({"bits": 8, "scheme": "nf4"})
    with pytest.raises(RecipeError, match="JSON"):
        QuantConfig.from_json("{bits: 8")
    with pytest.raises(RecipeError, match="object"):
        QuantConfig.from_json("[8]")
