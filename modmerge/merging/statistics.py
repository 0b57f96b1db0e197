"""Statistics for the data-dependent merge methods: diagonal Fisher and RegMean Gram matrices.

Both are ``parameter name -> tensor`` dictionaries (a :class:`Statistics`, which also carries
string metadata). The executor hands a merge method, for each tensor, one statistics tensor per
model: the Fisher diagonal for ``fisher`` (``needs=("fisher",)``), the layer-input Gram matrix for
``regmean`` (``needs=("gram",)``), keyed by the layer's weight name.

Computing them needs a model and data, so they live at the edge:
:func:`modmerge.merging.fisher_statistics.compute_fisher` (its own module: three estimators,
classification and regression heads) and :func:`compute_gram` run a model over batches; :func:`save_statistics` / :func:`load_statistics`
read and write one safetensors file (a recipe's ``statistics:`` field points at one per model);
:class:`StatisticsCache` memoises files by (kind, model id, data id) in a directory you pass in.

Example::

    >>> import torch
    >>> layer = torch.nn.Sequential(torch.nn.Linear(2, 1))
    >>> grams = compute_gram(layer, [{"input": torch.eye(2)}])
    >>> grams["0.weight"]
    tensor([[1., 0.],
            [0., 1.]])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from modmerge.atomic import atomic_file
from modmerge.errors import CheckpointError, MergeMethodError

KINDS = ("fisher", "gram")
LossFn = Callable[[torch.nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]
ModuleFilter = Callable[[str, torch.nn.Module], bool]


class Statistics(dict[str, torch.Tensor]):
    """Parameter name -> statistics tensor, plus string ``metadata`` (kind, counts, ids).

    A plain ``dict(stats)`` copy drops the metadata; use ``Statistics(stats, stats.metadata)``.
    """

    def __init__(
        self, tensors: Mapping[str, torch.Tensor] | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(tensors or {})
        self.metadata: dict[str, str] = dict(metadata or {})


def statistics_norm(stats: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None) -> float:
    """The L2 norm of one model's statistics over ``keys`` (default: every tensor), in float64.

    Fisher normalisation over the whole model divides each model's weight by this norm
    (Matena & Raffel's code): the executor computes it over every tensor merged together.

    >>> statistics_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0]), "c": torch.tensor([12.0])}, ["a", "b"])
    5.0
    """
    names = stats.keys() if keys is None else [k for k in keys if k in stats]
    total = 0.0
    for name in names:
        total += float(torch.linalg.vector_norm(stats[name].detach().to(torch.float64)) ** 2)
    return total**0.5


# ---------------------------------------------------------------------------------------------
# Batches


def batch_size(batch: Mapping[str, torch.Tensor]) -> int:
    """The first dimension of the batch's first batched tensor.

    >>> batch_size({"x": torch.zeros(3, 2), "flag": torch.tensor(1)})
    3
    """
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    raise MergeMethodError(f"statistics: batch with keys {sorted(batch)} holds no batched tensor")


def split_examples(batch: Mapping[str, torch.Tensor]) -> Iterable[dict[str, torch.Tensor]]:
    """Split a batch into batches of one (tensors whose first dim is the batch size are sliced).

    >>> [ex["x"].shape for ex in split_examples({"x": torch.zeros(2, 3)})]
    [torch.Size([1, 3]), torch.Size([1, 3])]
    """
    size = batch_size(batch)
    for i in range(size):
        yield {
            k: v[i : i + 1] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == size else v
            for k, v in batch.items()
        }


# ---------------------------------------------------------------------------------------------
# RegMean Gram matrices


def _input_dim(module: torch.nn.Module, conv1d_type: type) -> tuple[int, bool]:
    """(input features, is Conv1D) for a Linear or transformers Conv1D module; (-1, False) otherwise."""
    if isinstance(module, conv1d_type):
        return int(module.weight.shape[0]), True
    if isinstance(module, torch.nn.Linear):
        return int(module.in_features), False
    return -1, False


def compute_gram(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    modules: ModuleFilter | None = None,
    n_batches: int | None = None,
    average: bool = False,
) -> Statistics:
    """Input Gram matrices ``X^T X`` of every ``nn.Linear`` and transformers ``Conv1D`` layer.

    The model is called as ``model(**batch)``; forward hooks collect each layer's inputs with
    leading dimensions flattened into rows. When the batch has an ``attention_mask`` and a
    layer's input has the mask's leading shape (batch, length), padded positions are left out;
    inputs of another shape (a pooler, a classifier on the first token) use every row. Keys are
    the layers' weight names (``"encoder.layer.0.attention.self.query.weight"``); ``modules``
    narrows the layers. ``average`` divides each sum by its row count (some reference code
    does; RegMean's formula uses sums, so models with more data then weigh more).
    Metadata: ``counts`` (JSON: weight name -> rows), ``conv1d`` (JSON list of Conv1D weights,
    stored in x out: regmean needs ``layout=conv1d`` for them when square), ``n_examples``.

    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> compute_gram(model, [{"input": torch.ones(4, 3)}])["0.weight"][0]
    tensor([4., 4., 4.])
    """
    grams: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    conv1d: list[str] = []
    current: dict[str, torch.Tensor | None] = {"mask": None}
    handles = []

    def hook_for(key: str, size: int) -> Callable[[torch.nn.Module, tuple[Any, ...], Any], None]:
        def hook(_module: torch.nn.Module, inputs: tuple[Any, ...], _output: Any) -> None:
            x = inputs[0].detach()
            mask = current["mask"]
            rows = x[mask.bool()] if mask is not None and x.shape[:-1] == mask.shape else x.reshape(-1, size)
            rows = rows.to(torch.float64).cpu()
            grams[key] += rows.T @ rows
            counts[key] += int(rows.shape[0])

        return hook

    from transformers.pytorch_utils import Conv1D  # slow to import, so only when needed

    for name, module in model.named_modules():
        size, is_conv1d = _input_dim(module, Conv1D)
        if size < 0 or (modules is not None and not modules(name, module)):
            continue
        key = f"{name}.weight" if name else "weight"
        grams[key] = torch.zeros(size, size, dtype=torch.float64)
        counts[key] = 0
        if is_conv1d:
            conv1d.append(key)
        handles.append(module.register_forward_hook(hook_for(key, size)))
    n_examples = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in islice(batches, n_batches):
                current["mask"] = batch.get("attention_mask")
                model(**batch)
                n_examples += batch_size(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    out = {
        key: (g / max(counts[key], 1) if average else g).to(torch.float32) for key, g in grams.items()
    }
    metadata = {
        "kind": "gram",
        "n_examples": str(n_examples),
        "counts": json.dumps(counts, sort_keys=True),
        "conv1d": json.dumps(conv1d),
        "average": str(average).lower(),
    }
    return Statistics(out, metadata)


# ---------------------------------------------------------------------------------------------
# Files and cache


def strip_prefix(stats: Mapping[str, torch.Tensor], prefix: str) -> Statistics:
    """Drop ``prefix`` from keys that start with it (``"bert."`` of a task model); others stay.

    >>> sorted(strip_prefix({"bert.pooler.dense.weight": torch.ones(1), "classifier.weight": torch.ones(1)}, "bert."))
    ['classifier.weight', 'pooler.dense.weight']
    """
    out = {(k[len(prefix) :] if prefix and k.startswith(prefix) else k): v for k, v in stats.items()}
    if len(out) != len(stats):
        raise MergeMethodError(f"statistics: stripping prefix '{prefix}' makes two keys collide")
    return Statistics(out, getattr(stats, "metadata", None))


def save_statistics(path: str | Path, stats: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``stats`` to a safetensors file atomically (temporary file, then ``os.replace``).

    ``metadata`` (string values) defaults to ``stats.metadata`` for a :class:`Statistics`.

    >>> import tempfile
    >>> p = save_statistics(Path(tempfile.mkdtemp()) / "f.safetensors", {"w": torch.ones(2)}, {"kind": "fisher"})
    >>> load_statistics(p)[1]["kind"]
    'fisher'
    """
    path = Path(path)
    meta = dict(getattr(stats, "metadata", {}) if metadata is None else metadata)
    bad = [k for k, v in meta.items() if not isinstance(v, str)]
    if bad:
        raise MergeMethodError(f"statistics: metadata values must be strings, not for {bad}")
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in stats.items()}
    with atomic_file(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return path


def load_statistics(path: str | Path) -> tuple[Statistics, dict[str, str]]:
    """Read a statistics file: (tensors as a :class:`Statistics`, its metadata).

    Raises :class:`CheckpointError` naming the file when it is missing or unreadable and naming
    the tensor when it holds NaN or Inf.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"statistics file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"statistics file {path} cannot be read: {err}") from err
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"statistics file {path}: tensor '{key}' holds NaN or Inf")
    return Statistics(tensors, metadata), metadata


class StatisticsCache:
    """Statistics files in one directory, keyed by (kind, model id, data id).

    ``model_id`` and ``data_id`` are strings you choose to identify the model (a path plus a
    revision) and the data (dataset, split, number of examples); the file is
    ``<dir>/<kind>-<sha256(model_id|data_id)[:16]>.safetensors``.

    >>> import tempfile
    >>> cache = StatisticsCache(tempfile.mkdtemp())
    >>> stats = cache.get_or_compute("fisher", "m", "d", lambda: {"w": torch.ones(1)})
    >>> cache.get_or_compute("fisher", "m", "d", lambda: {})["w"]
    tensor([1.])
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path_for(self, kind: str, model_id: str, data_id: str) -> Path:
        if kind not in KINDS:
            raise MergeMethodError(f"statistics: unknown kind '{kind}' (known: {', '.join(KINDS)})")
        digest = hashlib.sha256(f"{model_id}|{data_id}".encode()).hexdigest()[:16]
        return self.directory / f"{kind}-{digest}.safetensors"

    def get_or_compute(
        self, kind: str, model_id: str, data_id: str, compute_fn: Callable[[], Mapping[str, torch.Tensor]]
    ) -> Statistics:
        """Load the cached file, or call ``compute_fn()`` once, save its result and return it."""
        path = self.path_for(kind, model_id, data_id)
        if path.is_file():
            stats, metadata = load_statistics(path)
            expected = {"kind": kind, "model_id": model_id, "data_id": data_id}
            found = {k: metadata.get(k) for k in expected}
            if found != expected:
                raise CheckpointError(f"statistics cache file {path} holds {found}, expected {expected}")
            return stats
        computed = compute_fn()
        metadata = dict(getattr(computed, "metadata", {}))
        if metadata.get("kind", kind) != kind:
            raise MergeMethodError(f"statistics: compute_fn for kind '{kind}' returned '{metadata['kind']}' statistics")
        metadata.update(kind=kind, model_id=model_id, data_id=data_id)
        metadata.setdefault("n_examples", "unknown")
        save_statistics(path, computed, metadata)
        return Statistics(computed, metadata)
