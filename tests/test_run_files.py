"""The typed run files: what a search writes parses, older files parse, damage is one line."""

from __future__ import annotations

import json

import pytest

from modmerge.run_files import ParetoFile, RunFileError, read_history_file, read_pareto_file

SOLUTION = {"grouping": [[0], [1]], "storage_cost": 2.0, "validation": {"mean": 0.5, "per_task": {"a": 0.5}}}


def test_a_file_from_before_the_cost_and_bar_fields_parses(tmp_path):
    old = {"zoo": "tiny", "tasks": ["a", "b"], "recipe": {"method": "ties"}, "units": ["u"],
           "runs": [{"seed": 0, "solutions": [SOLUTION]}], "something_new": 1}
    (tmp_path / "pareto.json").write_text(json.dumps(old))
    parsed = read_pareto_file(tmp_path / "pareto.json")
    run = parsed.runs[0]
    assert run.evaluation_cost is None and run.representatives == {} and parsed.bars.best_baseline_validation is None
    assert run.solutions[0].figures.mean == 0.5 and run.solutions[0].test is None
    assert parsed.split == "validation" and parsed.subject == "the `tiny` zoo"


@pytest.mark.parametrize(
    ("content", "needle"),
    [(None, "not found"), ("{trunc", "not the JSON a search writes"),
     (json.dumps({"tasks": [], "recipe": {}, "units": []}), "runs: Field required"),
     (json.dumps({"tasks": [], "recipe": {}, "units": [], "runs": [{"seed": 0, "solutions": [{**SOLUTION, "grouping": "x"}]}]}),
      r"runs\.0\.solutions\.0\.grouping")],
)
def test_a_damaged_pareto_file_is_one_line_naming_it(tmp_path, content, needle):
    path = tmp_path / "pareto.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RunFileError, match=needle) as err:
        read_pareto_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_history_file(tmp_path):
    (tmp_path / "history.json").write_text(json.dumps({"runs": [{"seed": 3, "generations": [{"evaluations": 4}]}]}))
    assert read_history_file(tmp_path / "history.json").runs[0].seed == 3
    (tmp_path / "history.json").write_text(json.dumps({"runs": [{"generations": []}]}))
    with pytest.raises(RunFileError, match=r"runs\.0\.seed"):
        read_history_file(tmp_path / "history.json")


def test_subjects():
    base = {"tasks": [], "recipe": {}, "units": [], "runs": []}
    assert ParetoFile.model_validate({**base, "source": {"suite": "s.yaml"}}).subject == "the suite s.yaml"
    assert ParetoFile.model_validate({**base, "source": {"zoo": "text", "store": "/c"}}).subject == "the `text` zoo"
    assert ParetoFile.model_validate({**base, "pretrained": "b"}).subject == "the user's models"
