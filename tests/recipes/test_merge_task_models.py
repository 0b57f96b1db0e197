"""`modmerge merge` on ordinary task checkpoints (BertForSequenceClassification over a bare BERT)."""

from __future__ import annotations

import pytest
import torch
import transformers
import yaml
from click.testing import CliRunner

from modmerge.cli import main


def _recipe(own_suite, tmp_path, **extra):
    root = own_suite.parent
    recipe = {"merge_method": None} if False else {}
    recipe.update({"base_model": str(root / "models/base"), "method": "task_arithmetic",
                   "parameters": {"scaling": 0.5},
                   "models": [{"model": str(root / "models/has_animal")}, {"model": str(root / "models/count_color")}],
                   **extra})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_one_loadable_model_per_task_with_its_own_head_and_pooler(own_suite, tmp_path):
    result = CliRunner().invoke(main, ["merge", str(_recipe(own_suite, tmp_path)), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "one model per task: has_animal, count_color" in result.output
    root = own_suite.parent
    base = transformers.BertModel.from_pretrained(root / "models/base")
    tuned = {t: transformers.BertForSequenceClassification.from_pretrained(root / "models" / t)
             for t in ("has_animal", "count_color")}
    for task, model in tuned.items():
        merged = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "out" / task)
        # the classifier and the pooler are the task's own, never merged
        assert torch.equal(merged.classifier.weight, model.classifier.weight)
        assert torch.equal(merged.bert.pooler.dense.weight, model.bert.pooler.dense.weight)
        # the body is task arithmetic, written out by hand: base + 0.5 * sum of task vectors
        name = "encoder.layer.1.attention.self.query.weight"
        expected = base.state_dict()[name] + 0.5 * sum(m.bert.state_dict()[name] - base.state_dict()[name]
                                                       for m in tuned.values())
        assert torch.allclose(merged.bert.state_dict()[name], expected, atol=1e-6)
        assert transformers.AutoTokenizer.from_pretrained(tmp_path / "out" / task)("red cat")["input_ids"]


def test_body_only_writes_the_merged_bare_body(own_suite, tmp_path):
    result = CliRunner().invoke(main, ["merge", str(_recipe(own_suite, tmp_path)), str(tmp_path / "body"), "--body-only"])
    assert result.exit_code == 0, result.output
    body = transformers.BertModel.from_pretrained(tmp_path / "body")
    base = transformers.BertModel.from_pretrained(own_suite.parent / "models/base")
    assert torch.equal(body.pooler.dense.weight, base.pooler.dense.weight)  # the base's pooler: no task's
    assert not torch.equal(body.encoder.layer[0].output.dense.weight, base.encoder.layer[0].output.dense.weight)


def test_body_only_on_plain_bodies_is_refused(own_suite, tmp_path):
    root = own_suite.parent
    recipe = tmp_path / "plain.yaml"
    recipe.write_text(yaml.safe_dump({"base_model": str(root / "models/base"), "method": "task_arithmetic",
                                      "models": [{"model": str(root / "models/base")}]}))
    result = CliRunner().invoke(main, ["merge", str(recipe), str(tmp_path / "x"), "--body-only"])
    assert result.exit_code == 2 and "body_only" in result.output and not (tmp_path / "x").exists()


@pytest.mark.parametrize("method", ["ties", "weight_averaging"])
def test_other_methods_keep_heads_per_task_too(own_suite, tmp_path, method):
    recipe = _recipe(own_suite, tmp_path, method=method, parameters={})
    result = CliRunner().invoke(main, ["merge", str(recipe), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["count_color", "has_animal", "modmerge.json"]
