"""A task suite opened as a :class:`~modmerge.tasks.source.TaskSource`.

Task models are read lazily: an ordinary ``AutoModelFor...Classification`` checkpoint is split
into its body (the pretrained model's names) and its linear classifier; a bare body takes its
classifier from the task's ``head`` file; a PEFT adapter opens over the pretrained model. What
is task-specific and never merged stays per task: the classifier, and the pooler (a ``head``
component). Data files are read and encoded once per task and kept in memory; tokenised texts
are also cached on disk under ``cache_root/suites/<digest>`` when a cache root is given.

Example::

    >>> source = open_suite("examples/own-models/suite.yaml", cache_root=Path("/tmp/mm"))  # doctest: +SKIP
    >>> TaskPool(source, split="validation").evaluate("sentiment")                        # doctest: +SKIP
    0.91
"""

from __future__ import annotations

import hashlib
import io
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file

from modmerge.cache import sha256_file
from modmerge.checkpoints import Checkpoint, open_checkpoint
from modmerge.checkpoints.task_model import WithBase, linear_head, split_task_model
from modmerge.components import ComponentMap, decompose, detect_architecture
from modmerge.errors import ModmergeError
from modmerge.tasks.data import field_values, read_rows
from modmerge.tasks.metrics import REGRESSION_METRICS
from modmerge.tasks.models import body_keys_of
from modmerge.tasks.spec import BackboneInfo, TaskEntry, TaskError
from modmerge.tasks.suite import SuiteTask, TaskSuite, load_suite, resolve_path

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")


def open_suite(path: str | Path, *, cache_root: Path | None = None, allow_pickle: bool = False) -> SuiteSource:
    """Open the suite file at ``path`` (checks its fields and that every model opens)."""
    suite, root = load_suite(path)
    return SuiteSource(suite, root, Path(path).resolve(), cache_root=cache_root, allow_pickle=allow_pickle)


class SuiteSource:
    """A user's suite as a task source (see the module doc)."""

    def __init__(self, suite: TaskSuite, root: Path, path: Path, *, cache_root: Path | None = None,
                 allow_pickle: bool = False) -> None:
        self.suite, self.root, self.path = suite, root, path
        self._cache_root, self._allow_pickle = cache_root, allow_pickle
        self._data: dict[str, dict[str, Any]] = {}
        self._heads: dict[str, dict[str, torch.Tensor]] = {}
        self._entries: dict[str, TaskEntry] = {}
        self.pretrained_spec = resolve_path(suite.pretrained, root)
        with self._open(self.pretrained_spec, "pretrained") as ckpt:
            if ckpt.directory is None:
                raise TaskError(f"{self.path}: pretrained '{suite.pretrained}' must be a model directory or hub id")
            self._backbone_dir = ckpt.directory
            self._config = dict(ckpt.config or {})
            names = body_keys_of(ckpt.directory)
            prefix = split_task_model(ckpt, names, optional=_optional(names)).prefix
            keys = [k for k in names if prefix + k in set(ckpt.keys())]
        self._architecture = detect_architecture(self._config, keys)
        self._body_keys = self._common_body_keys(keys)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to Ray workers) without the data and heads read so far: a worker rereads them."""
        state = dict(self.__dict__)
        state.update(_data={}, _heads={}, _entries={})
        return state

    # -- the TaskSource interface -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self.suite.name or self.path.stem

    @property
    def tasks(self) -> list[str]:
        return list(self.suite.tasks)

    @property
    def backbone_dir(self) -> Path:
        return self._backbone_dir

    @cached_property
    def tokenizer_dir(self) -> Path:
        candidates = [self._backbone_dir] + [Path(d) for t in self.tasks if (d := self._model_dir(t)) is not None]
        for directory in candidates:
            if any((directory / f).is_file() for f in _TOKENIZER_FILES):
                return directory
        return self._backbone_dir

    @cached_property
    def backbone_info(self) -> BackboneInfo:
        with self.backbone() as ckpt:
            parameters = sum(ckpt.info(k).numel for k in ckpt.keys())
        return BackboneInfo(name=self.suite.pretrained, path=str(self._backbone_dir), architecture=self._architecture.name,
                            parameters=parameters, self_pretrained=self.suite.self_pretrained,
                            source=f"task suite {self.path}")

    @property
    def cache_dir(self) -> Path | None:
        if self._cache_root is None:
            return None
        digest = hashlib.sha256(str(self.path).encode()).hexdigest()[:16]
        return self._cache_root / "suites" / f"{self.name}-{digest}"

    def describe(self) -> dict[str, Any]:
        return {"suite": str(self.path)}

    def entry(self, task: str) -> TaskEntry:
        if task not in self._entries:
            self._entries[task] = self._make_entry(task)
        return self._entries[task]

    def backbone(self) -> Checkpoint:
        ckpt = self._open(self.pretrained_spec, "pretrained")
        return split_task_model(ckpt, self._body_keys).body

    def task_body(self, task: str) -> Checkpoint:
        ckpt = self.task_body_raw(task)
        try:
            return split_task_model(ckpt, self._body_keys).body
        except ModmergeError as err:
            ckpt.close()
            raise TaskError(f"task '{task}': {err}") from None

    def task_head(self, task: str) -> dict[str, torch.Tensor]:
        if task not in self._heads:
            self._heads[task] = self._read_head(task)
        return self._heads[task]

    def task_data(self, task: str) -> dict[str, Any]:
        if task not in self._data:
            self._data[task] = {split: self._read_split(task, split, spec)
                                for split, spec in self._task(task).data.splits().items()}
        return self._data[task]

    def component_map(self) -> ComponentMap:
        return decompose(self._body_keys, self._architecture)

    # -- helpers ----------------------------------------------------------------------------
    def _task(self, task: str) -> SuiteTask:
        try:
            return self.suite.tasks[task]
        except KeyError:
            raise TaskError(f"suite '{self.name}' has no task '{task}' (tasks: {', '.join(self.tasks)})") from None

    def _open(self, spec: str, what: str) -> Checkpoint:
        try:
            return open_checkpoint(spec, allow_pickle=self._allow_pickle)
        except ModmergeError as err:
            raise TaskError(f"{self.path}: {what}: {err}") from None

    def _model_dir(self, task: str) -> str | None:
        path = Path(resolve_path(self._task(task).model, self.root))
        return str(path) if path.is_dir() else None

    def _common_body_keys(self, keys: list[str]) -> list[str]:
        """The pretrained body's names; head-kind ones (a pooler) only if every task model has them."""
        optional = set(_optional(keys))
        if not optional:
            return keys
        for task in self.tasks:
            with self.task_body_raw(task) as ckpt:
                prefix = split_task_model(ckpt, keys, optional=sorted(optional)).prefix
                have = set(ckpt.keys())
            optional = {k for k in optional if prefix + k in have}
        dropped = set(_optional(keys)) - optional
        return [k for k in keys if k not in dropped]

    def task_body_raw(self, task: str) -> Checkpoint:
        """The task model's checkpoint as stored (prefix and head included; an adapter dense)."""
        path = resolve_path(self._task(task).model, self.root)
        if (Path(path) / "adapter_config.json").is_file():
            base = self._open(self.pretrained_spec, "pretrained")
            try:
                dense = open_checkpoint(path, base=base, allow_pickle=self._allow_pickle)
            except ModmergeError as err:
                base.close()
                raise TaskError(f"task '{task}' adapter: {err}") from None
            return Checkpoint(source=WithBase(dense, base), label=dense.label, config=dense.config,
                              directory=dense.directory, files=dense.files)
        return self._open(path, f"task '{task}' model")

    def _read_head(self, task: str) -> dict[str, torch.Tensor]:
        spec = self._task(task)
        if spec.head is not None:
            path = Path(resolve_path(spec.head, self.root))
            try:
                state = load_file(path)
            except Exception as err:
                raise TaskError(f"task '{task}': head {path}: not a readable safetensors file ({err})") from None
            missing = [k for k in ("classifier.weight", "classifier.bias") if k not in state]
            if missing:
                raise TaskError(f"task '{task}': head {path} lacks '{missing[0]}'")
            return {k: state[k].float() for k in ("classifier.weight", "classifier.bias")}
        with self.task_body_raw(task) as ckpt:
            try:
                parts = split_task_model(ckpt, self._body_keys)
                return {k: v.float().clone() for k, v in linear_head(parts, f"task '{task}' model {ckpt.label}").items()}
            except ModmergeError as err:
                raise TaskError(f"task '{task}': {err}") from None

    def _make_entry(self, task: str) -> TaskEntry:
        spec = self._task(task)
        modality = spec.modality or ("image" if self._config.get("model_type") in _IMAGE_TYPES else "text")
        head = self.task_head(task)
        n_out = int(head["classifier.weight"].shape[0])
        label_names = spec.label_names or self._label_names(task, n_out)
        if spec.metric in REGRESSION_METRICS:
            label_names = ["score"]
        pooling = spec.pooling or ("pooler" if any(k.startswith("pooler.") for k in self._body_keys) else "cls")
        digest = hashlib.sha256(json.dumps(self._file_digests(spec), sort_keys=True).encode()).hexdigest()
        return TaskEntry(name=task, modality=modality, description=spec.description or f"task suite {self.name}",
                         label_names=label_names, metric=spec.metric, pooling=pooling,
                         head_parameters=sum(t.numel() for t in head.values()), data="suite-data",
                         sha256={"suite-data": digest}, input_fields=spec.input_fields, max_length=spec.max_length)

    def _label_names(self, task: str, n_out: int) -> list[str]:
        config_path = self._model_dir(task)
        config: dict[str, Any] = {}
        if config_path is not None and (Path(config_path) / "config.json").is_file():
            config = json.loads((Path(config_path) / "config.json").read_text())
        id2label = config.get("id2label") or {}
        names = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n_out)]
        return names

    def _file_digests(self, spec: SuiteTask) -> dict[str, str]:
        out = {}
        for split, file in spec.data.splits().items():
            path = Path(resolve_path(file, self.root))
            out[split] = sha256_file(path) if path.is_file() else str(path)
        return out

    def _read_split(self, task: str, split: str, file: str) -> dict[str, Any]:
        spec, entry = self._task(task), self.entry(task)
        location = resolve_path(file, self.root)
        label = f"task '{task}' {split} data {location}"
        rows = read_rows(location)
        if not rows:
            raise TaskError(f"{label}: no rows")
        fields = [field_values(rows, f, label) for f in spec.input_fields]
        if entry.modality == "image":
            inputs: Any = self._pixels(task, fields[0], Path(location).parent, label)
        elif len(fields) == 2:
            inputs = [(str(a), str(b)) for a, b in zip(*fields, strict=True)]
        else:
            inputs = [str(a) for a in fields[0]]
        labels = encode_labels(field_values(rows, spec.label, label), entry, label, spec.label)
        return {"inputs": inputs, "labels": labels}

    def _pixels(self, task: str, values: list[Any], folder: Path, label: str) -> torch.Tensor:
        from PIL import Image

        directory = self._model_dir(task) or str(self._backbone_dir)
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(directory)
        except (OSError, ValueError):
            try:
                processor = transformers.AutoImageProcessor.from_pretrained(self._backbone_dir)
            except (OSError, ValueError):
                raise TaskError(f"{label}: no image processor (preprocessor_config.json) in the task model "
                                "or the pretrained model") from None
        mode = "L" if int(self._config.get("num_channels", 3)) == 1 else "RGB"
        images = []
        for number, value in enumerate(values, start=1):
            try:
                images.append(_open_image(value, folder, Image).convert(mode))
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                raise TaskError(f"{label}: row {number}: unreadable image ({str(err).splitlines()[0]})") from None
        return processor(images=images, return_tensors="pt")["pixel_values"].float()


_IMAGE_TYPES = frozenset({"vit", "deit", "beit", "dinov2", "clip_vision_model", "swin", "convnext"})


def _optional(keys: list[str]) -> list[str]:
    return [k for k in keys if k.startswith("pooler.")]


def _open_image(value: Any, folder: Path, image_module: Any) -> Any:
    if isinstance(value, image_module.Image):
        return value
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return image_module.open(io.BytesIO(value))
    path = Path(str(value))
    return image_module.open(path if path.is_absolute() else folder / path)


def encode_labels(values: list[Any], entry: TaskEntry, label: str, field: str) -> torch.Tensor:
    """Labels as a tensor: floats for regression metrics, class ids otherwise (names are looked
    up in ``entry.label_names``); a one-line error names the row and the field."""
    if entry.metric in REGRESSION_METRICS:
        out = []
        for number, value in enumerate(values, start=1):
            try:
                out.append(float(value))
            except (TypeError, ValueError):
                raise TaskError(f"{label}: row {number}: field '{field}' is not a number: {value!r}") from None
        return torch.tensor(out, dtype=torch.float32)
    index = {name: i for i, name in enumerate(entry.label_names)}
    ids = []
    for number, value in enumerate(values, start=1):
        if isinstance(value, str) and value in index:
            ids.append(index[value])
            continue
        try:
            as_int = int(value)
            if as_int != float(value):
                raise ValueError
        except (TypeError, ValueError):
            raise TaskError(f"{label}: row {number}: field '{field}' = {value!r} is not a class id or one of "
                            f"{entry.label_names[:6]}") from None
        if not 0 <= as_int < len(entry.label_names):
            raise TaskError(f"{label}: row {number}: field '{field}' = {as_int} does not fit the head's "
                            f"{len(entry.label_names)} labels")
        ids.append(as_int)
    return torch.tensor(ids, dtype=torch.int64)
