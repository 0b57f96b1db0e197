"""Activation-prefix reuse for eq. (7): hidden states after layer k, keyed by the expert-chain prefix.

Two expert chains of a task that agree on every module used up to encoder layer k give the same
hidden states after layer k on the task's evaluation subset D'_t. A :class:`PrefixCache` keeps
those states (all batches of the subset, as :meth:`TaskPool.evaluate_from` returns them) under
the key ``(task, modules of the units used in stages 0..k+1)``, bounded in bytes with LRU
eviction, so the evaluator can start a forward from the longest prefix it has seen.

Text zoo scale: 200 examples x ~40 tokens x 384 x 4 B is ~12 MB per task and layer, so the
evaluator cannot keep every layer of every chain. It keeps each run's new layers (all but the
last, which only the identical chain would reuse, and the result cache answers that) and runs
the task runs of a batch of configurations in sorted chain order: a run then shares its longest
prefix with the run just before it, whose states are the most recent in the LRU.

>>> cache = PrefixCache(max_bytes=256 * 2**20)
>>> keys = prefix_keys(0, task_chain, first_stage, n_layers=6)  # doctest: +SKIP
>>> layer, hidden = cache.longest(keys)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from modmerge.lru import BytesLRU

PrefixKey = tuple[int, tuple[Hashable, ...]]


def prefix_keys(task: int, task_chain: Sequence[Hashable], first_stage: Sequence[int], n_layers: int) -> list[PrefixKey]:
    """``keys[k]`` names the hidden states after encoder layer ``k``: the task and the modules of
    every unit first used in a stage <= k + 1 (stage 0 is the embeddings, stage i + 1 layer i).

    >>> prefix_keys(1, ["e", "a0", "a1"], [0, 1, 2], n_layers=2)
    [(1, ('e', 'a0')), (1, ('e', 'a0', 'a1'))]
    """
    return [
        (task, tuple(m for m, s in zip(task_chain, first_stage, strict=True) if s <= k + 1)) for k in range(n_layers)
    ]


class PrefixCache:
    """Per-batch hidden states by prefix key, at most ``max_bytes`` in all (LRU; 0 disables).

    >>> cache = PrefixCache(max_bytes=1024)
    >>> cache.put((0, ("e",)), [torch.zeros(4, 8)])
    True
    >>> cache.longest([(0, ("e",)), (0, ("e", "x"))])[0]
    0
    """

    def __init__(self, max_bytes: int) -> None:
        self._lru: BytesLRU[PrefixKey, list[torch.Tensor]] = BytesLRU(max_bytes)
        self.hits = 0
        self.stores = 0

    max_bytes = property(lambda self: self._lru.max_bytes)
    nbytes = property(lambda self: self._lru.nbytes)
    peak_bytes = property(lambda self: self._lru.peak_bytes)
    evictions = property(lambda self: self._lru.evictions)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    def entry_sizes(self) -> list[int]:
        """The bytes of each entry held (all batches of one task's hidden states after one layer)."""
        return self._lru.sizes()

    def longest(self, keys: Sequence[PrefixKey]) -> tuple[int, list[torch.Tensor] | None]:
        """``(k, hidden)`` for the deepest ``keys[k]`` held (marked recently used), else ``(-1, None)``."""
        for k in range(len(keys) - 1, -1, -1):
            hidden = self._lru.get(keys[k])
            if hidden is not None:
                self.hits += 1
                return k, hidden
        return -1, None

    def put(self, key: PrefixKey, hidden: list[torch.Tensor]) -> bool:
        """Keep ``hidden`` under ``key``, evicting the least recently used entries to fit; an entry
        larger than the whole bound is not kept (returns False)."""
        kept = self._lru.put(key, hidden, sum(t.nbytes for t in hidden))
        self.stores += kept
        return kept
