"""The PEFT zoos (LoRA, (IA)^3) on a tiny BERT with two tiny tasks: layout, dense bodies, metrics."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

# conftest.py puts this directory on sys.path; the tiny backbone and loader are shared with the text tests.
from test_zoo_text import RecordingLoader, make_tiny_backbone

from modmerge.tasks.models import body_state, load_body
from modmerge.tasks.taskpool import TaskPool
from modmerge.zoo.assets import AssetStore
from modmerge.zoo.peft_zoo import PEFT_VARIANTS, build_peft, build_peft_zoos, get_variant
from modmerge.zoo.store import ZooError, ZooStore, sha256_file
from modmerge.zoo.text import TextSettings

TASKS = ("has_animal", "first_group")
SETTINGS = TextSettings(tasks=TASKS, max_length=16, train_examples=256, batch_size=32, epochs=4, lr=1e-2, threads=1,
                        small_task_below=0)


@pytest.fixture(scope="module")
def peft_zoos(tmp_path_factory):
    """Both PEFT zoos over one tiny backbone, built once for the module."""
    backbone = make_tiny_backbone(tmp_path_factory.mktemp("tiny_bert"))
    store = ZooStore(tmp_path_factory.mktemp("peft_store"))
    loader = RecordingLoader()
    zoos = build_peft_zoos(store, AssetStore(store.root / "assets"), settings=SETTINGS, backbone=backbone,
                           load_task=loader)  # fmt: skip
    return store, {zoo.name: zoo for zoo in zoos}, loader, backbone


def test_one_zoo_per_variant_with_adapter_bodies(peft_zoos):
    _, zoos, loader, _ = peft_zoos
    assert sorted(zoos) == ["peft-ia3", "peft-lora"]
    assert loader.calls == list(TASKS) * 2
    for name, zoo in zoos.items():
        assert zoo.tasks == list(TASKS)
        for entry in zoo.manifest.tasks:
            body_dir = zoo.root / entry.body
            assert sorted(p.name for p in body_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
            assert entry.fine_tuning["method"] == name.removeprefix("peft-") and entry.pooling == "pooler"
            assert 0 < int(entry.fine_tuning["trainable_body_parameters"]) < zoo.manifest.backbone.parameters
            assert set(entry.metrics) == {"individual_validation", "individual_test", "pretrained_test"}
            assert f"{entry.body}/adapter_model.safetensors" in entry.sha256
            for rel, digest in entry.sha256.items():
                assert sha256_file(zoo.root / rel) == digest
            config = json.loads((body_dir / "adapter_config.json").read_text())
            assert config["peft_type"] == name.removeprefix("peft-").upper() and config["modules_to_save"] == ["pooler"]
        assert not list(zoo.root.glob(".*tmp-*"))  # the temporary adapter directories are gone


@pytest.mark.parametrize("zoo_name", ["peft-lora", "peft-ia3"])
def test_task_body_is_the_dense_merge_and_unload(peft_zoos, zoo_name):
    """Zoo.task_body (backbone + adapter delta, lazily) equals peft's own merge_and_unload."""
    _, zoos, _, _ = peft_zoos
    zoo = zoos[zoo_name]
    backbone_dir = zoo.root / "backbone"
    for task in zoo.tasks:
        adapted = PeftModel.from_pretrained(load_body(backbone_dir), zoo.root / zoo.entry(task).body)
        if zoo_name == "peft-ia3":
            # peft 0.21's IA3 unload fails on a modules_to_save wrapper around a module without a
            # ``weight`` (BertPooler); put the trained pooler in place by hand, then unload the rest.
            inner = adapted.base_model.model
            inner.pooler = inner.pooler.modules_to_save["default"]
        expected = body_state(adapted.merge_and_unload())
        with zoo.task_body(task) as body:
            dense = {k: body.get(k) for k in body.keys()}
        assert sorted(dense) == sorted(expected)
        for key, value in expected.items():
            torch.testing.assert_close(dense[key], value, rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")


def test_task_vectors_sit_where_each_adapter_acts(peft_zoos):
    _, zoos, _, _ = peft_zoos
    for name, zoo in zoos.items():
        with zoo.backbone() as bb:
            base = {k: bb.get(k) for k in bb.keys()}
        with zoo.task_body("has_animal") as body:
            changed = {k for k in base if not torch.equal(body.get(k), base[k])}
        assert "pooler.dense.weight" in changed  # trained in full (modules_to_save), never merged
        assert not any("LayerNorm" in k or k.startswith("embeddings.") for k in changed)
        if name == "peft-lora":  # every encoder linear weight; no bias
            assert "encoder.layer.0.attention.self.key.weight" in changed
            assert "encoder.layer.1.intermediate.dense.weight" in changed
            assert "encoder.layer.0.attention.self.query.bias" not in changed
        else:  # (IA)^3 rescales keys, values and the FFN output's inputs (tiny biases start at 0)
            assert {"encoder.layer.0.attention.self.key.weight", "encoder.layer.0.attention.self.value.weight",
                    "encoder.layer.1.output.dense.weight"} <= changed  # fmt: skip
            assert not any(".query." in k or "intermediate" in k or "attention.output" in k for k in changed)


def test_metrics_match_the_task_pool_on_dense_bodies(peft_zoos):
    _, zoos, _, _ = peft_zoos
    for zoo in zoos.values():
        pool = TaskPool(zoo, split="test")
        for entry in zoo.manifest.tasks:
            assert pool.evaluate(entry.name) == pytest.approx(entry.metrics["individual_test"])
            assert pool.evaluate(entry.name, pool.pretrained_state()) == pytest.approx(entry.metrics["pretrained_test"])
    # No accuracy bar here: adapters barely move a RANDOMLY initialised tiny BERT in a few steps
    # (its features carry no signal to rescale); whether they learn is checked on the real zoo.


def test_a_finished_peft_zoo_is_only_opened(peft_zoos):
    store, zoos, _, backbone = peft_zoos
    loader = RecordingLoader()
    again = build_peft(store, AssetStore(store.root / "assets"), "ia3", settings=SETTINGS, backbone=backbone,
                       load_task=loader)  # fmt: skip
    assert loader.calls == [] and again.manifest == zoos["peft-ia3"].manifest


def test_variants_and_their_defaults():
    assert set(PEFT_VARIANTS) == {"lora", "ia3"}
    assert get_variant("lora").zoo_name == "peft-lora"
    assert get_variant("ia3").settings().lr == pytest.approx(3e-3)
    assert get_variant("ia3").settings().weight_decay == 0.0 and get_variant("lora").settings().weight_decay > 0
    with pytest.raises(ZooError, match="unknown PEFT variant 'dora'"):
        get_variant("dora")


def test_adapter_without_base_path_refuses_to_open_alone(peft_zoos):
    """The adapter config names no base (the backbone lives beside it); opening it bare says so."""
    from modmerge.checkpoints import open_checkpoint
    from modmerge.errors import CheckpointError

    _, zoos, _, _ = peft_zoos
    zoo = zoos["peft-lora"]
    with pytest.raises(CheckpointError, match="base_model_name_or_path"):
        open_checkpoint(zoo.root / zoo.entry("has_animal").body)


def test_registry_builds_the_peft_group_in_order(monkeypatch, tmp_path):
    from modmerge.zoo import registry

    assert {"text", "peft-lora", "peft-ia3"} <= set(registry.ZOOS) and registry.GROUPS["peft"] == ("peft-lora", "peft-ia3")
    built: list[str] = []

    def fake(name: str) -> registry.ZooSpec:
        return registry.ZooSpec(name, "fake", lambda store, assets, seed, progress: built.append(name) or name)

    for name in ("peft-lora", "peft-ia3"):
        monkeypatch.setitem(registry.ZOOS, name, fake(name))
    assert registry.build_zoo("peft", ZooStore(tmp_path)) == "peft-ia3"
    assert built == ["peft-lora", "peft-ia3"]
    with pytest.raises(ZooError, match=r"unknown zoo 'nope'; available: .*peft-ia3, peft$"):
        registry.build_zoo("nope", ZooStore(tmp_path))
