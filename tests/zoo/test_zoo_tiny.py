"""The tiny zoo as built, and the zoo registry (build_zoo / list_zoos)."""

from __future__ import annotations

import pytest

from modmerge.checkpoints import open_checkpoint
from modmerge.zoo.registry import ZOOS, build_zoo, get_zoo, list_zoos
from modmerge.zoo.store import ZooError, ZooStore, sha256_file
from modmerge.zoo.tiny import LABELLERS, build_tiny, tiny_task


def test_manifest_describes_the_zoo(tiny_zoo):
    m = tiny_zoo.manifest
    assert m.name == "tiny" and m.seed == 0 and m.tasks and m.build_seconds < 60
    assert m.backbone.architecture == "bert" and m.backbone.self_pretrained
    assert "random" in m.backbone.pretraining
    assert tiny_zoo.tasks == list(LABELLERS)
    for entry in m.tasks:
        assert entry.split_sizes == {"train": 480, "validation": 128, "test": 256}
        assert entry.pooling == "pooler" and entry.modality == "text"
        for rel, digest in entry.sha256.items():
            assert sha256_file(tiny_zoo.root / rel) == digest


def test_individual_models_clearly_beat_the_pretrained_body(tiny_zoo):
    individual = [e.metrics["individual_test"] for e in tiny_zoo.manifest.tasks]
    pretrained = [e.metrics["pretrained_test"] for e in tiny_zoo.manifest.tasks]
    assert sum(individual) / len(individual) > sum(pretrained) / len(pretrained) + 0.2
    assert all(i > p for i, p in zip(individual, pretrained, strict=True))


def test_bodies_share_the_backbone_keys_and_components(tiny_zoo):
    with tiny_zoo.backbone() as bb:
        keys = sorted(bb.keys())
    for task in tiny_zoo.tasks:
        with tiny_zoo.task_body(task) as body:
            assert sorted(body.keys()) == keys
    kinds = {c.kind for c in tiny_zoo.component_map().components()}
    assert kinds == {"embed", "attn", "mlp", "norm", "head"}
    assert (tiny_zoo.root / "backbone" / "tokenizer.json").is_file()
    with open_checkpoint(tiny_zoo.root / tiny_zoo.entry("has_color").body) as ckpt:
        assert ckpt.config is not None and ckpt.config["model_type"] == "bert"


def test_task_data_is_seeded():
    a, b, c = tiny_task("has_color", 0), tiny_task("has_color", 0), tiny_task("has_color", 1)
    assert a.train.inputs == b.train.inputs and a.test.labels == b.test.labels
    assert a.train.inputs != c.train.inputs
    # Tasks share one input distribution but label it differently.
    assert set(" ".join(a.train.inputs).split()) == set(" ".join(tiny_task("has_animal", 0).train.inputs).split())


def test_rebuilding_a_built_zoo_only_opens_it(tiny_zoo, monkeypatch):
    import modmerge.zoo.tiny as tiny_module

    def no_work(*args, **kwargs):
        raise AssertionError("a built zoo was rebuilt: it read its backbone to train again")

    monkeypatch.setattr(tiny_module, "load_body", no_work)
    again = build_tiny(ZooStore(tiny_zoo.root.parent.parent), seed=0)
    assert again.manifest == tiny_zoo.manifest


def test_registry_and_listing(tiny_zoo, tmp_path):
    assert {"tiny", "vision"} <= set(ZOOS)
    assert get_zoo("vision").name == "vision"
    with pytest.raises(ZooError, match="unknown zoo 'nope'"):
        build_zoo("nope", ZooStore(tmp_path))
    store = ZooStore(tiny_zoo.root.parent.parent)
    assert build_zoo("tiny", store, seed=0).manifest == tiny_zoo.manifest
    rows = {row.name: row for row in list_zoos(store)}
    assert rows["tiny"].built and rows["tiny"].tasks == 4 and rows["tiny"].size_bytes > 0
    assert rows["tiny"].backbone.startswith("tiny-bert")
    empty = {row.name: row for row in list_zoos(ZooStore(tmp_path))}
    assert not empty["vision"].built and empty["vision"].tasks == 0 and empty["vision"].size_bytes == 0


def test_a_second_build_of_a_zoo_waits_for_the_first(tiny_zoo, caplog):
    import threading

    store = ZooStore(tiny_zoo.root.parent.parent)
    results = []
    with store.build_lock("tiny"):  # a build of 'tiny' in progress elsewhere
        waiter = threading.Thread(target=lambda: results.append(build_zoo("tiny", store, seed=0)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not results  # blocked on the lock, nothing written
        with store.build_lock("other"):  # other zoos' locks are independent
            pass
    waiter.join(timeout=30)
    assert not waiter.is_alive() and results[0].manifest == tiny_zoo.manifest
    assert "waiting for another build" in caplog.text
