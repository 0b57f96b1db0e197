"""Task suites on a user's own checkpoints and JSONL files: parsing, checking, the task runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from click.testing import CliRunner

from modmerge.cli import main
from modmerge.tasks.check import check_suite
from modmerge.tasks.spec import TaskError
from modmerge.tasks.suite_source import open_suite
from modmerge.tasks.taskpool import TaskPool


def _hf_predictions(model_dir: Path, rows: list[dict]) -> torch.Tensor:
    """The task model's own predictions, computed with transformers alone (no modmerge code)."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        enc = tok([r["text"] for r in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
        return model(**enc).logits.argmax(-1)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_ordinary_checkpoints_split_into_bare_body_and_head(own_suite):
    source = open_suite(own_suite)
    with source.backbone() as base, source.task_body("has_animal") as body:
        assert base.keys() == body.keys()
        assert "pooler.dense.weight" in body.keys() and not any(k.startswith("bert.") for k in body.keys())
        raw = transformers.BertForSequenceClassification.from_pretrained(own_suite.parent / "models/has_animal")
        assert torch.equal(body.get("pooler.dense.weight"), raw.bert.pooler.dense.weight)
    head = source.task_head("count_color")
    assert head["classifier.weight"].shape == (3, 32)
    entry = source.entry("count_color")
    assert entry.pooling == "pooler" and entry.label_names == ["count_color-0", "count_color-1", "count_color-2"]


@pytest.mark.parametrize("task", ["has_animal", "count_color"])
def test_task_pool_reproduces_the_transformers_model(own_suite, task):
    pool = TaskPool(open_suite(own_suite), split="test")
    rows = _rows(own_suite.parent / f"data/{task}/test.jsonl")
    expected = _hf_predictions(own_suite.parent / "models" / task, rows)
    assert torch.equal(pool.predictions(task), expected)
    labels = torch.tensor([r["label"] for r in rows])
    assert pool.evaluate(task) == pytest.approx(float((expected == labels).double().mean()), abs=1e-12)
    assert 0.5 < pool.evaluate(task) < 1.0  # fine-tuned: better than chance, so merges can lose something


def test_check_suite_summarises_each_task(own_suite):
    rows = check_suite(own_suite)
    assert [(r["task"], r["labels"], r["splits"]) for r in rows] == [
        ("has_animal", 2, {"train": 64, "validation": 40, "test": 48}),
        ("count_color", 3, {"train": 64, "validation": 40, "test": 48}),
    ]
    result = CliRunner().invoke(main, ["suite", "check", str(own_suite)])
    assert result.exit_code == 0, result.output
    assert "2 tasks ok" in result.output


def _variant(own_suite: Path, tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(own_suite.read_text())
    edit(data, own_suite.parent, tmp_path)
    for task in data["tasks"].values():  # keep paths valid from the new folder
        task["model"] = str(own_suite.parent / task["model"]) if not Path(task["model"]).is_absolute() else task["model"]
        task["data"] = {s: (p if Path(p).is_absolute() else str(own_suite.parent / p)) for s, p in task["data"].items()}
    data["pretrained"] = str(own_suite.parent / data["pretrained"]) if not Path(data["pretrained"]).is_absolute() \
        else data["pretrained"]
    out = tmp_path / "suite.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def _bad_label(data, root, tmp):
    bad = tmp / "bad.jsonl"
    rows = _rows(root / "data/count_color/test.jsonl")
    rows[4]["label"] = 7
    bad.write_text("\n".join(json.dumps(r) for r in rows))
    data["tasks"]["count_color"]["data"]["test"] = str(bad)


def _missing_field(data, root, tmp):
    bad = tmp / "nofield.jsonl"
    rows = _rows(root / "data/has_animal/validation.jsonl")
    del rows[2]["text"]
    bad.write_text("\n".join(json.dumps(r) for r in rows))
    data["tasks"]["has_animal"]["data"]["validation"] = str(bad)


def _broken_json(data, root, tmp):
    bad = tmp / "broken.jsonl"
    bad.write_text('{"text": "a", "label": 0}\n{"text": oops}\n')
    data["tasks"]["has_animal"]["data"]["validation"] = str(bad)


def _other_architecture(data, root, tmp):
    other = tmp / "wide"
    config = transformers.BertConfig(vocab_size=25, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=20)
    transformers.BertForSequenceClassification(config).save_pretrained(other)
    data["tasks"]["has_animal"]["model"] = str(other)


@pytest.mark.parametrize(("edit", "needle"), [
    (_bad_label, r"task 'count_color' test data .*bad.jsonl: row 5: field 'label' = 7 does not fit the head's 3 labels"),
    (_missing_field, r"task 'has_animal' validation data .*nofield.jsonl: row 3: no field 'text'"),
    (_broken_json, r"broken.jsonl: row 2: not valid JSON"),
    (_other_architecture, r"task 'has_animal' model .*wide: tensor '.*' has shape \[.*\], the pretrained model's is"),
    (lambda d, r, t: d["tasks"]["has_animal"].update(metric="bleu"), r"field 'tasks.has_animal.metric'"),
    (lambda d, r, t: d["tasks"]["has_animal"].update(labels="label"), r"field 'tasks.has_animal.labels': Extra"),
    (lambda d, r, t: d["tasks"]["has_animal"].update(label="gold"), r"row 1: no field 'gold'"),
    (lambda d, r, t: d["tasks"]["has_animal"].update(metric="pearson"), r"metric 'pearson' needs a regression head"),
])
def test_suite_check_errors_are_one_line(own_suite, tmp_path, edit, needle):
    bad = _variant(own_suite, tmp_path, edit)
    with pytest.raises(TaskError, match=needle):
        check_suite(bad)
    result = CliRunner().invoke(main, ["suite", "check", str(bad)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_text_pairs_are_tokenised_as_pairs(own_suite, tmp_path):
    def pairs(data, root, tmp):
        for split in ("train", "validation", "test"):
            rows = _rows(root / f"data/has_animal/{split}.jsonl")
            out = tmp / f"pair-{split}.jsonl"
            out.write_text("\n".join(json.dumps({"a": r["text"], "b": "the cat", "label": r["label"]}) for r in rows))
            data["tasks"]["has_animal"]["data"][split] = str(out)
        data["tasks"]["has_animal"]["input"] = ["a", "b"]

    source = open_suite(_variant(own_suite, tmp_path, pairs))
    pool = TaskPool(source, split="test", limit=4)
    tok = transformers.AutoTokenizer.from_pretrained(own_suite.parent / "models/base")
    first = _rows(tmp_path / "pair-test.jsonl")[0]
    expected = tok(first["a"], first["b"])["input_ids"]
    encoded = pool.inputs("has_animal", "test")
    assert encoded.batch(torch.tensor([0]))["input_ids"][0].tolist() == expected
