"""The task pool: a task's metric for any body (fine-tuned, pretrained or merged) + the task's head.

Evaluation is the inner loop of the Pareto search (hundreds of merged bodies x T tasks), so
the pool does the expensive work once: every (task, split) is encoded once (tokenised texts are
also cached on disk under the source's ``cache_dir``), one body module per modality is built once and
refilled in place with ``load_state_dict``, batches run under ``torch.inference_mode``, and texts
are batched by length so padding stays small.

``limit`` takes the first N examples of a split (splits are stored in a seeded shuffled order),
the size-constrained D'_t the paper evaluates candidate merges on.

Example::

    >>> source = open_suite("suite.yaml")    # or a built zoo            # doctest: +SKIP
    >>> pool = TaskPool(source, split="validation", limit=500)          # doctest: +SKIP
    >>> pool.evaluate("mnist")                  # its own fine-tuned body  # doctest: +SKIP
    0.972
    >>> pool.evaluate("mnist", pool.pretrained_state())                 # doctest: +SKIP
    0.214
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from rich.progress import Progress
from torch import nn

from modmerge.atomic import write_bytes
from modmerge.cache import sha256_file
from modmerge.components import decompose
from modmerge.tasks.batching import EncodedTexts, eval_batches, pixel_values, take_first, tokenize
from modmerge.tasks.metrics import REGRESSION_METRICS, get_metric
from modmerge.tasks.models import (
    TaskClassifier,
    body_from_config,
    body_state,
    checkpoint_key_map,
    head_from_state,
    load_body_state,
)
from modmerge.tasks.precision import check_precision_speed, precision_context
from modmerge.tasks.progress import progress_task
from modmerge.tasks.source import TaskSource
from modmerge.tasks.spec import TaskEntry, TaskError
from modmerge.tasks.staged import StagedBody, load_partial_state, staged_body

logger = logging.getLogger(__name__)

State = Mapping[str, torch.Tensor]
Encoded = torch.Tensor | EncodedTexts
# batch -> pooled features, from the caller's own model (the pool then loads no body of its own)
Pool = Callable[[dict[str, torch.Tensor]], torch.Tensor]
# Texts are batched longest first; 32 keeps padding at ~10% on the text zoo's tweets (128 padded
# ~35%) and ran MiniLM 1.1-1.6x faster per example on 2 cores than 128 (benchmarks/eval_batch.py measures it).
DEFAULT_BATCH = {"image": 256, "text": 32}
DEFAULT_MAX_LENGTH = 128
def encode_inputs(entry: TaskEntry, inputs: torch.Tensor | list[Any], tokenizer: Any = None) -> Encoded:
    """Model-ready inputs of a split: pixel values for images, :class:`EncodedTexts` for texts
    (single texts, or pairs as 2-tuples). Images are N x H x W in [0, 1] (a zoo's grayscale
    images) or N x C x H x W pixel values already made by the task's image processor (a suite).

    >>> encode_inputs(entry, torch.zeros(4, 28, 28)).shape  # doctest: +SKIP
    torch.Size([4, 1, 28, 28])
    """
    if entry.modality == "image":
        images = torch.as_tensor(inputs)
        return images.float().contiguous() if images.dim() == 4 else pixel_values(images)
    if tokenizer is None:
        raise TaskError(f"task '{entry.name}': text inputs need a tokenizer")
    return tokenize(tokenizer, inputs, max_length(entry))  # type: ignore[arg-type]


def max_length(entry: TaskEntry) -> int:
    """The tokenizer truncation of the task's texts (its own setting, else its fine-tuning's)."""
    return int(entry.max_length or entry.fine_tuning.get("max_length", DEFAULT_MAX_LENGTH))


def predict(
    model: TaskClassifier, inputs: Encoded, *, batch_size: int, regression: bool = False,
    device: str | torch.device = "cpu", progress: Progress | None = None, description: str = "evaluating",
    precision: str = "float32",
) -> torch.Tensor:
    """Class ids (or, with ``regression``, the first output) for every example, in input order,
    computed at ``precision`` (see :data:`PRECISIONS`).

    >>> predict(model, pixel_values(images), batch_size=256)  # doctest: +SKIP
    tensor([3, 1, ...])
    """
    n = len(inputs)
    out = torch.empty(n, dtype=torch.float32 if regression else torch.int64)
    model.eval()
    context = precision_context(precision, torch.device(device))
    with torch.inference_mode(), context, progress_task(progress, description, n, transient=True) as advance:
        for idx, batch in eval_batches(inputs, batch_size):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).float().cpu()
            out[idx] = logits[:, 0] if regression else logits.argmax(-1)
            advance(len(idx))
    return out


def score(entry: TaskEntry, labels: torch.Tensor, predictions: torch.Tensor) -> float:
    """The task's metric (``entry.metric``) of ``predictions`` against ``labels``."""
    return get_metric(entry.metric)(labels, predictions)


def build_metrics(
    entry: TaskEntry, model: TaskClassifier, pretrained_body: nn.Module, pretrained_state: State,
    splits: Mapping[str, tuple[Encoded, torch.Tensor]], *, head_keys: list[str] | tuple[str, ...] = (),
    progress: Progress | None = None,
) -> dict[str, float]:
    """What a builder records in ``TaskEntry.metrics``: ``individual_<split>`` for each given split
    and ``pretrained_test`` (``pretrained_body`` refilled with ``pretrained_state`` plus this
    task's ``head_keys`` from its fine-tuned body, with the task's head), computed exactly as
    :meth:`TaskPool.evaluate` does (same batching), so a pool reproduces them bit for bit.

    >>> build_metrics(entry, model, load_body(backbone_dir), backbone_state,
    ...               {"validation": (x_val, y_val), "test": (x_test, y_test)})  # doctest: +SKIP
    {'individual_validation': 0.97, 'individual_test': 0.96, 'pretrained_test': 0.18}
    """
    batch_size, regression = DEFAULT_BATCH[entry.modality], entry.metric in REGRESSION_METRICS
    metrics = {}
    for split, (inputs, labels) in splits.items():
        preds = predict(model, inputs, batch_size=batch_size, regression=regression, progress=progress,
                        description=f"eval {entry.name}/{split}")
        metrics[f"individual_{split}"] = score(entry, labels, preds)
    own = body_state(model.body)
    load_body_state(pretrained_body, {**{k: v for k, v in pretrained_state.items() if k not in head_keys},
                                      **{k: own[k] for k in head_keys}})
    pretrained = TaskClassifier(pretrained_body, model.head, entry.pooling).eval()
    inputs, labels = splits["test"]
    preds = predict(pretrained, inputs, batch_size=batch_size, regression=regression, progress=progress,
                    description=f"eval {entry.name}/test (pretrained)")
    metrics["pretrained_test"] = score(entry, labels, preds)
    return metrics


@dataclass
class StagedRun:
    """One task run of :meth:`TaskPool.evaluate_from`: the metric, how many encoder layers were run
    (over the task's whole evaluated subset) and the hidden states kept, per layer, per batch."""

    metric: float
    layers_run: int
    hidden: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for batches in self.hidden.values() for t in batches)


def head_kind_keys(source_or_keys: TaskSource | list[str], architecture: str = "") -> list[str]:
    """Body keys of component kind ``head`` (e.g. ``pooler.dense.weight``), never merged.

    >>> head_kind_keys(["pooler.dense.weight", "embeddings.word_embeddings.weight"], "bert")
    ['pooler.dense.weight']
    """
    if isinstance(source_or_keys, list):
        cmap = decompose(source_or_keys, architecture)
    else:
        cmap = source_or_keys.component_map()
    return [k for k in cmap.keys() if cmap.component_of(k).kind == "head"]


class TaskPool:
    """Evaluates bodies on a task source's tasks (see module doc). Not thread-safe: it owns one body.

    ``body_state`` None means the task's own fine-tuned body. Keys of component kind ``head``
    (BERT's pooler) missing from a given state are taken from the task's own body, since they
    belong to the task head and are never merged.

    ``precision`` (``float32``, ``bfloat16``, ``float16``) is what every forward of the pool runs
    at; the lower ones run under ``torch.autocast`` and give approximate metrics, faster only on
    hardware with units for them. Their speed-up over float32 is measured when the pool starts
    (:func:`~modmerge.tasks.precision.check_precision_speed` warns if it is below 1), unless
    ``precision_speedup`` gives it (:meth:`on_split` passes its own on).
    """

    def __init__(
        self, source: TaskSource, *, split: str = "test", limit: int | None = None, batch_size: int | None = None,
        device: str | torch.device = "cpu", progress: Progress | None = None, precision: str = "float32",
        precision_speedup: float | None = None,
    ) -> None:
        if limit is not None and limit < 1:
            raise TaskError(f"task pool limit must be >= 1, got {limit}")
        precision_context(precision, torch.device(device))  # an unknown precision fails here
        self.precision = precision
        if precision_speedup is None:  # a few ms; warns if the lower precision is the slower one here
            precision_speedup = 1.0 if precision == "float32" else check_precision_speed(precision, torch.device(device))
        self.precision_speedup = precision_speedup
        self.source, self.split, self.limit, self.device, self.progress = source, split, limit, torch.device(device), progress
        self._batch_size = batch_size
        self._bodies: dict[str, transformers.PreTrainedModel] = {}
        self._heads: dict[str, nn.Linear] = {}
        self._own_head_kind: dict[str, dict[str, torch.Tensor]] = {}
        self._encoded: dict[tuple[str, str], Encoded] = {}
        self._labels: dict[tuple[str, str], torch.Tensor] = {}
        self._pretrained: dict[str, torch.Tensor] | None = None
        self._tokenizer: Any = None
        self._head_keys = head_kind_keys(source)
        self._tokenizer_fingerprint: str | None = None
        self.encodings = 0  # how many (task, split) encodings were computed (not read from a cache)
        self.examples_evaluated, self.seconds_evaluating = 0, 0.0

    # -- public API -------------------------------------------------------------------------
    def on_split(self, split: str, limit: int | None) -> TaskPool:
        """A pool like this one (source, batch size, device, precision and its measured speed-up) on
        another split: the Pareto set's test metrics after a search on validation."""
        return TaskPool(self.source, split=split, limit=limit, batch_size=self._batch_size, device=self.device,
                        progress=self.progress, precision=self.precision, precision_speedup=self.precision_speedup)

    def evaluate(self, task: str, body_state: State | None = None) -> float:
        """The task's metric on the pool's split (first ``limit`` examples) with ``body_state``."""
        entry = self.source.entry(task)
        preds = self.predictions(task, body_state)
        return score(entry, self.labels(task), preds)

    def evaluate_many(self, states: Mapping[str, State | None]) -> dict[str, float]:
        """``{task: metric}`` for each task's body state (None: its own body)."""
        return {task: self.evaluate(task, state) for task, state in states.items()}

    def predictions(self, task: str, body_state: State | None = None, split: str | None = None) -> torch.Tensor:
        """Predicted class ids (real values for regression tasks), in the split's stored order."""
        entry, split = self.source.entry(task), split or self.split
        inputs = self.inputs(task, split)
        model = self.task_model(task, body_state)
        started = time.perf_counter()
        preds = predict(
            model, inputs, batch_size=self.batch_size(entry), regression=entry.metric in REGRESSION_METRICS,
            device=self.device, progress=self.progress, description=f"eval {task}/{split}", precision=self.precision,
        )
        seconds = time.perf_counter() - started
        self.examples_evaluated += len(inputs)
        self.seconds_evaluating += seconds
        logger.info("eval %s/%s: %d examples in %.2f s (%.0f examples/s)", task, split, len(inputs), seconds,
                    len(inputs) / max(seconds, 1e-9))
        return preds

    def staged(self, task: str) -> StagedBody | None:
        """The task's body run stage by stage, or None for a body class without a stage split."""
        return staged_body(self._body(self.source.entry(task).modality))

    def n_layers(self, task: str) -> int:
        """Encoder layers of the task's body (what one full forward runs)."""
        return int(self._body(self.source.entry(task).modality).config.num_hidden_layers)

    def evaluate_from(
        self, task: str, body_state: State, *, start_layer: int = 0, hidden: Sequence[torch.Tensor] | None = None,
        keep_layers: Collection[int] = (),
    ) -> StagedRun:
        """The task's metric (as :meth:`evaluate` computes it, bit for bit) with a forward that
        starts at encoder layer ``start_layer`` from ``hidden`` (the output of layer
        ``start_layer - 1`` for each evaluation batch, as a previous run kept them), and keeps the
        outputs of ``keep_layers``. Only the weights of the stages it runs are taken from
        ``body_state``; the others may be left out. A body without a stage split is run whole.

        >>> first = pool.evaluate_from("sst2", state, keep_layers=[2])  # doctest: +SKIP
        >>> pool.evaluate_from("sst2", other, start_layer=3, hidden=first.hidden[2]).layers_run  # doctest: +SKIP
        3
        """
        entry = self.source.entry(task)
        staged = self.staged(task)
        if staged is None:
            if hidden is not None:
                raise TaskError(f"task '{task}': {type(self._body(entry.modality)).__name__} has no stage split to resume")
            return StagedRun(self.evaluate(task, body_state), self.n_layers(task))
        if (hidden is None) != (start_layer == 0) or not 0 <= start_layer <= staged.n_layers:
            raise TaskError(f"task '{task}': start_layer {start_layer} needs the hidden states of layer {start_layer - 1}")
        first_stage = 0 if hidden is None else start_layer + 1
        state = self.complete_state(task, body_state)
        needed = [k for k in checkpoint_key_map(staged.body).values() if staged.stage_of(k) >= first_stage]
        missing = [k for k in needed if k not in state]
        if missing:
            raise TaskError(f"task '{task}': body state misses {missing[:3]} (stages from {first_stage} on)")
        load_partial_state(staged.body, {k: state[k] for k in needed})
        inputs, head = self.inputs(task, self.split), self._head(task)
        regression = entry.metric in REGRESSION_METRICS
        preds = torch.empty(len(inputs), dtype=torch.float32 if regression else torch.int64)
        kept: dict[int, list[torch.Tensor]] = {i: [] for i in keep_layers if start_layer <= i < staged.n_layers}
        started = time.perf_counter()
        with torch.inference_mode(), precision_context(self.precision, self.device):
            for b, (idx, batch) in enumerate(eval_batches(inputs, self.batch_size(entry))):
                batch = {k: v.to(self.device) for k, v in batch.items()}
                if hidden is None:
                    h, mask = staged.embed(batch)
                else:
                    if b >= len(hidden):
                        raise TaskError(f"task '{task}': {len(hidden)} hidden-state batches given, more needed")
                    h = hidden[b].to(self.device)
                    mask = staged.mask(h, batch)
                for i in range(start_layer, staged.n_layers):
                    h = staged.layer(i, h, mask)
                    if i in kept:
                        kept[i].append(h)  # layers return fresh tensors, so no copy is needed
                logits = head(staged.features(h, entry.pooling)).float().cpu()
                preds[idx] = logits[:, 0] if regression else logits.argmax(-1)
        self.examples_evaluated += len(inputs)
        self.seconds_evaluating += time.perf_counter() - started
        return StagedRun(score(entry, self.labels(task), preds), staged.n_layers - start_layer, kept)

    def labels(self, task: str, split: str | None = None) -> torch.Tensor:
        """Labels of the evaluated examples (first ``limit`` of the split), in stored order."""
        split = split or self.split
        self.inputs(task, split)
        return self._labels[(task, split)]

    def features(self, task: str, split: str | None = None, *, pool: Pool | None = None) -> torch.Tensor:
        """Pooled features (N x hidden) of the PRETRAINED backbone for the evaluated examples.

        The pooling is the task's (``cls`` or BERT ``pooler``, with the backbone's own pooler), or
        ``pool(batch)`` when given: the router pools every task the same way with its own
        (possibly truncated) pretrained body, and the pool then loads no body.
        """
        entry, split = self.source.entry(task), split or self.split
        inputs = self.inputs(task, split)
        if pool is None:
            body = self._body(entry.modality)
            load_body_state(body, self._backbone_state())
            model = TaskClassifier(body, self._head(task), entry.pooling).eval()
            pool = lambda batch: model.features(**batch)  # noqa: E731
        chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
        with torch.inference_mode():
            for idx, batch in eval_batches(inputs, self.batch_size(entry)):
                feats = pool({k: v.to(self.device) for k, v in batch.items()})
                chunks.append((idx, feats.float().cpu()))
        out = torch.empty(len(inputs), chunks[0][1].shape[-1])
        for idx, feats in chunks:
            out[idx] = feats
        return out

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """The backbone's body weights (loaded once), without ``head``-kind keys (BERT's pooler):
        those belong to each task's head, so :meth:`evaluate` fills them from the task's own body,
        exactly as for a merged body. This is the paper's "pretrained model + task head" row."""
        return {k: v for k, v in self._backbone_state().items() if k not in self._head_keys}

    def own_state(self, task: str) -> dict[str, torch.Tensor]:
        """The task's fine-tuned body weights (read from disk each time; not kept)."""
        with self.source.task_body(task) as ckpt:
            return {k: ckpt.get(k).clone() for k in ckpt.keys()}

    def task_model(self, task: str, body_state: State | None = None) -> TaskClassifier:
        """The pool's shared body filled with ``body_state`` (+ the task's head-kind keys) and the
        task's head. The next call refills the same body: use the model before asking for another."""
        entry = self.source.entry(task)
        body = self._body(entry.modality)
        load_body_state(body, self.own_state(task) if body_state is None else self.complete_state(task, body_state))
        return TaskClassifier(body, self._head(task), entry.pooling).eval()

    def logits(self, task: str, body_state: State, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The task model's logits on one batch of ``inputs`` as a differentiable function of
        ``body_state`` (checkpoint names; head-kind keys missing from it are the task's own):
        the pool's body runs through ``torch.func.functional_call``, so gradients reach the
        state's tensors and nothing is copied into the body. The head is the task's own and
        stays fixed (no gradient); dropout is off. AdaMerging learns its coefficients this way.

        >>> merged = {k: pre[k] + lam * tau[k] for k in pre}             # doctest: +SKIP
        >>> pool.logits("sst2", merged, select(pool.inputs("sst2", "validation"), idx))  # doctest: +SKIP
        """
        entry = self.source.entry(task)
        model = TaskClassifier(self._body(entry.modality), self._head(task), entry.pooling).eval()
        state = self.complete_state(task, body_state)
        key_map = checkpoint_key_map(model.body)
        params = {f"body.{module}": state[name].to(self.device) for module, name in key_map.items() if name in state}
        missing = [key_map.get(n, n) for n, _ in model.body.named_parameters() if f"body.{n}" not in params]
        if missing:
            raise TaskError(f"task '{task}': body state misses {missing[:3]}")
        params.update({f"head.{n}": p.detach() for n, p in model.head.named_parameters()})
        batch = {k: v.to(self.device) for k, v in inputs.items()}
        return torch.func.functional_call(model, params, args=(), kwargs=batch)

    def labeled_batches(self, task: str, split: str | None = None) -> list[dict[str, torch.Tensor]]:
        """The evaluated examples as model-input batches with a ``labels`` entry (for Fisher and
        RegMean statistics: ``model(**batch without labels)`` gives logits)."""
        entry, split = self.source.entry(task), split or self.split
        inputs, labels = self.inputs(task, split), self.labels(task, split)
        return [
            {**{k: v.to(self.device) for k, v in batch.items()}, "labels": labels[idx].to(self.device)}
            for idx, batch in eval_batches(inputs, self.batch_size(entry))
        ]

    def batch_size(self, entry: TaskEntry) -> int:
        return self._batch_size or DEFAULT_BATCH[entry.modality]

    def throughput(self) -> float:
        """Examples per second over every evaluation so far (0.0 before the first)."""
        return self.examples_evaluated / self.seconds_evaluating if self.seconds_evaluating else 0.0

    # -- caches -----------------------------------------------------------------------------
    def _backbone_state(self) -> dict[str, torch.Tensor]:
        if self._pretrained is None:
            with self.source.backbone() as ckpt:
                self._pretrained = {k: ckpt.get(k).clone() for k in ckpt.keys()}
        return self._pretrained

    def complete_state(self, task: str, state: State) -> State:
        """``state`` with the task's own ``head``-kind keys (BERT's pooler) filled in where it lacks them."""
        missing = [k for k in self._head_keys if k not in state]
        if not missing:
            return state
        if task not in self._own_head_kind:
            with self.source.task_body(task) as ckpt:
                self._own_head_kind[task] = {k: ckpt.get(k).clone() for k in self._head_keys if k in ckpt.keys()}
        own = self._own_head_kind[task]
        return {**{k: own[k] for k in missing if k in own}, **state}

    def _body(self, modality: str) -> transformers.PreTrainedModel:
        if modality not in self._bodies:
            backbone = self.source.backbone_dir
            self._bodies[modality] = body_from_config(backbone, list(self._backbone_state())).to(self.device)
        return self._bodies[modality]

    def _head(self, task: str) -> nn.Linear:
        if task not in self._heads:
            self._heads[task] = head_from_state(self.source.task_head(task)).to(self.device)
        return self._heads[task]

    def inputs(self, task: str, split: str) -> Encoded:
        """Task ``task``'s encoded split (the first ``limit`` examples), tokenised once and cached: what
        every evaluation of the pool runs on."""
        key = (task, split)
        if key not in self._encoded:
            entry = self.source.entry(task)
            data = self.source.task_data(task)
            if split not in data:
                raise TaskError(f"task '{task}' has no split '{split}' (splits: {', '.join(data)})")
            encoded = self._encode(entry, split, data[split]["inputs"])
            labels = data[split]["labels"]
            if self.limit is not None:
                encoded, labels = take_first(encoded, self.limit), labels[: self.limit]
            self._encoded[key], self._labels[key] = encoded, labels
        return self._encoded[key]

    def _encode(self, entry: TaskEntry, split: str, raw: torch.Tensor | list[str]) -> Encoded:
        if entry.modality == "image":
            self.encodings += 1
            return encode_inputs(entry, raw)
        cache = self.source.cache_dir
        path = None if cache is None else cache / f"{entry.name}.{split}.{self._cache_key(entry)}.pt"
        if path is not None and path.is_file():
            return EncodedTexts.from_payload(torch.load(path, weights_only=True))
        self.encodings += 1
        encoded = encode_inputs(entry, raw, self._get_tokenizer())
        if path is None:
            return encoded
        buffer = io.BytesIO()  # serialised in memory: torch.save to a full disk is a RuntimeError
        torch.save(encoded.to_payload(), buffer)  # type: ignore[union-attr]
        try:
            write_bytes(path, buffer.getvalue())
        except OSError as err:
            logger.warning("cannot cache tokenised %s/%s at %s (%s)", entry.name, split, path, err)
        return encoded

    def _cache_key(self, entry: TaskEntry) -> str:
        if self._tokenizer_fingerprint is None:
            directory = self.source.tokenizer_dir
            files = sorted(p for p in directory.iterdir() if p.name.startswith(("tokenizer", "vocab", "special")))
            self._tokenizer_fingerprint = json.dumps({p.name: sha256_file(p) for p in files}, sort_keys=True)
        material = [entry.sha256.get(entry.data, entry.data), self._tokenizer_fingerprint,
                    max_length(entry), transformers.__version__]
        if entry.input_fields:  # a suite's fields (left out for zoos, whose cached keys predate them)
            material.append(entry.input_fields)
        return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:16]

    def _get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.source.tokenizer_dir)
        return self._tokenizer
