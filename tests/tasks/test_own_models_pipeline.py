"""End to end on a user's own models and data: suite check, baselines, search, library, predict,
and one served request, all through the CLI, on BertForSequenceClassification checkpoints and
JSONL files (no zoo anywhere)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from modmerge.cli import main

sys.path.insert(0, str(Path(__file__).parents[1] / "serve"))
from serve_support import live_server

pytestmark = pytest.mark.slow


def _ok(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, f"{args}: {result.output}"
    return result.output


def test_own_models_go_through_the_whole_pipeline(own_suite, tmp_path):
    cache = ["--cache", str(tmp_path / "cache")]
    _ok(["suite", "check", str(own_suite)])

    _ok(["baselines", str(own_suite), "--out", str(tmp_path / "base"), "--methods", "Individual,Pretrained,Task Arithmetic",
         "--val-limit", "16", "--points", "2", *cache])
    report = json.loads((tmp_path / "base" / "baselines.json").read_text())
    assert report["source"] == {"suite": str(own_suite.resolve())}
    rows = {r["name"]: r for r in report["methods"]}
    assert rows["Individual"]["storage_cost"] == 2.0 and set(rows["Individual"]["test"]) == {"has_animal", "count_color"}

    recipe = tmp_path / "search.yaml"
    recipe.write_text(yaml.safe_dump({
        "suite": str(own_suite), "method": "task_arithmetic", "parameters": {"scaling": 0.5}, "budget": 8,
        "population": 4, "validation_limit": 16, "test_limit": 16, "baselines": str(tmp_path / "base/baselines.json"),
    }))
    _ok(["search", str(recipe), "--out", str(tmp_path / "run"), *cache])
    pareto = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert pareto["source"] == {"suite": str(own_suite.resolve())} and pareto["tasks"] == ["has_animal", "count_color"]
    assert pareto["runs"][0]["solutions"]
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "Task Arithmetic" in summary  # the baselines' rows reach the table

    _ok(["library", "build", str(tmp_path / "run"), str(tmp_path / "lib"), "--router-epochs", "2", *cache])
    manifest = json.loads((tmp_path / "lib" / "manifest.json").read_text())
    assert manifest["source"] == {"suite": str(own_suite.resolve())}
    assert manifest["router"]["report"]["train_split"] == "train"

    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["the cat", "red blue saw"])))
    _ok(["predict", str(tmp_path / "lib"), "--budget", "100", "--input", str(inputs), "--output", str(tmp_path / "out.jsonl")])
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["id"] for o in out] == [0, 1] and all(o["task"] in {"has_animal", "count_color"} for o in out)

    from modmerge.library import Library
    from modmerge.reuse import ReuseEngine
    from modmerge.serve import ServeSettings, create_app

    engine = ReuseEngine(Library.open(tmp_path / "lib"), budget=100.0)
    with live_server(create_app(engine, ServeSettings.parse())) as url:
        reply = httpx.post(f"{url}/v1/predict", json={"inputs": [{"text": "a dog"}], "task": "has_animal"}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["task"] == "has_animal"
    assert reply.json()["outputs"][0]["label_name"].startswith("has_animal-")  # names from the model config
