"""The ``peft`` zoos: the text zoo's backbone and tasks, fine-tuned with LoRA or with (IA)^3.

The paper's PEFT scenario (T0-3B with (IA)^3 adapters) scaled to this machine: the same
MiniLM-L6 backbone and tasks as :mod:`modmerge.zoo.text`, each task trained through the
``peft`` library with one of two variants (:data:`PEFT_VARIANTS`), one zoo per variant:

- ``peft-lora``: LoRA, rank 8, alpha 16, dropout 0.1, on every linear layer of the encoder
  (query, key, value, attention output, intermediate, output), so the deltas reach both the
  attention and the MLP components;
- ``peft-ia3``: (IA)^3, learned rescaling of keys, values and the FFN's intermediate
  activations (the input of each layer's ``output.dense``), as in the (IA)^3 paper.

The BERT pooler is trained in full as a PEFT ``modules_to_save`` (so it is stored in the adapter
and, as in the text zoo, is a ``head``-kind part of the body, never merged); the classifier is a
separate linear head in ``head.safetensors``, trained alongside. Each task directory's ``body/``
is the adapter itself (``adapter_config.json`` + ``adapter_model.safetensors``);
:meth:`~modmerge.zoo.store.Zoo.task_body` opens it as the dense body backbone + delta, so task
pools, baselines and merges see ordinary bodies whose task vectors are the adapters' dense
deltas. Individual metrics are measured on that dense body, i.e. exactly what a merge reads.

Example::

    >>> zoos = build_peft_zoos(ZooStore.default(), AssetStore.default())   # doctest: +SKIP
    >>> [z.name for z in zoos]                                              # doctest: +SKIP
    ['peft-lora', 'peft-ia3']
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from peft import IA3Config, LoraConfig, PeftConfig, get_peft_model
from rich.progress import Progress

from modmerge.checkpoints import open_checkpoint
from modmerge.tasks.models import TaskClassifier, load_body
from modmerge.zoo.assets import AssetStore
from modmerge.zoo.build import ZooWriter, fine_tune
from modmerge.zoo.store import Zoo, ZooError, ZooStore
from modmerge.zoo.text import (
    TaskLoader,
    TextBackbone,
    TextBuild,
    TextSettings,
    default_task_loader,
    finish_task,
    minilm_backbone,
    prepare_task,
    start_text_build,
    torch_threads,
)

logger = logging.getLogger(__name__)

# Module paths are regexes matched by peft against full module names; they leave the pooler out
# (it is trained in full, as modules_to_save).
_ALL_LINEAR = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
_IA3_TARGETS = r".*encoder\.layer\.\d+\.(attention\.self\.(key|value)|output\.dense)"
_IA3_FEEDFORWARD = r".*encoder\.layer\.\d+\.output\.dense"


@dataclass(frozen=True)
class PeftVariant:
    """One PEFT method: how to configure it and how to train it (lr and epochs differ from full
    fine-tuning: adapters start from an identity update and need larger steps)."""

    name: str
    description: str
    make_config: Callable[[], PeftConfig]
    lr: float
    epochs: int
    record: Mapping[str, str | int | float]
    weight_decay: float = 0.01

    @property
    def zoo_name(self) -> str:
        return f"peft-{self.name}"

    def settings(self) -> TextSettings:
        """The real zoo's settings: the text zoo's, with this variant's lr, epochs and weight decay."""
        return TextSettings(lr=self.lr, epochs=self.epochs, weight_decay=self.weight_decay)


def _lora() -> PeftConfig:
    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=_ALL_LINEAR, modules_to_save=["pooler"])


def _ia3() -> PeftConfig:
    return IA3Config(target_modules=_IA3_TARGETS, feedforward_modules=_IA3_FEEDFORWARD, modules_to_save=["pooler"])


PEFT_VARIANTS: Mapping[str, PeftVariant] = {
    v.name: v
    for v in (
        PeftVariant("lora", "LoRA r=8 (alpha 16) on every encoder linear layer; pooler trained in full",
                    _lora, lr=1e-3, epochs=2,
                    record={"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": _ALL_LINEAR}),
        PeftVariant("ia3", "(IA)^3 scaling of keys, values and FFN activations; pooler trained in full",
                    _ia3, lr=3e-3, epochs=2,
                    record={"target_modules": _IA3_TARGETS, "feedforward_modules": _IA3_FEEDFORWARD},
                    # (IA)^3 vectors start at 1 (identity); decay would pull them towards 0.
                    weight_decay=0.0),
    )
}  # fmt: skip


def get_variant(name: str) -> PeftVariant:
    """The PEFT variant ``name`` (``"lora"`` or ``"ia3"``); a one-line error otherwise."""
    if name not in PEFT_VARIANTS:
        raise ZooError(f"unknown PEFT variant '{name}'; known: {', '.join(PEFT_VARIANTS)}")
    return PEFT_VARIANTS[name]


def _train_task(
    build: TextBuild, variant: PeftVariant, task: str, index: int, load_task: TaskLoader, settings: TextSettings,
    seed: int, progress: Progress | None,
) -> None:
    started = time.perf_counter()
    writer = build.writer
    job = prepare_task(build, load_task(task, seed), index, settings, method=variant.name, seed=seed, started=started)
    adapted = get_peft_model(load_body(writer.backbone_dir), variant.make_config())
    model = TaskClassifier(adapted, job.head, pooling="pooler")
    stats = fine_tune(
        model, job.batches(settings, seed), epochs=job.epochs, lr=settings.lr,
        weight_decay=settings.weight_decay, warmup_ratio=settings.warmup_ratio, seed=seed + 1 + index,
        progress=progress, description=f"{writer.name}: fine-tune {task}",
    )
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    # Named like the writer's own temporaries, so an interrupted build's leftover is cleaned up.
    with tempfile.TemporaryDirectory(prefix=".adapter.tmp-", dir=writer.root) as tmp:
        adapter_dir = Path(tmp) / "adapter"
        adapted.save_pretrained(adapter_dir)
        (adapter_dir / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
        # peft records the absolute path the base was loaded from; the zoo may move, and its base
        # is always the zoo's own backbone (Zoo.task_body passes it), so record none.
        config_path = adapter_dir / "adapter_config.json"
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "base_model_name_or_path": None},
                                          indent=2, sort_keys=True) + "\n")
        # Metrics on the dense body read back from the saved adapter: what every consumer sees.
        with open_checkpoint(writer.backbone_dir) as base, open_checkpoint(adapter_dir, base=base) as dense:
            state = {k: dense.get(k) for k in dense.keys()}
        dense_model = TaskClassifier(load_body(writer.backbone_dir, state), model.head, pooling="pooler")
        finish_task(build, job, dense_model, stats, adapter_dir, progress=progress,
                    extra={**variant.record, "trainable_body_parameters": trainable})  # fmt: skip


def build_peft(
    store: ZooStore, assets: AssetStore, variant: str = "lora", *, seed: int = 0, progress: Progress | None = None,
    settings: TextSettings | None = None, backbone: TextBackbone | None = None, load_task: TaskLoader | None = None,
) -> Zoo:
    """Build (or finish, or just open) the zoo ``peft-<variant>`` under ``store``.

    ``settings`` default to the text zoo's tasks and sizes with the variant's lr and epochs;
    ``backbone`` and ``load_task`` as in :func:`~modmerge.zoo.text.build_text`.

    Example::

        >>> zoo = build_peft(ZooStore(tmp), AssetStore.default(), "ia3")   # doctest: +SKIP
        >>> zoo.task_body("spam").get("encoder.layer.0.attention.self.key.weight")  # dense  # doctest: +SKIP
    """
    spec = get_variant(variant)
    settings = settings or spec.settings()
    started = time.perf_counter()
    writer = ZooWriter(store, spec.zoo_name, seed=seed)
    if (zoo := writer.existing()) is not None:
        return zoo
    load_task = load_task or default_task_loader(assets, settings.sizes)
    with torch_threads(settings.threads):
        build = start_text_build(writer, backbone or minilm_backbone(assets))
        for i, task in enumerate(settings.tasks):
            if not writer.has_task(task):
                _train_task(build, spec, task, i, load_task, settings, seed, progress)
    manifest = writer.finish(
        notes=[
            f"backbone: {writer.backbone_info().source}; not pretrained in this project",
            f"PEFT variant {spec.name}: {spec.description}; tasks/<t>/body is the adapter directory, "
            "opened as the dense body (backbone + delta) by Zoo.task_body",
            "the classifier is a separate linear head (head.safetensors); the pooler is trained in full as "
            "modules_to_save, kept in the adapter, and never merged",
            f"settings: {asdict(settings)}",
        ],
        build_seconds=time.perf_counter() - started,
    )
    logger.info("%s zoo built in %.1f s", spec.zoo_name, manifest.build_seconds)
    return store.load(spec.zoo_name)


def build_peft_zoos(
    store: ZooStore, assets: AssetStore, *, seed: int = 0, progress: Progress | None = None,
    settings: TextSettings | None = None, backbone: TextBackbone | None = None, load_task: TaskLoader | None = None,
) -> list[Zoo]:
    """Build both PEFT zoos (``peft-lora``, then ``peft-ia3``); ``settings``, if given, apply to both
    (None: each variant's own, :meth:`PeftVariant.settings`)."""
    return [
        build_peft(store, assets, name, seed=seed, progress=progress, settings=settings, backbone=backbone,
                   load_task=load_task)
        for name in PEFT_VARIANTS
    ]  # fmt: skip
