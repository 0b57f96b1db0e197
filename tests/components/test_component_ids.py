"""Component ids, parsing and model order."""

from __future__ import annotations

import doctest
import importlib
import random

import pytest

from modmerge.components.component import KINDS, Component
from modmerge.errors import ComponentError


@pytest.mark.parametrize(
    ("component", "text"),
    [
        (Component("", None, "embed"), "embed"),
        (Component("", 0, "attn"), "layer0.attn"),
        (Component("encoder", 3, "mlp"), "encoder.layer3.mlp"),
        (Component("decoder", None, "norm"), "decoder.norm"),
        (Component("", None, "head"), "head"),
        (Component("text", 12, "norm"), "text.layer12.norm"),
    ],
)
def test_id_and_parse_round_trip(component, text):
    assert component.id == text
    assert str(component) == text
    assert Component.parse(text) == component


@pytest.mark.parametrize(
    "text", ["", "layer0", "foo", "layer0.bogus", "a.b.layer0.attn", ".attn", "layerx.attn.mlp"]
)
def test_parse_rejects_malformed_ids(text):
    with pytest.raises(ComponentError, match="component id"):
        Component.parse(text)


@pytest.mark.parametrize(
    ("stack", "layer", "kind"),
    [
        ("", None, "ffn"),
        ("", -1, "attn"),
        ("layer3", 0, "attn"),
        ("mlp", 0, "attn"),
        ("a.b", 0, "attn"),
    ],
)
def test_invalid_components_are_rejected(stack, layer, kind):
    with pytest.raises(ComponentError):
        Component(stack, layer, kind)


def test_model_order_single_stack():
    expected = [
        Component("", None, "embed"),
        Component("", 0, "attn"),
        Component("", 0, "mlp"),
        Component("", 0, "norm"),
        Component("", 2, "attn"),
        Component("", 10, "attn"),
        Component("", None, "norm"),
        Component("", None, "head"),
        Component("", None, "other"),
    ]
    shuffled = expected[:]
    random.Random(0).shuffle(shuffled)
    assert sorted(shuffled) == expected  # 10 after 2: layers compare as integers


def test_model_order_encoder_decoder():
    expected = [
        "embed",
        "encoder.layer0.attn",
        "encoder.layer0.mlp",
        "encoder.layer1.attn",
        "encoder.norm",
        "decoder.layer0.attn",
        "decoder.layer0.norm",
        "decoder.norm",
        "head",
    ]
    shuffled = [Component.parse(t) for t in reversed(expected)]
    assert [c.id for c in sorted(shuffled)] == expected


def test_components_are_hashable_and_equal_by_value():
    assert {Component("", 1, "attn"), Component.parse("layer1.attn")} == {Component("", 1, "attn")}
    assert Component("", None, "head") != Component("", 0, "head")
    assert set(KINDS) == {"embed", "attn", "mlp", "norm", "head", "other"}


@pytest.mark.parametrize(
    "module", ["", ".architecture", ".component", ".decompose", ".table", ".task_vectors"]
)
def test_docstring_examples_hold(module):
    mod = importlib.import_module(f"modmerge.components{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
