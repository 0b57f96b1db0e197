"""Fixtures for component tests: parameter names of tiny HF models, as they are saved on disk.

Saved names can differ from ``model.state_dict()`` (tied weights are skipped, and transformers
may rename on save), so every case is saved and read back. Base models come from the shared
``tiny_zoo_factory``; task wrappers and extra model types are built here, once per session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import transformers
from saved_models import read_saved
from tiny_models import tiny_config

_ONE_LAYER = {
    "hidden_size": 16,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "vocab_size": 64,
    "num_key_value_heads": 1,
    "max_position_embeddings": 32,
}


def _extra_config(name: str) -> transformers.PretrainedConfig:
    """Configs for model types not in tests/tiny_models.py."""
    if name == "clip":
        tower = {
            "hidden_size": 16,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
        }
        return transformers.CLIPConfig(
            text_config={**tower, "vocab_size": 64, "max_position_embeddings": 16},
            vision_config={**tower, "image_size": 8, "patch_size": 4},
            projection_dim=8,
        )
    if name == "qwen3":
        return transformers.Qwen3Config(**_ONE_LAYER)
    if name == "gemma2":
        return transformers.Gemma2Config(**_ONE_LAYER, head_dim=8)
    if name == "mixtral":
        return transformers.MixtralConfig(**_ONE_LAYER, num_local_experts=2)
    if name == "mt5":
        return transformers.MT5Config(
            vocab_size=64,
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_decoder_layers=1,
            num_heads=2,
        )
    return tiny_config(name)


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory) -> Callable[[str, str], tuple[dict[str, Any], list[str]]]:
    """``saved_model(class_name, config_name)`` -> (config, keys) of a saved tiny model."""
    cache: dict[tuple[str, str], tuple[dict[str, Any], list[str]]] = {}

    def build(class_name: str, config_name: str) -> tuple[dict[str, Any], list[str]]:
        if (class_name, config_name) not in cache:
            directory = tmp_path_factory.mktemp(class_name)
            model = getattr(transformers, class_name)(_extra_config(config_name))
            model.save_pretrained(directory)
            cache[(class_name, config_name)] = read_saved(directory)
        return cache[(class_name, config_name)]

    return build
