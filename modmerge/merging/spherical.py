"""Spherical merges: SLERP, NuSLERP, Multi-SLERP (mergekit's) and the Karcher mean.

All four treat a tensor as one vector (NuSLERP optionally as a stack of row vectors) and
interpolate its direction along the sphere rather than along the chord, as mergekit's
``merge_methods/slerp.py``, ``nuslerp.py``, ``multislerp.py`` and ``karcher.py`` do:

- ``slerp``: two models, ``theta = sin((1-t)O)/sin(O) v0 + sin(tO)/sin(O) v1`` with ``O`` the angle
  between ``v0`` and ``v1``; linear interpolation when they are nearly colinear;
- ``nuslerp``: the same over the task vectors of two models (or the models), ``t`` from weights;
- ``multislerp``: any number of models, a weighted mean in the tangent space of the sphere;
- ``karcher``: the weighted Riemannian (Karcher / Frechet) mean of the directions, iterated.

Example::

    >>> import torch
    >>> slerp(torch.zeros(2), [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], t=0.5)
    tensor([0.7071, 0.7071])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.linear import check_inputs
from modmerge.merging.pairs import endpoints
from modmerge.merging.registry import Param, merge_method

__all__ = ["karcher", "multislerp", "nuslerp", "slerp", "slerp_vectors"]

_COLINEAR_DOT = 0.9995  # mergekit's slerp: above this |cos| the two directions are one line
_NORM_EPS = 1e-8


def slerp_vectors(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """SLERP of two whole tensors (each one vector) at ``t``; lerp when ``|cos| > 0.9995``.

    A vector of norm at most 1e-8 is not normalised (mergekit's rule), so against it the
    cosine is about 0 and the weights are those of a right angle.

    >>> slerp_vectors(0.5, torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    tensor([1.4142, 0.7071])
    """
    n0, n1 = float(torch.linalg.vector_norm(v0)), float(torch.linalg.vector_norm(v1))
    dot = float((v0 * v1).sum()) / ((n0 if n0 > _NORM_EPS else 1.0) * (n1 if n1 > _NORM_EPS else 1.0))
    if abs(dot) > _COLINEAR_DOT:
        return v0 * (1.0 - t) + v1 * t
    angle = math.acos(max(-1.0, min(1.0, dot)))
    s0 = math.sin((1.0 - t) * angle) / math.sin(angle)
    s1 = math.sin(t * angle) / math.sin(angle)
    return v0 * s0 + v1 * s1


@merge_method(
    "slerp",
    summary="SLERP: spherical interpolation at t between two models (or the base and one model).",
    citation=(
        "Shoemake, 'Animating rotation with quaternion curves', SIGGRAPH 1985; as in mergekit "
        "merge_methods/slerp.py"
    ),
    max_models=2,
)
def slerp(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    t: Annotated[
        float,
        Param(low=0.0, high=1.0, help="0 gives the first endpoint (mergekit's base_model), 1 the second", search=(0.1, 0.9)),
    ] = 0.5,
) -> torch.Tensor:
    """SLERP between the two endpoints of :func:`~modmerge.merging.pairs.endpoints`.

    With one model the endpoints are ``(base, model)``, exactly mergekit's ``slerp`` with
    ``base_model`` the base; with two models they are the two models (the base is unused), the
    form MERGE modules use. Each tensor is one vector; nearly colinear pairs
    (``|cos| > 0.9995``) are linearly interpolated, as in mergekit. mergekit requires ``t``;
    0.5 (the midpoint) is the default here.

    >>> slerp(torch.zeros(2), [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])], t=0.25)
    tensor([1., 0.])
    """
    v0, v1 = endpoints("slerp", base, tensors, instead="multislerp or karcher")
    return slerp_vectors(t, v0, v1)


def _interpolation_t(weights: Sequence[float] | None) -> float:
    """mergekit's NuSLERP ``t``: the second model's share of the two weights (0.5 if they cancel)."""
    if weights is None:
        return 0.5
    total = float(weights[0]) + float(weights[1])
    return 0.5 if abs(total) < 1e-6 else float(weights[1]) / total


def _nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, *, flatten: bool, row_wise: bool) -> torch.Tensor:
    """SLERP of the vectors along one dimension (all entries when ``flatten``); lerp where colinear."""
    shape = v0.shape
    if flatten or v0.dim() == 0:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    u0 = v0 / torch.linalg.vector_norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.linalg.vector_norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    angle = torch.acos((u0 * u1).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0))
    sin = torch.sin(angle)
    spherical = (torch.sin((1.0 - t) * angle) * v0 + torch.sin(t * angle) * v1) / sin
    out = torch.where(sin.abs() < 1e-8, (1.0 - t) * v0 + t * v1, spherical)
    if row_wise and not flatten and len(shape) > 0:
        out = out.transpose(0, -1)
    return out.reshape(shape)


@merge_method(
    "nuslerp",
    summary="NuSLERP: SLERP of two task vectors (or two models), t from the models' weights.",
    citation="mergekit merge_methods/nuslerp.py (Goddard et al., arXiv:2403.13257)",
    max_models=2,
)
def nuslerp(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    nuslerp_flatten: Annotated[
        bool, Param(help="treat each tensor as one vector; false: interpolate slice by slice")
    ] = True,
    nuslerp_row_wise: Annotated[
        bool, Param(help="without flatten, slice along dimension 0 instead of the last dimension")
    ] = False,
    use_base: Annotated[
        bool,
        Param(help="interpolate task vectors and add the base back (mergekit with a base_model); "
              "false: interpolate the two models themselves"),
    ] = True,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """NuSLERP (mergekit): ``base + slerp(t, tau_0, tau_1)`` with ``t = w_1 / (w_0 + w_1)``.

    Unlike :func:`slerp`, the colinear fallback is only for ``|sin O| < 1e-8`` and, with
    ``nuslerp_flatten=False``, each slice along the last dimension (``W[i, :]``; along
    dimension 0, ``W[:, j]``, with ``nuslerp_row_wise``) is interpolated on its own. Equal (or
    no) weights give ``t = 0.5``; weights summing to about 0 also give 0.5, as in mergekit.
    ``use_base=False`` is mergekit's NuSLERP without a ``base_model``.

    >>> nuslerp(torch.ones(2), [torch.tensor([2.0, 1.0]), torch.tensor([1.0, 2.0])])
    tensor([1.7071, 1.7071])
    """
    check_inputs("nuslerp", base, tensors, weights)
    if len(tensors) != 2:
        raise MergeMethodError(
            f"method 'nuslerp' merges exactly two models (as mergekit defines it), got {len(tensors)}; "
            "for more, use multislerp or karcher"
        )
    t = _interpolation_t(weights)
    a, b = tensors[0].to(torch.float32), tensors[1].to(torch.float32)
    if not use_base:
        return _nuslerp(t, a, b, flatten=nuslerp_flatten, row_wise=nuslerp_row_wise)
    base32 = base.to(torch.float32)
    merged = _nuslerp(t, a - base32, b - base32, flatten=nuslerp_flatten, row_wise=nuslerp_row_wise)
    return merged.add_(base32)


@merge_method(
    "multislerp",
    summary="Multi-SLERP: weighted spherical mean of any number of task vectors (or models).",
    citation="Goddard, 'Multi-SLERP' (goddard.blog/posts/multislerp-wow-what-a-cool-idea); mergekit merge_methods/multislerp.py",
)
def multislerp(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    normalize_weights: Annotated[bool, Param(help="divide the weights by their sum")] = True,
    eps: Annotated[float, Param(low=0.0, high=1e-2, help="added to norms against division by zero")] = 1e-8,
    use_base: Annotated[
        bool,
        Param(help="interpolate task vectors and add the base back (mergekit with a base_model); "
              "false: interpolate the models themselves"),
    ] = True,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Multi-SLERP (mergekit): barycentric interpolation on the sphere through a tangent space.

    With ``v_t = theta_t - base`` (``use_base``), ``u_t = v_t / (|v_t| + eps)`` and weights
    ``w_t``: ``m = sum_t w_t u_t / |.|`` (the tangent point), ``g = sum_t w_t (u_t - (u_t . m) m)``
    (the mean in the tangent space), then back on the sphere along the exponential map,
    ``u = m cos|g| + g sin|g| / |g|`` (``|g|`` plus ``eps``), scaled by ``sum_t w_t |v_t|``.
    Two models whose weighted directions cancel are linearly combined instead; more raise.
    One model is returned as it is.

    >>> multislerp(torch.zeros(2), [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    tensor([0.7071, 0.7071])
    """
    w = check_inputs("multislerp", base, tensors, weights)
    if len(tensors) == 1:
        return tensors[0].to(torch.float32)
    base32 = base.to(torch.float32)
    vectors = torch.stack([t.to(torch.float32).reshape(-1) for t in tensors])
    if use_base:
        vectors -= base32.reshape(1, -1)
    weight = torch.tensor(w, dtype=torch.float32)
    if normalize_weights:
        weight = weight / weight.sum()
    norms = torch.linalg.vector_norm(vectors, dim=1, keepdim=True)
    units = vectors / (norms + eps)
    mean = (units * weight[:, None]).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise MergeMethodError(
                "method 'multislerp': the weighted directions cancel (e.g. v and -v with equal weights); change the weights"
            )
        out = vectors[0] * weight[0] + vectors[1] * weight[1]
    else:
        mean = mean / mean_norm
        tangents = units - (units @ mean)[:, None] * mean
        g = (tangents * weight[:, None]).sum(0)
        g_norm = torch.linalg.vector_norm(g) + eps
        out = (mean * torch.cos(g_norm) + g * (torch.sin(g_norm) / g_norm)) * (norms[:, 0] * weight).sum()
    out = out.reshape(base.shape)
    return out.add_(base32) if use_base else out


@merge_method(
    "karcher",
    summary="Karcher mean: the Riemannian mean of the models' directions, scaled by their mean norm.",
    citation=(
        "Karcher, 'Riemannian center of mass and mollifier smoothing', CPAM 1977; mergekit "
        "merge_methods/karcher.py (its docs cite arXiv:2603.04972)"
    ),
)
def karcher(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    *,
    max_iter: Annotated[int, Param(low=1, high=1000, help="iterations of the fixed-point update")] = 10,
    tol: Annotated[float, Param(low=0.0, high=1.0, help="stop when the update's norm falls below it")] = 1e-5,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Karcher mean of ``u_t = theta_t / |theta_t|`` (mergekit's ``karcher``; ``base`` is unused).

    Start from the normalised weighted mean of the directions, then repeat up to ``max_iter``
    times: ``T = sum_t a_t (O_t / sin O_t)(u_t - cos O_t u)`` over ``O_t = arccos(u . u_t) >= tol``,
    stop if ``|T| < tol``, else ``u <- cos|T| u + sin|T| T/|T|`` (renormalised). The result is
    ``u * sum_t a_t |theta_t|``. ``a_t`` are the weights divided by their sum (uniform by
    default; mergekit always uses uniform ones); models of norm ``<= tol`` count only in the
    scale. All-zero inputs give zeros.

    >>> karcher(torch.zeros(2), [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])])
    tensor([1.4142, 1.4142])
    """
    w = check_inputs("karcher", base, tensors, weights)
    total = sum(w)
    if total <= 0 or any(x < 0 for x in w):
        raise MergeMethodError(f"method 'karcher' needs non-negative weights with a positive sum, got {w}")
    alphas = [x / total for x in w]
    flats = [t.to(torch.float32).reshape(-1) for t in tensors]
    norms = [float(torch.linalg.vector_norm(f)) for f in flats]
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return torch.zeros(base.shape, dtype=torch.float32)
    valid_sum = sum(alphas[i] for i in valid)
    pairs = [(alphas[i] / valid_sum, flats[i] / norms[i]) for i in valid]
    u = sum(a * unit for a, unit in pairs)
    u_norm = float(torch.linalg.vector_norm(u))
    u = pairs[0][1].clone() if u_norm < tol else u / u_norm
    for _ in range(max_iter):
        step = torch.zeros_like(u)
        for a, unit in pairs:
            cos = max(-1.0, min(1.0, float(torch.dot(u, unit))))
            angle = math.acos(cos)
            if angle >= tol:
                step += (a * angle / math.sin(angle)) * (unit - cos * u)
        step_norm = float(torch.linalg.vector_norm(step))
        if step_norm < tol:
            break
        u = math.cos(step_norm) * u + (math.sin(step_norm) / step_norm) * step
        u_norm = float(torch.linalg.vector_norm(u))
        if u_norm > tol:
            u = u / u_norm
    scale = sum(a * n for a, n in zip(alphas, norms, strict=True))
    return (u * scale).reshape(base.shape)
