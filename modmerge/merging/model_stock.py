"""Model Stock: interpolate between the base and the models' average by their task vectors' angle.

Jang, Yun, Han, 'Model Stock: All we need is just a few fine-tuned models', ECCV 2024
(arXiv:2403.19522), as mergekit's ``merge_methods/model_stock.py`` computes it for N >= 2 models:

    cos = mean over pairs i < j of cos(tau_i, tau_j)       (tau_t = theta_t - theta_0)
    t   = N cos / (1 + (N - 1) cos)
    theta = t * mean_t theta_t + (1 - t) * theta_0

The paper derives ``t`` for the angle between two task vectors; for more it keeps one angle,
which mergekit (and this module) take as the mean of the pairwise cosines. Each tensor is one
vector, or each row is (``filter_wise``).

Example::

    >>> import torch
    >>> model_stock(torch.zeros(2), [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])])
    tensor([0.8284, 0.4142])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.linear import check_inputs
from modmerge.merging.registry import Param, merge_method

__all__ = ["model_stock", "model_stock_ratio"]


def model_stock_ratio(cos: torch.Tensor, n: int) -> torch.Tensor:
    """The interpolation ratio ``t = N cos / (1 + (N - 1) cos)`` of Model Stock (eq. 6 for N models).

    >>> model_stock_ratio(torch.tensor(0.5), 2)
    tensor(0.6667)
    """
    return n * cos / (1 + (n - 1) * cos)


@merge_method(
    "model_stock",
    summary="Model Stock: base-to-average interpolation with t from the task vectors' mean angle.",
    citation=(
        "Jang, Yun, Han, 'Model Stock: All we need is just a few fine-tuned models', ECCV 2024, "
        "arXiv:2403.19522; as in mergekit merge_methods/model_stock.py"
    ),
)
def model_stock(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    filter_wise: Annotated[
        bool, Param(help="one angle and t per row (the last dimension) instead of per tensor")
    ] = False,
) -> torch.Tensor:
    """Model Stock over N >= 2 models (formulas in the module docstring).

    Cosines divide by the norm product clamped at 1e-6 and are clamped to [-1, 1], as in
    mergekit, so a zero task vector counts as orthogonal. ``filter_wise`` treats a 1-D tensor
    as one row. mergekit's per-model weights do not enter the formula; none are taken.

    >>> model_stock(torch.ones(2), [torch.tensor([2.0, 1.0]), torch.tensor([1.0, 2.0])])
    tensor([1., 1.])
    """
    check_inputs("model_stock", base, tensors)
    if len(tensors) < 2:
        raise MergeMethodError(
            f"method 'model_stock' needs at least two models besides the base, got {len(tensors)}"
        )
    base32 = base.to(torch.float32)
    rows = base32.reshape(-1, base32.shape[-1]) if filter_wise and base32.dim() > 0 else base32.reshape(1, -1)
    models = [t.to(torch.float32).reshape(rows.shape) for t in tensors]
    taus = [m - rows for m in models]
    norms = [torch.linalg.vector_norm(tau, dim=-1) for tau in taus]
    cosines = [
        ((taus[i] * taus[j]).sum(-1) / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1.0, 1.0)
        for i in range(len(taus))
        for j in range(i + 1, len(taus))
    ]
    t = model_stock_ratio(torch.stack(cosines).mean(0), len(models)).unsqueeze(-1)
    average = torch.stack(models).mean(0)
    return (t * average + (1 - t) * rows).reshape(base.shape)
