"""MERGE search on the user's own models: the Python API, the recipe form, the CLI, early errors."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from modmerge.cli import main
from modmerge.errors import RecipeError
from modmerge.search import GroupingMatrix, merge_search
from modmerge.search.recipe import load_search_recipe

SMALL = {"budget": 10, "population": 5}


def closeness(own):
    def evaluate(state):
        dist = sum(float((state[k].float() - v.float()).pow(2).sum()) for k, v in own.items()) ** 0.5
        return 1.0 / (1.0 + dist)

    return evaluate


@pytest.fixture
def three_tasks(tiny_zoo_factory):
    base, tasks = tiny_zoo_factory("bert", 3)
    models = {f"t{i}": p for i, p in enumerate(tasks)}
    evaluators = {t: closeness(load_file(p / "model.safetensors")) for t, p in models.items()}
    return base, models, evaluators


def test_merge_search_finds_the_individual_configuration_and_writes_the_run_dir(three_tasks, tmp_path):
    base, models, evaluators = three_tasks
    seen = []
    result = merge_search(base, models, evaluators, method="task_arithmetic", parameters={"scaling": 0.5},
                          out_dir=tmp_path / "run", progress=lambda run, rec: seen.append((run, rec.evaluations)),
                          test_evaluators=evaluators, **SMALL)
    assert seen[-1] == (0, 10)
    individual = GroupingMatrix.individual(3, len(result.units))
    best = max(result.front(), key=lambda s: s.performance)
    assert best.grouping == individual  # its own weights score best for every task
    assert best.per_task == best.test and 0.9 < best.performance <= 1.0
    front = result.front()
    assert [s.storage_cost for s in front] == sorted(s.storage_cost for s in front)
    assert all(a.performance >= b.performance for a, b in zip(front[1:], front, strict=False))
    for name in ("pareto.json", "history.json", "summary.md", "pareto.png", "hypervolume.png", "run0/state.json"):
        assert (tmp_path / "run" / name).exists()
    payload = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert payload["zoo"] is None and payload["tasks"] == ["t0", "t1", "t2"]
    assert payload["models"] == {t: str(p) for t, p in models.items()}
    assert payload["recipe"]["evaluators"]["t0"].endswith("closeness.<locals>.evaluate")
    assert len(payload["runs"][0]["solutions"]) == len(result.runs[0])
    assert payload["runs"][0]["representatives"]["G3"]["grouping"] == individual.to_list()
    assert "the user's models" in (tmp_path / "run" / "summary.md").read_text()


def test_merge_search_without_out_dir_or_test_evaluators(three_tasks):
    base, models, evaluators = three_tasks
    result = merge_search(base, models, evaluators, method="ties", init="random", surrogate=False, seed=3, **SMALL)
    assert result.out_dir is None and result.solutions
    assert all(s.test is None for s in result.solutions)
    assert result.payload["runs"][0]["solutions"][0]["test"] is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"budget": 3}, "smaller than the population"),
        ({"method": "nope"}, "unknown merge method"),
        ({"granularity": "block"}, "granularity"),
        ({"quantization": {"bitz": 4}}, "quantization has unknown field 'bitz'"),
        ({"executor": "dask"}, "executor"),
        ({"test_evaluators": {"t0": len}}, "test_evaluators: task 't1' of models has none"),
    ],
)
def test_merge_search_settings_are_checked_first(tmp_path, kwargs, needle):
    models = {"t0": tmp_path / "missing0", "t1": tmp_path / "missing1"}  # never opened
    with pytest.raises(RecipeError, match=needle):
        merge_search(tmp_path / "missing", models, {"t0": len, "t1": len}, **{**SMALL, **kwargs})


@pytest.fixture
def recipe_form(three_tasks, tmp_path, monkeypatch):
    """An evaluator module on sys.path and a recipe naming it by dotted path."""
    base, models, _ = three_tasks
    lines = ["from safetensors.torch import load_file", "OWN = {}"]
    for task, path in models.items():
        lines.append(f"OWN[{task!r}] = load_file({str(path / 'model.safetensors')!r})")
    lines.append(textwrap.dedent("""
        def score(task, state):
            own = OWN[task]
            dist = sum(float((state[k].float() - v.float()).pow(2).sum()) for k, v in own.items()) ** 0.5
            return 1.0 / (1.0 + dist)
    """))
    lines += [f"def {t}(state):\n    return score({t!r}, state)" for t in models]
    (tmp_path / "own_evals.py").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fields = {
        "pretrained": str(base), "models": {t: str(p) for t, p in models.items()},
        "evaluators": {t: f"own_evals:{t}" for t in models}, "test_evaluators": {t: f"own_evals:{t}" for t in models},
        "method": "task_arithmetic", "parameters": {"scaling": 0.5}, **SMALL,
    }

    def write(**changes):
        data = {k: v for k, v in {**fields, **changes}.items() if v is not None}
        path = tmp_path / "search.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


def test_cli_search_runs_a_recipe_of_own_models(recipe_form, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["search", str(recipe_form()), "--out", str(out)])
    assert result.exit_code == 0, result.output
    # without a terminal (a log file), one timestamped line per generation instead of a bar
    assert re.search(r"\[\s*\d+ s\] run 0 gen 0: evals \d+/\d+ HV", result.output), result.output
    payload = json.loads((out / "pareto.json").read_text())
    assert payload["zoo"] is None and payload["recipe"]["evaluators"]["t1"] == "own_evals:t1"
    best = max(payload["runs"][0]["solutions"], key=lambda s: s["validation"]["mean"])
    assert best["test"]["per_task"] == best["validation"]["per_task"]
    assert GroupingMatrix.from_array(best["grouping"]) == GroupingMatrix.individual(3, len(payload["units"]))


def test_recipe_paths_are_relative_to_the_recipe(recipe_form, three_tasks, tmp_path):
    base = three_tasks[0]
    (tmp_path / "models").symlink_to(base.parent)
    recipe = load_search_recipe(recipe_form(pretrained="models/base", models={"t0": "models/task0", "t1": "org/hub-id"},
                                            evaluators={"t0": "own_evals:t0", "t1": "own_evals:t1"},
                                            test_evaluators=None))
    assert recipe.source.pretrained == str(tmp_path / "models" / "base")
    assert recipe.source.models == {"t0": str(tmp_path / "models" / "task0"), "t1": "org/hub-id"}


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"evaluators": {"t0": "own_evals:t0", "t1": "own_evals:t1", "t2": "own_evals:nope"}},
         "evaluators.t2: module 'own_evals' has no 'nope' ('own_evals:nope')"),
        ({"evaluators": {"t0": "own_evals:t0", "t1": "own_evals:t1", "t2": "no_such_pkg.evals:t2"}},
         "evaluators.t2: cannot import module 'no_such_pkg.evals'"),
        ({"evaluators": {"t0": "own_evals:t0", "t1": "own_evals:t1", "t2": "own_evals.t2"}},
         "evaluators.t2: 'own_evals.t2' is not of the form"),
        ({"evaluators": {"t0": "own_evals:t0", "t1": "own_evals:t1"}}, "evaluators: task 't2' of models has none"),
        ({"evaluators": {"t0": "own_evals:t0", "t1": "own_evals:t1", "t2": "own_evals:t2", "t9": "own_evals:t2"}},
         "evaluators: 't9' is not a task of models"),
        ({"zoo": "tiny"}, "evaluators: means nothing with zoo (it is a field of the evaluator form)"),
        ({"pretrained": None}, "pretrained: required with pretrained/models"),
        ({"pretrained": None, "models": None, "evaluators": None, "test_evaluators": None}, "give suite (or zoo), or pretrained"),
    ],
)
def test_cli_recipe_errors_are_one_line(recipe_form, tmp_path, changes, needle):
    result = CliRunner().invoke(main, ["search", str(recipe_form(**changes)), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and needle in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_mismatched_checkpoints(recipe_form, tiny_zoo_factory, tmp_path):
    gpt2_base, _ = tiny_zoo_factory("gpt2", 1)
    result = CliRunner().invoke(main, ["search", str(recipe_form(pretrained=str(gpt2_base))),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "error: " in result.output and "differs from base" in result.output
