"""ZooWriter (atomic, resumable), fine_tune determinism and the batching helpers."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from modmerge.checkpoints import open_checkpoint
from modmerge.tasks.batching import (
    EncodedTexts,
    eval_batches,
    image_batches,
    pixel_values,
    text_batches,
)
from modmerge.tasks.models import TaskClassifier, body_state, load_body
from modmerge.zoo import build as build_module
from modmerge.zoo.build import ZooWriter, fine_tune, new_head
from modmerge.zoo.datasets import Split
from modmerge.zoo.manifest import BackboneInfo, TaskEntry, ZooManifest
from modmerge.zoo.store import ZooError, ZooStore, sha256_file


def _vit() -> transformers.ViTModel:
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16,
                                    num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    return transformers.ViTModel(config, add_pooling_layer=False)


INFO = BackboneInfo(name="vit-test", architecture="vit", parameters=1, self_pretrained=True, source="test")


def _data(n: int = 12) -> dict[str, Split]:
    gen = torch.Generator().manual_seed(0)
    return {s: Split(torch.rand(n, 8, 8, generator=gen), [i % 2 for i in range(n)]) for s in ("train", "validation", "test")}


def _entry(name: str) -> TaskEntry:
    return TaskEntry(name=name, modality="image", description="t", label_names=["a", "b"], pooling="cls",
                     metrics={"individual_test": 0.5})


@pytest.fixture
def writer(tmp_path):
    w = ZooWriter(ZooStore(tmp_path), "toy", seed=3)
    w.write_backbone(_vit(), INFO)
    return w


def test_write_task_fills_paths_hashes_and_keeps_backbone_keys(writer):
    body = load_body(writer.backbone_dir)
    entry = writer.write_task(_entry("a"), body, new_head(16, 2, seed=0), _data())
    root = writer.root
    assert entry.body == "tasks/a/body" and entry.head == "tasks/a/head.safetensors" and entry.data == "data/a.pt"
    assert entry.split_sizes == {"train": 12, "validation": 12, "test": 12}
    assert entry.head_parameters == 16 * 2 + 2
    for rel, digest in entry.sha256.items():
        assert sha256_file(root / rel) == digest
    with open_checkpoint(root / "backbone") as bb, open_checkpoint(root / entry.body) as tuned:
        assert sorted(bb.keys()) == sorted(tuned.keys())
    # A state dict body is written with the backbone's config and the same keys.
    state = {k: v + 1 for k, v in body_state(body).items()}
    entry_b = writer.write_task(_entry("b"), state, new_head(16, 2, seed=1), _data())
    loaded = body_state(load_body(root / entry_b.body))
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    data = torch.load(root / "data" / "b.pt", weights_only=True)
    assert data["test"]["labels"].dtype == torch.int64 and data["test"]["inputs"].shape == (12, 8, 8)


def test_resume_skips_built_and_rebuilds_half_built(tmp_path, writer):
    writer.write_task(_entry("done"), load_body(writer.backbone_dir), new_head(16, 2, seed=0), _data())
    half = writer.root / "tasks" / "half"
    (half / "body").mkdir(parents=True)  # as left by a build killed before task.json
    (writer.root / "data" / "half.pt").write_bytes(b"partial")
    leftover = writer.root / "tasks" / ".x.tmp-dead"
    leftover.mkdir()

    again = ZooWriter(ZooStore(tmp_path), "toy", seed=3)
    assert not leftover.exists()  # temporary leftovers are removed on open
    assert again.has_backbone()
    assert again.has_task("done") and again.entry("done").metrics == {"individual_test": 0.5}
    assert not again.has_task("half")
    assert not half.exists() and not (writer.root / "data" / "half.pt").exists()
    assert not again.has_task("never")


def test_interrupted_write_leaves_no_task(monkeypatch, writer):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build_module, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        writer.write_task(_entry("a"), load_body(writer.backbone_dir), new_head(16, 2, seed=0), _data())
    monkeypatch.undo()
    fresh = ZooWriter(writer.store, "toy", seed=3)
    assert not (writer.root / "tasks" / "a").exists()
    assert not any(p.name.startswith(".") for p in (writer.root / "tasks").iterdir())
    assert not fresh.has_task("a")


def test_half_written_backbone_is_removed(tmp_path):
    w = ZooWriter(ZooStore(tmp_path), "toy", seed=0)
    (w.backbone_dir).mkdir()
    assert not w.has_backbone() and not w.backbone_dir.exists()


def test_manifest_round_trip(writer):
    writer.write_task(_entry("a"), load_body(writer.backbone_dir), new_head(16, 2, seed=0), _data())
    manifest = writer.finish(notes=["hello"], build_seconds=1.234)
    zoo = writer.store.load("toy")
    assert zoo.manifest == manifest
    assert ZooManifest.model_validate_json((writer.root / "manifest.json").read_text()) == manifest
    assert manifest.seed == 3 and manifest.notes == ["hello"] and manifest.build_seconds == 1.23
    assert {"torch", "transformers", "peft", "numpy", "modmerge"} <= set(manifest.packages)
    assert manifest.sha256["backbone/model.safetensors"] == sha256_file(writer.root / "backbone/model.safetensors")
    assert manifest.task("a").split_sizes["test"] == 12
    assert writer.existing() is not None
    assert {c.kind for c in zoo.component_map().components()} == {"embed", "attn", "mlp", "norm"}


def test_seed_mismatch_and_empty_finish_are_errors(tmp_path, writer):
    with pytest.raises(ZooError, match="seed 3, not 4"):
        ZooWriter(ZooStore(tmp_path), "toy", seed=4)
    with pytest.raises(ZooError, match="before any task"):
        writer.finish(notes=[], build_seconds=0.0)
    assert json.loads((writer.root / "build.json").read_text())["seed"] == 3


def _train(seed: int) -> tuple[dict[str, torch.Tensor], dict]:
    torch.manual_seed(0)
    model = TaskClassifier(_vit(), new_head(16, 2, seed=1), pooling="cls")
    gen = torch.Generator().manual_seed(5)
    x, y = pixel_values(torch.rand(40, 8, 8, generator=gen)), torch.randint(0, 2, (40,), generator=gen)
    stats = fine_tune(model, lambda e: image_batches(x, y, batch_size=8, seed=seed, epoch=e), epochs=2, lr=1e-3,
                      seed=seed)
    return {k: v.clone() for k, v in model.state_dict().items()}, stats


def test_fine_tune_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, stats = _train(seed=0)
    b, _ = _train(seed=0)
    c, _ = _train(seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert stats["steps"] == 10 and len(stats["epoch_loss"]) == 2
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)


def test_text_batches_cover_every_example_once_padded_per_batch():
    lengths = [3, 9, 4, 2, 8, 5, 7, 6, 1, 10]
    enc = EncodedTexts.from_lists([[i + 1] * n for i, n in enumerate(lengths)], pad_id=0)
    labels = torch.arange(10)
    batches = text_batches(enc, labels, batch_size=3, seed=0, epoch=0, bucket_batches=2)
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(10))
    for inputs, y in batches:
        assert inputs["input_ids"].shape[1] == max(lengths[i] for i in y.tolist())
        assert inputs["attention_mask"].sum(1).tolist() == [lengths[i] for i in y.tolist()]
    again = text_batches(enc, labels, batch_size=3, seed=0, epoch=0, bucket_batches=2)
    assert [y.tolist() for _, y in again] == [y.tolist() for _, y in batches]
    other = text_batches(enc, labels, batch_size=3, seed=0, epoch=1, bucket_batches=2)
    assert [y.tolist() for _, y in other] != [y.tolist() for _, y in batches]
    # Evaluation batches: longest first, every index once.
    order = [i for idx, _ in eval_batches(enc, 4) for i in idx.tolist()]
    assert order == sorted(range(10), key=lambda i: -lengths[i])
    assert enc.head(3).lengths.tolist() == lengths[:3]
