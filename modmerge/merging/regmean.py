"""RegMean: the linear layer whose outputs best match every model's outputs on its own data.

Jin et al. (2023), "Dataless Knowledge Fusion by Merging Weights of Language Models" (ICLR).
For a linear layer ``y = x W^T + b`` (PyTorch weight ``W`` is out x in) and model ``t``'s layer
inputs ``X_t``, RegMean solves ``min_W sum_t ||X_t W^T - X_t W_t^T||^2``, whose closed form is::

    W^T = (sum_t G~_t)^-1  sum_t G~_t W_t^T,      G~_t = alpha G_t + (1 - alpha) diag(G_t)

with the Gram (inner-product) matrix ``G_t = X_t^T X_t`` (in x in). ``alpha`` scales the
off-diagonal entries: alpha = 1 is the exact least-squares solution, alpha = 0 ignores input
correlations (each input column becomes a diagonal-Gram-weighted average), and values in between
regularise toward that average, which the paper finds necessary in practice.

Layout. ``nn.Linear`` stores ``W`` as out x in; GPT-2's ``Conv1D`` stores ``W^T`` (in x out).
With ``layout="auto"`` the rule is, for a weight of shape (a, b) and a Gram of size n:
``b == n`` -> Linear, else ``a == n`` -> Conv1D. A square Conv1D weight (GPT-2's ``attn.c_proj``)
satisfies the first test and would be read as Linear, so for GPT-2-style models set
``layout: conv1d`` (the Gram statistics' metadata lists which weights came from Conv1D modules).

Per-model ``weights`` scale each model's Gram (``sum_t w_t G~_t``), an extension not in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.fisher import check_same_shape, normalized_weights, weighted_mean
from modmerge.merging.registry import Param, merge_method

LAYOUTS = ("auto", "linear", "conv1d")


def reduce_off_diagonal(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * G + (1 - alpha) * diag(G)``: off-diagonal entries scaled by ``alpha``.

    >>> reduce_off_diagonal(torch.tensor([[2.0, 1.0], [1.0, 2.0]]), 0.5)
    tensor([[2.0000, 0.5000],
            [0.5000, 2.0000]])
    """
    return alpha * gram + (1.0 - alpha) * torch.diag_embed(torch.diagonal(gram))


def is_conv1d_layout(shape: Sequence[int], gram_size: int, layout: str) -> bool:
    """True when a weight of ``shape`` is stored in x out (Conv1D), by ``layout`` or the shape rule.

    >>> is_conv1d_layout((3, 2), 2, "auto"), is_conv1d_layout((2, 3), 2, "auto")
    (False, True)
    """
    rows, cols = shape
    if layout == "linear" or (layout == "auto" and cols == gram_size):
        if cols != gram_size:
            raise MergeMethodError(
                f"method 'regmean': weight {tuple(shape)} read as Linear (out x in) needs a {cols}x{cols} Gram, got {gram_size}x{gram_size}"
            )
        return False
    if rows != gram_size:
        raise MergeMethodError(
            f"method 'regmean': weight {tuple(shape)} does not match a {gram_size}x{gram_size} Gram in either layout"
            if layout == "auto"
            else f"method 'regmean': weight {tuple(shape)} read as Conv1D (in x out) needs a {rows}x{rows} Gram, got {gram_size}x{gram_size}"
        )
    return True


def solve_regmean(
    grams: Sequence[torch.Tensor], weights_t: Sequence[torch.Tensor], coefficients: Sequence[float]
) -> torch.Tensor:
    """Solve ``(sum_t c_t G_t) X = sum_t c_t G_t M_t`` for ``X`` (in x out), in float64.

    ``M_t`` are the models' weights in in x out layout (``W_t^T``). Input features that no model
    ever saw (zero Gram row and column) leave ``X``'s row unconstrained; those rows take the
    weighted mean of the ``M_t`` rows rather than making the system singular.

    >>> solve_regmean([torch.eye(2), torch.eye(2)], [torch.zeros(2, 1), torch.ones(2, 1)], [0.5, 0.5])
    tensor([[0.5000],
            [0.5000]], dtype=torch.float64)
    """
    size, device = grams[0].shape[0], weights_t[0].device
    lhs = torch.zeros(size, size, dtype=torch.float64, device=device)
    rhs = torch.zeros(size, weights_t[0].shape[1], dtype=torch.float64, device=device)
    for c, g, m in zip(coefficients, grams, weights_t, strict=True):
        g64 = c * g.to(device, torch.float64)
        lhs += g64
        rhs += g64 @ m.to(device, torch.float64)
    out = weighted_mean(weights_t, coefficients).to(torch.float64)
    # A PSD Gram with a zero diagonal entry has that whole row/column zero: drop those features.
    active = torch.diagonal(lhs) > 0
    if not bool(active.any()):
        return out
    index = active.nonzero().squeeze(1)
    try:
        out[index] = torch.linalg.solve(lhs[index][:, index], rhs[index])
    except torch.linalg.LinAlgError as err:
        raise MergeMethodError(
            "method 'regmean': the summed Gram matrix is singular; use alpha < 1 or more data"
        ) from err
    return out


@merge_method(
    "regmean",
    summary="closed-form least squares: the linear layer whose outputs best match each model's on its data",
    citation="Jin et al. 2023, Dataless Knowledge Fusion by Merging Weights of Language Models (ICLR)",
    needs=("gram",),
    limitations=(
        "only 2-D weights with a Gram matrix are solved; biases, norms, embeddings and weights "
        "without statistics are plainly (weighted) averaged; square Conv1D weights need layout=conv1d"
    ),
)
def regmean_merge(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    alpha: Annotated[
        float,
        Param(low=0.0, high=1.0, search=(0.1, 1.0), help="scale of the Gram matrices' off-diagonal entries"),
    ] = 0.9,
    layout: Annotated[
        str,
        Param(choices=LAYOUTS, help="weight layout: Linear (out x in), Conv1D (in x out), or auto by shape"),
    ] = "auto",
    stats: Sequence[torch.Tensor] | None = None,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """RegMean merge of one weight given one input Gram matrix per model in ``stats``.

    ``alpha`` defaults to 0.9 (the paper tunes it per setting on validation data). With
    ``stats=None`` (biases, norms, embeddings, or no statistics) the result is the weighted average.

    >>> w1, w2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[5.0, 6.0]])
    >>> regmean_merge(w1, [w1, w2], stats=[torch.diag(torch.tensor([1.0, 3.0])),
    ...                                    torch.diag(torch.tensor([3.0, 1.0]))])
    tensor([[4., 3.]])
    """
    check_same_shape(tensors, "regmean")
    w = normalized_weights(weights, len(tensors), "regmean")
    if stats is None:
        return weighted_mean(tensors, w)
    if len(stats) != len(tensors):
        raise MergeMethodError(f"method 'regmean' got {len(stats)} Gram matrices for {len(tensors)} models")
    if tensors[0].ndim != 2:
        raise MergeMethodError(
            f"method 'regmean' got Gram matrices for a tensor of shape {tuple(tensors[0].shape)}; only 2-D weights have them"
        )
    size = stats[0].shape[0]
    for i, gram in enumerate(stats):
        if gram.shape != (size, size):
            raise MergeMethodError(
                f"method 'regmean': model {i} Gram has shape {tuple(gram.shape)}, expected ({size}, {size})"
            )
    conv1d = is_conv1d_layout(tuple(tensors[0].shape), size, layout)
    weights_t = [t if conv1d else t.T for t in tensors]
    grams = [reduce_off_diagonal(g.to(tensors[0].device, torch.float64), alpha) for g in stats]
    merged = solve_regmean(grams, weights_t, w)
    return (merged if conv1d else merged.T).to(torch.float32).contiguous()
