"""Shared machinery of every zoo builder: an atomic, resumable writer, fine-tuning, progress.

A builder (``tiny.py``, ``vision.py``, the text and PEFT zoos) follows one pattern::

    writer = ZooWriter(store, "vision", seed=seed)
    if (zoo := writer.existing()) is not None:       # manifest.json present: nothing to do
        return zoo
    if not writer.has_backbone():
        writer.write_backbone(pretrained_body, BackboneInfo(...))
    for task in tasks:
        if writer.has_task(task):                     # task.json present: built, skip
            continue
        model = TaskClassifier(load_body(writer.backbone_dir), new_head(...), pooling="cls")
        fine_tune(model, lambda epoch: image_batches(...), epochs=3, lr=5e-4, seed=seed)
        writer.write_task(TaskEntry(name=task, ...), model.body, model.head, task_data)
    writer.finish(notes=[...], build_seconds=...)     # manifest.json written last
    return store.load("vision")

Everything is written into a temporary sibling first and renamed into place, and the marker
file (``backbone.json``, ``tasks/<t>/task.json``, ``manifest.json``) comes last, so an
interrupted build leaves only directories without their marker, which the next run deletes and
rebuilds. Bodies keep the backbone's parameter names, so ``modmerge merge`` reads them directly.

Batches for :func:`fine_tune` come from :mod:`modmerge.tasks.batching` (seeded image batches,
length-bucketed text batches); metrics to record come from
:func:`modmerge.tasks.taskpool.build_metrics`; progress bars from :mod:`modmerge.tasks.progress`.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from rich.progress import Progress
from safetensors.torch import save_file
from torch import nn

from modmerge.atomic import write_bytes, write_json
from modmerge.checkpoints import TensorInfo, write_model_directory
from modmerge.tasks.models import TaskClassifier, body_state, head_state
from modmerge.tasks.progress import progress_task
from modmerge.zoo.datasets import Split, TaskData
from modmerge.zoo.manifest import BackboneInfo, TaskEntry, ZooManifest
from modmerge.zoo.store import Zoo, ZooError, ZooStore, sha256_file

logger = logging.getLogger(__name__)

Batches = Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]]
PACKAGES = ("torch", "transformers", "peft", "numpy", "safetensors", "modmerge")
BUILD_FILE, BACKBONE_FILE, TASK_FILE, MANIFEST_FILE = "build.json", "backbone.json", "task.json", "manifest.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a zoo depends on (``"absent"`` if not installed)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def new_head(hidden_size: int, num_labels: int, *, seed: int) -> nn.Linear:
    """A classifier initialised like Hugging Face heads (N(0, 0.02), zero bias), from ``seed``.

    >>> new_head(8, 3, seed=0).weight.shape
    torch.Size([3, 8])
    """
    head = nn.Linear(hidden_size, num_labels)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))
        head.bias.zero_()
    return head


def _config_dict(model: transformers.PreTrainedModel) -> dict[str, Any]:
    config = json.loads(model.config.to_json_string(use_diff=False))
    config.pop("_name_or_path", None)  # an absolute path of wherever it was loaded from
    config["architectures"] = [type(model).__name__]
    return config


def _write_model(state: Mapping[str, torch.Tensor], config: dict[str, Any], out: Path) -> None:
    """An HF model directory (config.json + model.safetensors) with ``state``'s keys; the same
    files ``save_pretrained`` writes, without its console progress bar."""
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    specs = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}
    write_model_directory(out, tensors.items(), specs, config=config, overwrite=True)


def _split_payload(split: Split) -> dict[str, Any]:
    inputs = split.inputs if isinstance(split.inputs, torch.Tensor) else list(split.inputs)
    labels = torch.as_tensor(split.labels)
    return {"inputs": inputs, "labels": labels.float() if labels.is_floating_point() else labels.long()}


class ZooWriter:
    """Writes one zoo under ``store.zoo_dir(name)``, atomically and resumably (see module doc).

    The seed is recorded in ``build.json`` on first use; resuming with another seed is an error,
    since a zoo mixing seeds would not be reproducible. Opening removes every temporary leftover
    in the zoo's folders, which is safe because there is one writer per zoo:
    :func:`~modmerge.zoo.registry.build_zoo` holds the zoo's build lock while it writes.

    Example::

        >>> writer = ZooWriter(ZooStore(tmp), "tiny", seed=0)  # doctest: +SKIP
        >>> writer.has_task("copy")                             # doctest: +SKIP
        False
    """

    def __init__(self, store: ZooStore, name: str, *, seed: int) -> None:
        self.store, self.name, self.seed = store, name, seed
        self.root = store.zoo_dir(name)
        (self.root / "tasks").mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        self._check_seed()
        self._remove_partials()
        self._entries: dict[str, TaskEntry] = {}

    @property
    def backbone_dir(self) -> Path:
        return self.root / "backbone"

    def existing(self) -> Zoo | None:
        """The finished zoo if ``manifest.json`` is present, else None."""
        return self.store.load(self.name) if (self.root / MANIFEST_FILE).exists() else None

    # -- backbone ---------------------------------------------------------------------------
    def has_backbone(self) -> bool:
        """Whether the backbone is complete; a backbone directory without its marker is removed."""
        if (self.root / BACKBONE_FILE).is_file() and self.backbone_dir.is_dir():
            return True
        if self.backbone_dir.exists():
            logger.info("zoo %s: removing half-written backbone", self.name)
            shutil.rmtree(self.backbone_dir)
        return False

    def backbone_info(self) -> BackboneInfo:
        path = self.root / BACKBONE_FILE
        if not path.is_file():
            raise ZooError(f"{path}: backbone not written yet")
        return BackboneInfo.model_validate_json(path.read_text())

    def write_backbone(
        self, body_or_dir: transformers.PreTrainedModel | Path, info: BackboneInfo, *, tokenizer: Any = None
    ) -> BackboneInfo:
        """Save the pretrained body (a model, or an HF directory to copy) and its info, marker last."""
        if isinstance(body_or_dir, Path):
            tmp = self._tmp_dir("backbone")
            shutil.copytree(body_or_dir, tmp, dirs_exist_ok=True)
        else:
            tmp = self.backbone_dir.with_name(f".backbone.tmp-{secrets.token_hex(4)}")
            _write_model(body_state(body_or_dir), _config_dict(body_or_dir), tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if self.backbone_dir.exists():
            shutil.rmtree(self.backbone_dir)
        tmp.rename(self.backbone_dir)
        info = info.model_copy(update={"path": "backbone"})
        write_json(self.root / BACKBONE_FILE, info.model_dump(mode="json"))
        return info

    # -- tasks ------------------------------------------------------------------------------
    def has_task(self, name: str) -> bool:
        """True if ``tasks/<name>/task.json`` exists (the task is kept); a task directory without
        it is half-built and is deleted, with its data file, so the caller rebuilds it."""
        task_dir = self.root / "tasks" / name
        marker = task_dir / TASK_FILE
        if marker.is_file():
            try:
                self._entries[name] = TaskEntry.model_validate_json(marker.read_text())
                return True
            except ValueError as err:
                logger.warning("zoo %s: unreadable %s (%s); rebuilding", self.name, marker, str(err).splitlines()[0])
        if task_dir.exists():
            logger.info("zoo %s: removing half-built task %s", self.name, name)
            shutil.rmtree(task_dir)
        (self.root / "data" / f"{name}.pt").unlink(missing_ok=True)
        return False

    def entry(self, name: str) -> TaskEntry:
        """The entry of a task built (or found built) by this writer."""
        return self._entries[name]

    def write_task(
        self, entry: TaskEntry,
        body: transformers.PreTrainedModel | Mapping[str, torch.Tensor] | Path,
        head: nn.Linear | Mapping[str, torch.Tensor],
        data: TaskData | Mapping[str, Split],
    ) -> TaskEntry:
        """Write a task's data, body and head, then ``task.json`` (returned, paths and hashes filled).

        ``body`` is a model (written under its checkpoint names, as ``save_pretrained`` would) or a
        state dict with the backbone's keys (written with the backbone's config); tokenizer files
        are copied from the backbone. A
        directory (a PEFT adapter: ``adapter_config.json`` + ``adapter_model.safetensors``) is
        copied as it is; :meth:`Zoo.task_body` opens it as a dense body over the backbone.
        """
        name = entry.name
        rel_dir, rel_data = f"tasks/{name}", f"data/{name}.pt"
        splits = data.splits() if isinstance(data, TaskData) else dict(data)
        data_path = self.root / rel_data
        buffer = io.BytesIO()  # serialised in memory: torch.save to a full disk is a RuntimeError
        torch.save({split: _split_payload(s) for split, s in splits.items()}, buffer)
        write_bytes(data_path, buffer.getvalue())

        tmp = self._tmp_dir(f"tasks/{name}")
        self._save_body(body, tmp / "body")
        head_tensors = head_state(head) if isinstance(head, nn.Linear) else {k: v.contiguous() for k, v in head.items()}
        save_file(head_tensors, tmp / "head.safetensors")
        final = self.root / rel_dir
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)

        hashes = {rel_data: sha256_file(data_path), f"{rel_dir}/head.safetensors": sha256_file(final / "head.safetensors")}
        for weights in sorted((final / "body").glob("*.safetensors")):
            hashes[f"{rel_dir}/body/{weights.name}"] = sha256_file(weights)
        entry = entry.model_copy(update={
            "body": f"{rel_dir}/body", "head": f"{rel_dir}/head.safetensors", "data": rel_data,
            "head_parameters": sum(t.numel() for t in head_tensors.values()),
            "split_sizes": {split: len(s) for split, s in splits.items()}, "sha256": hashes,
        })
        write_json(final / TASK_FILE, entry.model_dump(mode="json"))
        self._entries[name] = entry
        return entry

    def finish(self, notes: Iterable[str], build_seconds: float) -> ZooManifest:
        """Write ``manifest.json`` (last, atomically) over the tasks seen, in the order seen."""
        if not self._entries:
            raise ZooError(f"zoo '{self.name}': finish() before any task was written or found")
        info = self.backbone_info()
        hashes = {f"backbone/{p.name}": sha256_file(p) for p in sorted(self.backbone_dir.glob("*.safetensors"))}
        manifest = ZooManifest(
            name=self.name, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), seed=self.seed,
            packages=package_versions(), backbone=info, tasks=list(self._entries.values()),
            build_seconds=round(build_seconds, 2), notes=list(notes), sha256=hashes,
        )
        write_json(self.root / MANIFEST_FILE, manifest.model_dump(mode="json"))
        logger.info("zoo %s: manifest written (%d tasks)", self.name, len(manifest.tasks))
        return manifest

    # -- helpers ----------------------------------------------------------------------------
    def _save_body(self, body: transformers.PreTrainedModel | Mapping[str, torch.Tensor] | Path, out: Path) -> None:
        if isinstance(body, Path):
            shutil.copytree(body, out)
            return
        if isinstance(body, Mapping):
            _write_model(body, json.loads((self.backbone_dir / "config.json").read_text()), out)
        else:
            _write_model(body_state(body), _config_dict(body), out)
        for filename in _TOKENIZER_FILES:
            if (self.backbone_dir / filename).is_file():
                shutil.copy2(self.backbone_dir / filename, out / filename)

    def _tmp_dir(self, rel: str) -> Path:
        final = self.root / rel
        tmp = final.with_name(f".{final.name}.tmp-{secrets.token_hex(4)}")
        tmp.mkdir(parents=True)
        return tmp

    def _remove_partials(self) -> None:
        # Leftovers of an interrupted write: never renamed into place, so never trusted.
        for folder in (self.root, self.root / "tasks", self.root / "data", self.root / "data" / "cache"):
            for leftover in folder.glob(".*.tmp-*"):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()

    def _check_seed(self) -> None:
        path = self.root / BUILD_FILE
        if path.is_file():
            recorded = json.loads(path.read_text()).get("seed")
            if recorded != self.seed:
                raise ZooError(
                    f"{path}: zoo '{self.name}' was started with seed {recorded}, not {self.seed}; "
                    f"delete {self.root} to rebuild with a new seed"
                )
        else:
            write_json(path, {"name": self.name, "seed": self.seed})


def _linear_schedule(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decay matrices only: biases, LayerNorm and embedding-like vectors are left alone, as usual.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fine_tune(
    model: TaskClassifier | nn.Module,
    train_batches: Callable[[int], Batches],
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.06,
    seed: int,
    progress: Progress | None = None,
    loss: Literal["cross_entropy", "mse"] = "cross_entropy",
    max_grad_norm: float = 1.0,
    description: str = "fine-tuning",
) -> dict[str, Any]:
    """Train every trainable parameter of ``model`` (AdamW, linear warmup then decay); in place.

    ``train_batches(epoch)`` gives that epoch's ``(model inputs, labels)`` batches; seed its
    shuffle with the epoch (the helpers in :mod:`modmerge.tasks.batching` do). Dropout is seeded
    from ``seed`` inside a forked RNG, so the same seed gives the same weights and the global RNG
    is untouched. ``loss="mse"`` trains a one-output regression head. Returns
    ``{"steps", "epoch_loss", "final_loss", "seconds"}``; the model is left in eval mode.

    Example::

        >>> stats = fine_tune(model, lambda e: image_batches(x, y, batch_size=64, seed=0, epoch=e),
        ...                   epochs=2, lr=5e-4, seed=0)  # doctest: +SKIP
        >>> stats["epoch_loss"]  # doctest: +SKIP
        [1.21, 0.43]
    """
    started = time.perf_counter()
    first = list(train_batches(0))
    total = len(first) * epochs
    if total == 0:
        raise ZooError(f"{description}: no training batches")
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(total, int(total * warmup_ratio)))
    epoch_loss: list[float] = []
    with torch.random.fork_rng(devices=[]), progress_task(progress, description, total) as advance:
        torch.manual_seed(seed)
        model.train()
        for epoch in range(epochs):
            batches = first if epoch == 0 else list(train_batches(epoch))
            running, count = 0.0, 0
            for inputs, labels in batches:
                logits = model(**inputs)
                if loss == "mse":
                    value = nn.functional.mse_loss(logits.squeeze(-1), labels.float())
                else:
                    value = nn.functional.cross_entropy(logits, labels)
                value.backward()
                nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                running += float(value.detach()) * len(labels)
                count += len(labels)
                advance(1)
            epoch_loss.append(running / max(count, 1))
            logger.debug("%s: epoch %d loss %.4f", description, epoch, epoch_loss[-1])
    model.eval()
    seconds = time.perf_counter() - started
    logger.info("%s: %d steps in %.1f s, final loss %.4f", description, total, seconds, epoch_loss[-1])
    return {"steps": total, "epoch_loss": epoch_loss, "final_loss": epoch_loss[-1], "seconds": seconds}
