"""On-demand reuse (the paper's Algorithm 2): route inputs to task patterns, map each task to its
expert chain under the chosen configuration, assemble each chain once, run batches.

``predict`` routes every input (or takes its oracle task), groups the inputs by expert chain
(tasks whose chains are equal, the many-to-one task patterns, land in one group), runs each
group's body once per batch and applies each task's own head to its rows, then returns the
results in the inputs' order. Bodies come from a :class:`~modmerge.reuse.assembly.ChainCache`.

Example::

    >>> engine = ReuseEngine(Library.open("lib"), budget=2.5)                  # doctest: +SKIP
    >>> engine.predict([{"text": "a red fox"}, {"text": "rice soup", "task": "has_animal"}])  # doctest: +SKIP
    [{'task': 'has_color', 'label': 1, 'label_name': 'yes', 'chain': '3f2a...'}, ...]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from modmerge.errors import ModmergeError
from modmerge.reuse.assembly import (
    ChainCache,
    TaskHead,
    assemble_body,
    build_task_head,
    pooler_template,
    split_head_state,
)
from modmerge.reuse.inputs import (
    DEFAULT_MAX_IMAGE_PIXELS,
    RawInput,
    decode_inputs,
    encode_images,
    encode_texts,
    parse_input,
    select_rows,
)
from modmerge.tasks.batching import EncodedTexts, eval_batches
from modmerge.tasks.taskpool import DEFAULT_BATCH, DEFAULT_MAX_LENGTH

logger = logging.getLogger(__name__)

Encoded = torch.Tensor | EncodedTexts
DEFAULT_CACHE_BYTES = 1 << 30


class ReuseError(ModmergeError):
    """A reuse request cannot be served: unknown configuration or task, no router, bad inputs."""


class ReuseEngine:
    """Batched routed inference over one configuration of an expert library (see module doc).

    ``budget`` picks the best configuration whose storage cost fits (``Library.select``);
    ``config_id`` names one; with neither, the configuration of highest validation performance.
    ``source`` (the task source the library was built from, or a callable that opens it) is only read when the library lacks
    the pretrained backbone weights the router's features need, or a task's pooler weights (as
    libraries built before those were stored do); without it such a library is refused.
    ``max_image_pixels`` bounds the image files decoded (see :mod:`modmerge.reuse.inputs`).
    Not thread-safe: one engine runs one ``predict`` at a time.
    """

    def __init__(
        self, library: Any, budget: float | None = None, config_id: str | None = None, device: str = "cpu",
        cache_bytes: int = DEFAULT_CACHE_BYTES, batch_size: int | None = None, source: Any = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        if isinstance(library, str | Path):
            from modmerge.library import Library

            library = Library.open(library)
        self.library, self.device, self.source = library, torch.device(device), source
        self.config = self._choose(budget, config_id)
        self.tasks = {t.name: t for t in library.tasks}
        modalities = {t.modality for t in self.tasks.values()}
        if len(modalities) != 1:
            raise ReuseError(f"library {library.root if hasattr(library, 'root') else ''}: tasks of several modalities")
        self.modality = modalities.pop()
        self.batch_size = batch_size or DEFAULT_BATCH[self.modality]
        self.max_image_pixels = max_image_pixels
        self.cache = ChainCache(lambda chain_id: assemble_body(library, chain_id, device=self.device), cache_bytes)
        self._heads: dict[str, TaskHead] = {}
        self._chains: dict[str, str] = {}
        self.seconds = 0.0
        self.examples = 0

    # -- configuration ------------------------------------------------------------------------
    def _choose(self, budget: float | None, config_id: str | None) -> Any:
        configs = list(self.library.configurations)
        if config_id is not None:
            for entry in configs:
                if entry.id == config_id:
                    return entry
            raise ReuseError(f"unknown configuration '{config_id}' (configurations: {', '.join(c.id for c in configs)})")
        if budget is not None:
            return self.library.select(budget)
        return self.library.select(math.inf)

    def configs(self) -> list[dict[str, Any]]:
        """Every configuration of the library, for listings and the service (``selected`` marks ours).

        >>> engine.configs()[0]  # doctest: +SKIP
        {'id': 'c0', 'storage_cost': 1.0, 'validation': 0.91, 'test': 0.9, 'modules': 20, 'selected': False}
        """
        return [
            {"id": c.id, "storage_cost": c.storage_cost, "validation": _mean(c.validation), "test": _mean(c.test),
             "modules": len(c.modules), "selected": c.id == self.config.id}
            for c in self.library.configurations
        ]

    def chain_of(self, task: str) -> str:
        """The expert chain (id) serving ``task`` under the selected configuration."""
        if task not in self._chains:
            self._check_task(task, "task")
            self._chains[task] = self.library.chain(self.config.id, task)
        return self._chains[task]

    # -- prediction ---------------------------------------------------------------------------
    def predict(
        self, inputs: Sequence[Mapping[str, Any] | RawInput], tasks: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None, *, with_logits: bool = False,
    ) -> list[dict[str, Any]]:
        """``{"task", "label", "label_name", "chain"}`` per input, in input order (see module doc).

        ``tasks`` gives an oracle task per input (the router is skipped); an input's own
        ``"task"`` field does the same for that input. ``progress(n)`` is called as n examples
        finish. ``with_logits`` adds each input's logits (a list of floats).

        >>> engine.predict([{"text": "a red fox"}], tasks=["has_animal"])  # doctest: +SKIP
        [{'task': 'has_animal', 'label': 1, 'label_name': 'yes', 'chain': '3f2a...'}]
        """
        raws = self._parse(inputs)
        if tasks is not None and len(tasks) != len(raws):
            raise ReuseError(f"tasks: {len(tasks)} labels for {len(raws)} inputs")
        given = [tasks[i] if tasks is not None else r.task for i, r in enumerate(raws)]
        for i, task in enumerate(given):
            if task is not None:
                self._check_task(task, f"input {i}: task")
        encoder = _Encoder(self, raws)
        return self.predict_encoded(encoder, given, progress=progress, with_logits=with_logits, ids=[r.id for r in raws])

    def prepare(self, inputs: Sequence[Mapping[str, Any] | RawInput]) -> list[RawInput]:
        """One request's inputs parsed and checked, images decoded at the backbone's size: every
        error :meth:`predict` could raise for an input, raised here, so a caller that batches
        several requests into one ``predict`` can answer a bad one alone. ``predict`` takes the result.

        >>> engine.predict(engine.prepare([{"image_b64": png_b64}]))  # doctest: +SKIP
        """
        raws = self._parse(inputs)
        if self.modality != "image":
            return raws
        return decode_inputs(raws, self.image_size, max_pixels=self.max_image_pixels)

    def _parse(self, inputs: Sequence[Mapping[str, Any] | RawInput]) -> list[RawInput]:
        raws = [r if isinstance(r, RawInput) else parse_input(r, where=f"input {i}") for i, r in enumerate(inputs)]
        wrong = next((i for i, r in enumerate(raws) if r.kind != self.modality), None)
        if wrong is not None:
            raise ReuseError(f"input {wrong}: a {raws[wrong].kind} input, but the library's tasks take {self.modality}s")
        return raws

    def predict_encoded(
        self, encoder: _Encoder | Encoded, tasks: Sequence[str | None], *, progress: Callable[[int], None] | None = None,
        with_logits: bool = False, ids: Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`predict` on inputs already encoded for the backbone (``None`` tasks are routed).

        >>> engine.predict_encoded(pool_inputs, [None] * len(pool_inputs))  # doctest: +SKIP
        """
        if not isinstance(encoder, _Encoder):
            encoder = _Encoder(self, None, fixed=encoder)
        started = time.perf_counter()
        n = encoder.n
        routed = self.route(encoder, [i for i, t in enumerate(tasks) if t is None])
        final = [t if t is not None else routed[i] for i, t in enumerate(tasks)]
        groups: dict[str, list[int]] = {}
        for i, task in enumerate(final):
            groups.setdefault(self.chain_of(task), []).append(i)
        results: list[dict[str, Any]] = [{} for _ in range(n)]
        for chain_id, rows in groups.items():
            self._run_group(chain_id, rows, final, encoder, results, with_logits, progress)
        for i, result in enumerate(results):
            if ids is not None and ids[i] is not None:
                result["id"] = ids[i]
        self.seconds += time.perf_counter() - started
        self.examples += n
        return results

    def route(self, encoder: _Encoder, rows: Sequence[int]) -> dict[int, str]:
        """Task names the router assigns to ``rows`` (features of the PRETRAINED body)."""
        if not rows:
            return {}
        router, config = self._router
        from modmerge.reuse.router import router_features

        encoded = select_rows(encoder.routing(), torch.tensor(list(rows), dtype=torch.int64))
        ids = torch.empty(len(rows), dtype=torch.int64)
        with torch.inference_mode():
            for idx, batch in eval_batches(encoded, self.batch_size):
                features = router_features(self._pretrained_body, {k: v.to(self.device) for k, v in batch.items()},
                                           config.pooling)
                ids[idx] = router.route(features).cpu()
        return {row: config.tasks[int(t)] for row, t in zip(rows, ids.tolist(), strict=True)}

    def _run_group(
        self, chain_id: str, rows: list[int], final: Sequence[str], encoder: _Encoder, results: list[dict[str, Any]],
        with_logits: bool, progress: Callable[[int], None] | None,
    ) -> None:
        body = self.cache.get(chain_id)
        # tasks of this group with different max_length need their own encodings (texts only)
        by_length: dict[int, list[int]] = {}
        for i in rows:
            by_length.setdefault(encoder.key_for(self.tasks[final[i]]), []).append(i)
        with torch.inference_mode():
            for key, sub_rows in by_length.items():
                index = torch.tensor(sub_rows, dtype=torch.int64)
                encoded = select_rows(encoder.for_key(key), index)
                for idx, batch in eval_batches(encoded, self.batch_size):
                    hidden = body(**{k: v.to(self.device) for k, v in batch.items()}).last_hidden_state
                    batch_rows = index[idx].tolist()
                    for task in dict.fromkeys(final[r] for r in batch_rows):
                        local = [j for j, r in enumerate(batch_rows) if final[r] == task]
                        logits = self._head(task)(hidden[local]).float().cpu()
                        self._fill(task, chain_id, [batch_rows[j] for j in local], logits, results, with_logits)
                    if progress is not None:
                        progress(len(batch_rows))

    def _fill(self, task: str, chain_id: str, rows: list[int], logits: torch.Tensor, results: list[dict[str, Any]],
              with_logits: bool) -> None:
        entry = self.tasks[task]
        labels = list(getattr(entry, "labels", None) or [])
        regression = entry.metric == "pearson_spearman"
        for j, row in enumerate(rows):
            out: dict[str, Any] = {"task": task, "chain": chain_id}
            if regression:
                out["label"] = float(logits[j, 0])
            else:
                label = int(logits[j].argmax())
                out["label"] = label
                if label < len(labels):
                    out["label_name"] = labels[label]
            if with_logits:
                out["logits"] = logits[j].tolist()
            results[row] = out

    # -- lazily built parts -------------------------------------------------------------------
    def _check_task(self, task: str, what: str) -> None:
        if task not in self.tasks:
            raise ReuseError(f"{what} '{task}' is not in the library (tasks: {', '.join(self.tasks)})")

    def _head(self, task: str) -> TaskHead:
        if task not in self._heads:
            entry = self.tasks[task]
            parts = split_head_state(task, self.library.head_state(task))
            if entry.pooling == "pooler" and not parts.pooler:
                parts = type(parts)(parts.classifier, self._source_pooler(task))
            self._heads[task] = build_task_head(task, entry.pooling, parts, lambda: self._pooler_template,
                                                device=self.device)
        return self._heads[task]

    @cached_property
    def _pooler_template(self) -> nn.Module | None:
        return pooler_template(Path(self.library.backbone_dir))

    @cached_property
    def tokenizer(self) -> Any:
        return transformers.AutoTokenizer.from_pretrained(Path(self.library.backbone_dir))

    @cached_property
    def image_size(self) -> tuple[int, int]:
        config = transformers.AutoConfig.from_pretrained(Path(self.library.backbone_dir))
        size = getattr(config, "image_size", 28)
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @cached_property
    def _router(self) -> tuple[Any, Any]:
        found = self.library.router_state()
        if found is None:
            raise ReuseError("the library has no router: give each input a 'task' (or --task) to choose its task")
        from modmerge.reuse.router import Router, RouterConfig

        state, config = found
        config = config if isinstance(config, RouterConfig) else RouterConfig.from_dict(config)
        unknown = [t for t in config.tasks if t not in self.tasks]
        if unknown:
            raise ReuseError(f"router: routes to task '{unknown[0]}', which the library does not hold")
        return Router.from_state(state, config).to(self.device).eval(), config

    @cached_property
    def _pretrained_body(self) -> nn.Module:
        """The pretrained body the router reads features from, cut to the router's
        ``feature_layers`` as :func:`~modmerge.reuse.router.fit_router` cut it in training."""
        from modmerge.reuse.router import router_body

        config = self._router[1]
        return router_body(Path(self.library.backbone_dir), self._pretrained_state(),
                           config.feature_layers).to(self.device).eval()

    def _pretrained_state(self) -> dict[str, torch.Tensor]:
        from modmerge.checkpoints import open_checkpoint

        stored = getattr(self.library, "router_backbone_state", lambda: None)()
        if stored is not None:
            return stored
        backbone = Path(self.library.backbone_dir)
        if any(backbone.glob("*.safetensors")):
            with open_checkpoint(backbone) as ckpt:
                return {k: ckpt.get(k).clone() for k in ckpt.keys()}
        source = self._source("the pretrained weights its router reads")
        logger.info("library backbone has no weights; the router's features use '%s'", source.name)
        with source.backbone() as ckpt:
            return {k: ckpt.get(k).clone() for k in ckpt.keys()}

    def _source_pooler(self, task: str) -> dict[str, torch.Tensor]:
        with self._source(f"task '{task}''s pooler").task_body(task) as ckpt:
            return {k: ckpt.get(k).clone() for k in ckpt.keys() if k.startswith("pooler.")}

    def _source(self, what: str) -> Any:
        if self.source is None:
            raise ReuseError(f"library {self.library.root} lacks {what} (built before they were stored): rebuild "
                             "it with `modmerge library build`, or give the task source it was built from")
        if callable(self.source):  # opened only when first needed
            self.source = self.source()
        return self.source

    def throughput(self) -> float:
        """Examples per second over every ``predict`` so far (0.0 before the first)."""
        return self.examples / self.seconds if self.seconds else 0.0


class _Encoder:
    """Encodes a request's raw inputs once per needed form: pixel values, or token ids per
    ``max_length`` (the router's features use the longest; a task's rows use the task's own)."""

    def __init__(self, engine: ReuseEngine, raws: Sequence[RawInput] | None, fixed: Encoded | None = None) -> None:
        self.engine, self.raws, self.fixed = engine, raws, fixed
        self._cache: dict[int, Encoded] = {}
        self.n = len(fixed) if fixed is not None else len(raws or [])

    def key_for(self, entry: Any) -> int:
        if self.fixed is not None or self.engine.modality == "image":
            return 0
        return int(getattr(entry, "max_length", None) or DEFAULT_MAX_LENGTH)

    def routing(self) -> Encoded:
        keys = {self.key_for(t) for t in self.engine.tasks.values()}
        return self.for_key(max(keys))

    def for_key(self, key: int) -> Encoded:
        if self.fixed is not None:
            return self.fixed
        if key not in self._cache:
            raws = self.raws or []
            if self.engine.modality == "image":
                self._cache[key] = encode_images(raws, self.engine.image_size, max_pixels=self.engine.max_image_pixels)
            else:
                self._cache[key] = encode_texts(self.engine.tokenizer, raws, key)
        return self._cache[key]


def _mean(block: Any) -> float | None:
    if isinstance(block, Mapping):
        value = block.get("mean")
        return None if value is None else float(value)
    return None if block is None else float(getattr(block, "mean", block))
