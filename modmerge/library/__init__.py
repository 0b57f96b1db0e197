"""Stage 4: the modular expert library, a content-addressed store of every Pareto configuration.

On disk (``LIB_DIR``)::

    manifest.json                        written last, atomically: the single source of truth
    blobs/<sha256>.safetensors           one per distinct module (quantised units as integer codes
                                         + scale + zero point, other tensors full precision),
                                         one per task head, and the router's weights
    backbone/                            config.json + tokenizer / image-processor files, no weights

>>> lib = build_library("runs/vision-ta", "libs/vision-ta")   # doctest: +SKIP
>>> lib = Library.open("libs/vision-ta", verify=True)         # doctest: +SKIP
>>> lib.select(0.5).id                                        # doctest: +SKIP
'c3'
"""

from modmerge.library.build import build_library
from modmerge.library.manifest import (
    ConfigEntry,
    LibraryError,
    LibraryManifest,
    ModuleEntry,
    TaskInfo,
    chain_id,
)
from modmerge.library.store import Library

__all__ = [
    "ConfigEntry",
    "Library",
    "LibraryError",
    "LibraryManifest",
    "ModuleEntry",
    "TaskInfo",
    "build_library",
    "chain_id",
]
