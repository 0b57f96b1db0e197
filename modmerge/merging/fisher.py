"""Fisher merging: an elementwise average weighted by each model's diagonal Fisher information.

Matena & Raffel (2022), "Merging Models with Fisher-Weighted Averaging", eq. (3) with a diagonal
Fisher: for every element ``j``::

    merged_j = sum_t w_t F_tj theta_tj / sum_t w_t F_tj

``F_t`` is model ``t``'s diagonal Fisher for this tensor (computed by
:func:`modmerge.merging.statistics.compute_fisher`), ``w_t`` the per-model weight (the paper's
lambda_t; uniform by default). Fisher values are floored at ``epsilon`` (the reference code's
"fisher floor") so elements no model cares about fall back to the plain weighted average instead
of 0/0. With ``normalize``, each model's weight is divided by the L2 norm of its raw Fisher, over
the whole model as in the authors' code (the executor passes the per-model norms as the reserved
input ``stats_norms``) or over the tensor.

This module also holds the two small helpers both data-dependent methods use for their
no-statistics fallback: :func:`normalized_weights` and :func:`weighted_mean`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.registry import Param, merge_method


def normalized_weights(weights: Sequence[float] | None, n: int, method: str) -> list[float]:
    """Per-model weights summing to 1 (uniform when ``weights`` is None).

    Data-dependent methods need non-negative weights with a positive sum: a negative weight
    would make a Fisher or Gram matrix indefinite.

    >>> normalized_weights([3.0, 1.0], 2, "fisher")
    [0.75, 0.25]
    """
    if n < 1:
        raise MergeMethodError(f"method '{method}' needs at least one model tensor")
    if weights is None:
        return [1.0 / n] * n
    values = [float(w) for w in weights]
    if len(values) != n:
        raise MergeMethodError(f"method '{method}' got {len(values)} weights for {n} models")
    if any(w < 0 for w in values) or sum(values) <= 0:
        raise MergeMethodError(
            f"method '{method}' needs non-negative weights with a positive sum, got {values}"
        )
    total = sum(values)
    return [w / total for w in values]


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_t w_t * tensors[t]`` in float32 (``weights`` already normalised).

    >>> weighted_mean([torch.zeros(2), torch.ones(2)], [0.25, 0.75])
    tensor([0.7500, 0.7500])
    """
    out = torch.zeros(tensors[0].shape, dtype=torch.float64, device=tensors[0].device)
    for w, t in zip(weights, tensors, strict=True):
        out += w * t.to(out.device, torch.float64)
    return out.to(torch.float32)


def check_same_shape(tensors: Sequence[torch.Tensor], method: str) -> None:
    """Raise naming the model index whose tensor shape differs from model 0's."""
    if not tensors:
        raise MergeMethodError(f"method '{method}' needs at least one model tensor")
    for i, t in enumerate(tensors[1:], start=1):
        if t.shape != tensors[0].shape:
            raise MergeMethodError(
                f"method '{method}': model {i} tensor has shape {tuple(t.shape)}, model 0 has {tuple(tensors[0].shape)}"
            )


@merge_method(
    "fisher",
    summary="Fisher-weighted average: each element weighted by each model's diagonal Fisher information",
    citation=(
        "Matena & Raffel 2022, Merging Models with Fisher-Weighted Averaging (NeurIPS), arXiv:2111.09832; "
        "normalize as in their code (model_merging/merging.py) and the RegMean authors' (fisher_normalize)"
    ),
    needs=("fisher",),
    limitations=(
        "diagonal Fisher only; normalize is off by default (eq. 3 as written; Matena & Raffel's code "
        "turns it on): it divides each model's weight by the L2 norm of its raw Fisher over the whole "
        "model (norm_scope 'model', their code, the default) or over this tensor ('tensor', the RegMean "
        "authors' 'param'); the raw Fisher is floored with max(F, epsilon) as in their code, not "
        "F + epsilon as in fusion_bench; tensors without Fisher statistics are plainly (weighted) averaged"
    ),
)
def fisher_merge(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    epsilon: Annotated[
        float,
        Param(low=1e-12, high=1.0, search=(1e-8, 1e-4), help="Fisher floor: raw values below it are raised to it"),
    ] = 1e-6,
    normalize: Annotated[
        bool, Param(help="divide each model's weight by the L2 norm of its raw Fisher (see norm_scope)")
    ] = False,
    norm_scope: Annotated[
        str,
        Param(
            choices=("model", "tensor"),
            help="the norm normalize divides by: over every tensor of the model (Matena & Raffel's "
            "code; the executor supplies it) or over this tensor (the RegMean authors' 'param')",
        ),
    ] = "model",
    stats: Sequence[torch.Tensor] | None = None,
    stats_norms: Sequence[float] | None = None,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Merge ``tensors`` elementwise: ``sum_t c_t F~_t theta_t / sum_t c_t F~_t``.

    ``F~_t = max(F_t, epsilon)`` is model ``t``'s raw diagonal Fisher for this tensor, floored
    (``stats`` holds one per model, shaped like the tensor); ``epsilon`` defaults to 1e-6, the
    floor of Matena & Raffel's reference code. ``c_t = w_t`` (the paper's lambda_t, uniform by
    default), or with ``normalize`` ``c_t = w_t / ||F_t||_2``, the norm of the raw Fisher:

    - ``norm_scope="model"`` (default, Matena & Raffel's code): over every tensor of model ``t``'s
      Fisher, given in ``stats_norms`` (one float per model). The executor computes them over
      every tensor merged together (the whole body in a recipe, a baseline and the MERGE search);
    - ``norm_scope="tensor"`` (the RegMean authors' ``fisher_normalize: param``): over ``F_t``.

    Normalising removes each model's overall Fisher scale, so a model with larger gradients does
    not dominate; the floor is applied to the raw values, so it only ever touches entries that
    are tiny on the model's own scale. A model whose Fisher norm is 0 while another's is not
    cannot be normalised (an error); when every norm is 0 the result is the floored average.
    When ``stats`` is None (no Fisher for this parameter) the result is the weighted average.

    >>> fisher_merge(torch.zeros(2), [torch.zeros(2), torch.ones(2)],
    ...              stats=[torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0])])
    tensor([0.7500, 0.2500])
    """
    check_same_shape(tensors, "fisher")
    w = normalized_weights(weights, len(tensors), "fisher")
    if stats is None:
        return weighted_mean(tensors, w)
    if len(stats) != len(tensors):
        raise MergeMethodError(f"method 'fisher' got {len(stats)} Fisher tensors for {len(tensors)} models")
    for i, (theta, fisher) in enumerate(zip(tensors, stats, strict=True)):
        if fisher.shape != theta.shape:
            raise MergeMethodError(
                f"method 'fisher': model {i} Fisher has shape {tuple(fisher.shape)}, its tensor {tuple(theta.shape)}"
            )
    device = tensors[0].device
    # float64: Fisher values span many orders of magnitude and their products underflow in fp32.
    fishers = [f.to(device, torch.float64) for f in stats]
    if normalize:
        w = _normalized_coefficients(w, fishers, norm_scope, stats_norms)
    numerator = torch.zeros(tensors[0].shape, dtype=torch.float64, device=device)
    denominator = torch.zeros_like(numerator)
    for c_t, theta, fisher in zip(w, tensors, fishers, strict=True):
        f = fisher.clamp_min(epsilon)
        numerator += c_t * f * theta.to(device, torch.float64)
        denominator += c_t * f
    return (numerator / denominator).to(torch.float32)


def _normalized_coefficients(
    weights: Sequence[float], fishers: Sequence[torch.Tensor], scope: str, norms: Sequence[float] | None
) -> list[float]:
    """``w_t / ||F_t||`` for each model, rescaled to sum to 1 (the ratio is what matters)."""
    if scope == "model":
        if norms is None:
            raise MergeMethodError(
                "method 'fisher' with normalize and norm_scope 'model' needs each model's whole-model Fisher "
                "norm: merge through a recipe (the executor computes them) or pass stats_norms="
            )
        if len(norms) != len(fishers):
            raise MergeMethodError(f"method 'fisher' got {len(norms)} Fisher norms for {len(fishers)} models")
        values = [float(n) for n in norms]
    else:
        values = [float(torch.linalg.vector_norm(f)) for f in fishers]
    if all(v == 0.0 for v in values):
        return list(weights)
    if any(not v > 0.0 or not math.isfinite(v) for v in values):
        bad = next(i for i, v in enumerate(values) if not v > 0.0 or not math.isfinite(v))
        raise MergeMethodError(
            f"method 'fisher': model {bad} has Fisher norm {values[bad]} over the {scope} while another's is "
            "positive; normalize needs a positive, finite norm for every model"
        )
    scaled = [w_t / v for w_t, v in zip(weights, values, strict=True)]
    total = sum(scaled)
    return [s / total for s in scaled]
