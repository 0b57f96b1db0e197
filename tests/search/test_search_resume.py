"""Resumable search: a run killed mid-way and resumed equals an uninterrupted run (golden)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from search_synthetic import SyntheticProblem

from modmerge.errors import ModmergeError
from modmerge.search import (
    LocalExecutor,
    SearchConfig,
    load_state,
    resume_search,
    run_search,
    save_state,
)

CFG = SearchConfig(
    hv_storage_ref=1.05, hv_performance_ref=0.0, population_size=8, budget=50, seed=11, rf_trees=15
)


class Killed(Exception):
    pass


def kill_after(generation):
    def callback(record):
        if record.generation == generation:
            raise Killed

    return callback


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory):
    """One uninterrupted run, shared by the tests: (final state, its state file's bytes)."""
    path = tmp_path_factory.mktemp("golden") / "full.json"
    problem = SyntheticProblem()
    state = run_search(problem, CFG, unit_vectors=problem.unit_vectors(), state_path=path)
    return state, path.read_bytes()


def golden(tmp_path, golden_run):
    """The golden state, with a private copy of its state file at ``tmp_path / "full.json"``."""
    state, data = golden_run
    (tmp_path / "full.json").write_bytes(data)
    return state


@pytest.mark.parametrize("kill_at", [0, 2])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, kill_at, golden_run):
    full = golden(tmp_path, golden_run)
    path = tmp_path / "run.json"
    problem = SyntheticProblem()
    with pytest.raises(Killed):
        run_search(
            problem,
            CFG,
            unit_vectors=problem.unit_vectors(),
            state_path=path,
            callback=kill_after(kill_at),
        )
    assert load_state(path).generation == kill_at
    resumed = resume_search(SyntheticProblem(), path)
    assert [r.to_dict() for r in resumed.pareto()] == [r.to_dict() for r in full.pareto()]
    assert resumed.history == full.history
    assert resumed.records == full.records
    assert resumed.population == full.population
    assert load_state(path) == load_state(tmp_path / "full.json")


def test_killed_during_evaluation_resumes_from_last_generation(tmp_path, golden_run):
    full = golden(tmp_path, golden_run)
    problem = SyntheticProblem()

    class DiesOnFourthBatch(LocalExecutor):
        calls = 0

        def evaluate(self, gs):
            DiesOnFourthBatch.calls += 1
            if DiesOnFourthBatch.calls == 4:
                raise Killed
            return super().evaluate(gs)

    path = tmp_path / "run.json"
    with pytest.raises(Killed):
        run_search(
            problem,
            CFG,
            unit_vectors=problem.unit_vectors(),
            state_path=path,
            executor=DiesOnFourthBatch(problem),
        )
    assert load_state(path).generation == 2
    resumed = resume_search(SyntheticProblem(), path)
    assert resumed.history == full.history
    assert resumed.records == full.records


def test_resuming_a_finished_search_changes_nothing(tmp_path, golden_run):
    full = golden(tmp_path, golden_run)
    problem = SyntheticProblem()
    again = resume_search(problem, tmp_path / "full.json")
    assert problem.batches == []
    assert again.history == full.history


def test_state_json_round_trip(tmp_path, golden_run):
    full = golden(tmp_path, golden_run)
    text = (tmp_path / "full.json").read_text()
    data = json.loads(text)
    assert data["format"] == 1 and data["config"]["seed"] == 11
    assert len(data["records"]) == 50
    assert data["records"][0]["grouping"] == [[0] * 6] * 4  # all-merged first
    assert load_state(tmp_path / "full.json") == full


def test_save_is_atomic(tmp_path, monkeypatch, golden_run):
    full = golden(tmp_path, golden_run)
    path = tmp_path / "full.json"
    before = path.read_bytes()

    def broken_write(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_state(full, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.json"]


def test_resume_errors(tmp_path, golden_run):
    with pytest.raises(ModmergeError, match="not found"):
        resume_search(SyntheticProblem(), tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ModmergeError, match="not valid JSON"):
        load_state(tmp_path / "bad.json")
    golden(tmp_path, golden_run)
    with pytest.raises(ModmergeError, match="5 x 6"):
        resume_search(SyntheticProblem(n_tasks=5), tmp_path / "full.json")
