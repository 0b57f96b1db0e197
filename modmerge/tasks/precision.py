"""Evaluation precision: what every forward of a task pool (hence of a search) runs at.

``float32`` runs the stored weights as they are. ``bfloat16`` and ``float16`` run each forward
under ``torch.autocast``: matrix products in the lower precision, norms and softmax in float32.
That is faster only where the hardware has units for the lower precision. On this project's
AVX-512-BF16 CPU the text zoo's evaluations ran 1.8x faster in bfloat16; with oneDNN held to
AVX-512 without BF16 (``ONEDNN_MAX_CPU_ISA=AVX512_CORE``, as on CPUs that lack it) they ran 2.4x
*slower* than float32 (``benchmarks/eval_batch.py text --limit 50 --batch 32 --threads 1
--precision float32 bfloat16``). So a pool measures the speed-up once (:func:`precision_speedup`,
a few milliseconds) and warns when the lower precision is the slower one
(:func:`check_precision_speed`).

>>> precision_context("float32", torch.device("cpu"))  # doctest: +ELLIPSIS
<contextlib.nullcontext object at ...>
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from modmerge.tasks.spec import TaskError

logger = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def precision_context(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """The context a forward runs in at ``precision`` (a :data:`PRECISIONS` name) on ``device``."""
    if precision not in PRECISIONS:
        raise TaskError(f"evaluation precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _best_seconds(fn: Any, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: kernel selection, weight packing
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def precision_speedup(precision: str, device: torch.device, *, rows: int = 512, width: int = 384,
                      repeats: int = 3) -> float:
    """How many times faster a ``rows x width -> 4 width`` linear layer (a transformer MLP's first
    product) runs at ``precision`` than at float32 on ``device``: best of ``repeats`` each.

    >>> precision_speedup("float32", torch.device("cpu"))
    1.0
    """
    context = precision_context(precision, device)
    if PRECISIONS[precision] is None:
        return 1.0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=gen).to(device)
    w = torch.randn(4 * width, width, generator=gen).to(device)

    def lower() -> None:
        with torch.inference_mode(), context:
            torch.nn.functional.linear(x, w)

    def full() -> None:
        with torch.inference_mode():
            torch.nn.functional.linear(x, w)

    return _best_seconds(full, device, repeats) / _best_seconds(lower, device, repeats)


def check_precision_speed(precision: str, device: torch.device) -> float:
    """:func:`precision_speedup` of ``precision`` on ``device``, with a warning when it is below 1
    (the lower precision is both approximate and slower here: float32 is the better choice)."""
    speedup = precision_speedup(precision, device)
    if speedup < 1.0:
        logger.warning(
            "precision %s: a linear layer runs %.1fx slower than float32 on this %s (no native %s units); "
            "evaluations will be approximate and slower, float32 is exact and faster here",
            precision, 1 / speedup, device.type, precision,
        )
    return speedup
