"""The router (stage 5, paper III-D): which task pattern an input belongs to, so that it is sent
through that task's expert chain.

A 3-layer MLP on the PRETRAINED backbone's pooled features of the input (one fixed pooling for
every task: mean over the attention mask for texts, the CLS token for images), trained with
AdamW and cross-entropy on up to ``per_task`` examples of each task's train split. The paper's
settings are the defaults: 1,000 examples per task, 30 epochs, learning rate 5e-4. Features are
standardised with a mean and std fitted on the training features and saved with the weights,
so the saved state alone reproduces every route.

``feature_layers`` k reads the features from the backbone truncated to its first k encoder layers
(then its final norm, as the full model applies it): routing an input then costs k layers, not a
second full forward beside its expert chain's. k = 0 reads the embedding layer's output alone (a
bag of token or patch embeddings; it needs ``mean`` pooling, as the CLS embedding is constant).
:func:`router_body` builds that body, once, for both training (:func:`fit_router`) and
routing (the reuse engine), so both see the same features.

Example::

    >>> config = RouterConfig(tasks=("a", "b"), in_dim=8, epochs=5)
    >>> x = torch.cat([torch.randn(50, 8) - 2, torch.randn(50, 8) + 2])
    >>> y = torch.cat([torch.zeros(50), torch.ones(50)]).long()
    >>> router = train_router(x, y, config)
    >>> router.route(torch.full((1, 8), 2.0)).tolist()
    [1]
    >>> same = Router.from_state(router.to_state(), config)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from rich.progress import Progress
from torch import nn

from modmerge.errors import ModmergeError
from modmerge.tasks.models import first_layer_keys, load_body
from modmerge.tasks.progress import progress_task
from modmerge.tasks.source import TaskSource, source_modality
from modmerge.tasks.taskpool import TaskPool

logger = logging.getLogger(__name__)

RouterPooling = Literal["cls", "mean"]
POOLINGS = ("cls", "mean")
# Texts: CLS of a sentence encoder trained without a CLS objective (MiniLM, the tiny zoo's random
# BERT) carries little; mean pooling is the usual sentence embedding. ViT's CLS token is what
# its pretraining (and every task head) reads.
DEFAULT_POOLING: dict[str, RouterPooling] = {"text": "mean", "image": "cls"}


class RouterError(ModmergeError):
    """A router config, state or training input is invalid, or a zoo cannot be routed."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RouterConfig:
    """Everything needed to rebuild and retrain a router; ``tasks[i]`` is the name of output ``i``.

    >>> RouterConfig(tasks=("sst2", "cola"), in_dim=384).to_dict()["epochs"]
    30
    """

    tasks: tuple[str, ...]
    in_dim: int
    hidden: int = 256
    epochs: int = 30
    lr: float = 5e-4
    per_task: int = 1000
    batch_size: int = 64
    weight_decay: float = 0.01
    seed: int = 0
    pooling: RouterPooling = "cls"
    feature_layers: int | None = None  # None: the whole backbone

    def __post_init__(self) -> None:
        tasks = self.tasks
        if isinstance(tasks, str) or not isinstance(tasks, list | tuple):
            raise RouterError(f"router config field 'tasks': a list of task names, got {tasks!r}")
        object.__setattr__(self, "tasks", tuple(tasks))
        if not self.tasks:
            raise RouterError("router config field 'tasks': at least one task is needed")
        bad = [t for t in self.tasks if not isinstance(t, str) or not t]
        if bad:
            raise RouterError(f"router config field 'tasks': task names must be non-empty strings, got {bad[0]!r}")
        dupes = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if dupes:
            raise RouterError(f"router config field 'tasks': task '{dupes[0]}' is listed twice")
        for name in ("in_dim", "hidden", "epochs", "per_task", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise RouterError(f"router config field '{name}': an integer >= 1, got {value!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise RouterError(f"router config field 'seed': an integer >= 0, got {self.seed!r}")
        for name, positive in (("lr", True), ("weight_decay", False)):
            value = getattr(self, name)
            if (not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
                    or value < 0 or (positive and value == 0)):
                raise RouterError(f"router config field '{name}': a finite number {'> 0' if positive else '>= 0'}, "
                                  f"got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.pooling not in POOLINGS:
            raise RouterError(f"router config field 'pooling': one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.feature_layers is not None and (not _is_int(self.feature_layers) or self.feature_layers < 0):
            raise RouterError(f"router config field 'feature_layers': an integer >= 0 or null (all layers), "
                              f"got {self.feature_layers!r}")
        if self.feature_layers == 0 and self.pooling == "cls":
            raise RouterError("router config: feature_layers 0 reads the embeddings, whose first (CLS) token does "
                              "not depend on the input; use pooling 'mean'")

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``tasks`` as a list); :meth:`from_dict` reads them back."""
        out = dataclasses.asdict(self)
        out["tasks"] = list(self.tasks)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RouterConfig:
        """The config written by :meth:`to_dict`; unknown fields are errors, and so are missing
        ``tasks`` and ``in_dim``; other missing fields take their defaults (a config stored by an
        older version has no ``feature_layers``: all layers, as it was trained).

        >>> RouterConfig.from_dict({"tasks": ["a"], "in_dim": 4}).hidden
        256
        """
        if not isinstance(data, Mapping):
            raise RouterError(f"router config: a mapping of fields, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise RouterError(f"router config field '{unknown[0]}' is unknown (fields: {', '.join(sorted(fields))})")
        for required in ("tasks", "in_dim"):
            if required not in data:
                raise RouterError(f"router config field '{required}' is missing")
        return cls(**dict(data))

    @classmethod
    def for_source(cls, source: TaskSource, **overrides: Any) -> RouterConfig:
        """Defaults for ``source``: all its tasks, the backbone's hidden size, its modality's pooling.

        >>> RouterConfig.for_source(open_suite("suite.yaml")).pooling  # doctest: +SKIP
        'cls'
        """
        modality = source_modality(source)
        fields = {"tasks": tuple(source.tasks), "in_dim": _hidden_size(source), "pooling": DEFAULT_POOLING[modality]}
        return cls(**{**fields, **overrides})


class Router(nn.Module):
    """Standardise, then Linear-ReLU-Linear-ReLU-Linear: features (N x in_dim) -> task logits."""

    def __init__(self, config: RouterConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("feature_mean", torch.zeros(config.in_dim))
        self.register_buffer("feature_std", torch.ones(config.in_dim))
        self.layers = nn.Sequential(
            nn.Linear(config.in_dim, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.n_tasks),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers((features - self.feature_mean) / self.feature_std)

    def route(self, features: torch.Tensor) -> torch.Tensor:
        """Task ids (index into ``config.tasks``) of each feature row, as a LongTensor.

        >>> router.route(torch.zeros(3, router.config.in_dim)).shape  # doctest: +SKIP
        torch.Size([3])
        """
        if features.dim() != 2 or features.shape[1] != self.config.in_dim:
            raise RouterError(f"router: features must be N x {self.config.in_dim}, got {tuple(features.shape)}")
        with torch.inference_mode():
            return self(features.to(self.feature_mean.dtype)).argmax(-1)

    def to_state(self) -> dict[str, torch.Tensor]:
        """Weights and standardisation buffers, detached copies (what the library stores)."""
        return {k: v.detach().clone().contiguous() for k, v in self.state_dict().items()}

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], config: RouterConfig) -> Router:
        """The router saved by :meth:`to_state`; a missing, extra or misshapen tensor is an error."""
        router = cls(config)
        expected = router.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            what = f"misses '{missing[0]}'" if missing else f"has unexpected '{extra[0]}'"
            raise RouterError(f"router state {what} (config: {config.n_tasks} tasks, in_dim {config.in_dim}, "
                              f"hidden {config.hidden})")
        for key, tensor in expected.items():
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise RouterError(f"router state tensor '{key}' has shape {tuple(state[key].shape)}, "
                                  f"the config needs {tuple(tensor.shape)}")
        router.load_state_dict({k: state[k].float() for k in expected})
        return router.eval()


def router_body(
    backbone_dir: Path, state: Mapping[str, torch.Tensor], feature_layers: int | None
) -> transformers.PreTrainedModel:
    """The body router features are read from: the pretrained backbone (``backbone_dir``'s
    config, weights ``state`` under checkpoint names), truncated to its first ``feature_layers``
    encoder layers (None: all). Extra weights of the layers it drops are ignored.

    >>> body = router_body(source.backbone_dir, backbone_state, config.feature_layers)  # doctest: +SKIP
    >>> router_features(body, {"pixel_values": x}, "cls").shape  # doctest: +SKIP
    torch.Size([8, 128])
    """
    if feature_layers is not None:
        total = int(transformers.AutoConfig.from_pretrained(backbone_dir).num_hidden_layers)
        if not 0 <= feature_layers <= total:
            raise RouterError(f"router config field 'feature_layers': at most the backbone's {total} encoder "
                              f"layers, got {feature_layers}")
    return load_body(backbone_dir, state, layers=feature_layers)


def router_features(body: nn.Module, batch: Mapping[str, torch.Tensor], pooling: RouterPooling) -> torch.Tensor:
    """Pooled last hidden states (N x hidden) of ``body`` (the PRETRAINED backbone) for ``batch``.

    ``cls``: the first token; ``mean``: the mean over tokens where ``attention_mask`` is 1 (all
    tokens when the batch has no mask, as for images).

    >>> router_features(load_body(source.backbone_dir), {"pixel_values": x}, "cls").shape  # doctest: +SKIP
    torch.Size([8, 128])
    """
    if pooling not in POOLINGS:
        raise RouterError(f"router pooling: one of {', '.join(POOLINGS)}, got {pooling!r}")
    with torch.inference_mode():
        hidden = body(**batch).last_hidden_state
        if pooling == "cls":
            return hidden[:, 0].float()
        mask = batch.get("attention_mask")
        if mask is None:
            return hidden.float().mean(1)
        weights = mask.to(torch.float32).unsqueeze(-1)
        return (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def train_router(features: torch.Tensor, labels: torch.Tensor, config: RouterConfig) -> Router:
    """A router fitted on ``features`` (N x in_dim) and task ids ``labels`` (N): AdamW,
    cross-entropy, ``config.epochs`` epochs of seeded shuffled mini-batches. The same inputs and
    config give the same weights on CPU; the caller's RNG is left untouched.

    >>> router = train_router(torch.randn(20, 4), torch.arange(20) % 2, RouterConfig(("a", "b"), 4, epochs=2))
    >>> router.route(torch.randn(3, 4)).shape
    torch.Size([3])
    """
    features, labels = _check_training_data(features, labels, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        router = Router(config)
    with torch.no_grad():
        router.feature_mean.copy_(features.mean(0))
        # a constant feature (std 0) would divide by zero; leave it centred but unscaled
        router.feature_std.copy_(features.std(0, unbiased=False).clamp(min=1e-6))
    optimizer = torch.optim.AdamW(router.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    router.train()
    for epoch in range(config.epochs):
        total = 0.0
        for idx in torch.split(torch.randperm(len(labels), generator=generator), config.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(router(features[idx]), labels[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        logger.debug("router epoch %d: loss %.4f", epoch + 1, total / len(labels))
    return router.eval()


def _check_training_data(
    features: torch.Tensor, labels: torch.Tensor, config: RouterConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    if features.dim() != 2 or features.shape[1] != config.in_dim:
        raise RouterError(f"router training features must be N x {config.in_dim} (in_dim), got {tuple(features.shape)}")
    if labels.dim() != 1 or len(labels) != len(features):
        raise RouterError(f"router training labels must be a vector of {len(features)} task ids, got {tuple(labels.shape)}")
    if len(labels) == 0:
        raise RouterError("router training data is empty")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise RouterError(f"router training labels must be integer task ids, got {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= config.n_tasks:
        raise RouterError(f"router training labels must lie in [0, {config.n_tasks}), got {int(labels.min())}.."
                          f"{int(labels.max())}")
    features = features.detach().float()
    if not torch.isfinite(features).all():
        raise RouterError("router training features hold NaN or Inf")
    return features, labels.detach().long()


def _hidden_size(source: TaskSource) -> int:
    return int(transformers.AutoConfig.from_pretrained(source.backbone_dir).hidden_size)


def training_split(source: TaskSource) -> str:
    """The split a router trains on: ``train`` where every task has one, else ``validation``."""
    return "train" if all("train" in source.task_data(t) for t in source.tasks) else "validation"


def fit_router(
    source: TaskSource, config: RouterConfig | None = None, *, device: str | torch.device = "cpu",
    progress: Progress | None = None, test_limit: int | None = None,
) -> tuple[Router, dict[str, Any]]:
    """Train a router on ``source`` and measure it: features of the PRETRAINED backbone (its first
    ``config.feature_layers`` layers, see :func:`router_body`) for the first
    ``config.per_task`` examples of each task's train split (splits are stored shuffled, so this is
    a seeded sample; each task gives min(per_task, its train size)), then routing accuracy on each
    task's test split (its first ``test_limit`` examples when given).

    The report: ``test_accuracy`` (over all test examples), ``per_task`` accuracies,
    ``confusion`` ({true task: {routed task: count}}), ``train_examples``, ``train_accuracy``,
    ``seconds`` (total) with ``feature_seconds`` and ``train_seconds``, and ``config``.

    >>> router, report = fit_router(open_suite("suite.yaml"))  # doctest: +SKIP
    >>> report["test_accuracy"]  # doctest: +SKIP
    0.71
    """
    started = time.perf_counter()
    config = config or RouterConfig.for_source(source)
    source_modality(source)
    unknown = [t for t in config.tasks if t not in source.tasks]
    if unknown:
        raise RouterError(f"router task '{unknown[0]}' is not in '{source.name}' (tasks: {', '.join(source.tasks)})")
    hidden_size = _hidden_size(source)
    if hidden_size != config.in_dim:
        raise RouterError(f"router config in_dim {config.in_dim} does not match '{source.name}' features "
                          f"(hidden size {hidden_size})")
    backbone_dir = source.backbone_dir
    with source.backbone() as ckpt:  # only the weights of the layers the router reads
        keys = ckpt.keys()
        if config.feature_layers is not None:
            hf_config = transformers.AutoConfig.from_pretrained(backbone_dir)
            keys = first_layer_keys(keys, hf_config, config.feature_layers)
        backbone = {k: ckpt.get(k).clone() for k in keys}
    body = router_body(backbone_dir, backbone, config.feature_layers).to(device)
    del backbone

    def pool_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return router_features(body, batch, config.pooling)

    def features_of(pool: TaskPool, description: str) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        with progress_task(progress, description, config.n_tasks, transient=True) as advance:
            for i, task in enumerate(config.tasks):
                x = pool.features(task, pool=pool_fn)
                feats.append(x)
                labels.append(torch.full((len(x),), i, dtype=torch.int64))
                advance(1)
        return torch.cat(feats), torch.cat(labels)

    split = training_split(source)
    train_x, train_y = features_of(TaskPool(source, split=split, limit=config.per_task, device=device),
                                   f"router features ({split})")
    train_started = time.perf_counter()
    router = train_router(train_x, train_y, config)
    train_seconds = time.perf_counter() - train_started

    test_x, test_y = features_of(TaskPool(source, split="test", limit=test_limit, device=device),
                                 "router features (test)")
    routed = router.route(test_x)
    per_task, confusion = {}, {}
    for i, task in enumerate(config.tasks):
        mine = routed[test_y == i]
        per_task[task] = float((mine == i).float().mean()) if len(mine) else float("nan")
        counts = torch.bincount(mine, minlength=config.n_tasks).tolist()
        confusion[task] = {config.tasks[j]: int(c) for j, c in enumerate(counts) if c}
    seconds = time.perf_counter() - started
    report = {
        "test_accuracy": float((routed == test_y).float().mean()),
        "per_task": per_task,
        "confusion": confusion,
        "train_examples": len(train_y),
        "test_examples": len(test_y),
        "train_accuracy": float((router.route(train_x) == train_y).float().mean()),
        "seconds": seconds,
        "feature_seconds": seconds - train_seconds,  # train and test features, and routing them
        "train_seconds": train_seconds,
        "config": config.to_dict(),
        "train_split": split,
    }
    logger.info("router on '%s': test accuracy %.4f (%d train examples, %.1f s)", source.name,
                report["test_accuracy"], report["train_examples"], report["seconds"])
    return router, report
