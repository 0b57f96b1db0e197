"""Assembly: an expert chain's modules -> one transformers body; a task's head -> a small module.

A body is built from the library's backbone config (no weights there) and filled with the
chain's DEQUANTISED modules, one per unit. Bodies are built without a pooler: BERT's pooler is
a ``head``-kind component that belongs to each task (never merged), so tasks that share an
expert chain (the paper's many-to-one task patterns) share one body forward and each applies
its own pooler and classifier to its own rows (:class:`TaskHead`).

Assembled bodies are the expensive objects (dequantising and copying every tensor), so
:class:`ChainCache` keeps the most recently used ones within a byte bound (parameter bytes).

Example::

    >>> cache = ChainCache(lambda chain_id: assemble_body(lib, chain_id), cache_bytes=2**28)  # doctest: +SKIP
    >>> body = cache.get(lib.chain("c0", "mnist"))                                          # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modmerge.errors import ModmergeError
from modmerge.tasks.models import HEAD_KEYS, body_from_config, head_from_state, load_body_state

POOLER_PREFIX = "pooler."


class AssemblyError(ModmergeError):
    """A chain or head cannot be assembled from the library."""


def chain_state(library: Any, chain_id: str) -> dict[str, torch.Tensor]:
    """The body tensors of an expert chain: every module's dequantised tensors, in unit order.

    >>> sorted(chain_state(lib, lib.chain("c0", "has_animal")))[:1]  # doctest: +SKIP
    ['embeddings.LayerNorm.bias']
    """
    state: dict[str, torch.Tensor] = {}
    for blob in library.chain_modules(chain_id):
        for key, tensor in library.module_state(blob).items():
            if key in state:
                raise AssemblyError(f"chain {chain_id[:12]}: tensor {key} is in two modules (blob {blob[:12]})")
            state[key] = tensor
    return state


def assemble_body(library: Any, chain_id: str, *, device: str | torch.device = "cpu") -> nn.Module:
    """A pooler-less body of the backbone's architecture holding the chain's modules, in eval mode.

    >>> body = assemble_body(lib, lib.chain("c0", "mnist"))  # doctest: +SKIP
    >>> body(pixel_values=x).last_hidden_state.shape        # doctest: +SKIP
    """
    state = {k: v for k, v in chain_state(library, chain_id).items() if not k.startswith(POOLER_PREFIX)}
    body = body_from_config(Path(library.backbone_dir), list(state))
    if getattr(body, "pooler", None) is not None:
        body.pooler = None
    try:
        load_body_state(body, state)
    except ModmergeError as err:
        raise AssemblyError(f"chain {chain_id[:12]}: {err}") from None
    return body.to(device).eval()


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what an assembled body holds in memory)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


class ChainCache:
    """LRU cache of assembled bodies by chain id, bounded by ``cache_bytes`` of parameters.

    The body just asked for is always kept (a bound smaller than one body still works, by
    assembling every time). ``assemblies``, ``hits`` and ``evictions`` count what happened.
    """

    def __init__(self, build: Callable[[str], nn.Module], cache_bytes: int) -> None:
        if cache_bytes < 0:
            raise AssemblyError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self._build, self.cache_bytes = build, cache_bytes
        self._bodies: OrderedDict[str, tuple[nn.Module, int]] = OrderedDict()
        self.assemblies = self.hits = self.evictions = 0

    def get(self, chain_id: str) -> nn.Module:
        if chain_id in self._bodies:
            self._bodies.move_to_end(chain_id)
            self.hits += 1
            return self._bodies[chain_id][0]
        body = self._build(chain_id)
        self.assemblies += 1
        self._bodies[chain_id] = (body, parameter_bytes(body))
        while self.bytes > self.cache_bytes and len(self._bodies) > 1:
            self._bodies.popitem(last=False)
            self.evictions += 1
        return body

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self._bodies.values())

    def __contains__(self, chain_id: str) -> bool:
        return chain_id in self._bodies

    def __len__(self) -> int:
        return len(self._bodies)


class TaskHead(nn.Module):
    """A task's own layers on top of a shared body's last hidden state: its pooler (BERT's
    ``pooler`` pooling) or the first token (``cls``), then its classifier."""

    def __init__(self, classifier: nn.Linear, pooling: str, pooler: nn.Module | None = None) -> None:
        super().__init__()
        if pooling == "pooler" and pooler is None:
            raise AssemblyError("a 'pooler' head needs pooler weights")
        self.classifier, self.pooling, self.pooler = classifier, pooling, pooler

    def forward(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        if self.pooling == "pooler":
            return self.classifier(self.pooler(last_hidden_state))
        return self.classifier(last_hidden_state[:, 0])


@dataclass(frozen=True)
class HeadParts:
    """A task head's tensors split into the classifier and the (BERT) pooler, both by their names."""

    classifier: dict[str, torch.Tensor]
    pooler: dict[str, torch.Tensor]  # body checkpoint names, e.g. pooler.dense.weight


def split_head_state(task: str, state: Mapping[str, torch.Tensor]) -> HeadParts:
    """Split a head blob's tensors; anything but the classifier and ``pooler.*`` is an error.

    >>> split_head_state("t", {"classifier.weight": w, "classifier.bias": b}).pooler  # doctest: +SKIP
    {}
    """
    missing = [k for k in HEAD_KEYS if k not in state]
    other = [k for k in state if k not in HEAD_KEYS and not k.startswith(POOLER_PREFIX)]
    if missing or other:
        raise AssemblyError(f"task '{task}': head has {'no ' + missing[0] if missing else 'unexpected ' + other[0]}")
    return HeadParts({k: state[k] for k in HEAD_KEYS}, {k: v for k, v in state.items() if k.startswith(POOLER_PREFIX)})


def build_task_head(
    task: str, pooling: str, parts: HeadParts, pooler_template: Callable[[], nn.Module | None],
    *, device: str | torch.device = "cpu",
) -> TaskHead:
    """The task's :class:`TaskHead`; ``pooler_template()`` gives an unfilled pooler of the backbone
    (only called for ``pooler`` pooling).

    >>> head = build_task_head("t", "cls", parts, lambda: None)  # doctest: +SKIP
    """
    pooler = None
    if pooling == "pooler":
        if not parts.pooler:
            raise AssemblyError(f"task '{task}': pooling 'pooler' but the library holds no pooler weights for it")
        template = pooler_template()
        if template is None:
            raise AssemblyError(f"task '{task}': pooling 'pooler' but the backbone has no pooler")
        pooler = copy.deepcopy(template)
        inner = {k[len(POOLER_PREFIX):]: v for k, v in parts.pooler.items()}
        missing, unexpected = pooler.load_state_dict(inner, strict=False)
        if missing or unexpected:
            raise AssemblyError(f"task '{task}': pooler weights do not fit ({(missing or unexpected)[0]})")
    return TaskHead(head_from_state(parts.classifier), pooling, pooler).to(device).eval()


def pooler_template(backbone_dir: Path) -> nn.Module | None:
    """An unfilled pooler of the backbone's architecture (``AutoModel`` adds one to BERT/ViT)."""
    body = body_from_config(Path(backbone_dir))
    return getattr(body, "pooler", None)
