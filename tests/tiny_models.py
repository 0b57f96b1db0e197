"""Tiny Hugging Face models (a few thousand parameters) for tests, saved as model directories.

``make_tiny_model("bert", tmp_path / "base")`` writes config + safetensors;
``make_finetuned(base_dir, out_dir, seed)`` writes a perturbed copy standing in for a fine-tune.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import transformers
from safetensors.torch import load_file, save_file

_SMALL = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}


def tiny_config(arch: str) -> transformers.PretrainedConfig:
    """A config for one of the built-in architectures, small enough for unit tests."""
    if arch == "bert":
        return transformers.BertConfig(vocab_size=64, num_hidden_layers=2, max_position_embeddings=32, **_SMALL)
    if arch == "roberta":
        return transformers.RobertaConfig(vocab_size=64, num_hidden_layers=2, max_position_embeddings=40, **_SMALL)
    if arch == "gpt2":
        return transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32)
    if arch == "vit":
        return transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, num_hidden_layers=2, **_SMALL)
    if arch == "clip_vision":
        return transformers.CLIPVisionConfig(image_size=8, patch_size=4, num_channels=3, num_hidden_layers=2, projection_dim=8, **_SMALL)
    if arch == "t5":
        return transformers.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2)
    if arch == "llama":
        return transformers.LlamaConfig(vocab_size=64, num_hidden_layers=2, num_key_value_heads=1, max_position_embeddings=32, **_SMALL)
    if arch == "mistral":
        return transformers.MistralConfig(vocab_size=64, num_hidden_layers=2, num_key_value_heads=1, max_position_embeddings=32, **_SMALL)
    if arch == "qwen2":
        return transformers.Qwen2Config(vocab_size=64, num_hidden_layers=2, num_key_value_heads=1, max_position_embeddings=32, **_SMALL)
    raise ValueError(f"no tiny config for {arch!r}")


_MODEL_CLASS = {
    "bert": "BertModel",
    "roberta": "RobertaModel",
    "gpt2": "GPT2LMHeadModel",
    "vit": "ViTModel",
    "clip_vision": "CLIPVisionModel",
    "t5": "T5ForConditionalGeneration",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


def make_tiny_model(arch: str, out_dir: Path, seed: int = 0) -> Path:
    """Build a randomly initialised tiny model of ``arch`` and save it as an HF directory."""
    torch.manual_seed(seed)
    model = getattr(transformers, _MODEL_CLASS[arch])(tiny_config(arch))
    model.save_pretrained(out_dir)
    return Path(out_dir)


def make_finetuned(base_dir: Path, out_dir: Path, seed: int, scale: float = 0.01) -> Path:
    """Copy ``base_dir`` with every floating tensor perturbed by seeded noise (a stand-in fine-tune)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for item in Path(base_dir).iterdir():
        if item.suffix == ".safetensors":
            tensors = load_file(item)
            noisy = {
                k: (v + scale * torch.randn(v.shape, generator=gen, dtype=torch.float32).to(v.dtype)).contiguous()
                if v.is_floating_point()
                else v
                for k, v in tensors.items()
            }
            save_file(noisy, out_dir / item.name, metadata={"format": "pt"})
        elif item.is_file():
            (out_dir / item.name).write_bytes(item.read_bytes())
    return out_dir
