"""Which two tensors a two-model method (SLERP, NearSwap, Arcee Fusion) works on.

mergekit defines these methods on exactly two models, one of them its ``base_model``. modmerge
always passes a base and the task models, so the pair is read from how many models come:

- one model: ``(base, model)``, mergekit's ``base_model`` plus one other model;
- two models: ``(models[0], models[1])``, the first playing mergekit's ``base_model``; the base
  is then not used. This is the form a MERGE module or a baseline row over two tasks takes.

More models raise a one-line :class:`~modmerge.errors.MergeMethodError`: there is no reference
rule for them, so none is guessed.

Example::

    >>> import torch
    >>> a, b = endpoints("slerp", torch.zeros(2), [torch.ones(2), torch.full((2,), 2.0)])
    >>> a.tolist(), b.tolist()
    ([1.0, 1.0], [2.0, 2.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.linear import check_inputs

__all__ = ["endpoints"]


def endpoints(
    method: str, base: torch.Tensor, tensors: Sequence[torch.Tensor], *, instead: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two tensors ``method`` combines, as float32 (see the module docstring).

    ``instead`` names methods to suggest when too many models come.

    >>> endpoints("nearswap", torch.zeros(1), [torch.ones(1)])
    (tensor([0.]), tensor([1.]))
    """
    check_inputs(method, base, tensors)
    if len(tensors) == 1:
        return base.to(torch.float32), tensors[0].to(torch.float32)
    if len(tensors) == 2:
        return tensors[0].to(torch.float32), tensors[1].to(torch.float32)
    hint = f"; for more, use {instead}" if instead else ""
    raise MergeMethodError(
        f"method '{method}' merges two models, the base and one model or two models "
        f"(as mergekit defines it), got {len(tensors)}{hint}"
    )
