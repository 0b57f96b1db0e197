"""`modmerge predict` / `modmerge export` through click's CliRunner (library opening stubbed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers
from click.testing import CliRunner
from fake_library import fake_library

import modmerge.cli.reuse as cli_reuse
from modmerge.cli import main
from modmerge.experts.grouping import GroupingMatrix
from modmerge.reuse.engine import ReuseEngine


@pytest.fixture(scope="module")
def lib(tiny_zoo, tmp_path_factory):
    units = len(tiny_zoo.component_map().units("component", exclude_kinds=("head",)))
    pairs = np.array([[0] * units, [0] * units, [1] * units, [2] * units])
    gs = [GroupingMatrix.individual(4, units), GroupingMatrix.from_array(pairs)]
    return fake_library(tiny_zoo, gs, tmp_path_factory.mktemp("fake_lib_cli"))


@pytest.fixture
def opened(lib, monkeypatch, tmp_path):
    monkeypatch.setattr(cli_reuse, "_open_library", lambda path: lib)
    return tmp_path / "lib"


def write_inputs(path, zoo, n=10):
    texts = list(zoo.task_data("has_color")["test"]["inputs"][:n])
    tasks = [zoo.tasks[i % 4] for i in range(n)]
    path.write_text("\n".join(json.dumps({"text": s, "task": t, "id": i})
                              for i, (s, t) in enumerate(zip(texts, tasks, strict=True))) + "\n\n")
    return texts, tasks


def test_predict_writes_one_line_per_input_in_order(opened, lib, tiny_zoo, tmp_path):
    texts, tasks = write_inputs(tmp_path / "in.jsonl", tiny_zoo)
    out = tmp_path / "out" / "pred.jsonl"
    result = CliRunner().invoke(main, ["predict", str(opened), "--budget", "2.5", "--input", str(tmp_path / "in.jsonl"),
                                       "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "config c1 (storage cost 2.000): 10 inputs, 3 expert chain(s)" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(10)) and [r["task"] for r in rows] == tasks
    expected = ReuseEngine(lib, config_id="c1").predict([{"text": s} for s in texts], tasks=tasks)
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    assert [r["label_name"] for r in rows] == [e["label_name"] for e in expected]


def test_predict_task_flag_forces_the_oracle(opened, tiny_zoo, tmp_path):
    write_inputs(tmp_path / "in.jsonl", tiny_zoo, n=4)
    out = tmp_path / "pred.jsonl"
    result = CliRunner().invoke(main, ["predict", str(opened), "--config", "c0", "--task", "has_animal",
                                       "--input", str(tmp_path / "in.jsonl"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert {json.loads(line)["task"] for line in out.read_text().splitlines()} == {"has_animal"}


@pytest.mark.parametrize(
    ("lines", "args", "needle"),
    [
        (['{"text": "a"}', "{oops"], ["--config", "c0"], "in.jsonl line 2: not valid JSON"),
        (['{"text": "a", "task": "has_color"}', '{"picture": "x.png"}'], ["--config", "c0"],
         "in.jsonl line 2: unknown field 'picture'"),
        (['{"text": "a", "task": "nope"}'], ["--config", "c0"], "task 'nope' is not in the library"),
        (['{"text": "a"}'], ["--config", "c9"], "unknown configuration 'c9'"),
        (['{"text": "a"}'], [], "exactly one of --budget or --config"),
        (['{"text": "a"}'], ["--config", "c0"], "no router"),
    ],
)
def test_predict_errors_are_one_line_and_exit_2(opened, tmp_path, lines, args, needle):
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "pred.jsonl"
    result = CliRunner().invoke(main, ["predict", str(opened), *args, "--input", str(tmp_path / "in.jsonl"),
                                       "--output", str(out)])
    assert result.exit_code == 2 and needle in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.output.endswith(errors[0] + "\n") and not out.exists()


def test_predict_missing_input_file(opened, tmp_path):
    result = CliRunner().invoke(main, ["predict", str(opened), "--config", "c0", "--input", str(tmp_path / "no.jsonl"),
                                       "--output", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "input file not found" in result.output


def test_export_command_writes_a_loadable_directory(opened, tmp_path):
    out = tmp_path / "exported"
    result = CliRunner().invoke(main, ["export", str(opened), "--config", "c1", "--task", "has_animal", str(out)])
    assert result.exit_code == 0, result.output
    assert "BertForSequenceClassification" in result.output
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 2
    again = CliRunner().invoke(main, ["export", str(opened), "--config", "c1", "--task", "has_animal", str(out)])
    assert again.exit_code == 2 and "exists and is not empty" in again.output
    bad = CliRunner().invoke(main, ["export", str(opened), "--config", "c1", "--task", "nope", str(tmp_path / "n")])
    assert bad.exit_code == 2 and "task 'nope'" in bad.output
