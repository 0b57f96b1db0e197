"""Architecture files: loading, validation errors, detection by config and by key names."""

from __future__ import annotations

from pathlib import Path

import pytest

from modmerge.components import (
    Component,
    builtin_architectures,
    detect_architecture,
    load_architecture,
)
from modmerge.errors import ComponentError

BUILTINS = ["bert", "clip_vision", "gpt2", "llama", "t5", "vit"]


def test_builtins_are_listed_and_load():
    assert builtin_architectures() == BUILTINS
    for name in BUILTINS:
        arch = load_architecture(name)
        assert arch.name == name
        assert arch.rules
        assert arch.model_types


def test_model_types_are_claimed_once():
    claimed = [t for name in BUILTINS for t in load_architecture(name).model_types]
    assert len(claimed) == len(set(claimed))


def test_load_from_path(tmp_path: Path):
    file = tmp_path / "mine.yaml"
    file.write_text(
        "name: mine\nrules:\n  - {template: 'blocks.{layer}.ff.*', kind: mlp}\n"
        "  - {template: 'tok.*', kind: embed}\n"
    )
    arch = load_architecture(file)
    assert arch.name == "mine"
    assert arch.match("net.blocks.7.ff.w") == Component("", 7, "mlp")
    assert arch.match("tok.weight") == Component("", None, "embed")
    assert arch.match("blocks.x.ff.w") is None


def test_prefix_must_be_whole_identifier_segments():
    bert = load_architecture("bert")
    assert bert.match("roberta.pooler.dense.weight") == Component("", None, "head")
    # A numbered path is a layer, never a wrapper prefix.
    assert bert.match("encoder.layer.0.weird.classifier.weight") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nrules: [\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("name: x\n", "field 'rules'"),
        ("name: x\nrules: []\n", "rules is empty"),
        ("name: x\nrules:\n  - {template: 'a.*', kind: ffn}\n", "unknown kind 'ffn'"),
        ("name: x\nrules:\n  - {template: 'a.{idx}.*', kind: mlp}\n", "placeholder other than"),
        ("name: x\nrules:\n  - {template: 'a.{layer}.{layer}', kind: mlp}\n", "more than once"),
        ("name: x\nrules:\n  - {template: 'a.*', kind: mlp, stack: 'en coder'}\n", "bad stack"),
        ("name: x\nrules:\n  - {template: 'a.*', kind: mlp, typo: 1}\n", "typo"),
    ],
)
def test_bad_file_names_the_file(tmp_path: Path, text: str, message: str):
    file = tmp_path / "broken.yaml"
    file.write_text(text)
    with pytest.raises(ComponentError, match=message) as info:
        load_architecture(file)
    assert str(file) in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_name_and_missing_file(tmp_path: Path):
    with pytest.raises(ComponentError, match="unknown architecture 'resnet'"):
        load_architecture("resnet")
    with pytest.raises(ComponentError, match="cannot read"):
        load_architecture(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [
        ("bert", "bert"),
        ("roberta", "bert"),
        ("xlm-roberta", "bert"),
        ("camembert", "bert"),
        ("gpt2", "gpt2"),
        ("vit", "vit"),
        ("clip_vision_model", "clip_vision"),
        ("clip", "clip_vision"),
        ("t5", "t5"),
        ("mt5", "t5"),
        ("llama", "llama"),
        ("mistral", "llama"),
        ("qwen2", "llama"),
    ],
)
def test_detect_by_model_type(model_type: str, expected: str):
    assert detect_architecture({"model_type": model_type}, []).name == expected


def test_unknown_model_type_falls_back_to_keys():
    keys = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"]
    assert detect_architecture({"model_type": "brand_new"}, keys).name == "llama"


def test_detect_with_nothing_matching():
    with pytest.raises(ComponentError, match="no built-in architecture matches"):
        detect_architecture({"model_type": "resnet"}, ["stem.conv.weight", "fc.bias"])
    with pytest.raises(ComponentError, match="no built-in architecture matches"):
        detect_architecture(None, [])
