"""LoRA extraction's pure pieces: the truncated SVD and its error, the rank choice, PEFT's names
and config fields, and the module map. Expected values are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from tiny_models import tiny_config

from modmerge.checkpoints.lora_extract import (
    adapter_config,
    choose_rank,
    compact_targets,
    lora_keys,
    module_kind_pattern,
    rank_settings,
    task_type_for,
    truncated_svd,
    update_matrix,
)
from modmerge.checkpoints.module_map import ModuleMap, module_map_for
from modmerge.errors import ModmergeError


def _rotated(singular_values: list[float], out: int, inp: int, seed: int = 0) -> torch.Tensor:
    """``U diag(s) V^T`` with random orthonormal U, V: a matrix whose spectrum is ``s`` exactly."""
    gen = torch.Generator().manual_seed(seed)
    k = len(singular_values)
    u, _ = torch.linalg.qr(torch.randn(out, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inp, k, generator=gen, dtype=torch.float64))
    return (u * torch.tensor(singular_values, dtype=torch.float64)) @ v.T


# (spectrum, rank kept, ||delta - B A||_F by hand: the norm of the discarded values)
TAIL_CASES = [
    ([4.0, 3.0, 2.0, 1.0], 2, math.sqrt(2**2 + 1**2)),
    ([4.0, 3.0, 2.0, 1.0], 3, 1.0),
    ([4.0, 3.0, 2.0, 1.0], 4, 0.0),
    ([4.0, 3.0, 2.0, 1.0], 9, 0.0),  # the rank is capped by the matrix (5 columns)
    ([5.0, 0.0, 0.0], 1, 0.0),  # a rank-1 update is exact at rank 1
    ([1.0, 1.0, 1.0, 1.0], 1, math.sqrt(3.0)),
]


@pytest.mark.parametrize(("spectrum", "rank", "tail"), TAIL_CASES)
def test_truncated_svd_error_is_the_discarded_singular_values(spectrum, rank, tail):
    delta = _rotated(spectrum, 7, 5).to(torch.float32)
    factors = truncated_svd(delta, rank)
    kept = min(rank, 5)  # at most min(out, in) directions
    assert factors.a.shape == (kept, 5) and factors.b.shape == (7, kept)
    measured = float(torch.linalg.matrix_norm(delta - factors.b @ factors.a))
    assert measured == pytest.approx(tail, abs=1e-5)
    assert factors.tail_error == pytest.approx(tail, abs=1e-5)
    assert factors.delta_norm == pytest.approx(math.sqrt(sum(s * s for s in spectrum)), rel=1e-5)


def test_factors_share_the_singular_values_evenly():
    factors = truncated_svd(_rotated([9.0, 4.0], 6, 3).to(torch.float32), 2)
    # B = U sqrt(S), A = sqrt(S) V^T: column norms of B and row norms of A are both sqrt(s)
    assert torch.allclose(factors.b.norm(dim=0), torch.tensor([3.0, 2.0]), atol=1e-5)
    assert torch.allclose(factors.a.norm(dim=1), torch.tensor([3.0, 2.0]), atol=1e-5)


# (spectrum, max rank, energy, rank kept): squares 16, 9, 4, 1 of 30
RANK_CASES = [
    ([4.0, 3.0, 2.0, 1.0], 8, None, 4),
    ([4.0, 3.0, 2.0, 1.0], 2, None, 2),
    ([4.0, 3.0, 2.0, 1.0], 8, 16 / 30, 1),  # the first value holds exactly 16/30
    ([4.0, 3.0, 2.0, 1.0], 8, 0.54, 2),  # just over 16/30
    ([4.0, 3.0, 2.0, 1.0], 8, 29 / 30, 3),
    ([4.0, 3.0, 2.0, 1.0], 8, 1.0, 4),
    ([4.0, 3.0, 2.0, 1.0], 2, 1.0, 2),  # energy never raises the rank past the cap
    ([0.0, 0.0], 8, 0.5, 1),  # a zero update keeps one (zero) direction
]


@pytest.mark.parametrize(("spectrum", "max_rank", "energy", "expected"), RANK_CASES)
def test_choose_rank(spectrum, max_rank, energy, expected):
    assert choose_rank(torch.tensor(spectrum), max_rank, energy) == expected


def test_truncated_svd_refuses_a_non_matrix():
    with pytest.raises(ModmergeError, match="matrix"):
        truncated_svd(torch.zeros(3), 2)


def test_update_matrix_orientation():
    stored = torch.arange(6.0).reshape(2, 3)
    assert update_matrix(stored, "linear") is stored
    assert torch.equal(update_matrix(stored, "conv1d"), stored.T)
    assert torch.equal(update_matrix(stored, "embedding"), stored.T)


def test_peft_names():
    assert lora_keys("h.0.attn.c_attn", "conv1d") == (
        "base_model.model.h.0.attn.c_attn.lora_A.weight",
        "base_model.model.h.0.attn.c_attn.lora_B.weight",
    )
    assert lora_keys("wte", "embedding") == ("base_model.model.wte.lora_embedding_A", "base_model.model.wte.lora_embedding_B")
    assert module_kind_pattern("encoder.layer.10.attention.self.query") == "encoder.layer.*.attention.self.query"
    assert module_kind_pattern("h.0") == "h.*"


# (targets, the model's modules, target_modules PEFT gets)
COMPACT_CASES = [
    (["l.0.q", "l.1.q"], ["l.0.q", "l.1.q", "l.0.k", "l.1.k"], ["q"]),
    (["l.0.q", "l.1.q", "l.0.k"], ["l.0.q", "l.1.q", "l.0.k", "l.1.k"], ["l.0.k", "q"]),
    # a container named like a target would be matched by the short name (PEFT then fails on it)
    (["a.dense"], ["a.dense", "b.dense.x"], ["a.dense"]),
    # GPT-2: attn.c_proj and mlp.c_proj share the last name
    (["h.0.attn.c_proj"], ["h.0.attn.c_proj", "h.0.mlp.c_proj"], ["h.0.attn.c_proj"]),
    (["h.0.attn.c_proj", "h.0.mlp.c_proj"], ["h.0.attn.c_proj", "h.0.mlp.c_proj"], ["c_proj"]),
    (["lm_head"], ["lm_head", "model.embed_tokens"], ["lm_head"]),
]


@pytest.mark.parametrize(("targets", "modules", "expected"), COMPACT_CASES)
def test_compact_targets(targets, modules, expected):
    assert compact_targets(targets, modules) == expected


def test_rank_settings_name_the_odd_modules_exactly():
    r, pattern = rank_settings({"l.1.q": 4, "l.11.q": 4, "l.0.q": 2, "l.0.k": 8})
    assert r == 4 and pattern == {r"l\.0\.q": 2, r"l\.0\.k": 8}
    assert rank_settings({"a": 2, "b": 3}) == (3, {"a": 2})  # a tie goes to the larger rank


def test_adapter_config_scales_every_update_by_one():
    cfg = adapter_config(ranks={"l.0.q": 4, "l.0.k": 2}, all_modules=["l.0.q", "l.0.k"], modules_to_save=["ln"],
                         base_model="/models/base", model_class="LlamaForCausalLM", fan_in_fan_out=False,
                         lora_bias=False)
    assert cfg["r"] == cfg["lora_alpha"] == 4
    assert cfg["rank_pattern"] == cfg["alpha_pattern"] == {r"l\.0\.k": 2}
    assert (cfg["task_type"], cfg["modules_to_save"], cfg["target_modules"]) == ("CAUSAL_LM", ["ln"], ["k", "q"])
    assert cfg["base_model_name_or_path"] == "/models/base" and not cfg["use_rslora"]


def test_task_types():
    assert task_type_for("BertForSequenceClassification") == "SEQ_CLS"
    assert task_type_for("T5ForConditionalGeneration") == "SEQ_2_SEQ_LM"
    assert task_type_for(None) is None


def test_module_map_reads_conv1d_embeddings_and_ties_off_the_model():
    with torch.device("meta"):
        gpt2 = transformers.GPT2LMHeadModel(tiny_config("gpt2"))
    found = ModuleMap.from_model(gpt2)
    assert found.kinds["transformer.h.0.attn.c_attn"] == "conv1d"
    assert found.kinds["transformer.wte"] == "embedding"
    assert found.kinds["transformer.h.0.ln_1"] == "other"
    assert set(found.tied["lm_head.weight"]) == {"lm_head.weight", "transformer.wte.weight"}
    assert found.kind("lm_head.weight") == "linear" and found.kind("nope.weight") is None
    assert found.model_class == "GPT2LMHeadModel" and found.note is None


def test_module_map_for_a_config_and_without_one():
    shapes = {"embeddings.word_embeddings.weight": (64, 16), "encoder.layer.0.attention.self.query.weight": (16, 16),
              "encoder.layer.0.attention.self.query.bias": (16,), "embeddings.LayerNorm.weight": (16,)}
    config = tiny_config("bert").to_dict() | {"architectures": ["BertModel"]}
    from_config = module_map_for(config, shapes)
    guessed = module_map_for(None, shapes)
    for found in (from_config, guessed):
        assert found.kind("embeddings.word_embeddings.weight") == "embedding"
        assert found.kind("encoder.layer.0.attention.self.query.bias") == "linear"
        assert found.kind("embeddings.LayerNorm.weight") == "other"
    assert from_config.model_class == "BertModel" and "guessed" in guessed.note
    broken = module_map_for({"architectures": ["NoSuchModel"], "model_type": "no-such-type"}, shapes)
    assert "guessed" in broken.note and broken.kind("embeddings.word_embeddings.weight") == "embedding"
    renamed = module_map_for(config, {"bert." + k: v for k, v in shapes.items()})
    assert "no tensor name matches BertModel's" in renamed.note
