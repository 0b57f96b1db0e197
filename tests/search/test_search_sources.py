"""The one search on every form of input: a suite through the Python API with baselines and test
progress, a user's staged evaluator with prefix reuse, and the recipe's source as a discriminated
union (a setting that means nothing for a form is refused)."""

from __future__ import annotations

import json
import re
from collections.abc import Collection

import pytest
import torch
from click.testing import CliRunner

from modmerge.cli import main
from modmerge.errors import RecipeError
from modmerge.experts.grouping import GroupingMatrix
from modmerge.objectives.problem import MergeProblem
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.search import merge_search
from modmerge.tasks.taskpool import StagedRun

LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


def stage(key: str) -> int:
    match = LAYER.match(key)
    return 0 if match is None else int(match.group(1)) + 1


class ToyForward:
    """A user's evaluator with a stage split: the 'hidden state' after the embeddings is a mix
    of their weights, each layer mixes in its own weights; the score is a smooth function of the
    last one. ``layers`` counts the layers it really ran."""

    n_layers = 2

    def __init__(self, target: float) -> None:
        self.target, self.layers = target, 0

    def _embed(self, state) -> torch.Tensor:
        return sum(state[k].double().mean() for k in sorted(state) if stage(k) == 0)

    def _layer(self, state, i: int, h: torch.Tensor) -> torch.Tensor:
        self.layers += 1
        return torch.tanh(h + sum(state[k].double().mean() for k in sorted(state) if stage(k) == i + 1))

    def __call__(self, state) -> float:
        return self.run_from(state).metric

    def stage_of(self, key: str) -> int:
        return stage(key)

    def run_from(self, state, *, start_layer: int = 0, hidden=None, keep_layers: Collection[int] = ()) -> StagedRun:
        h = self._embed(state) if start_layer == 0 else hidden[0]
        kept = {}
        for i in range(start_layer, self.n_layers):
            h = self._layer(state, i, h)
            if i in keep_layers:
                kept[i] = [h.clone()]
        return StagedRun(float(1.0 / (1.0 + (h - self.target).abs())), self.n_layers - start_layer, kept)


class Plain:
    """The same scores without the stage split (a plain callable)."""

    def __init__(self, target: float) -> None:
        self.inner = ToyForward(target)

    def __call__(self, state) -> float:
        return self.inner(state)


def test_a_staged_user_evaluator_gets_prefix_reuse_and_the_same_scores(bert_zoo):
    base, tasks = bert_zoo
    models = {f"t{i}": p for i, p in enumerate(tasks)}
    call, quant = MethodCall.build("task_arithmetic", {"scaling": 0.5}), QuantConfig(mode="never")

    def problem(kind):
        evaluators = {t: kind(0.1 * i) for i, t in enumerate(models)}
        return MergeProblem.from_models(base, models, evaluators, call, quant, granularity="layer"), evaluators

    staged, staged_evals = problem(ToyForward)
    plain, plain_evals = problem(Plain)
    assert staged.n_layers == 2 and plain.n_layers == 0
    # configurations that share the embeddings' and layer 0's grouping, differing from layer 1 on
    n, u = staged.n_tasks, staged.n_units
    gs = [GroupingMatrix.all_merged(n, u), GroupingMatrix.individual(n, u)]
    mixed = GroupingMatrix.all_merged(n, u).to_list()
    for row in mixed:
        row[-1] = 0
    mixed[0][-1] = 1
    gs.append(GroupingMatrix.from_array(mixed))
    a, b = staged.evaluate(gs), plain.evaluate(gs)
    assert [e.per_task for e in a] == [e.per_task for e in b]  # the same forward, resumed: bit for bit
    assert staged.counters.prefix_hits > 0 and plain.counters.prefix_hits == 0
    ran_staged = sum(e.layers for e in staged_evals.values())
    ran_plain = sum(e.inner.layers for e in plain_evals.values())
    assert ran_staged < ran_plain
    assert staged.counters.layer_forwards == ran_staged


def test_merge_search_on_a_suite_with_baselines_and_test_progress(own_suite, tmp_path):
    base_dir = tmp_path / "baselines"
    result = CliRunner().invoke(main, ["baselines", str(own_suite), "--out", str(base_dir), "--methods",
                                       "Task Arithmetic,TIES", "--val-limit", "16", "--test-limit", "16",
                                       "--points", "2"])
    assert result.exit_code == 0, result.output
    calls, generations = [], []
    found = merge_search(suite=own_suite, baselines=str(base_dir / "baselines.json"), budget=6, population=3,
                         validation_limit=16, test_limit=16, init="random", surrogate=False,
                         out_dir=tmp_path / "run", progress=lambda run, rec: generations.append(rec.generation),
                         test_progress=lambda run, done, total: calls.append((run, done, total)))
    bars = found.payload["bars"]
    rows = json.loads((base_dir / "baselines.json").read_text())["methods"]
    merged = [r["validation_mean"] for r in rows if r.get("method") and r.get("validation_mean") is not None]
    assert len(merged) == 2 and bars["best_baseline_validation"] == max(merged)
    assert generations and generations[0] == 0
    assert calls and calls[-1][1] == calls[-1][2] and all(r == 0 for r, _, _ in calls)
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "no baselines given" not in summary
    assert found.payload["recipe"]["suite"] == str(own_suite)
    assert all(s.test is not None for s in found.solutions)


@pytest.mark.parametrize(
    ("form", "settings", "needle"),
    [
        ("models", {"precision": "bfloat16"}, "precision: means nothing in the evaluator form"),
        ("models", {"validation_limit": 8}, "validation_limit"),
        ("models", {"device": "cuda"}, "device"),
        ("suite", {"architecture": "bert"}, "architecture: means nothing with suite"),
        ("suite", {"statistics": {"a": "x"}}, "statistics: means nothing with suite"),
        ("suite", {"zoo": "tiny"}, "give either suite or zoo, not both"),
    ],
)
def test_a_setting_that_means_nothing_for_the_form_is_refused(own_suite, bert_zoo, form, settings, needle):
    if form == "suite":
        kwargs = {"suite": own_suite}
    else:
        base, tasks = bert_zoo
        models = {f"t{i}": p for i, p in enumerate(tasks)}
        kwargs = {"pretrained": base, "models": models, "evaluators": {t: Plain(0.0) for t in models}}
    with pytest.raises(RecipeError, match=re.escape(needle)):
        merge_search(**kwargs, budget=6, population=3, **settings)

