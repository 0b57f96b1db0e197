"""Decomposition of every built-in architecture's tiny models, user rules and merge units."""

from __future__ import annotations

import logging

import pytest
from saved_models import read_saved

from modmerge.components import Component, Rule, decompose, detect_architecture
from modmerge.errors import ComponentError


def _layers(n: int, stack: str = "", **counts: int) -> list[tuple[str, int]]:
    """Expected (component id, tensor count) rows for ``n`` identical layers."""
    prefix = f"{stack}." if stack else ""
    return [(f"{prefix}layer{i}.{kind}", c) for i in range(n) for kind, c in counts.items()]


_BERT = [("embed", 5), *_layers(2, attn=8, mlp=4, norm=4)]
_GPT2 = [("embed", 2), *_layers(2, attn=4, mlp=4, norm=4), ("norm", 2)]
_VIT = [("embed", 4), *_layers(2, attn=8, mlp=4, norm=4), ("norm", 2)]
_CLIP_VISION = [("embed", 5), *_layers(2, attn=8, mlp=4, norm=4), ("norm", 2)]
_CLIP_TEXT = [
    ("text.embed", 2),
    *_layers(2, "text", attn=8, mlp=4, norm=4),
    ("text.norm", 2),
    ("text.head", 1),
]
# Layer 0 of each T5 stack also holds the relative attention bias.
_T5_ENCODER = [
    ("encoder.layer0.attn", 5), ("encoder.layer0.mlp", 2), ("encoder.layer0.norm", 2),
    ("encoder.layer1.attn", 4), ("encoder.layer1.mlp", 2), ("encoder.layer1.norm", 2),
    ("encoder.norm", 1),
]  # fmt: skip
_T5_DECODER = [
    ("decoder.layer0.attn", 9), ("decoder.layer0.mlp", 2), ("decoder.layer0.norm", 3),
    ("decoder.layer1.attn", 8), ("decoder.layer1.mlp", 2), ("decoder.layer1.norm", 3),
    ("decoder.norm", 1),
]  # fmt: skip
_LLAMA = [("embed", 1), *_layers(2, attn=4, mlp=3, norm=2), ("norm", 1)]
_QWEN2 = [("embed", 1), *_layers(2, attn=7, mlp=3, norm=2), ("norm", 1), ("head", 1)]
_QWEN3 = [("embed", 1), *_layers(1, attn=6, mlp=3, norm=2), ("norm", 1), ("head", 1)]
_GEMMA2 = [("embed", 1), *_layers(1, attn=4, mlp=3, norm=4), ("norm", 1)]  # lm_head tied
_MIXTRAL = [("embed", 1), *_layers(1, attn=4, mlp=7, norm=2), ("norm", 1), ("head", 1)]
# mT5 has a gated MLP (wi_0, wi_1, wo); its lm_head is tied to the shared embedding.
_MT5 = [
    ("embed", 1),
    *_layers(1, "encoder", attn=5, mlp=3, norm=2),
    ("encoder.norm", 1),
    *_layers(1, "decoder", attn=9, mlp=3, norm=3),
    ("decoder.norm", 1),
]
_CLIP_PROJ = [*_CLIP_VISION, ("head", 1)]
_CLIP_FULL = [*_CLIP_VISION, *_CLIP_TEXT, ("head", 2)]

# (transformers class, tiny config, expected architecture, expected components in model order)
CASES = {
    "bert": ("BertModel", "bert", "bert", [*_BERT, ("head", 2)]),
    "bert-cls": ("BertForSequenceClassification", "bert", "bert", [*_BERT, ("head", 4)]),
    "bert-mlm": ("BertForMaskedLM", "bert", "bert", [*_BERT, ("head", 5)]),
    "bert-qa": ("BertForQuestionAnswering", "bert", "bert", [*_BERT, ("head", 2)]),
    "roberta": ("RobertaModel", "roberta", "bert", [*_BERT, ("head", 2)]),
    "roberta-cls": ("RobertaForSequenceClassification", "roberta", "bert", [*_BERT, ("head", 4)]),
    "roberta-mlm": ("RobertaForMaskedLM", "roberta", "bert", [*_BERT, ("head", 5)]),
    "gpt2": ("GPT2LMHeadModel", "gpt2", "gpt2", _GPT2),
    "gpt2-cls": ("GPT2ForSequenceClassification", "gpt2", "gpt2", [*_GPT2, ("head", 1)]),
    "vit": ("ViTModel", "vit", "vit", [*_VIT, ("head", 2)]),
    "vit-cls": ("ViTForImageClassification", "vit", "vit", [*_VIT, ("head", 2)]),
    "clip_vision": ("CLIPVisionModel", "clip_vision", "clip_vision", _CLIP_VISION),
    "clip_vision-proj": ("CLIPVisionModelWithProjection", "clip_vision", "clip_vision", _CLIP_PROJ),
    "clip-full": ("CLIPModel", "clip", "clip_vision", _CLIP_FULL),
    "t5": ("T5ForConditionalGeneration", "t5", "t5", [("embed", 1), *_T5_ENCODER, *_T5_DECODER]),
    "t5-encoder": ("T5EncoderModel", "t5", "t5", [("embed", 1), *_T5_ENCODER]),
    "mt5": ("MT5ForConditionalGeneration", "mt5", "t5", _MT5),
    "llama": ("LlamaForCausalLM", "llama", "llama", [*_LLAMA, ("head", 1)]),
    "llama-cls": ("LlamaForSequenceClassification", "llama", "llama", [*_LLAMA, ("head", 1)]),
    "mistral": ("MistralForCausalLM", "mistral", "llama", [*_LLAMA, ("head", 1)]),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", "llama", _QWEN2),
    "qwen3": ("Qwen3ForCausalLM", "qwen3", "llama", _QWEN3),
    "gemma2": ("Gemma2ForCausalLM", "gemma2", "llama", _GEMMA2),
    "mixtral": ("MixtralForCausalLM", "mixtral", "llama", _MIXTRAL),
}
# Base models built by the shared session zoo (the same directories other tests merge).
ZOO = {"bert", "roberta", "gpt2", "vit", "clip_vision", "t5", "llama", "mistral", "qwen2"}


@pytest.fixture
def model_case(request, saved_model, tiny_zoo_factory):
    name = request.param
    class_name, config_name, arch, expected = CASES[name]
    if name in ZOO:
        base, _tasks = tiny_zoo_factory(name, 3)
        config, keys = read_saved(base)
    else:
        config, keys = saved_model(class_name, config_name)
    return config, keys, arch, expected


@pytest.mark.parametrize("model_case", list(CASES), indirect=True)
def test_every_key_maps_to_the_expected_component(model_case):
    _config, keys, arch, expected = model_case
    cmap = decompose(keys, arch)
    assert cmap.unmatched == ()
    assert sorted(cmap.keys()) == sorted(keys)
    assert [(c.id, len(cmap.keys_of(c))) for c in cmap.components()] == expected
    for key in keys:
        assert key in cmap.keys_of(cmap.component_of(key))


@pytest.mark.parametrize("model_case", list(CASES), indirect=True)
def test_detection_by_config_and_by_keys(model_case):
    config, keys, arch, _expected = model_case
    assert detect_architecture(config, keys).name == arch
    assert detect_architecture(None, keys).name == arch


@pytest.mark.parametrize("model_case", list(CASES), indirect=True)
@pytest.mark.parametrize("granularity", ["model", "layer", "component"])
def test_units_cover_every_key_exactly_once(model_case, granularity):
    _config, keys, arch, expected = model_case
    cmap = decompose(keys, arch)
    units = cmap.units(granularity)
    flat = [k for unit_keys in units.values() for k in unit_keys]
    assert sorted(flat) == sorted(keys)
    ids = [cid for cid, _n in expected]
    if granularity == "model":
        assert list(units) == ["model"]
        assert units["model"] == keys  # the model's own order
    elif granularity == "component":
        assert list(units) == ids
    else:
        layer_ids = list(dict.fromkeys(c.layer_unit for c in map(Component.parse, ids)))
        assert list(units) == layer_ids


def test_layer_units_of_t5_keep_stacks_apart(tiny_zoo_factory):
    _config, keys = read_saved(tiny_zoo_factory("t5", 3)[0])
    units = decompose(keys, "t5").units("layer")
    assert list(units) == [
        "embed",
        "encoder.layer0",
        "encoder.layer1",
        "encoder.norm",
        "decoder.layer0",
        "decoder.layer1",
        "decoder.norm",
    ]
    assert all(k.startswith("encoder.block.1.") for k in units["encoder.layer1"])
    assert all(k.startswith("decoder.block.0.") for k in units["decoder.layer0"])


def test_exclude_kinds_leaves_heads_out(saved_model):
    _config, keys = saved_model("BertForSequenceClassification", "bert")
    cmap = decompose(keys, "bert")
    head_keys = set(cmap.keys_of("head"))
    assert head_keys == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }
    for granularity in ("model", "layer", "component"):
        units = cmap.units(granularity, exclude_kinds=("head",))
        flat = {k for unit_keys in units.values() for k in unit_keys}
        assert flat == set(keys) - head_keys
        assert "head" not in units
    with pytest.raises(ComponentError, match="unknown kind 'heads'"):
        cmap.units("model", exclude_kinds=("heads",))


def test_user_rule_takes_precedence(tiny_zoo_factory):
    _config, keys = read_saved(tiny_zoo_factory("bert", 3)[0])
    rules = [Rule(r"encoder\.layer\.(?P<layer>\d+)\.attention\.output\.LayerNorm", "attn")]
    cmap = decompose(keys, "bert", extra_rules=rules)
    assert len(cmap.keys_of("layer0.attn")) == 10
    assert len(cmap.keys_of("layer0.norm")) == 2
    assert cmap.component_of("encoder.layer.1.attention.output.LayerNorm.weight") == Component(
        "", 1, "attn"
    )
    # A plain tuple without a layer group: the pooler becomes its own stack-free mlp.
    cmap = decompose(keys, "bert", extra_rules=[(r"^pooler\.", "mlp")])
    assert cmap.keys_of("mlp") == ["pooler.dense.bias", "pooler.dense.weight"]


def test_bad_user_rules_are_rejected_before_work():
    with pytest.raises(ComponentError, match="not a valid regular expression"):
        decompose(["a"], "bert", extra_rules=[Rule("(", "mlp")])
    with pytest.raises(ComponentError, match="unknown kind 'ffn'"):
        decompose(["a"], "bert", extra_rules=[Rule("a", "ffn")])


def test_unknown_key_becomes_other_and_is_reported(tiny_zoo_factory, caplog):
    _config, keys = read_saved(tiny_zoo_factory("llama", 3)[0])
    extra = "model.adapter.scale"
    with caplog.at_level(logging.WARNING, logger="modmerge.components.decompose"):
        cmap = decompose([*keys, extra], "llama")
    assert cmap.unmatched == (extra,)
    assert cmap.component_of(extra) == Component("", None, "other")
    assert cmap.components()[-1].id == "other"
    assert cmap.keys_of("other") == [extra]
    assert cmap.units("component")["other"] == [extra]
    assert extra in caplog.text


def test_mixed_prefixes_in_one_layer_component_are_warned(caplog):
    keys = ["a.encoder.layer.0.intermediate.dense.weight", "b.encoder.layer.0.output.dense.weight"]
    with caplog.at_level(logging.WARNING, logger="modmerge.components.decompose"):
        decompose(keys, "bert")
    assert "different prefixes" in caplog.text


def test_granularity_errors():
    cmap = decompose(["embeddings.word_embeddings.weight", "pooler.dense.weight"], "bert")
    assert cmap.units("model") == {
        "model": ["embeddings.word_embeddings.weight", "pooler.dense.weight"]
    }
    for granularity in ("layer", "component"):
        with pytest.raises(ComponentError, match="no parameter has a layer index"):
            cmap.units(granularity)
    with pytest.raises(ComponentError, match="unknown granularity 'block'"):
        cmap.units("block")  # type: ignore[arg-type]


def test_lookups_of_unknown_names_fail_clearly():
    cmap = decompose(["model.layers.0.mlp.up_proj.weight"], "llama")
    with pytest.raises(ComponentError, match="'nope' is not in this component map"):
        cmap.component_of("nope")
    with pytest.raises(ComponentError, match=r"'layer5\.mlp' has no parameters"):
        cmap.keys_of("layer5.mlp")
    with pytest.raises(ComponentError, match="listed twice"):
        decompose(["x", "x"], "llama")
