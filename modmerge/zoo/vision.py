"""The ``vision`` zoo: a small ViT, SELF-PRETRAINED in this project, fully fine-tuned on 7 image tasks.

No pretrained vision backbone can be had offline, so the backbone is pretrained here, and every
report must say so. Backbone: a transformers ``ViTModel`` (28x28 grey images, 7x7 patches -> 16
tokens + CLS, hidden 128, 6 layers, 4 heads, MLP 384, no pooler), so its components are embed /
attn / mlp / norm like the paper's ViT-B/32. Pretraining objective: 4-way ROTATION PREDICTION
(0/90/180/270 degrees, a linear head on the CLS token, thrown away afterwards) on the 48k
Fashion-MNIST training images that no task uses (:func:`load_vision_pretraining`); no task label
is ever seen in pretraining.

Tasks (:data:`VISION_TASKS`) are chosen so some share inputs (fashion / fashion_coarse;
mnist / mnist_parity), some share a domain under an input shift (fashion_inverted,
mnist_rot90, sklearn_digits) and others differ (clothes vs digits). Each is FULLY fine-tuned
(whole body + a new linear head on the CLS token).

Example::

    >>> zoo = build_vision(ZooStore.default(), AssetStore.default(), progress=progress)  # doctest: +SKIP
    >>> zoo.manifest.task("mnist").metrics                                                # doctest: +SKIP
    {'individual_validation': 0.97, 'individual_test': 0.97, 'pretrained_test': 0.11}
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import torch
import transformers
from rich.progress import Progress

from modmerge.tasks.batching import Batch, image_batches, pixel_values
from modmerge.tasks.models import TaskClassifier, body_state, load_body
from modmerge.tasks.spec import BackboneInfo, TaskEntry
from modmerge.tasks.taskpool import build_metrics, encode_inputs
from modmerge.zoo.assets import AssetStore
from modmerge.zoo.build import ZooWriter, count_parameters, fine_tune, new_head
from modmerge.zoo.datasets import IMAGE_TASKS, load_vision_pretraining
from modmerge.zoo.store import Zoo, ZooStore

logger = logging.getLogger(__name__)

VISION_TASKS = ("fashion", "fashion_coarse", "fashion_inverted", "mnist", "mnist_parity", "mnist_rot90",
                "sklearn_digits")  # fmt: skip


@dataclass(frozen=True)
class VisionSettings:
    """Sizes and hyperparameters of the vision zoo (defaults: the real zoo; tests shrink them).

    ``pretrain_images`` / ``train_examples`` cap how many images are used (None: all).
    """

    hidden_size: int = 128
    layers: int = 6
    heads: int = 4
    mlp_size: int = 384
    patch_size: int = 7
    pretrain_epochs: int = 2
    pretrain_lr: float = 1e-3
    pretrain_images: int | None = None
    batch_size: int = 64
    epochs: int = 4
    small_task_epochs: int = 8  # for tasks with < 2,000 training images (sklearn_digits)
    lr: float = 1e-3
    train_examples: int | None = None
    tasks: tuple[str, ...] = VISION_TASKS


def vision_config(settings: VisionSettings) -> transformers.ViTConfig:
    return transformers.ViTConfig(
        image_size=28, patch_size=settings.patch_size, num_channels=1, hidden_size=settings.hidden_size,
        num_hidden_layers=settings.layers, num_attention_heads=settings.heads,
        intermediate_size=settings.mlp_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def rotation_batches(pixels: torch.Tensor, *, batch_size: int, seed: int, epoch: int) -> list[Batch]:
    """Pretext batches: each image rotated by a seeded k * 90 degrees, labelled k (0..3).

    >>> batches = rotation_batches(torch.zeros(10, 1, 28, 28), batch_size=4, seed=0, epoch=0)
    >>> [len(y) for _, y in batches], int(max(int(y.max()) for _, y in batches)) <= 3
    ([4, 4, 2], True)
    """
    gen = torch.Generator().manual_seed(seed * 7919 + epoch)
    rotations = torch.randint(0, 4, (len(pixels),), generator=gen)
    batches = []
    # image_batches with the indices as "labels" gives the shuffled index of every image.
    for inputs, idx in image_batches(pixels, torch.arange(len(pixels)), batch_size=batch_size, seed=seed, epoch=epoch):
        images, labels = inputs["pixel_values"].clone(), rotations[idx]
        for k in range(1, 4):
            chosen = labels == k
            images[chosen] = torch.rot90(images[chosen], k, dims=(2, 3))
        batches.append(({"pixel_values": images}, labels))
    return batches


def pretrain_backbone(
    store_assets: AssetStore, settings: VisionSettings, *, seed: int, progress: Progress | None = None
) -> tuple[transformers.ViTModel, dict[str, float]]:
    """A ViT pretrained by rotation prediction on the task-disjoint Fashion-MNIST pretraining pool."""
    split = load_vision_pretraining(store_assets)
    images = split.inputs if settings.pretrain_images is None else split.inputs[: settings.pretrain_images]
    pixels = pixel_values(images)  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = transformers.ViTModel(vision_config(settings), add_pooling_layer=False)
    model = TaskClassifier(body, new_head(settings.hidden_size, 4, seed=seed), pooling="cls", dropout=0.0)
    stats = fine_tune(
        model, lambda epoch: rotation_batches(pixels, batch_size=128, seed=seed, epoch=epoch),
        epochs=settings.pretrain_epochs, lr=settings.pretrain_lr, weight_decay=0.05, seed=seed,
        progress=progress, description="vision: pretrain backbone (rotation prediction)",
    )
    # Accuracy of the pretext head on one more seeded epoch of rotations: a sanity figure only.
    with torch.inference_mode():
        batches = rotation_batches(pixels[:4096], batch_size=256, seed=seed + 1, epoch=0)
        correct = sum(int((model(**x).argmax(-1) == y).sum()) for x, y in batches)
    stats["pretext_accuracy"] = correct / min(len(pixels), 4096)
    stats["images"] = len(pixels)
    return body.eval(), stats


def build_vision(
    store: ZooStore, assets: AssetStore, *, seed: int = 0, progress: Progress | None = None,
    settings: VisionSettings | None = None, name: str = "vision",
) -> Zoo:
    """Build (or finish, or just open) the vision zoo; ~5-10 minutes on 2 cores with the defaults.

    Example::

        >>> zoo = build_vision(ZooStore(tmp), AssetStore.default(),
        ...                    settings=VisionSettings(pretrain_images=512, train_examples=256))  # doctest: +SKIP
    """
    settings = settings or VisionSettings()
    started = time.perf_counter()
    writer = ZooWriter(store, name, seed=seed)
    if (zoo := writer.existing()) is not None:
        return zoo
    if not writer.has_backbone():
        body, stats = pretrain_backbone(assets, settings, seed=seed, progress=progress)
        info = BackboneInfo(
            name=f"vit-{settings.layers}x{settings.hidden_size} (self-pretrained)", architecture="vit",
            parameters=count_parameters(body), self_pretrained=True, train_seconds=round(stats["seconds"], 2),
            source="pretrained inside modmerge (modmerge.zoo.vision); no external weights",
            pretraining=(
                f"4-way rotation prediction (0/90/180/270 degrees) on {stats['images']} Fashion-MNIST training "
                f"images disjoint from every task split (load_vision_pretraining), {settings.pretrain_epochs} "
                f"epochs, AdamW lr {settings.pretrain_lr}, batch 128; no task labels used; pretext accuracy "
                f"{stats['pretext_accuracy']:.3f}"
            ),
        )
        writer.write_backbone(body, info)
    pretrained_body = load_body(writer.backbone_dir)
    pretrained_state = {k: v.clone() for k, v in body_state(pretrained_body).items()}
    for i, task in enumerate(settings.tasks):
        if writer.has_task(task):
            continue
        _build_task(writer, task, i, assets, settings, seed, pretrained_body, pretrained_state, progress)
    backbone = writer.backbone_info()
    manifest = writer.finish(
        notes=[
            "SELF-PRETRAINED BACKBONE: no pretrained vision model is available offline; this ViT was "
            f"pretrained inside modmerge by {backbone.pretraining}",
            "heads are task-specific linear layers on the CLS token and are never merged",
            f"settings: {asdict(settings)}",
        ],
        build_seconds=time.perf_counter() - started,
    )
    logger.info("vision zoo built in %.1f s", manifest.build_seconds)
    return store.load(name)


def _build_task(
    writer: ZooWriter, task: str, index: int, assets: AssetStore, settings: VisionSettings, seed: int,
    pretrained_body: torch.nn.Module, pretrained_state: dict[str, torch.Tensor], progress: Progress | None,
) -> None:
    task_started = time.perf_counter()
    data = IMAGE_TASKS[task].load(assets, seed)
    train = data.train
    epochs = settings.epochs if len(train) >= 2000 else settings.small_task_epochs
    fine_tuning: dict[str, float | int | str] = {
        "method": "full", "epochs": epochs, "lr": settings.lr, "batch_size": settings.batch_size,
        "weight_decay": 0.01, "warmup_ratio": 0.06,
    }
    entry = TaskEntry(name=task, modality="image", description=data.description, label_names=list(data.label_names),
                      pooling="cls", derived=data.derived, fine_tuning=fine_tuning)
    n_train = len(train) if settings.train_examples is None else min(len(train), settings.train_examples)
    train_x = encode_inputs(entry, train.inputs[:n_train])  # type: ignore[index]
    train_y = torch.tensor(train.labels[:n_train])
    model = TaskClassifier(load_body(writer.backbone_dir), new_head(settings.hidden_size, data.num_classes,
                                                                    seed=seed + 1 + index), pooling="cls")
    stats = fine_tune(
        model, lambda epoch: image_batches(train_x, train_y, batch_size=settings.batch_size, seed=seed, epoch=epoch),  # type: ignore[arg-type]
        epochs=epochs, lr=settings.lr, seed=seed + 1 + index, progress=progress,
        description=f"vision: fine-tune {task}",
    )
    splits = {split: (encode_inputs(entry, s.inputs), torch.tensor(s.labels))
              for split, s in (("validation", data.validation), ("test", data.test))}
    metrics = build_metrics(entry, model, pretrained_body, pretrained_state, splits, progress=progress)
    entry = entry.model_copy(update={
        "metrics": metrics, "train_seconds": round(time.perf_counter() - task_started, 2),
        "fine_tuning": {**fine_tuning, "train_examples": n_train, "steps": stats["steps"],
                        "final_loss": round(stats["final_loss"], 4), "fine_tune_seconds": round(stats["seconds"], 2)},
    })
    writer.write_task(entry, model.body, model.head, data)
    logger.info("vision/%s: %s", task, {k: round(v, 3) for k, v in metrics.items()})
