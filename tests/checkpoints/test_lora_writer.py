"""``extract_lora`` end to end: the adapter loads with PEFT (``PeftModel.from_pretrained`` on the
base transformers model) and its ``merge_and_unload`` is TUNED to float noise when every update
is exactly low rank, or off by exactly the SVD tail bound when it is not; modmerge's own adapter
opener gives the same dense weights as PEFT."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import peft
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import make_tiny_model, tiny_config
from transformers.pytorch_utils import Conv1D

from modmerge.checkpoints import Checkpoint, open_checkpoint
from modmerge.checkpoints.lora_writer import ExtractionReport, LoraExtractOptions, extract_lora
from modmerge.errors import ModmergeError

MODEL_CLASS = {"gpt2": transformers.GPT2LMHeadModel, "bert": transformers.BertModel, "llama": transformers.LlamaForCausalLM,
               "bert-classifier": transformers.BertForSequenceClassification}


def _low_rank_tuned(base_dir: Path, out_dir: Path, rank_of, seed: int = 0) -> Path:
    """TUNED whose every linear / Conv1D weight moved by an exactly rank-``rank_of(i)`` update (the
    i-th such module), and every other tensor (norms, biases, embeddings) by noise."""
    model = _model_class(base_dir).from_pretrained(base_dir)
    gen = torch.Generator().manual_seed(seed)
    moved = set()
    with torch.no_grad():
        linear = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
        for i, (_, module) in enumerate(linear):
            if id(module.weight) in moved:  # a tied lm_head moves with its embedding below
                continue
            out, inp = (module.weight.shape[1], module.weight.shape[0]) if isinstance(module, Conv1D) else module.weight.shape
            r = rank_of(i)
            update = 0.1 * torch.randn(out, r, generator=gen) @ torch.randn(r, inp, generator=gen)
            module.weight.add_(update.T if isinstance(module, Conv1D) else update)
            moved.add(id(module.weight))
        for _, param in model.named_parameters():
            if id(param) not in moved:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))
                moved.add(id(param))
    model.save_pretrained(out_dir)
    return out_dir


def _model_class(model_dir: Path) -> type:
    return getattr(transformers, json.loads((model_dir / "config.json").read_text())["architectures"][0])


def _noisy_tuned(base_dir: Path, out_dir: Path, seed: int = 1) -> Path:
    """TUNED = BASE + full-rank noise on every tensor."""
    shutil.copytree(base_dir, out_dir)
    gen = torch.Generator().manual_seed(seed)
    state = load_file(out_dir / "model.safetensors")
    save_file({k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in state.items()}, out_dir / "model.safetensors")
    return out_dir


def _extract(base_dir: Path, tuned_dir: Path, out: Path, **options) -> ExtractionReport:
    with open_checkpoint(base_dir) as base, open_checkpoint(tuned_dir) as tuned:
        return extract_lora(base, tuned, out, LoraExtractOptions(**options), base_model=str(base_dir))


def _peft_merged(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    model = _model_class(base_dir).from_pretrained(base_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about tied embeddings in modules_to_save
        merged = peft.PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def _state(model_dir: Path) -> dict[str, torch.Tensor]:
    return _model_class(model_dir).from_pretrained(model_dir).state_dict()


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora_bases")
    bases = {arch: make_tiny_model(arch, root / arch) for arch in ("gpt2", "bert", "llama")}
    torch.manual_seed(0)
    MODEL_CLASS["bert-classifier"](tiny_config("bert")).save_pretrained(root / "bert-classifier")
    return {**bases, "bert-classifier": root / "bert-classifier"}


@pytest.mark.parametrize("arch", list(MODEL_CLASS))
def test_exactly_low_rank_updates_come_back_to_float_noise(bases, tmp_path, arch):
    tuned_dir = _low_rank_tuned(bases[arch], tmp_path / "tuned", rank_of=lambda i: 3)
    report = _extract(bases[arch], tuned_dir, tmp_path / "adapter", rank=3)
    assert report.config["r"] == report.config["lora_alpha"] == 3 and report.config["rank_pattern"] == {}
    assert report.fits and all(fit.relative_error < 1e-5 for fit in report.fits)
    assert report.dropped == {}
    merged, tuned = _peft_merged(bases[arch], tmp_path / "adapter"), _state(tuned_dir)
    assert merged.keys() == tuned.keys()
    for key, want in tuned.items():
        torch.testing.assert_close(merged[key], want, atol=2e-6, rtol=1e-5, msg=key)
    # modmerge's own opener gives PEFT's dense weights
    with open_checkpoint(bases[arch]) as base, open_checkpoint(tmp_path / "adapter", base=base) as dense:
        for key in base.keys():
            torch.testing.assert_close(dense.get(key), merged[key], atol=1e-6, rtol=1e-6, msg=key)


def test_what_went_where(bases, tmp_path):
    tuned_dir = _low_rank_tuned(bases["gpt2"], tmp_path / "gpt2", rank_of=lambda i: 2)
    gpt2 = _extract(bases["gpt2"], tuned_dir, tmp_path / "gpt2-lora", rank=2)
    assert gpt2.config["fan_in_fan_out"] and gpt2.config["task_type"] == "CAUSAL_LM" and gpt2.lora_bias
    assert gpt2.config["target_modules"] == ["c_attn", "c_fc", "c_proj"]
    # the tied lm_head is saved with the embedding it shares its weight with
    assert {"transformer.wte", "lm_head", "transformer.wpe", "transformer.ln_f", "transformer.h.0.ln_1"} <= set(
        gpt2.saved_modules)
    llama = _extract(bases["llama"], _low_rank_tuned(bases["llama"], tmp_path / "llama", rank_of=lambda i: 2),
                     tmp_path / "llama-lora", rank=2)
    assert not llama.lora_bias and "lm_head" in {fit.module for fit in llama.fits}  # an untied head is LoRA'd
    assert set(llama.saved_modules) >= {"model.embed_tokens", "model.norm", "model.layers.0.input_layernorm"}
    # PEFT's sequence-classification wrapper saves the classifier itself: the adapter must hold it
    classifier = _extract(bases["bert-classifier"], _low_rank_tuned(bases["bert-classifier"], tmp_path / "cls",
                                                                   rank_of=lambda i: 2), tmp_path / "cls-lora", rank=2)
    assert classifier.config["task_type"] == "SEQ_CLS" and "classifier" in classifier.saved_modules
    assert "classifier" not in {fit.module for fit in classifier.fits}


def test_adapter_names_are_peft_own(bases, tmp_path):
    """Loaded into PEFT and saved again, the adapter has the same tensors under the same names."""
    report = _extract(bases["bert"], _noisy_tuned(bases["bert"], tmp_path / "tuned"), tmp_path / "ours", rank=2,
                      embeddings="lora")
    model = transformers.BertModel.from_pretrained(bases["bert"])
    peft.PeftModel.from_pretrained(model, tmp_path / "ours").save_pretrained(tmp_path / "resaved")

    def tensors(folder: Path) -> dict[str, tuple]:
        with safe_open(folder / "adapter_model.safetensors", "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

    assert tensors(tmp_path / "ours") == tensors(tmp_path / "resaved")
    assert any(k.endswith("lora_embedding_A") for k in tensors(tmp_path / "ours"))
    loaded = peft.LoraConfig.from_pretrained(tmp_path / "ours")
    assert loaded.r == report.config["r"] and loaded.base_model_name_or_path == str(bases["bert"])


@pytest.mark.parametrize(("arch", "rank"), [("gpt2", 2), ("gpt2", 5), ("bert", 4), ("llama", 7)])
def test_full_rank_updates_miss_by_the_svd_tail(bases, tmp_path, arch, rank):
    """||delta - delta_r||_F^2 = the sum of the discarded squared singular values, for the report
    and for PEFT's merged weights alike."""
    tuned_dir = _noisy_tuned(bases[arch], tmp_path / "tuned")
    report = _extract(bases[arch], tuned_dir, tmp_path / "adapter", rank=rank)
    base, tuned, merged = _state(bases[arch]), _state(tuned_dir), _peft_merged(bases[arch], tmp_path / "adapter")
    for fit in report.fits:
        key = f"{fit.module}.weight"
        singular = torch.linalg.svdvals((tuned[key] - base[key]).double())  # the same for Conv1D's transpose
        tail = math.sqrt(sum(float(s) ** 2 for s in singular[rank:]))
        assert fit.rank == min(rank, *tuned[key].shape)
        assert fit.error == pytest.approx(tail, rel=1e-4), key
        assert fit.delta_norm == pytest.approx(float(singular.norm()), rel=1e-5), key
        assert float((merged[key] - tuned[key]).double().norm()) == pytest.approx(tail, rel=1e-3), key
    lora_modules = {fit.module for fit in report.fits}
    for key, want in tuned.items():  # everything else comes back exactly, LoRA targets' biases too (lora_B.bias)
        if key.rpartition(".")[0] not in lora_modules or key.endswith(".bias"):
            torch.testing.assert_close(merged[key], want, atol=1e-6, rtol=1e-6, msg=key)


def test_energy_picks_each_module_rank_and_peft_honours_the_patterns(bases, tmp_path):
    ranks = [1, 2, 3]
    tuned_dir = _low_rank_tuned(bases["llama"], tmp_path / "tuned", rank_of=lambda i: ranks[i % 3])
    report = _extract(bases["llama"], tuned_dir, tmp_path / "adapter", rank=8, energy=0.999999)
    assert {fit.rank for fit in report.fits} == {1, 2, 3}
    assert report.config["rank_pattern"] and report.config["rank_pattern"] == report.config["alpha_pattern"]
    assert all(fit.relative_error < 1e-5 for fit in report.fits)
    merged, tuned = _peft_merged(bases["llama"], tmp_path / "adapter"), _state(tuned_dir)
    for key, want in tuned.items():
        torch.testing.assert_close(merged[key], want, atol=2e-6, rtol=1e-5, msg=key)


def test_embedding_policies(bases, tmp_path):
    base_dir = bases["gpt2"]
    tuned_dir = _noisy_tuned(base_dir, tmp_path / "tuned")
    base, tuned = _state(base_dir), _state(tuned_dir)
    as_lora = _extract(base_dir, tuned_dir, tmp_path / "lora", rank=4, embeddings="lora")
    kinds = {fit.module: fit.kind for fit in as_lora.fits}
    # wpe is factorised; wte, tied to lm_head, is saved whole all the same
    assert kinds["transformer.wpe"] == "embedding" and "transformer.wte" in as_lora.saved_modules
    # PEFT's lora_bias does not combine with embedding LoRA: the bias changes are dropped, and said
    assert not as_lora.lora_bias and "transformer.h.0.attn.c_attn.bias" in as_lora.dropped
    merged = _peft_merged(base_dir, tmp_path / "lora")
    wpe = next(fit for fit in as_lora.fits if fit.module == "transformer.wpe")
    assert float((merged["transformer.wpe.weight"] - tuned["transformer.wpe.weight"]).norm()) == pytest.approx(
        wpe.error, rel=1e-3)
    torch.testing.assert_close(merged["transformer.h.0.attn.c_attn.bias"], base["transformer.h.0.attn.c_attn.bias"])
    dropped = _extract(base_dir, tuned_dir, tmp_path / "drop", rank=4, embeddings="drop")
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= set(dropped.dropped)
    assert "transformer.wte" not in dropped.saved_modules and "lm_head" not in dropped.saved_modules
    merged = _peft_merged(base_dir, tmp_path / "drop")
    torch.testing.assert_close(merged["transformer.wte.weight"], base["transformer.wte.weight"])


def test_bfloat16_factors_report_their_own_error(bases, tmp_path):
    tuned_dir = _noisy_tuned(bases["bert"], tmp_path / "tuned")
    full = _extract(bases["bert"], tuned_dir, tmp_path / "fp32", rank=4)
    half = _extract(bases["bert"], tuned_dir, tmp_path / "bf16", rank=4, dtype="bfloat16")
    with safe_open(tmp_path / "bf16" / "adapter_model.safetensors", "pt") as f:
        key = next(k for k in f.keys() if k.endswith("lora_A.weight"))
        assert f.get_tensor(key).dtype == torch.bfloat16
    assert half.adapter_bytes < full.adapter_bytes
    tuned, merged = _state(tuned_dir), _peft_merged(bases["bert"], tmp_path / "bf16")
    for lo, hi in zip(full.fits, half.fits, strict=True):
        assert hi.error >= lo.error * (1 - 1e-6)  # rounding only adds to the tail
        measured = float((merged[f"{hi.module}.weight"] - tuned[f"{hi.module}.weight"]).norm())
        assert measured == pytest.approx(hi.error, rel=1e-3)


class _Spy:
    """A tensor source that logs every get and release."""

    def __init__(self, source, name: str, log: list) -> None:
        self.source, self.name, self.log, self.label = source, name, log, source.label

    def __getattr__(self, attr):
        return getattr(self.source, attr)

    def get(self, key):
        self.log.append((self.name, "get", key))
        return self.source.get(key)

    def release(self, key):
        self.log.append((self.name, "release", key))


def test_tensors_are_read_one_pair_at_a_time(bases, tmp_path):
    tuned_dir = _noisy_tuned(bases["bert"], tmp_path / "tuned")
    log: list = []
    with open_checkpoint(bases["bert"]) as base, open_checkpoint(tuned_dir) as tuned:
        spied = [Checkpoint(source=_Spy(c.source, n, log), label=c.label, config=c.config, directory=c.directory)
                 for c, n in ((base, "base"), (tuned, "tuned"))]
        report = extract_lora(*spied, tmp_path / "adapter", LoraExtractOptions(rank=2))
    keys = base.keys()
    first = log[: 4 * len(keys)]
    for i, key in enumerate(keys):  # each pair is released before the next is read
        assert sorted(first[4 * i: 4 * i + 4]) == sorted(
            [("base", "get", key), ("tuned", "get", key), ("base", "release", key), ("tuned", "release", key)])
    rest = log[4 * len(keys):]  # then the saved modules are read again from TUNED, one by one
    saved = [key for _, op, key in rest if op == "get"]
    assert {k.rpartition(".")[0] for k in saved} <= set(report.saved_modules) and all(n == "tuned" for n, _, _ in rest)


def test_bare_safetensors_files_guess_module_kinds(bases, tmp_path):
    tuned_dir = _noisy_tuned(bases["bert"], tmp_path / "tuned")
    report = _extract(bases["bert"] / "model.safetensors", tuned_dir / "model.safetensors", tmp_path / "adapter", rank=16)
    assert "guessed" in report.note and report.config["task_type"] is None
    assert all(fit.relative_error < 1e-5 for fit in report.fits)  # rank 16 is full rank here
    with open_checkpoint(bases["bert"]) as base, open_checkpoint(tmp_path / "adapter", base=base) as dense, \
            open_checkpoint(tuned_dir) as tuned:
        for key in base.keys():
            torch.testing.assert_close(dense.get(key), tuned.get(key), atol=2e-6, rtol=1e-5, msg=key)


def test_an_identical_model_is_refused_and_nothing_is_written(bases, tmp_path):
    with pytest.raises(ModmergeError, match="no linear weight differs"):
        _extract(bases["bert"], bases["bert"], tmp_path / "adapter", rank=2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("options", "message"), [
    ({"rank": 0}, "rank must be a whole number of at least 1, got 0"),
    ({"rank": -3}, "got -3"),
    ({"rank": 2.5}, "got 2.5"),
    ({"energy": 0.0}, "energy must be in"),
    ({"energy": 1.5}, "energy must be in"),
    ({"embeddings": "keep"}, "embeddings must be one of save, lora, drop"),
    ({"dtype": "int8"}, "dtype must be auto or one of"),
    ({"device": "gpu0"}, "is not a torch device"),
])
def test_options_are_validated(options, message):
    with pytest.raises(ModmergeError, match=message.replace("(", r"\(")):
        LoraExtractOptions(**options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_an_unavailable_device_is_refused():
    with pytest.raises(ModmergeError, match="CUDA is not available"):
        LoraExtractOptions(device="cuda")
