"""The two objectives of the MERGE search: performance P (eq. 7) and storage cost C (eq. 8).

Example::

    >>> from modmerge.objectives import storage_cost
    >>> from modmerge.quantization import UnitBits
    >>> storage_cost([UnitBits(100, 8, True)], d=100)
    0.27
"""

from modmerge.objectives.storage import module_storage_cost, storage_cost

__all__ = ["module_storage_cost", "storage_cost"]
