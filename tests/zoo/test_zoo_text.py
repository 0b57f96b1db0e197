"""The text zoo builder, run on a tiny BERT with two tiny tasks (seconds); the real MiniLM is slow-marked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modmerge.tasks.taskpool import TaskPool
from modmerge.zoo.assets import AssetStore
from modmerge.zoo.datasets import TEXT_TASKS, Split, SplitSizes, TaskData
from modmerge.zoo.manifest import BackboneInfo
from modmerge.zoo.store import ZooStore, sha256_file
from modmerge.zoo.text import (
    TEXT_ZOO_TASKS,
    TextBackbone,
    TextSettings,
    build_text,
    minilm_backbone,
    torch_threads,
)
from modmerge.zoo.tiny import tiny_body, tiny_task, tiny_tokenizer

TASKS = ("has_animal", "first_group")
SETTINGS = TextSettings(tasks=TASKS, max_length=16, train_examples=256, batch_size=32, epochs=8, lr=2e-3, threads=1,
                        small_task_below=0)


def small_task(name: str, seed: int) -> TaskData:
    """A tiny task built here: the tiny zoo's synthetic sentences, cut to 256 / 48 / 96 examples."""
    full = tiny_task(name, seed)

    def cut(split: Split, n: int) -> Split:
        return Split(list(split.inputs[:n]), list(split.labels[:n]))

    return TaskData(name, "text", full.label_names, cut(full.train, 256), cut(full.validation, 48),
                    cut(full.test, 96), full.description, source="test")  # fmt: skip


class RecordingLoader:
    """A task loader that remembers which tasks it was asked for."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, name: str, seed: int) -> TaskData:
        self.calls.append(name)
        return small_task(name, seed)


def make_tiny_backbone(directory: Path) -> TextBackbone:
    tokenizer = tiny_tokenizer(directory)
    tiny_body(len(tokenizer), seed=3).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    info = BackboneInfo(name="tiny-bert (test)", architecture="bert", parameters=0, self_pretrained=True,
                        source="tests/zoo/test_zoo_text.py", pretraining="none: random init")  # fmt: skip
    return TextBackbone(directory, info)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> TextBackbone:
    return make_tiny_backbone(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_backbone):
    store = ZooStore(tmp_path_factory.mktemp("text_store"))
    loader = RecordingLoader()
    zoo = build_text(store, AssetStore(store.root / "assets"), settings=SETTINGS, backbone=tiny_backbone,
                     load_task=loader)  # fmt: skip
    return store, zoo, loader


def test_layout_and_manifest(built):
    _, zoo, loader = built
    assert loader.calls == list(TASKS)
    m = zoo.manifest
    assert m.name == "text" and zoo.tasks == list(TASKS) and m.seed == 0
    assert m.backbone.name == "tiny-bert (test)" and m.backbone.parameters > 0 and m.backbone.architecture == "bert"
    assert m.packages["peft"] != "absent" and m.build_seconds > 0
    backbone = zoo.root / "backbone"
    assert (backbone / "model.safetensors").is_file() and (backbone / "tokenizer.json").is_file()
    assert set(m.sha256) == {"backbone/model.safetensors"}
    for entry in m.tasks:
        assert entry.modality == "text" and entry.pooling == "pooler"
        assert entry.fine_tuning["method"] == "full" and entry.fine_tuning["max_length"] == 16
        assert entry.fine_tuning["train_examples"] == 256 and entry.fine_tuning["steps"] == 8 * 8
        assert set(entry.metrics) == {"individual_validation", "individual_test", "pretrained_test"}
        assert entry.split_sizes == {"train": 256, "validation": 48, "test": 96}
        assert entry.head_parameters == 33 * len(entry.label_names)  # hidden 32 + bias
        task_dir = zoo.root / "tasks" / entry.name
        assert (task_dir / "body" / "model.safetensors").is_file() and (task_dir / "head.safetensors").is_file()
        for rel, digest in entry.sha256.items():
            assert sha256_file(zoo.root / rel) == digest
    assert "sotu_party" in " ".join(m.notes)  # why it was left out is written down


def test_bodies_are_fully_fine_tuned_with_the_pooler_in_the_body(built):
    _, zoo, _ = built
    with zoo.backbone() as bb:
        base = {k: bb.get(k) for k in bb.keys()}
    assert any(k.startswith("pooler.") for k in base)
    for task in zoo.tasks:
        with zoo.task_body(task) as body:
            tuned = {k: body.get(k) for k in body.keys()}
        assert sorted(tuned) == sorted(base)
        changed = {k for k in base if not torch.equal(base[k], tuned[k])}
        # Every kind of component moved: embeddings, attention, MLP, LayerNorm and the pooler.
        for probe in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
                      "encoder.layer.1.intermediate.dense.weight", "encoder.layer.1.output.LayerNorm.weight",
                      "pooler.dense.weight"):  # fmt: skip
            assert probe in changed, (task, probe)
        assert set(zoo.task_head(task)) == {"classifier.weight", "classifier.bias"}


def test_recorded_metrics_are_what_the_task_pool_measures(built):
    _, zoo, _ = built
    test_pool, val_pool = TaskPool(zoo, split="test"), TaskPool(zoo, split="validation")
    for entry in zoo.manifest.tasks:
        assert test_pool.evaluate(entry.name) == pytest.approx(entry.metrics["individual_test"])
        assert val_pool.evaluate(entry.name) == pytest.approx(entry.metrics["individual_validation"])
        pretrained = test_pool.evaluate(entry.name, test_pool.pretrained_state())
        assert pretrained == pytest.approx(entry.metrics["pretrained_test"])


def test_fine_tuning_learns_the_tasks(built):
    _, zoo, _ = built
    # has_animal is binary and balanced-ish, first_group has 4 classes: both well above chance.
    assert zoo.manifest.task("has_animal").metrics["individual_test"] > 0.75
    assert zoo.manifest.task("first_group").metrics["individual_test"] > 0.4


def test_resume_rebuilds_only_the_missing_task(built, tiny_backbone):
    store, zoo, _ = built
    kept = zoo.entry("has_animal")
    (zoo.root / "manifest.json").unlink()
    (zoo.root / "tasks" / "first_group" / "task.json").unlink()  # half-built: no marker
    loader = RecordingLoader()
    again = build_text(store, AssetStore(store.root / "assets"), settings=SETTINGS, backbone=tiny_backbone,
                       load_task=loader)  # fmt: skip
    assert loader.calls == ["first_group"]
    assert again.entry("has_animal") == kept
    assert again.entry("first_group").metrics  # rebuilt and recorded
    # Seeded: the rebuilt task has the same head as before, bit for bit (same threads, same data).
    assert again.entry("first_group").sha256[again.entry("first_group").head] == zoo.entry("first_group").sha256[
        zoo.entry("first_group").head]
    # A finished zoo is only opened: no task is loaded.
    untouched = RecordingLoader()
    build_text(store, AssetStore(store.root / "assets"), settings=SETTINGS, backbone=tiny_backbone, load_task=untouched)
    assert untouched.calls == []


def test_small_tasks_train_for_more_epochs(tmp_path, tiny_backbone):
    settings = TextSettings(tasks=("has_color",), max_length=16, train_examples=64, epochs=1, small_task_epochs=3,
                            small_task_below=100, threads=1)  # fmt: skip
    zoo = build_text(ZooStore(tmp_path), AssetStore(tmp_path / "assets"), settings=settings, backbone=tiny_backbone,
                     load_task=RecordingLoader())  # fmt: skip
    record = zoo.entry("has_color").fine_tuning
    assert record["epochs"] == 3 and record["steps"] == 3 * 2 and record["train_examples"] == 64


def test_default_settings_choose_similar_and_dissimilar_tasks():
    settings = TextSettings()
    assert len(settings.tasks) >= 7 and set(settings.tasks) <= set(TEXT_TASKS) and settings.tasks == TEXT_ZOO_TASKS
    tweets = [t for t in settings.tasks if t.startswith("tweets_")]
    assert len(tweets) >= 4 and {"spam", "sotu_era", "fortune_topic"} <= set(settings.tasks)
    assert "sotu_party" not in settings.tasks
    assert settings.fine_tuning("full", 2)["max_length"] == 64
    # Small tasks (tweets_self_driving: 802 examples) train longer, for a comparable step count.
    assert settings.epochs_for(2000) == settings.epochs_for(1690) == 2 and settings.epochs_for(802) == 5


def test_minilm_backbone_names_the_pinned_wheel():
    store = AssetStore.default()
    if store.info("minilm_l6") is None:  # minilm_backbone would fetch it; tests stay offline
        pytest.skip("MiniLM-L6 asset not fetched into the default store")
    pin = store.pins["minilm_l6"]
    info = minilm_backbone(store).info
    assert not info.self_pretrained and info.architecture == "bert"
    assert f"{pin.packages[0]}=={pin.version}" in info.source and pin.sha256[0] in info.source


def test_torch_threads_restores_the_setting():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.slow
def test_real_minilm_builds_one_small_task(tmp_path):
    """Real MiniLM-L6 and real sotu_era data, cut to a few batches (~30 s on 2 cores)."""
    assets = AssetStore.default()
    if assets.info("minilm_l6") is None or assets.info("sotu") is None:
        pytest.skip("MiniLM-L6 / sotu assets not fetched into the default store (run: modmerge zoo build text)")
    settings = TextSettings(tasks=("sotu_era",), train_examples=64, epochs=1, small_task_below=0,
                            sizes=SplitSizes(train=64, validation=32, test=64, min_test=32))  # fmt: skip
    zoo = build_text(ZooStore(tmp_path), assets, settings=settings)
    entry = zoo.entry("sotu_era")
    assert zoo.manifest.backbone.parameters == 22_713_216 and not zoo.manifest.backbone.self_pretrained
    assert entry.split_sizes == {"train": 64, "validation": 32, "test": 64} and entry.fine_tuning["steps"] == 2
    config = json.loads((zoo.root / "backbone" / "config.json").read_text())
    assert config["num_hidden_layers"] == 6 and config["hidden_size"] == 384
    assert TaskPool(zoo).evaluate("sotu_era") == pytest.approx(entry.metrics["individual_test"])
