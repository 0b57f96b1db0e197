"""Eq. (7) on the tiny zoo: expert chains assemble the right bodies; caches save real work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modmerge.experts.grouping import GroupingMatrix
from modmerge.objectives.baselines import body_keys, merge_bodies
from modmerge.objectives.performance import chain, modules_of
from modmerge.objectives.problem import MergeProblem
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.tasks.taskpool import TaskPool

NEVER = QuantConfig(mode="never")


@pytest.fixture(scope="module")
def ta_problem(tiny_zoo):
    return MergeProblem.from_source(tiny_zoo, MethodCall.build("task_arithmetic", {}), NEVER, limit=None)


def test_individual_configuration_reproduces_each_task_model(ta_problem, tiny_zoo):
    p = ta_problem
    ev = p.evaluate([GroupingMatrix.individual(p.n_tasks, p.n_units)])[0]
    for task in tiny_zoo.tasks:
        assert ev.per_task[task] == pytest.approx(tiny_zoo.entry(task).metrics["individual_validation"])
    assert ev.storage_cost == pytest.approx(p.n_tasks)  # T full-precision bodies, eq. (8)


def test_all_merged_equals_the_static_merge(ta_problem, tiny_zoo):
    p = ta_problem
    ev = p.evaluate([GroupingMatrix.all_merged(p.n_tasks, p.n_units)])[0]
    pool = TaskPool(tiny_zoo, split="validation")
    states = [pool.own_state(t) for t in tiny_zoo.tasks]
    merged = merge_bodies(pool.pretrained_state(), states, body_keys(tiny_zoo), MethodCall.build("task_arithmetic", {}))
    for task in tiny_zoo.tasks:
        assert ev.per_task[task] == pytest.approx(pool.evaluate(task, merged))
    assert ev.storage_cost == pytest.approx(1.0)


def test_quantised_single_model_costs_a_quarter_plus_metadata(tiny_zoo):
    p = MergeProblem.from_source(tiny_zoo, MethodCall.build("task_arithmetic", {}), QuantConfig(mode="always"), limit=32)
    cost = p.storage_cost(GroupingMatrix.all_merged(p.n_tasks, p.n_units))
    assert 0.25 < cost < 0.34


def test_chains_and_modules_follow_the_grouping(ta_problem):
    p = ta_problem
    arr = np.zeros((p.n_tasks, p.n_units), dtype=int)
    arr[1:, 0] = 1  # unit 0: task 0 alone, the rest together
    g = GroupingMatrix.from_array(arr)
    assert chain(g, 0, p.unit_ids)[0].members == (0,)
    assert chain(g, 2, p.unit_ids)[0].members == tuple(range(1, p.n_tasks))
    assert len(modules_of(g, p.unit_ids)) == p.n_units + 1


def test_repeated_chains_are_not_rerun(tiny_zoo):
    p = MergeProblem.from_source(tiny_zoo, MethodCall.build("task_arithmetic", {}), NEVER, limit=32)
    g = GroupingMatrix.all_merged(p.n_tasks, p.n_units)
    p.evaluate([g, g])
    assert p.counters.task_runs == p.n_tasks
    assert p.counters.task_runs_naive == 2 * p.n_tasks


def test_unit_embedding_keeps_task_vector_geometry(ta_problem):
    p = ta_problem
    vectors = p.unit_task_vectors()
    keys = p.units[p.unit_ids[0]]
    taus = torch.stack(
        [torch.cat([(s[k].double() - p.pretrained[k].double()).reshape(-1) for k in keys]) for s in p.builder.tasks]
    )
    np.testing.assert_allclose(vectors[0] @ vectors[0].T, (taus @ taus.T).numpy(), rtol=1e-6, atol=1e-9)


def test_split_metrics_match_full_forwards_on_the_test_split(ta_problem, tiny_zoo):
    p = ta_problem
    rng = np.random.default_rng(3)
    gs = [GroupingMatrix.all_merged(p.n_tasks, p.n_units),
          GroupingMatrix.from_array(rng.integers(0, 2, (p.n_tasks, p.n_units))),
          GroupingMatrix.from_array(rng.integers(0, 2, (p.n_tasks, p.n_units)))]
    known: dict = {}
    tests = p.split_metrics(gs, "test", 24, known=known)
    pool = TaskPool(tiny_zoo, split="test", limit=24)
    for g, per_task in zip(gs, tests, strict=True):
        for t, task in enumerate(tiny_zoo.tasks):
            state = {}
            for module in chain(g, t, p.unit_ids):
                state.update(p.builder.dense(module))
            assert per_task[task] == pool.evaluate(task, state)  # staged + prefix reuse: bit for bit
    assert len(known) == len({(t, chain(g, t, p.unit_ids)) for g in gs for t in range(p.n_tasks)})
    # known metrics are not measured again
    fake = {key: -1.0 for key in known}
    assert p.split_metrics(gs[:1], "test", 24, known=fake)[0] == dict.fromkeys(tiny_zoo.tasks, -1.0)


def test_a_cut_off_test_phase_resumes_from_its_saved_task_runs(ta_problem, tiny_zoo, tmp_path):
    import json

    from modmerge.search.test_phase import test_metrics

    p = ta_problem
    rng = np.random.default_rng(5)
    gs = [GroupingMatrix.from_array(rng.integers(0, 3, (p.n_tasks, p.n_units))) for _ in range(3)]

    class Cut(Exception):
        pass

    def stop_after_three(done, total):
        if done == 3:
            raise Cut

    with pytest.raises(Cut):  # saved after every task run (save_every=0), then killed
        test_metrics(p, gs, 24, tmp_path, progress=stop_after_three, save_every=0)
    saved = json.loads((tmp_path / "test_metrics.json").read_text())
    assert saved["solutions"] == [] and len(saved["task_runs"]) == 3
    assert saved["cost"]["task_runs"] == 3  # the cost so far is saved with the results
    totals: list[int] = []
    resumed = test_metrics(p, gs, 24, tmp_path, progress=lambda done, total: totals.append(total))
    assert p.split_metrics(gs, "test", 24) == resumed.per_solution  # same figures as a phase run in one go
    distinct = len({(t, chain(g, t, p.unit_ids)) for g in gs for t in range(p.n_tasks)})
    assert totals[-1] == distinct - 3
    final = json.loads((tmp_path / "test_metrics.json").read_text())
    assert "task_runs" not in final and [s["test"] for s in final["solutions"]] == resumed.per_solution
    cost = resumed.cost
    assert cost is not None and final["cost"] == cost.cost_record()
    assert cost.task_runs == distinct and cost.task_runs_naive == 3 * p.n_tasks
    assert 0 < cost.layer_forwards <= cost.task_runs * p.n_layers <= cost.layer_forwards_naive
    # a file from before costs were recorded: the figures are reused, the cost is unknown
    del final["cost"]
    (tmp_path / "test_metrics.json").write_text(json.dumps(final))
    again = test_metrics(p, gs, 24, tmp_path)
    assert again.per_solution == resumed.per_solution and again.cost is None
