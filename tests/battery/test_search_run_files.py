"""`modmerge search` and its run directory: a used --out, --overwrite, stale test metrics, damaged
resume files and baselines files (issue 17, items 2 and 8).

One finished search on the tiny zoo is shared (copied per case); every refusal is one line naming
the file, with a non-zero exit and the run directory as it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from battery_support import assert_refused, invoke, snapshot

SEARCH = {"zoo": "tiny", "method": "task_arithmetic", "parameters": {"scaling": 0.3}, "budget": 6,
          "population": 3, "validation_limit": 16, "test_limit": 16, "init": "random", "surrogate": False}


def recipe(tmp_path: Path, name: str = "search.yaml", **changes) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**SEARCH, **changes}))
    return path


@pytest.fixture(scope="module")
def cache(tiny_zoo) -> Path:
    return tiny_zoo.root.parent.parent


@pytest.fixture(scope="module")
def finished(cache, tmp_path_factory) -> Path:
    """A finished search run directory (do not change it: copy it)."""
    root = tmp_path_factory.mktemp("finished")
    result = invoke(["search", recipe(root), "--out", root / "run", "--cache", cache])
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.fixture
def run(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def test_a_new_search_into_a_used_out_is_refused(run, cache, tmp_path):
    before = snapshot(run)
    line = assert_refused(invoke(["search", recipe(tmp_path), "--out", run, "--cache", cache]), str(run))
    assert "--resume" in line and "--overwrite" in line
    assert snapshot(run) == before


def test_overwrite_replaces_only_what_a_search_wrote(run, cache, tmp_path):
    (run / "notes.txt").write_text("mine")
    (run / "run7").mkdir()  # a folder a search might have written is replaced too
    result = invoke(["search", recipe(tmp_path, parameters={"scaling": 0.5}), "--out", run, "--cache", cache,
                     "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (run / "notes.txt").read_text() == "mine" and not (run / "run7").exists()
    assert json.loads((run / "pareto.json").read_text())["recipe"]["parameters"] == {"scaling": 0.5}


def test_test_metrics_of_another_recipe_are_not_reused(finished, cache, tmp_path):
    """The stale-cache bug: another recipe's test_metrics.json, found in the run folder, used to be
    read back as this run's figures."""
    other = tmp_path / "other"
    assert invoke(["search", recipe(tmp_path, "other.yaml", parameters={"scaling": 0.9}), "--out", other,
                   "--cache", cache]).exit_code == 0
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    truth = json.loads((run / "pareto.json").read_text())
    stale = json.loads((other / "run0" / "test_metrics.json").read_text())
    stale["solutions"] = [{"grouping": s["grouping"], "test": dict.fromkeys(s["test"], 0.001)}
                          for s in json.loads((run / "run0" / "test_metrics.json").read_text())["solutions"]]
    (run / "run0" / "test_metrics.json").write_text(json.dumps(stale))
    result = invoke(["search", recipe(tmp_path), "--out", run, "--cache", cache, "--resume"])
    assert result.exit_code == 0, result.output
    again = json.loads((run / "pareto.json").read_text())
    assert [s["test"] for s in again["runs"][0]["solutions"]] == [s["test"] for s in truth["runs"][0]["solutions"]]
    assert all(s["test"]["mean"] != 0.001 for s in again["runs"][0]["solutions"])


@pytest.mark.parametrize("name", ["run0/test_metrics.json", "run0/evaluation_cost.json", "search_recipe.json",
                                  "run0/state.json"])
@pytest.mark.parametrize("damage", ["truncated", "wrong-shape"])
def test_resume_with_a_damaged_run_file_is_one_line(run, cache, tmp_path, name, damage):
    path = run / name
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    else:
        path.write_text(json.dumps(["not", "an", "object"]))
    before = snapshot(run)
    assert_refused(invoke(["search", recipe(tmp_path), "--out", run, "--cache", cache, "--resume"]), name.split("/")[-1])
    assert snapshot(run) == before


def test_resume_with_an_out_of_range_archive_index_is_one_line(run, cache, tmp_path):
    path = run / "run0" / "state.json"
    state = json.loads(path.read_text())
    state["archive"] = [*state["archive"], 10_000]
    path.write_text(json.dumps(state))
    line = assert_refused(invoke(["search", recipe(tmp_path), "--out", run, "--cache", cache, "--resume"]),
                          "state.json")
    assert "10000" in line


@pytest.mark.parametrize("content", [None, "{not json", '{"rows": 3}'])
def test_a_missing_or_corrupt_baselines_file_is_one_line(cache, tmp_path, content):
    baselines = tmp_path / "baselines.json"
    if content is not None:
        baselines.write_text(content)
    result = invoke(["search", recipe(tmp_path, baselines=str(baselines)), "--out", tmp_path / "out", "--cache", cache])
    assert_refused(result, "baselines.json", leaves=[tmp_path / "out"])
