"""The command line: exit codes, one-line errors, JSON output, dry runs, pickles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from modmerge.cli import main


def write_recipe(path: Path, base: Path, models: list[Path], **fields) -> Path:
    recipe = {"base_model": str(base), "models": [{"model": str(m)} for m in models], **fields}
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_merge_writes_a_model_and_stats(runner, bert_zoo, tmp_path):
    base, tasks = bert_zoo
    recipe = write_recipe(tmp_path / "r.yaml", base, tasks, method="ties")
    result = runner.invoke(main, ["merge", str(recipe), str(tmp_path / "out"), "--stats-json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "ties x" in result.output
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["tensors"] == len(load_file(base / "model.safetensors"))
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_dry_run_validates_and_writes_nothing(runner, bert_zoo, tmp_path):
    base, tasks = bert_zoo
    recipe = write_recipe(tmp_path / "r.yaml", base, tasks, method="ties",
                          overrides=[{"kinds": ["norm"], "method": "weight_averaging"}])
    result = runner.invoke(main, ["merge", str(recipe), str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "layer0.norm" in result.output and "weight_averaging" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"method": "ties", "parameters": {"density": 2}}, "density' must be <= 1"),
        ({"method": "tiez"}, "unknown merge method 'tiez'"),
        ({"method": "ties", "bogus": 1}, "bogus: unknown field"),
    ],
)
def test_bad_recipe_is_one_line_and_exit_2(runner, bert_zoo, tmp_path, fields, needle):
    base, tasks = bert_zoo
    recipe = write_recipe(tmp_path / "r.yaml", base, tasks, **fields)
    result = runner.invoke(main, ["merge", str(recipe), str(tmp_path / "out")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_model_path_names_it(runner, bert_zoo, tmp_path):
    base, _ = bert_zoo
    recipe = write_recipe(tmp_path / "r.yaml", base, [tmp_path / "nope"], method="ties")
    result = runner.invoke(main, ["merge", str(recipe), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "nope" in result.output


def test_pickle_needs_opt_in(runner, bert_zoo, tmp_path):
    base, tasks = bert_zoo
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tasks[0] / "config.json").read_text())
    torch.save(load_file(tasks[0] / "model.safetensors"), pickled / "pytorch_model.bin")
    recipe = write_recipe(tmp_path / "r.yaml", base, [pickled], method="task_arithmetic", parameters={"scaling": 1.0})
    refused = runner.invoke(main, ["merge", str(recipe), str(tmp_path / "out")])
    assert refused.exit_code == 2 and "--allow-pickle" in refused.output
    allowed = runner.invoke(main, ["merge", str(recipe), str(tmp_path / "out"), "--allow-pickle"])
    assert allowed.exit_code == 0, allowed.output
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")[key], load_file(tasks[0] / "model.safetensors")[key])


def test_inspect_json_and_table(runner, tiny_zoo_factory):
    base, _ = tiny_zoo_factory("llama", 1)
    result = runner.invoke(main, ["inspect", str(base), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["architecture"] == "llama"
    ids = [row["component"] for row in data["components"]]
    assert ids[0] == "embed" and "layer1.mlp" in ids and ids[-1] == "head"
    table = runner.invoke(main, ["inspect", str(base), "--granularity", "layer"])
    assert table.exit_code == 0 and "layer0" in table.output and "total" in table.output


def test_methods_lists_registry(runner):
    result = runner.invoke(main, ["methods"])
    assert result.exit_code == 0
    for name in ("weight_averaging", "task_arithmetic", "ties", "dare", "breadcrumbs", "pcb", "fisher", "regmean",
                 "slerp", "nuslerp", "multislerp", "karcher", "model_stock", "della", "della_linear", "sce",
                 "nearswap", "arcee_fusion", "breadcrumbs_ties", "dare_linear", "dare_ties"):
        assert f"\n{name}: " in "\n" + result.output
    one = runner.invoke(main, ["methods", "ties"])
    assert "density" in one.output and "Yadav" in one.output
    della = runner.invoke(main, ["methods", "della"])
    assert "- lambda (float, default 1.0" in della.output and "arXiv:2406.11617" in della.output
    assert "merges at most 2 models" in runner.invoke(main, ["methods", "slerp"]).output
    assert runner.invoke(main, ["methods", "nope"]).exit_code == 2
