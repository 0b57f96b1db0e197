"""The MERGE problem on the user's own checkpoints: assembled states, eq. (8), caches, early errors."""

from __future__ import annotations

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file
from tiny_models import make_tiny_model

from modmerge.errors import CompatibilityError, RecipeError
from modmerge.experts.grouping import GroupingMatrix
from modmerge.objectives.performance import chain
from modmerge.objectives.problem import MergeProblem
from modmerge.objectives.runners import EvaluatorError
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall

NEVER = QuantConfig(mode="never")
TA = MethodCall.build("task_arithmetic", {"scaling": 0.5})


def weights(path):
    return load_file(path / "model.safetensors")


def closeness(own):
    """A score of 1 for exactly the task's own weights, falling with the distance to them."""

    def evaluate(state):
        dist = sum(float((state[k].float() - v.float()).pow(2).sum()) for k, v in own.items()) ** 0.5
        return 1.0 / (1.0 + dist)

    return evaluate


def problem_for(base, tasks, **kwargs):
    models = {f"t{i}": p for i, p in enumerate(tasks)}
    evaluators = {f"t{i}": closeness(weights(p)) for i, p in enumerate(tasks)}
    return MergeProblem.from_models(base, models, evaluators, kwargs.pop("call", TA), kwargs.pop("quant", NEVER), **kwargs)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_individual_configuration_is_each_task_model(tiny_zoo_factory, arch):
    base, tasks = tiny_zoo_factory(arch, 3)
    p = problem_for(base, tasks)
    ev = p.evaluate([GroupingMatrix.individual(p.n_tasks, p.n_units)])[0]
    assert ev.per_task == {"t0": 1.0, "t1": 1.0, "t2": 1.0}
    assert ev.storage_cost == pytest.approx(3.0)  # T full-precision bodies, eq. (8)
    merged = p.evaluate([GroupingMatrix.all_merged(p.n_tasks, p.n_units)])[0]
    assert merged.storage_cost == pytest.approx(1.0)
    assert merged.performance < ev.performance


def test_all_merged_state_is_task_arithmetic_with_own_heads(bert_zoo):
    base, tasks = bert_zoo
    p = problem_for(base, tasks)
    g = GroupingMatrix.all_merged(p.n_tasks, p.n_units)
    state = p.assembled_state(1, chain(g, 1, p.unit_ids))
    pre, owns = weights(base), [weights(t) for t in tasks]
    assert list(state) == list(pre)  # every key, in the checkpoint's order
    heads = [k for k in pre if k.startswith("pooler.")]
    assert heads and not any(k in ks for ks in p.units.values() for k in heads)
    for k in heads:  # heads are never merged: the task's own
        assert torch.equal(state[k], owns[1][k])
    key = "encoder.layer.0.attention.self.query.weight"
    expected = pre[key] + 0.5 * sum(o[key] - pre[key] for o in owns)
    torch.testing.assert_close(state[key], expected)


def test_equal_chains_are_scored_once(bert_zoo):
    base, tasks = bert_zoo
    calls = []
    evaluators = {f"t{i}": (lambda s, i=i: calls.append(i) or 0.5) for i in range(3)}
    p = MergeProblem.from_models(base, {f"t{i}": t for i, t in enumerate(tasks)}, evaluators, TA, NEVER)
    g = GroupingMatrix.individual(3, p.n_units)
    p.evaluate([g, g])
    arr = g.to_list()
    arr[1] = arr[2] = [9] * p.n_units  # t1 and t2 merged in every unit, t0 alone: t0's chain is unchanged
    p.evaluate([GroupingMatrix.from_array(arr)])
    assert sorted(calls) == [0, 1, 1, 2, 2]
    assert p.counters.task_runs == 5 and p.counters.task_runs_naive == 9


def test_quantised_modules_cost_less_and_state_dicts_work_as_sources(bert_zoo):
    base, tasks = bert_zoo
    own = [weights(t) for t in tasks]
    p = MergeProblem.from_models(
        weights(base), {"a": own[0], "b": own[1]}, {"a": closeness(own[0]), "b": closeness(own[1])},
        TA, QuantConfig(mode="always"), granularity="layer",
    )
    assert "layer0" in p.unit_ids and "layer0.attn" not in p.unit_ids
    ev = p.evaluate([GroupingMatrix.individual(2, p.n_units)])[0]
    assert 0.5 < ev.storage_cost < 0.7  # two 8-bit bodies: about a quarter each, plus metadata
    assert 0.9 < ev.performance < 1.0  # quantisation moves the weights a little


def test_peft_adapter_task_is_opened_dense(tmp_path, bert_zoo):
    base, tasks = bert_zoo
    model = transformers.BertModel.from_pretrained(base)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query"]))
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.add_(0.1)
    wrapped.peft_config["default"].base_model_name_or_path = str(base)
    wrapped.save_pretrained(tmp_path / "adapter")
    dense = {k: v.detach().clone() for k, v in wrapped.merge_and_unload().state_dict().items()}
    seen = {}
    evaluators = {"full": lambda s: 0.0, "lora": lambda s: seen.update(s) or 0.0}
    p = MergeProblem.from_models(base, {"full": tasks[0], "lora": tmp_path / "adapter"}, evaluators, TA, NEVER)
    p.evaluate([GroupingMatrix.individual(2, p.n_units)])
    key = "encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(seen[key], dense[key])
    assert not torch.equal(seen[key], weights(base)[key])


def test_missing_evaluator_is_an_error_before_any_checkpoint_is_read(tmp_path):
    with pytest.raises(EvaluatorError, match="task 'b' has no evaluator"):
        MergeProblem.from_models(tmp_path / "nope", {"a": tmp_path / "x", "b": tmp_path / "y"}, {"a": len}, TA, NEVER)
    with pytest.raises(EvaluatorError, match="'c' is not one of the models' tasks"):
        MergeProblem.from_models(tmp_path / "nope", {"a": "x", "b": "y"}, {"a": len, "b": len, "c": len}, TA, NEVER)
    with pytest.raises(EvaluatorError, match="evaluator of task 'b' is a str"):
        MergeProblem.from_models(tmp_path / "nope", {"a": "x", "b": "y"}, {"a": len, "b": "len"}, TA, NEVER)
    with pytest.raises(RecipeError, match="at least two"):
        MergeProblem.from_models(tmp_path / "nope", {"a": "x"}, {"a": len}, TA, NEVER)


def test_mismatched_checkpoints_are_refused(tmp_path, bert_zoo):
    base, tasks = bert_zoo
    other = make_tiny_model("gpt2", tmp_path / "gpt2")
    with pytest.raises(CompatibilityError, match="gpt2"):
        MergeProblem.from_models(base, {"a": tasks[0], "b": other}, {"a": len, "b": len}, TA, NEVER)


def test_an_evaluator_must_return_a_number(bert_zoo):
    base, tasks = bert_zoo
    p = MergeProblem.from_models(base, {"a": tasks[0], "b": tasks[1]}, {"a": lambda s: 1.0, "b": lambda s: "good"},
                           TA, NEVER)
    with pytest.raises(EvaluatorError, match="task 'b' returned a str"):
        p.evaluate([GroupingMatrix.individual(2, p.n_units)])
