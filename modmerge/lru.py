"""A least-recently-used map bounded by the bytes of its values (the search's caches use it).

>>> lru = BytesLRU(max_bytes=10)
>>> lru.put("a", "first", nbytes=6), lru.put("b", "second", nbytes=6)
(True, True)
>>> lru.get("a") is None, lru.get("b"), lru.nbytes, lru.evictions
(True, 'second', 6, 1)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

from modmerge.errors import ModmergeError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BytesLRU(Generic[K, V]):
    """Values with their sizes, at most ``max_bytes`` in all; the least recently used go first.
    A value larger than the whole bound is not kept (``put`` returns False); 0 keeps nothing."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ModmergeError(f"cache: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.nbytes = self.peak_bytes = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def sizes(self) -> list[int]:
        """The bytes of each value held, least recently used first."""
        return [size for _, size in self._entries.values()]

    def get(self, key: K) -> V | None:
        """The value under ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V, nbytes: int) -> bool:
        """Keep ``value`` (``nbytes`` large) under ``key``, evicting the least recently used to fit."""
        if nbytes > self.max_bytes:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        while self._entries and self.nbytes + nbytes > self.max_bytes:
            _, (_, size) = self._entries.popitem(last=False)
            self.nbytes -= size
            self.evictions += 1
        self._entries[key] = (value, nbytes)
        self.nbytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.nbytes)
        return True
