"""AdaMerging (Yang et al., ICLR 2024): the entropy loss and its gradient in the coefficients against
hand-written formulas, task arithmetic at fixed coefficients, a few steps lowering the entropy on
the tiny zoo, regression tasks, and the baselines rows (with EMR-Merging) through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from modmerge.cli import main
from modmerge.errors import ModmergeError
from modmerge.merging.emr import emr_merge
from modmerge.objectives.adamerging import (
    AdaMerging,
    AdaMergingSettings,
    adapt,
    coefficient_units,
    softmax_entropy,
)
from modmerge.objectives.baseline_rows import row
from modmerge.objectives.baselines import body_keys, merge_bodies, run_baselines
from modmerge.objectives.storage import emr_storage_cost
from modmerge.recipes.plan import MethodCall
from modmerge.tasks.batching import select
from modmerge.tasks.models import checkpoint_key_map
from modmerge.tasks.taskpool import TaskPool

T = torch.tensor


def test_entropy_and_its_gradient_in_lambda_by_hand():
    # One input x = 2, logits z = W x with W = W0 + lambda_1 tau_1 + lambda_2 tau_2, W0 = 0,
    # tau_1 = [1, 0]^T, tau_2 = [0, 1]^T, lambda = (0.3, 0.1): z = [0.6, 0.2].
    model = AdaMerging({"w": torch.zeros(2, 1)}, [{"w": T([[1.0], [0.0]])}, {"w": T([[0.0], [1.0]])}],
                       {"model": ["w"]})
    with torch.no_grad():
        model.lambdas_raw[0, 1] = 0.1
    x = T([[2.0]])
    loss = softmax_entropy(x @ model.merged()["w"].T).mean()
    loss.backward()
    z0, z1 = 0.6, 0.2
    p0, p1 = math.exp(z0) / (math.exp(z0) + math.exp(z1)), math.exp(z1) / (math.exp(z0) + math.exp(z1))
    h = -(p0 * math.log(p0) + p1 * math.log(p1))
    # dH/dz_c = -p_c (log p_c + H); dz_0/dlambda_1 = x = 2, dz_1/dlambda_2 = 2
    grad = [-p0 * (math.log(p0) + h) * 2.0, -p1 * (math.log(p1) + h) * 2.0]
    assert float(loss.detach()) == pytest.approx(h, rel=1e-6)
    torch.testing.assert_close(model.lambdas_raw.grad, T([grad]))


def test_layer_wise_gradient_matches_the_chain_rule_written_out():
    gen = torch.Generator().manual_seed(0)
    pre = {"w": torch.randn(3, 4, generator=gen), "b": torch.randn(3, generator=gen)}
    tuned = [{k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in pre.items()} for _ in range(2)]
    x = torch.randn(5, 4, generator=gen)
    model = AdaMerging(pre, tuned, coefficient_units(["w", "b"], "tensor"))
    with torch.no_grad():
        model.lambdas_raw.copy_(T([[0.2, 0.7], [0.4, 0.1]]))  # rows: w, b
    merged = model.merged()
    softmax_entropy(x @ merged["w"].T + merged["b"]).mean().backward()

    lam = {"w": [0.2, 0.7], "b": [0.4, 0.1]}
    tau = [{k: m[k] - pre[k] for k in pre} for m in tuned]
    w = pre["w"] + lam["w"][0] * tau[0]["w"] + lam["w"][1] * tau[1]["w"]
    b = pre["b"] + lam["b"][0] * tau[0]["b"] + lam["b"][1] * tau[1]["b"]
    z = x @ w.T + b
    p = torch.softmax(z, -1)
    h = -(p * torch.log(p)).sum(-1, keepdim=True)
    dz = -p * (torch.log(p) + h) / len(x)  # d mean_n H_n / dz
    expected = [[float((dz.T @ x * tau[t]["w"]).sum()) for t in range(2)],
                [float((dz.sum(0) * tau[t]["b"]).sum()) for t in range(2)]]
    torch.testing.assert_close(model.lambdas_raw.grad, T(expected))


def test_coefficients_are_clamped_to_0_1_as_the_authors_code():
    model = AdaMerging({"w": torch.zeros(1)}, [{"w": torch.ones(1)}], {"model": ["w"]}, prior=1.5)
    assert model.merged()["w"].item() == 1.0
    assert model.table(["a"]) == {"a": {"model": 1.0}}


@pytest.fixture(scope="module")
def bodies(tiny_zoo):
    pool = TaskPool(tiny_zoo, split="validation", limit=32)
    keys = body_keys(tiny_zoo)
    pre = pool.pretrained_state()
    return pool, keys, pre, [pool.own_state(t) for t in tiny_zoo.tasks]


@pytest.mark.parametrize("scaling", [0.3, 0.8])
def test_task_wise_at_fixed_lambda_is_task_arithmetic(bodies, scaling):
    _, keys, pre, tuned = bodies
    merged = AdaMerging(pre, tuned, {"model": keys}, prior=scaling).merged()
    expected = merge_bodies(pre, tuned, keys, MethodCall.build("task_arithmetic", {"scaling": scaling}))
    for k in keys:
        torch.testing.assert_close(merged[k], expected[k])
    layer_wise = AdaMerging(pre, tuned, coefficient_units(keys, "layer", bodies[0].source.component_map()),
                            prior=scaling).merged()
    for k in keys:
        torch.testing.assert_close(layer_wise[k], merged[k])


def test_the_pool_forward_is_the_evaluation_forward_and_its_gradient_is_the_chain_rule(bodies):
    pool, keys, pre, tuned = bodies
    tasks = pool.source.tasks
    model = AdaMerging(pre, tuned, {"model": keys})
    merged = model.merged()
    batches = {t: select(pool.inputs(t, "validation"), torch.arange(8)) for t in tasks}
    loss = sum(softmax_entropy(pool.logits(t, merged, batches[t])).mean() for t in tasks)
    loss.backward()

    # By hand: dL/dlambda_s = sum_t sum_k <dL_t/dtheta_k, tau_s[k]>, dL_t/dtheta from an ordinary
    # forward and backward of the task model filled with the merged weights.
    fixed = {k: v.detach() for k, v in merged.items()}
    expected = torch.zeros(len(tasks))
    for task in tasks:
        classifier = pool.task_model(task, fixed)
        classifier.zero_grad()
        logits = classifier(**batches[task])
        torch.testing.assert_close(logits, pool.logits(task, fixed, batches[task]))
        softmax_entropy(logits).mean().backward()
        grads = {checkpoint_key_map(classifier.body)[n]: p.grad for n, p in classifier.body.named_parameters()}
        for s in range(len(tasks)):
            expected[s] += sum(float((grads[k] * (tuned[s][k] - pre[k])).sum()) for k in keys)
    assert expected.abs().min() > 1e-4  # the case is not vacuous
    torch.testing.assert_close(model.lambdas_raw.grad[0], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("granularity", ["model", "tensor"])
def test_a_few_steps_lower_the_entropy(bodies, granularity):
    pool, keys, pre, tuned = bodies
    settings = AdaMergingSettings(granularity=granularity, steps=5, lr=1e-2)
    result = adapt(pool, pre, tuned, coefficient_units(keys, granularity), settings)
    assert result.entropy_after < result.entropy_before
    assert len(result.losses) == 5 and result.seconds > 0 and result.left_out == []
    values = [v for per_task in result.coefficients.values() for v in per_task.values()]
    assert set(result.coefficients) == set(pool.source.tasks) and any(v != 0.3 for v in values)


class _Relabelled:
    """A task source whose tasks in ``regression`` claim a regression metric."""

    def __init__(self, source, regression):
        self._source, self._regression = source, set(regression)

    def __getattr__(self, name):
        return getattr(self._source, name)

    def entry(self, task):
        entry = self._source.entry(task)
        return entry.model_copy(update={"metric": "pearson"}) if task in self._regression else entry


def test_regression_tasks_are_left_out_of_the_loss_and_a_source_of_only_them_is_refused(bodies, tiny_zoo, caplog):
    _, keys, pre, tuned = bodies
    some = _Relabelled(tiny_zoo, tiny_zoo.tasks[:1])
    result = adapt(TaskPool(some, split="validation", limit=16), pre, tuned, {"model": keys},
                   AdaMergingSettings(steps=1))
    assert result.left_out == tiny_zoo.tasks[:1] and "left out of the entropy loss" in caplog.text
    only = _Relabelled(tiny_zoo, tiny_zoo.tasks)
    with pytest.raises(ModmergeError, match=r"every task .* regression"):
        adapt(TaskPool(only, split="validation", limit=16), pre, tuned, {"model": keys}, AdaMergingSettings(steps=1))
    rows = [row("AdaMerging (task-wise)")]
    assert run_baselines(only, baselines=rows, val_limit=4, test_limit=4) == []
    assert "AdaMerging (task-wise) skipped" in caplog.text


def test_settings_are_validated():
    with pytest.raises(ModmergeError, match="split"):
        AdaMergingSettings(split="train")  # type: ignore[arg-type]
    with pytest.raises(ModmergeError, match="lr"):
        AdaMergingSettings(lr=0.0)


def test_rows_on_the_test_split_adapt_on_test_inputs(tiny_zoo):
    rows = [row("AdaMerging (task-wise)"), row("EMR-Merging")]
    ada, emr = run_baselines(tiny_zoo, baselines=rows, val_limit=16, test_limit=32,
                             adamerging=AdaMergingSettings(split="test", steps=2))
    assert ada.parameters["split"] == "test" and "unlabeled test inputs" in ada.notes
    assert ada.method == "adamerging" and ada.storage_cost == 1.0 and ada.adaptation_seconds > 0
    # EMR's test metrics are each task's own masked model's, rebuilt here from the formula
    pool = TaskPool(tiny_zoo, split="test", limit=32)
    keys, pre = body_keys(tiny_zoo), pool.pretrained_state()
    tvs = [{k: pool.own_state(t)[k] - pre[k] for k in keys} for t in tiny_zoo.tasks]
    merged = emr_merge(tvs)
    for i, task in enumerate(tiny_zoo.tasks):
        state = {k: pre[k] + merged.rescalers[i] * merged.masks[i][k] * merged.unified[k] for k in keys}
        assert emr.test[task] == pool.evaluate(task, state)
    assert emr.details["routing"] == "oracle" and emr.method == "emr_merging"


def test_cli_baselines_writes_the_adamerging_and_emr_rows_with_their_storage_cost(tiny_zoo, tmp_path):
    store = tiny_zoo.root.parents[1]
    rows = "Task Arithmetic,AdaMerging (task-wise),AdaMerging (layer-wise),EMR-Merging"
    result = CliRunner().invoke(main, ["baselines", "tiny", "--cache", str(store), "--out", str(tmp_path), "--methods",
                                       rows, "--val-limit", "16", "--test-limit", "16", "--points", "2",
                                       "--adapt-steps", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "baselines.json").read_text())
    by_name = {m["name"]: m for m in report["methods"]}
    assert list(by_name) == rows.split(",")
    d = sum(v.numel() for k, v in TaskPool(tiny_zoo).pretrained_state().items() if k in body_keys(tiny_zoo))
    n = len(tiny_zoo.tasks)
    assert by_name["EMR-Merging"]["storage_cost"] == emr_storage_cost(d, tasks=n, rescalers=n)
    assert by_name["EMR-Merging"]["storage_cost"] == pytest.approx(1 + n / 32, abs=1e-3)
    for name in ("AdaMerging (task-wise)", "AdaMerging (layer-wise)"):
        ada = by_name[name]
        assert ada["storage_cost"] == 1.0 and ada["method"] == "adamerging" and ada["adaptation_seconds"] > 0
        assert ada["parameters"]["steps"] == 3 and ada["parameters"]["split"] == "validation"
        assert set(ada["details"]["coefficients"]) == set(tiny_zoo.tasks)
    assert len(by_name["AdaMerging (task-wise)"]["details"]["coefficients"][tiny_zoo.tasks[0]]) == 1
    assert len(by_name["AdaMerging (layer-wise)"]["details"]["coefficients"][tiny_zoo.tasks[0]]) > 1
    table = (tmp_path / "baselines.md").read_text()
    assert "| EMR-Merging | 1.13 |" in table and "unlabeled validation inputs" in table and "oracle task labels" in table

    refused = CliRunner().invoke(main, ["baselines", "tiny", "--cache", str(store), "--out", str(tmp_path / "x"),
                                        "--methods", "EMR-Merging", "--adapt-steps", "0"])
    assert refused.exit_code != 0 and "steps must be >= 1" in refused.output
