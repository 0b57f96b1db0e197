"""The engine on a real on-disk library built from a small search on the tiny zoo: the oracle
metrics reproduce the search's test figures, and predict/export work from LIB_DIR paths."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
import yaml
from click.testing import CliRunner

from modmerge.cli import main
from modmerge.reuse import ReuseEngine, evaluate_library, export_model
from modmerge.search.driver import run_search_recipe
from modmerge.search.recipe import load_search_recipe
from modmerge.zoo.store import ZooStore

library = pytest.importorskip("modmerge.library")
if not hasattr(library, "build_library"):
    pytest.skip("modmerge.library.build_library is not there yet", allow_module_level=True)

LIMIT = 16

@pytest.fixture(scope="module")
def built(tiny_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("real_lib")
    store = ZooStore(tiny_zoo.root.parent.parent)
    recipe_path = root / "search.yaml"
    recipe_path.write_text(yaml.safe_dump({"zoo": "tiny", "budget": 4, "population": 2, "validation_limit": LIMIT,
                                           "test_limit": LIMIT}))
    payload = run_search_recipe(load_search_recipe(recipe_path), root / "run", source=store.load("tiny"))
    lib = library.build_library(root / "run", root / "lib", source=store.load("tiny"))
    return lib, root / "lib", payload, store

def test_oracle_metrics_reproduce_the_search_test_figures(built, tiny_zoo):
    lib, _, payload, _ = built
    solutions = {json.dumps(s["grouping"]): s for run in payload["runs"] for s in run["solutions"]}
    for entry in lib.configurations:
        report = evaluate_library(lib, entry.id, tiny_zoo, limit=LIMIT, use_router=False)
        expected = solutions[json.dumps(entry.grouping)]["test"]["per_task"]
        assert {t: r["oracle"] for t, r in report["tasks"].items()} == pytest.approx(expected, abs=1e-12)

def test_predict_and_export_from_a_library_directory(built, tiny_zoo, tmp_path):
    lib, lib_dir, _, _ = built
    config_id = lib.configurations[0].id
    texts = list(tiny_zoo.task_data("has_animal")["test"]["inputs"][:5])
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": s, "task": "has_animal"}) + "\n" for s in texts))
    result = CliRunner().invoke(main, ["predict", str(lib_dir), "--config", config_id, "--input",
                                       str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    engine = ReuseEngine(lib_dir, config_id=config_id)
    expected = engine.predict([{"text": s} for s in texts], tasks=["has_animal"] * 5, with_logits=True)
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    export_model(lib, config_id, "has_animal", tmp_path / "m")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "m")

    with torch.inference_mode():
        logits = torch.cat([model(**tokenizer(s, return_tensors="pt")).logits for s in texts])
    torch.testing.assert_close(logits, torch.tensor([e["logits"] for e in expected]), atol=1e-5, rtol=1e-5)


def test_evaluate_command_prints_the_budget_table(built, tiny_zoo, tmp_path):
    from modmerge.reuse.router import RouterConfig, fit_router

    lib, _, _, store = built
    config = RouterConfig.for_source(tiny_zoo, per_task=16, epochs=2)
    router, _ = fit_router(tiny_zoo, config, test_limit=LIMIT)
    routed_lib = library.build_library(lib.root.parent / "run", tmp_path / "lib", source=store.load("tiny"),
                                       router=(router.to_state(), {**config.to_dict(), "test_accuracy": 0.5}))
    costs = sorted(c.storage_cost for c in routed_lib.configurations)
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "lib"), "--limit", str(LIMIT), "--cache",
                                       str(store.root), "--out", str(tmp_path / "table.json")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    # default budgets: the cheapest, the median and the dearest configuration (rounded up)
    assert [r["storage_cost"] for r in rows] == [costs[0], costs[len(costs) // 2], costs[-1]][: len(rows)]
    for row in rows:
        assert row["storage_cost"] <= row["budget"] and row["routing_accuracy"] is not None
        expected = evaluate_library(routed_lib, row["config"], tiny_zoo, limit=LIMIT)
        assert row["oracle_mean"] == pytest.approx(expected["oracle_mean"], abs=1e-12)
        assert row["routed_mean"] == pytest.approx(expected["routed_mean"], abs=1e-12)
        assert f"{100 * row['oracle_mean']:.1f}" in result.output and row["config"] in result.output
    # without a router the routed columns are left empty
    result = CliRunner().invoke(main, ["evaluate", str(lib.root), "--budget", str(costs[-1] + 1), "--limit", str(LIMIT),
                                       "--cache", str(store.root)])
    assert result.exit_code == 0, result.output
