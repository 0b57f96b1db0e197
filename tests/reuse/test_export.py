"""export_model: a HF directory that transformers loads, with the engine's logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from fake_library import fake_library

from modmerge.errors import ModmergeError
from modmerge.experts.grouping import GroupingMatrix
from modmerge.reuse.engine import ReuseEngine
from modmerge.reuse.export import HEAD_FILE, export_model


@pytest.fixture(scope="module")
def lib(tiny_zoo, tmp_path_factory):
    units = len(tiny_zoo.component_map().units("component", exclude_kinds=("head",)))
    pairs = np.array([[0] * units, [0] * units, [1] * units, [2] * units])
    return fake_library(tiny_zoo, [GroupingMatrix.from_array(pairs)], tmp_path_factory.mktemp("fake_lib_export"))


def test_export_loads_with_transformers_and_gives_the_engine_logits(lib, tiny_zoo, tmp_path):
    task = "first_group"
    result = export_model(lib, "c0", task, tmp_path / "model")
    assert result.exact and result.architecture == "BertForSequenceClassification"
    names = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "model")
    texts = list(tiny_zoo.task_data(task)["test"]["inputs"][:6])
    engine = ReuseEngine(lib, config_id="c0")
    ours = torch.tensor([o["logits"] for o in engine.predict([{"text": s} for s in texts], tasks=[task] * 6,
                                                             with_logits=True)])
    with torch.inference_mode():
        theirs = torch.cat([model(**tokenizer(s, return_tensors="pt", truncation=True, max_length=16)).logits
                            for s in texts])
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert model.config.id2label[0] == "color" and result.chain == engine.chain_of(task)


def test_export_without_a_matching_class_writes_base_model_and_head(lib, tmp_path, monkeypatch):
    import modmerge.reuse.export as export

    monkeypatch.setattr(export, "AUTO_CLASSES", {})
    result = export_model(lib, "c0", "has_color", tmp_path / "base")
    assert not result.exact and (tmp_path / "base" / HEAD_FILE).is_file()
    base = transformers.AutoModel.from_pretrained(tmp_path / "base")
    assert base.config.modmerge_head["pooling"] == "pooler"


def test_export_errors(lib, tmp_path):
    with pytest.raises(ModmergeError, match="task 'nope' is not in the library"):
        export_model(lib, "c0", "nope", tmp_path / "x")
    with pytest.raises(ModmergeError, match="unknown configuration 'c7'"):
        export_model(lib, "c7", "has_color", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ModmergeError, match="exists and is not empty"):
        export_model(lib, "c0", "has_color", tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").exists()


def test_export_overwrite_replaces_only_an_earlier_export_and_force_any(lib, tmp_path):
    out = tmp_path / "model"
    export_model(lib, "c0", "has_color", out)
    assert json.loads((out / "modmerge.json").read_text())["written_by"] == "modmerge export"
    (out / "stale.txt").write_text("from the first export's folder")
    export_model(lib, "c0", "first_group", out, overwrite=True)  # an earlier export: replaced whole
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("years of work")
    with pytest.raises(ModmergeError, match="not replaced: no modmerge merge or export wrote it"):
        export_model(lib, "c0", "has_color", notes, overwrite=True)
    assert (notes / "thesis.tex").read_text() == "years of work"
    export_model(lib, "c0", "has_color", notes, force=True)
    assert not (notes / "thesis.tex").exists() and (notes / "modmerge.json").is_file()
