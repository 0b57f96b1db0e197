"""Merge methods: pure tensor functions in one registry (see :mod:`modmerge.merging.registry`).

Importing this package registers every method. One module per method family:
``linear`` (weight averaging, task arithmetic), ``generalized`` (TIES, DARE, Breadcrumbs as one
generalized task arithmetic), ``pcb``, ``fisher``, ``regmean``.
"""

from modmerge.merging import fisher, generalized, linear, pcb, regmean  # noqa: F401  (registers)
from modmerge.merging.registry import (
    REGISTRY,
    MergeMethod,
    Param,
    ParamSpec,
    get_method,
    merge_method,
)

__all__ = ["REGISTRY", "MergeMethod", "Param", "ParamSpec", "get_method", "merge_method"]
