"""PEFT adapters opened as dense checkpoints must equal peft's own ``merge_and_unload``."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tiny_models import tiny_config

from modmerge.checkpoints import AdapterSource, open_checkpoint
from modmerge.errors import CheckpointError


def _build(
    model_cls: type, arch: str, config: peft.PeftConfig, root: Path, seed: int = 0
) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """Save a tiny base model and a perturbed adapter; return peft's merged state dict too."""
    torch.manual_seed(seed)
    model = _with_nonzero_biases(model_cls(tiny_config(arch)))
    base_dir = root / "base"
    model.save_pretrained(base_dir)
    wrapped = peft.get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            # Fresh adapters are identities (lora_B = 0, ia3 = 1); perturb so the test means something.
            noise = 0.1 * torch.randn(param.shape, generator=gen)
            if "ia3_l" in name:
                param.copy_(1.0 + noise)
            elif "lora_" in name or "modules_to_save" in name:
                param.copy_(param + noise)
    wrapped.peft_config["default"].base_model_name_or_path = str(base_dir)
    adapter_dir = root / "adapter"
    wrapped.save_pretrained(adapter_dir)
    merged = {k: v.detach().clone() for k, v in wrapped.merge_and_unload().state_dict().items()}
    return base_dir, adapter_dir, merged


def _with_nonzero_biases(model: torch.nn.Module) -> torch.nn.Module:
    # HF initialises biases to zero, which would hide a missing bias update.
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    return model


def _assert_matches(
    ckpt_keys: list[str], get, reference: dict[str, torch.Tensor], changed_at_least: int
) -> None:
    changed = 0
    for key in ckpt_keys:
        got, ref = get(key), reference[key]
        assert got.shape == ref.shape and got.dtype == ref.dtype, key
        assert torch.allclose(got, ref, atol=1e-6, rtol=1e-5), key
        changed += 0 if key.endswith("position_ids") else 1
    assert changed >= changed_at_least


def _n_changed(base_dir: Path, reference: dict[str, torch.Tensor]) -> int:
    base = load_file(base_dir / "model.safetensors")
    return sum(not torch.equal(base[k], reference[k]) for k in base)


LORA_CASES = {
    "bert-lora": (
        transformers.BertModel,
        "bert",
        lambda: peft.LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["query", "value", "intermediate.dense", "word_embeddings"],
        ),
    ),
    "bert-rslora-patterns-bias-modules_to_save": (
        transformers.BertModel,
        "bert",
        lambda: peft.LoraConfig(
            r=4,
            lora_alpha=6,
            use_rslora=True,
            target_modules=["query", "key", "output.dense"],
            rank_pattern={"key": 2},
            alpha_pattern={"layer.1.attention.self.query": 3},
            lora_bias=True,
            modules_to_save=["pooler"],
        ),
    ),
    "gpt2-conv1d-fan_in_fan_out": (
        transformers.GPT2LMHeadModel,
        "gpt2",
        lambda: peft.LoraConfig(
            r=4, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True
        ),
    ),
    "gpt2-conv1d-fan_in_fan_out-left-to-peft": (
        transformers.GPT2LMHeadModel,
        "gpt2",
        lambda: peft.LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn", "attn.c_proj"]),
    ),
    "bert-ia3": (
        transformers.BertModel,
        "bert",
        lambda: peft.IA3Config(
            target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]
        ),
    ),
    "bert-ia3-attention-only": (
        transformers.BertModel,
        "bert",
        lambda: peft.IA3Config(
            target_modules=["query", "intermediate.dense"], feedforward_modules=[]
        ),
    ),
    "gpt2-ia3": (
        transformers.GPT2LMHeadModel,
        "gpt2",
        lambda: peft.IA3Config(
            target_modules=["c_attn", "mlp.c_proj"],
            feedforward_modules=["mlp.c_proj"],
            fan_in_fan_out=True,
        ),
    ),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_adapter_equals_peft_merge_and_unload(tmp_path, case):
    model_cls, arch, make_config = LORA_CASES[case]
    base_dir, adapter_dir, reference = _build(model_cls, arch, make_config(), tmp_path)
    base = open_checkpoint(base_dir)
    ckpt = open_checkpoint(adapter_dir, base=base)
    assert isinstance(ckpt.source, AdapterSource)
    assert ckpt.config == base.config and ckpt.label == str(adapter_dir)
    assert set(ckpt.keys()) == set(base.keys())
    for key in list(ckpt.keys()):
        assert ckpt.info(key) == base.info(key)
    _assert_matches(ckpt.keys(), ckpt.get, reference, changed_at_least=1)
    assert _n_changed(base_dir, reference) >= 4  # the adapter really touched several tensors


def test_base_found_through_adapter_config(tmp_path):
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query"])
    base_dir, adapter_dir, reference = _build(transformers.BertModel, "bert", cfg, tmp_path)
    with open_checkpoint(adapter_dir) as ckpt:  # base_model_name_or_path points at base_dir
        assert ckpt.directory == base_dir
        _assert_matches(ckpt.keys(), ckpt.get, reference, changed_at_least=2)


def test_base_with_task_model_prefix(tmp_path):
    """Adapter trained on BertModel, base checkpoint saved with the 'bert.' prefix."""
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"])
    base_dir, adapter_dir, reference = _build(transformers.BertModel, "bert", cfg, tmp_path)
    prefixed = tmp_path / "prefixed"
    prefixed.mkdir()
    save_file(
        {f"bert.{k}": v for k, v in load_file(base_dir / "model.safetensors").items()},
        prefixed / "model.safetensors",
    )
    ckpt = open_checkpoint(adapter_dir, base=open_checkpoint(prefixed))
    assert all(k.startswith("bert.") for k in list(ckpt.keys()))
    _assert_matches(ckpt.keys(), ckpt.get, {f"bert.{k}": v for k, v in reference.items()}, 2)


def test_adapter_with_prefix_over_bare_base_adds_new_head(tmp_path):
    """Adapter of a BertForSequenceClassification over a BertModel base: keys lose 'bert.',
    and the trained classifier (modules_to_save) is added as new tensors."""
    torch.manual_seed(0)
    bare = _with_nonzero_biases(transformers.BertModel(tiny_config("bert")))
    bare.save_pretrained(tmp_path / "bare")
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query"], task_type="SEQ_CLS")
    torch.manual_seed(0)
    classifier = transformers.BertForSequenceClassification(tiny_config("bert"))
    classifier.bert.load_state_dict(bare.state_dict())
    classifier.save_pretrained(tmp_path / "cls_base")
    _, adapter_dir, reference = _build_from(classifier, cfg, tmp_path)
    ckpt = open_checkpoint(adapter_dir, base=open_checkpoint(tmp_path / "bare"))
    assert {"classifier.weight", "classifier.bias"} <= set(ckpt.keys())
    expected = {k.removeprefix("bert."): v for k, v in reference.items()}
    _assert_matches(ckpt.keys(), ckpt.get, expected, changed_at_least=4)


def _build_from(
    model: torch.nn.Module, config: peft.PeftConfig, root: Path
) -> tuple[None, Path, dict[str, torch.Tensor]]:
    wrapped = peft.get_peft_model(model, config)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))
    wrapped.save_pretrained(root / "adapter")
    merged = {k: v.detach().clone() for k, v in wrapped.merge_and_unload().state_dict().items()}
    return None, root / "adapter", merged


def _tamper(adapter_dir: Path, **changes: object) -> None:
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture
def lora_bert(tmp_path):
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query"])
    base_dir, adapter_dir, _ = _build(transformers.BertModel, "bert", cfg, tmp_path)
    return base_dir, adapter_dir


def test_unsupported_adapters_are_refused(lora_bert):
    base_dir, adapter_dir = lora_bert
    _tamper(adapter_dir, use_dora=True)
    with pytest.raises(
        CheckpointError, match=r"adapter: DoRA adapters \(use_dora\) are not supported"
    ):
        open_checkpoint(adapter_dir, base=open_checkpoint(base_dir))
    _tamper(adapter_dir, use_dora=False, peft_type="LOHA")
    with pytest.raises(CheckpointError, match="PEFT type LOHA is not supported"):
        open_checkpoint(adapter_dir, base=open_checkpoint(base_dir))


def test_adapter_errors_name_the_culprit(lora_bert, tmp_path):
    _, adapter_dir = lora_bert
    _tamper(adapter_dir, base_model_name_or_path=None)
    with pytest.raises(CheckpointError, match=r"adapter_config\.json: no base_model_name_or_path"):
        open_checkpoint(adapter_dir)
    _tamper(adapter_dir, base_model_name_or_path=str(tmp_path / "gone"))
    with pytest.raises(
        CheckpointError, match=r"adapter: cannot open the adapter's base model: .*gone"
    ):
        open_checkpoint(adapter_dir)
    other = tmp_path / "other"
    other.mkdir()
    save_file({"x.weight": torch.zeros(2, 2)}, other / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"adapter module 'encoder.layer.0.attention.self.query' has no matching base tensor",
    ):
        open_checkpoint(adapter_dir, base=open_checkpoint(other))


def test_saved_module_with_wrong_shape_is_refused(lora_bert):
    base_dir, adapter_dir = lora_bert
    weights = adapter_dir / "adapter_model.safetensors"
    state = load_file(weights)
    state["base_model.model.pooler.dense.weight"] = torch.zeros(3, 3)
    save_file(state, weights)
    with pytest.raises(
        CheckpointError, match=r"saved module tensor .* base tensor 'pooler\.dense\.weight'"
    ):
        open_checkpoint(adapter_dir, base=open_checkpoint(base_dir))
