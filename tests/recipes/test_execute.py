"""End-to-end merges through the recipe executor on tiny models."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from modmerge.errors import CheckpointError, CompatibilityError, RecipeError
from modmerge.merging import get_method
from modmerge.recipes import parse_recipe, run_recipe


def weights_of(directory: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def recipe_for(base: Path, models: list[Path], **fields):
    return parse_recipe({"base_model": str(base), "models": [{"model": str(m)} for m in models], **fields})


def test_one_model_task_arithmetic_lambda_one_is_bit_exact(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    recipe = recipe_for(base, tasks[:1], method="task_arithmetic", parameters={"scaling": 1.0})
    run_recipe(recipe, tmp_path / "out")
    merged, original = weights_of(tmp_path / "out"), weights_of(tasks[0])
    assert merged.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(merged[key], value), key


def test_merge_matches_method_applied_per_tensor_and_loads_in_transformers(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    recipe = recipe_for(base, tasks, method="ties", parameters={"density": 0.5, "scaling": 1.0})
    result = run_recipe(recipe, tmp_path / "out")
    assert result.tensors == len(weights_of(base))
    assert result.bytes_read > 0
    merged, b, ts = weights_of(tmp_path / "out"), weights_of(base), [weights_of(t) for t in tasks]
    ties = get_method("ties")
    for key in b:
        expected = ties(b[key], [t[key] for t in ts], density=0.5, scaling=1.0)
        torch.testing.assert_close(merged[key], expected)
    model = transformers.AutoModel.from_pretrained(tmp_path / "out")
    assert isinstance(model, transformers.BertModel)


def test_overrides_pick_methods_per_component(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    recipe = recipe_for(
        base,
        tasks,
        method="task_arithmetic",
        parameters={"scaling": 0.3},
        overrides=[
            {"kinds": ["norm"], "method": "weight_averaging"},
            {"kinds": ["attn"], "layer_range": [1, 2], "parameters": {"scaling": 1.0}},
        ],
    )
    result = run_recipe(recipe, tmp_path / "out")
    assert result.methods["weight_averaging"] > 0 and result.methods["task_arithmetic"] > 0
    merged, b, ts = weights_of(tmp_path / "out"), weights_of(base), [weights_of(t) for t in tasks]
    norm_key = "encoder.layer.0.output.LayerNorm.weight"
    torch.testing.assert_close(merged[norm_key], sum(t[norm_key] for t in ts) / 3)
    attn1 = "encoder.layer.1.attention.self.query.weight"
    attn0 = "encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(merged[attn1], b[attn1] + sum(t[attn1] - b[attn1] for t in ts))
    torch.testing.assert_close(merged[attn0], b[attn0] + 0.3 * sum(t[attn0] - b[attn0] for t in ts))


def test_output_dtype_and_config(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    run_recipe(recipe_for(base, tasks, method="weight_averaging", dtype="bfloat16"), tmp_path / "out")
    assert {v.dtype for v in weights_of(tmp_path / "out").values() if v.is_floating_point()} == {torch.bfloat16}
    assert transformers.AutoConfig.from_pretrained(tmp_path / "out").model_type == "bert"


def test_dare_is_seeded(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    def merge(seed: int, name: str) -> dict[str, torch.Tensor]:
        run_recipe(recipe_for(base, tasks, method="dare", parameters={"drop_rate": 0.5}, seed=seed), tmp_path / name)
        return weights_of(tmp_path / name)
    a, b, c = merge(1, "a"), merge(1, "b"), merge(2, "c")
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(a[key], b[key])
    assert not torch.equal(a[key], c[key])


def test_nan_weights_abort_without_output(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    bad = tmp_path / "bad"
    shutil.copytree(tasks[0], bad)
    weights = load_file(bad / "model.safetensors")
    key = sorted(weights)[-1]
    weights[key] = weights[key].clone()
    weights[key].view(-1)[0] = float("nan")
    save_file(weights, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"tensor '{key}' has NaN/Inf"):
        run_recipe(recipe_for(base, [tasks[1], bad], method="task_arithmetic"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def _with_bad_value(src: Path, dst: Path, value: float) -> str:
    shutil.copytree(src, dst)
    weights = load_file(dst / "model.safetensors")
    key = sorted(weights)[-1]
    weights[key] = weights[key].clone()
    weights[key].view(-1)[0] = value
    save_file(weights, dst / "model.safetensors")
    return key


@pytest.mark.parametrize(
    ("method", "parameters", "bad_index"),
    [
        ("task_arithmetic", {"scaling": 0.5}, 1),  # linear: the output scan finds it, inputs then name it
        ("task_arithmetic", {"scaling": 0.5}, "base"),  # base coefficient 0 (1 - 2 x 0.5): scanned directly
        ("weight_averaging", {}, "base"),  # the base is not used by averaging: scanned directly
        ("task_arithmetic", {"scaling": 0.0}, 1),  # task coefficients 0: every input scanned
        ("ties", {"density": 0.5}, 0),  # not linear: every input scanned
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_is_named_whichever_scan_finds_it(bert_zoo, tmp_path, method, parameters, bad_index, value):
    base, tasks = bert_zoo
    models = [tasks[0], tasks[1]]
    if bad_index == "base":
        base = tmp_path / "bad"
        key = _with_bad_value(bert_zoo[0], base, value)
    else:
        models[bad_index] = tmp_path / "bad"
        key = _with_bad_value(tasks[bad_index], models[bad_index], value)
    with pytest.raises(CheckpointError, match=f"bad.*tensor '{key}' has NaN/Inf"):
        run_recipe(recipe_for(base, models, method=method, parameters=parameters), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_finite_inputs_whose_merge_overflows_are_refused(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    big = [tmp_path / "big0", tmp_path / "big1"]
    key = _with_bad_value(tasks[0], big[0], 3e38)
    _with_bad_value(tasks[1], big[1], 3e38)
    expected = f"tensor '{key}': the merged values of method 'task_arithmetic' are not finite (0 NaN, 1 Inf in torch.float32"
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        run_recipe(recipe_for(base, big, method="task_arithmetic", parameters={"scaling": 1.0}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mismatched_architecture_is_refused_before_writing(bert_zoo, tiny_zoo_factory, tmp_path):
    base, _ = bert_zoo
    _, gpt2_tasks = tiny_zoo_factory("gpt2", 1)
    with pytest.raises(CompatibilityError):
        run_recipe(recipe_for(base, gpt2_tasks, method="task_arithmetic"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept_unless_overwrite(bert_zoo, tmp_path):
    base, tasks = bert_zoo
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match="out"):
        run_recipe(recipe_for(base, tasks, method="weight_averaging"), out)
    assert (out / "keep.txt").read_text() == "mine"
    # no merge wrote it: overwrite alone refuses, force replaces it
    with pytest.raises(CheckpointError, match="no modmerge merge or export wrote it"):
        run_recipe(recipe_for(base, tasks, method="weight_averaging"), out, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    run_recipe(recipe_for(base, tasks, method="weight_averaging"), out, force=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    run_recipe(recipe_for(base, tasks, method="task_arithmetic"), out, overwrite=True)  # an earlier merge


def test_lora_adapter_as_a_model(bert_zoo, tmp_path):
    peft = pytest.importorskip("peft")
    base, _ = bert_zoo
    model = transformers.AutoModel.from_pretrained(base)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    lora.save_pretrained(tmp_path / "adapter")
    dense = lora.merge_and_unload().state_dict()
    recipe = recipe_for(base, [tmp_path / "adapter"], method="task_arithmetic", parameters={"scaling": 1.0})
    run_recipe(recipe, tmp_path / "out")
    merged = weights_of(tmp_path / "out")
    key = "encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(merged[key], dense[key])


def test_data_dependent_method_needs_statistics(bert_zoo, tmp_path):
    from modmerge.merging.statistics import save_statistics

    base, tasks = bert_zoo
    with pytest.raises(RecipeError, match="needs statistics"):
        run_recipe(recipe_for(base, tasks, method="fisher"), tmp_path / "out")
    # Fisher of 1 on one model and ~0 on the others: the merge returns that model's weights.
    entries = []
    for i, task in enumerate(tasks):
        fisher = {k: torch.full_like(v.float(), 1.0 if i == 0 else 1e-12) for k, v in weights_of(task).items()}
        path = save_statistics(tmp_path / f"fisher{i}.safetensors", fisher, {"kind": "fisher"})
        entries.append({"model": str(task), "statistics": str(path)})
    recipe = parse_recipe({"base_model": str(base), "models": entries, "method": "fisher"})
    run_recipe(recipe, tmp_path / "out")
    merged, first = weights_of(tmp_path / "out"), weights_of(tasks[0])
    key = "encoder.layer.0.intermediate.dense.weight"
    torch.testing.assert_close(merged[key], first[key], rtol=1e-4, atol=1e-5)


def test_fisher_normalize_divides_by_each_models_whole_model_norm(bert_zoo, tmp_path):
    """normalize (norm_scope 'model'): c_t = 1 / sqrt(sum over every merged tensor of ||F_t||^2)."""
    from modmerge.merging.statistics import save_statistics

    base, tasks = bert_zoo
    gen = torch.Generator().manual_seed(0)
    fishers, entries = [], []
    for i, task in enumerate(tasks):
        fisher = {k: torch.rand(v.shape, generator=gen) * (10.0**i) for k, v in weights_of(task).items()
                  if v.is_floating_point()}
        fishers.append(fisher)
        path = save_statistics(tmp_path / f"fisher{i}.safetensors", fisher, {"kind": "fisher"})
        entries.append({"model": str(task), "statistics": str(path)})
    recipe = parse_recipe({"base_model": str(base), "models": entries, "method": "fisher",
                           "parameters": {"normalize": True}})
    run_recipe(recipe, tmp_path / "out")
    merged, b, ts = weights_of(tmp_path / "out"), weights_of(base), [weights_of(t) for t in tasks]
    floats = [k for k in b if b[k].is_floating_point()]
    norms = [torch.sqrt(sum((f[k].double() ** 2).sum() for k in floats)) for f in fishers]
    for key in ("encoder.layer.0.intermediate.dense.weight", "embeddings.LayerNorm.bias"):
        floored = [f[key].double().clamp_min(1e-6) / n for f, n in zip(fishers, norms, strict=True)]
        expected = sum(fl * t[key].double() for fl, t in zip(floored, ts, strict=True)) / sum(floored)
        torch.testing.assert_close(merged[key], expected.to(merged[key].dtype), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_pcb_model_scope_scores_the_whole_model_as_one_vector(bert_zoo, tmp_path, variant):
    """scope: model balances one flattened vector per model (the paper, its code), not per tensor."""
    base, tasks = bert_zoo
    params = {"drop_ratio": 0.8, "scope": "model", "variant": variant}
    run_recipe(recipe_for(base, tasks, method="pcb", parameters=params), tmp_path / "out")
    merged, b, ts = weights_of(tmp_path / "out"), weights_of(base), [weights_of(t) for t in tasks]
    keys = [k for k in b if b[k].is_floating_point()]  # the base's key order, as the executor
    flat = get_method("pcb")(torch.cat([b[k].reshape(-1) for k in keys]),
                             [torch.cat([t[k].reshape(-1) for k in keys]) for t in ts], **params)
    got = torch.cat([merged[k].float().reshape(-1) for k in keys])
    torch.testing.assert_close(got, flat)
    key = "encoder.layer.0.intermediate.dense.weight"
    per_tensor = get_method("pcb")(b[key], [t[key] for t in ts], drop_ratio=0.8, variant=variant)
    assert not torch.allclose(merged[key], per_tensor)


def test_ties_model_scope_trims_over_the_whole_model(bert_zoo, tmp_path):
    """scope: model keeps the top-k of each whole task vector (the TIES paper), not per tensor."""
    from modmerge.merging.sparsify import disjoint_mean, elect_sign, magnitude_threshold

    base, tasks = bert_zoo
    recipe = recipe_for(base, tasks, method="ties", parameters={"density": 0.1, "scope": "model"})
    run_recipe(recipe, tmp_path / "out")
    merged, b, ts = weights_of(tmp_path / "out"), weights_of(base), [weights_of(t) for t in tasks]
    keys = sorted(b)
    taus = [torch.cat([(t[k] - b[k]).reshape(-1) for k in keys]) for t in ts]
    thresholds = [magnitude_threshold(tau.abs(), 0.1) for tau in taus]
    trimmed = [tau * (tau.abs() >= th) for tau, th in zip(taus, thresholds, strict=True)]
    expected = torch.cat([b[k].reshape(-1) for k in keys]) + disjoint_mean(trimmed, elect_sign(trimmed))
    got = torch.cat([merged[k].reshape(-1) for k in keys])
    torch.testing.assert_close(got, expected)
    per_tensor = recipe_for(base, tasks, method="ties", parameters={"density": 0.1})
    run_recipe(per_tensor, tmp_path / "tensor")
    assert not torch.equal(got, torch.cat([weights_of(tmp_path / "tensor")[k].reshape(-1) for k in keys]))


def test_ties_model_scope_outside_a_recipe_is_a_clear_error():
    from modmerge.errors import MergeMethodError

    with pytest.raises(MergeMethodError, match="scope 'model' needs"):
        get_method("ties")(torch.zeros(3), [torch.ones(3)], scope="model")
