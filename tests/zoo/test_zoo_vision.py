"""The vision zoo: pretext batches, the ViT's components, and a shrunken build on fake assets."""

from __future__ import annotations

import pytest
import torch
import transformers

from modmerge.components import decompose
from modmerge.tasks.models import body_state, load_body_state
from modmerge.tasks.taskpool import TaskPool
from modmerge.zoo.store import ZooStore
from modmerge.zoo.vision import (
    VISION_TASKS,
    VisionSettings,
    build_vision,
    rotation_batches,
    vision_config,
)


def test_rotation_batches_rotate_each_image_by_its_label():
    gen = torch.Generator().manual_seed(0)
    pixels = torch.rand(20, 1, 28, 28, generator=gen)
    batches = rotation_batches(pixels, batch_size=8, seed=0, epoch=0)
    assert sum(len(y) for _, y in batches) == 20
    labels = torch.cat([y for _, y in batches])
    assert set(labels.tolist()) <= {0, 1, 2, 3} and len(set(labels.tolist())) > 1
    for inputs, y in batches:
        for image, k in zip(inputs["pixel_values"], y.tolist(), strict=True):
            # Each image must be some original image rotated by exactly k quarter turns.
            undone = torch.rot90(image, -k, dims=(1, 2))
            assert any(torch.equal(undone, original) for original in pixels)
    assert [y.tolist() for _, y in rotation_batches(pixels, batch_size=8, seed=0, epoch=0)] == [y.tolist() for _, y in batches]


def test_vit_checkpoint_names_decompose_like_the_papers_vit():
    body = transformers.ViTModel(vision_config(VisionSettings(hidden_size=32, layers=2, mlp_size=64)), add_pooling_layer=False)
    state = body_state(body)
    cmap = decompose(list(state), "vit")
    assert not cmap.unmatched
    assert {c.kind for c in cmap.components()} == {"embed", "attn", "mlp", "norm"}
    assert "encoder.layer.1.attention.attention.query.weight" in state  # checkpoint names, not module names
    # Checkpoint-named states load back into the module.
    doubled = {k: v * 2 for k, v in state.items()}
    load_body_state(body, doubled)
    assert torch.equal(body_state(body)["layernorm.weight"], doubled["layernorm.weight"])


@pytest.mark.slow
def test_shrunken_build_on_fake_assets(fake_store, tmp_path):
    settings = VisionSettings(hidden_size=32, layers=2, mlp_size=64, pretrain_epochs=1, pretrain_images=256,
                              epochs=1, small_task_epochs=1, train_examples=128)
    zoo = build_vision(ZooStore(tmp_path), fake_store, seed=0, settings=settings)
    m = zoo.manifest
    assert zoo.tasks == list(VISION_TASKS)
    assert m.backbone.self_pretrained and "rotation" in m.backbone.pretraining
    assert any("SELF-PRETRAINED" in note for note in m.notes)
    for entry in m.tasks:
        assert set(entry.metrics) == {"individual_validation", "individual_test", "pretrained_test"}
        assert entry.pooling == "cls" and entry.fine_tuning["train_examples"] <= 128
    pool = TaskPool(zoo)
    assert pool.evaluate("mnist_parity") == m.task("mnist_parity").metrics["individual_test"]
    assert pool.evaluate("fashion", pool.pretrained_state()) == m.task("fashion").metrics["pretrained_test"]
