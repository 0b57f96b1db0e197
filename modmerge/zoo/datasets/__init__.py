"""Task datasets for the benchmark zoos, one module per source, and the task tables.

Every loader is deterministic given its seed (default :data:`DEFAULT_SEED`) and returns a
:class:`TaskData` with fixed-size train / validation / test splits. Text inputs are strings;
image inputs are float32 tensors N x 28 x 28 in [0, 1] (the zoo's common size).

Example::

    >>> from modmerge.zoo.datasets import IMAGE_TASKS
    >>> IMAGE_TASKS["mnist_parity"].derived
    True
"""

from modmerge.zoo.datasets.base import (
    DEFAULT_SEED,
    IMAGE_SIZES,
    TEXT_SIZES,
    Split,
    SplitSizes,
    TaskData,
)
from modmerge.zoo.datasets.registry import (
    IMAGE_TASKS,
    TEXT_TASKS,
    TaskSpec,
    get_task,
    load_vision_pretraining,
)

__all__ = [
    "DEFAULT_SEED",
    "IMAGE_SIZES",
    "IMAGE_TASKS",
    "TEXT_SIZES",
    "TEXT_TASKS",
    "Split",
    "SplitSizes",
    "TaskData",
    "TaskSpec",
    "get_task",
    "load_vision_pretraining",
]
