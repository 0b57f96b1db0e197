"""Merge methods: pure tensor functions in one registry (see :mod:`modmerge.merging.registry`).

Importing this package registers every method. One module per method family:
``linear`` (weight averaging, task arithmetic), ``generalized`` (TIES, DARE, Breadcrumbs as one
generalized task arithmetic), ``pcb``, ``fisher``, ``regmean``; and mergekit's methods:
``presets`` (dare_linear, dare_ties, breadcrumbs_ties), ``della``, ``sce``, ``model_stock``,
``spherical`` (slerp, nuslerp, multislerp, karcher), ``nearswap``, ``arcee_fusion``.
"""

from modmerge.merging import (  # noqa: F401  (importing a module registers its methods)
    arcee_fusion,
    della,
    fisher,
    generalized,
    linear,
    model_stock,
    nearswap,
    pcb,
    presets,
    regmean,
    sce,
    spherical,
)
from modmerge.merging.registry import (
    REGISTRY,
    MergeMethod,
    Param,
    ParamSpec,
    get_method,
    merge_method,
)

__all__ = ["REGISTRY", "MergeMethod", "Param", "ParamSpec", "get_method", "merge_method"]
