"""Grouping matrices: the configuration the MERGE search explores (paper eq. 4, Sec. III-B).

A grouping matrix ``G`` is ``T x L`` (tasks x units): ``G[t, l]`` is the group of unit ``l`` that
task ``t`` uses. Tasks sharing a group in a column share one merged module for that unit; a task
alone in its group keeps its own fine-tuned unit. Only the *partition* of each column matters, so
:class:`GroupingMatrix` stores every column in canonical form (groups numbered 0, 1, ... by first
appearance from task 0 down). Two matrices that differ only by renumbering compare and hash equal.

Example::

    >>> g = GroupingMatrix.from_array([[5, 1], [5, 0], [2, 0]])
    >>> g.to_list()
    [[0, 0], [0, 1], [1, 1]]
    >>> g.groups(1), g.n_groups(0), g.key()
    (((0,), (1, 2)), 2, '0.0.1|0.1.1')
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from modmerge.errors import ModmergeError

__all__ = ["GroupingMatrix", "canonical_column", "count_configurations"]


def canonical_column(labels: Iterable[int]) -> tuple[int, ...]:
    """Renumber group labels by first appearance, starting at 0.

    >>> canonical_column([7, 3, 7, 9])
    (0, 1, 0, 2)
    """
    seen: dict[int, int] = {}
    return tuple(seen.setdefault(int(label), len(seen)) for label in labels)


@dataclass(frozen=True)
class GroupingMatrix:
    """An immutable ``T x L`` grouping matrix in canonical form (see the module docstring).

    ``columns[l]`` is unit ``l``'s canonical labels over the ``T`` tasks. Build one with
    :meth:`from_array`, :meth:`from_columns`, :meth:`all_merged` or :meth:`individual`.

    >>> GroupingMatrix.all_merged(3, 2) == GroupingMatrix.from_array(np.full((3, 2), 4))
    True
    """

    columns: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if not self.columns:
            raise ModmergeError("grouping matrix: needs at least one unit (column), got none")
        n_tasks = len(self.columns[0])
        if n_tasks == 0:
            raise ModmergeError("grouping matrix: needs at least one task (row), got none")
        canonical = []
        for unit, column in enumerate(self.columns):
            if len(column) != n_tasks:
                raise ModmergeError(
                    f"grouping matrix: column {unit} has {len(column)} entries, expected {n_tasks}"
                )
            if any(int(v) != v or v < 0 for v in column):
                raise ModmergeError(
                    f"grouping matrix: column {unit} holds {list(column)}; labels must be ints >= 0"
                )
            canonical.append(canonical_column(column))
        # Frozen dataclass: canonicalise once at construction so equality and hashing are by value.
        object.__setattr__(self, "columns", tuple(canonical))

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_columns(cls, columns: Sequence[Sequence[int]]) -> GroupingMatrix:
        """From ``L`` columns of ``T`` labels each (any numbering).

        >>> GroupingMatrix.from_columns([[1, 1, 0]]).to_list()
        [[0], [0], [1]]
        """
        return cls(tuple(tuple(int(v) for v in column) for column in columns))

    @classmethod
    def from_array(cls, array: np.ndarray | Sequence[Sequence[int]]) -> GroupingMatrix:
        """From a ``T x L`` array-like of labels (rows = tasks, any numbering per column).

        >>> GroupingMatrix.from_array([[0, 1], [0, 0]]).n_tasks
        2
        """
        arr = np.asarray(array)
        if arr.ndim != 2:
            raise ModmergeError(
                f"grouping matrix: expected a 2-D T x L array, got shape {arr.shape}"
            )
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ModmergeError("grouping matrix: labels must be integers")
            arr = arr.astype(np.int64)
        return cls(tuple(tuple(int(v) for v in arr[:, u]) for u in range(arr.shape[1])))

    @classmethod
    def all_merged(cls, n_tasks: int, n_units: int) -> GroupingMatrix:
        """Every unit shared by all tasks (one group per column).

        >>> GroupingMatrix.all_merged(2, 3).n_groups_per_unit()
        (1, 1, 1)
        """
        return cls(tuple((0,) * n_tasks for _ in range(n_units)))

    @classmethod
    def individual(cls, n_tasks: int, n_units: int) -> GroupingMatrix:
        """Every task keeps its own units (``T`` singleton groups per column).

        >>> GroupingMatrix.individual(2, 1).to_list()
        [[0], [1]]
        """
        return cls(tuple(tuple(range(n_tasks)) for _ in range(n_units)))

    # -- views ---------------------------------------------------------------------------------

    @property
    def n_tasks(self) -> int:
        """``T``, the number of rows."""
        return len(self.columns[0])

    @property
    def n_units(self) -> int:
        """``L``, the number of columns."""
        return len(self.columns)

    def to_array(self) -> np.ndarray:
        """The ``T x L`` int64 array (canonical labels).

        >>> GroupingMatrix.individual(2, 1).to_array().shape
        (2, 1)
        """
        return np.array(self.columns, dtype=np.int64).T.copy()

    def to_list(self) -> list[list[int]]:
        """Rows as nested lists (the JSON form).

        >>> GroupingMatrix.all_merged(2, 1).to_list()
        [[0], [0]]
        """
        return [list(chain) for chain in self.chains()]

    def chains(self) -> tuple[tuple[int, ...], ...]:
        """The expert chains: row ``t`` lists the group task ``t`` uses in each unit.

        >>> GroupingMatrix.from_array([[0, 0], [0, 1]]).chains()
        ((0, 0), (0, 1))
        """
        return tuple(zip(*self.columns, strict=True))

    def column(self, unit: int) -> tuple[int, ...]:
        """Canonical labels of unit ``unit`` over the tasks.

        >>> GroupingMatrix.individual(3, 1).column(0)
        (0, 1, 2)
        """
        return self.columns[unit]

    def groups(self, unit: int) -> tuple[tuple[int, ...], ...]:
        """Task indices of each group of ``unit``, in group order.

        >>> GroupingMatrix.from_array([[0], [1], [0]]).groups(0)
        ((0, 2), (1,))
        """
        column = self.columns[unit]
        members: list[list[int]] = [[] for _ in range(max(column) + 1)]
        for task, label in enumerate(column):
            members[label].append(task)
        return tuple(tuple(m) for m in members)

    def n_groups(self, unit: int) -> int:
        """``N_l``: how many modules unit ``unit`` needs.

        >>> GroupingMatrix.individual(4, 2).n_groups(1)
        4
        """
        return max(self.columns[unit]) + 1

    def n_groups_per_unit(self) -> tuple[int, ...]:
        """``(N_1, ..., N_L)``.

        >>> GroupingMatrix.from_array([[0, 0], [1, 0]]).n_groups_per_unit()
        (2, 1)
        """
        return tuple(max(column) + 1 for column in self.columns)

    # -- serialisation -------------------------------------------------------------------------

    def key(self) -> str:
        """A stable string key: columns joined by ``|``, labels by ``.``.

        >>> GroupingMatrix.from_array([[0, 0], [1, 0]]).key()
        '0.1|0.0'
        """
        return "|".join(".".join(str(v) for v in column) for column in self.columns)

    @classmethod
    def from_key(cls, key: str) -> GroupingMatrix:
        """Inverse of :meth:`key`.

        >>> GroupingMatrix.from_key('0.1|0.0').to_list()
        [[0, 0], [1, 0]]
        """
        try:
            columns = [[int(v) for v in part.split(".")] for part in key.split("|")]
        except ValueError:
            raise ModmergeError(f"grouping matrix: bad key {key!r}") from None
        return cls.from_columns(columns)

    def to_json(self) -> str:
        """JSON text of :meth:`to_list` (rows = tasks).

        >>> GroupingMatrix.all_merged(1, 2).to_json()
        '[[0, 0]]'
        """
        return json.dumps(self.to_list())

    @classmethod
    def from_json(cls, text: str | list[Any]) -> GroupingMatrix:
        """From JSON text or an already parsed nested list (rows = tasks).

        >>> g = GroupingMatrix.individual(2, 2)
        >>> GroupingMatrix.from_json(g.to_json()) == g
        True
        """
        data = json.loads(text) if isinstance(text, str) else text
        if not isinstance(data, list) or not data or not all(isinstance(r, list) for r in data):
            raise ModmergeError("grouping matrix: JSON must be a non-empty list of rows (lists)")
        widths = {len(row) for row in data}
        if len(widths) != 1:
            raise ModmergeError(f"grouping matrix: rows have different lengths {sorted(widths)}")
        return cls.from_array(np.array(data))

    def __str__(self) -> str:
        return "\n".join(" ".join(str(v) for v in chain) for chain in self.chains())


@cache
def _bell(n: int) -> int:
    """Bell number: the number of partitions of ``n`` tasks (Bell triangle)."""
    row = [1]
    for _ in range(n - 1):
        nxt = [row[-1]]
        for v in row:
            nxt.append(nxt[-1] + v)
        row = nxt
    return row[-1]


def count_configurations(n_tasks: int, n_units: int) -> int:
    """How many distinct grouping matrices exist: ``Bell(T) ** L``.

    >>> count_configurations(3, 2)
    25
    """
    return _bell(n_tasks) ** n_units
