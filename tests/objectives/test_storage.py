"""Storage cost C, eq. (8): hand examples and the two ends of Table I (one 8-bit model, Individual)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from modmerge.objectives import module_storage_cost, storage_cost
from modmerge.quantization import QuantConfig, UnitBits, compress, module_storage_bits


def test_hand_example():
    # d = 100: one 8-bit unit of 60 values (+ its scale and zero point), one float32 unit of 40.
    cost = storage_cost([UnitBits(60, 8, True), UnitBits(40, 32, False)], d=100)
    assert cost == pytest.approx(8 * 60 / (32 * 100) + 2 / 100 + 32 * 40 / (32 * 100))
    assert cost == pytest.approx(0.57)


def test_metadata_indicator_is_bits_below_full_bits_as_written():
    # A 16-bit unit in a bf16 model (b_plus = 16) pays no metadata; in a float32 model it does.
    assert storage_cost([UnitBits(50, 16, True)], d=50, full_bits=16) == pytest.approx(1.0)
    assert storage_cost([UnitBits(50, 16, True)], d=50) == pytest.approx(0.5 + 2 / 50)


def test_cost_is_additive_over_modules_and_order_free():
    units = [UnitBits(10, 8, True), UnitBits(30, 32, False), UnitBits(7, 4, True)]
    whole = storage_cost(units, d=47)
    parts = sum(storage_cost([u], d=47) for u in units)
    assert whole == pytest.approx(parts)
    assert storage_cost(reversed(units), d=47) == whole


def test_bad_normaliser():
    with pytest.raises(ValueError, match="positive"):
        storage_cost([UnitBits(1, 8, True)], d=0)


@pytest.fixture
def bert_states(tiny_zoo_factory):
    base, tasks = tiny_zoo_factory("bert", 3)
    return load_file(base / "model.safetensors"), [load_file(t / "model.safetensors") for t in tasks]


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_one_merged_8bit_model_costs_a_quarter_plus_metadata(bert_states, granularity):
    pretrained, tasks = bert_states
    names = [k for k, v in pretrained.items() if v.is_floating_point()]
    d = sum(pretrained[k].numel() for k in names)
    module = []
    for k in names:
        sources = [t[k].float() for t in tasks]
        # Weight averaging never widens a unit's range, so conditional Q quantises every unit.
        module.append(compress(torch.stack(sources).mean(0), sources, granularity=granularity))
    n_units = sum(len(c.unit_bits()) for c in module)
    assert all(bool(c.quantised.all()) for c in module)
    cost = module_storage_cost(module, d=d)
    assert cost == pytest.approx(0.25 + 2 * n_units / d)
    if granularity == "tensor":
        assert 0.25 < cost < 0.34  # Table I's storage-minimal range (rows of 16 values cost more)
    # The same cost from shapes and masks alone (what a search caches per module).
    from_shapes = [module_storage_bits(c.shape, 8, granularity, c.quantised) for c in module]
    assert storage_cost((u for units in from_shapes for u in units), d=d) == pytest.approx(cost)


def test_individual_models_cost_t(bert_states):
    pretrained, tasks = bert_states
    names = [k for k, v in pretrained.items() if v.is_floating_point()]
    d = sum(pretrained[k].numel() for k in names)
    never = QuantConfig(mode="never")
    modules = [compress(t[k].float(), [t[k].float()], config=never) for t in tasks for k in names]
    assert module_storage_cost(modules, d=d) == pytest.approx(len(tasks))
    # Conditional Q quantises singletons (equal range), so Individual then costs T * (0.25 + metadata).
    quantised = [compress(t[k].float(), [t[k].float()]) for t in tasks for k in names]
    assert module_storage_cost(quantised, d=d) == pytest.approx(len(tasks) * (0.25 + 2 * len(names) / d))
