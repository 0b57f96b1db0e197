"""EMR-Merging: elect a unified task vector, then one mask and one rescaler per task.

Huang et al., 'EMR-Merging: Tuning-Free High-Performance Model Merging', NeurIPS 2024,
arXiv:2405.17461. Over task vectors ``tau_t = theta_t - theta_0``:

- Elect, per entry: the sign ``gamma = sign(sum_t tau_t)`` (an entry whose sum is 0 or less
  gets -1, as the authors' code writes ``(sum > 0) * 2 - 1``) and the magnitude ``eps``, the
  largest ``|tau_t|`` among the tasks whose sign agrees with ``gamma`` (0 where none does);
  ``tau_uni = gamma * eps``.
- Mask, per task: ``M_t = (tau_t * tau_uni > 0)``, one bit per entry.
- Rescale, per task and per WHOLE MODEL (the authors' code, ViT and language models alike):
  ``lambda_t = sum_n mean|tau_t[n]| / sum_n mean|M_t[n] * tau_uni[n]|`` over the tensors ``n``.
  The paper writes the ratio of entry sums; the code sums per-tensor means, which weighs each
  tensor alike whatever its size. This module follows the code.

Task ``t``'s model is then ``theta_0 + lambda_t * M_t * tau_uni``. Selecting it needs the task's
identity (the paper's oracle routing). EMR produces one model per task, not one merged tensor,
so it is not a registry method (the registry's functions return one tensor); the baselines run
it as a row of its own (:mod:`modmerge.objectives.baselines`).

>>> tvs = [{"w": torch.tensor([0.2, -0.1])}, {"w": torch.tensor([0.4, 0.3])}]
>>> emr = emr_merge(tvs)
>>> emr.unified["w"], emr.masks[1]["w"]
(tensor([0.4000, 0.3000]), tensor([True, True]))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from modmerge.errors import MergeMethodError

__all__ = ["EMRMerge", "elect_unified", "emr_merge", "rescaler", "task_mask"]

Vector = Mapping[str, torch.Tensor]


def elect_unified(deltas: Sequence[torch.Tensor]) -> torch.Tensor:
    """The unified task vector of one tensor: elected sign, largest agreeing magnitude.

    >>> elect_unified([torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-3.0, -1.0, 0.0])])
    tensor([-3.0000, -2.0000,  0.5000])
    """
    if not deltas:
        raise MergeMethodError("EMR-Merging needs at least one task vector")
    stacked = torch.stack([d.float() for d in deltas])
    sign = torch.where(stacked.sum(0) > 0, 1.0, -1.0)
    agreeing = (stacked * sign) > 0
    magnitude = (stacked.abs() * agreeing).amax(0)
    return sign * magnitude


def task_mask(delta: torch.Tensor, unified: torch.Tensor) -> torch.Tensor:
    """``M_t``: where the task vector points the unified vector's way (a bool tensor).

    >>> task_mask(torch.tensor([1.0, -2.0, 0.0]), torch.tensor([3.0, 2.0, 1.0]))
    tensor([ True, False, False])
    """
    return (delta.float() * unified) > 0


def rescaler(delta: Vector, unified: Vector, mask: Vector) -> float:
    """``lambda_t`` over a whole model: the sum of per-tensor mean ``|tau_t|`` over the sum of
    per-tensor mean ``|M_t * tau_uni|``. 0.0 when the masked unified vector is all zero (the
    task model is then ``theta_0`` whatever the rescaler).

    >>> rescaler({"w": torch.tensor([2.0, -2.0])}, {"w": torch.tensor([4.0, 1.0])},
    ...          {"w": torch.tensor([True, False])})
    1.0
    """
    kept = sum(float((mask[k] * unified[k]).abs().mean()) for k in unified)
    if kept == 0.0:
        return 0.0
    return sum(float(delta[k].float().abs().mean()) for k in unified) / kept


@dataclass(frozen=True)
class EMRMerge:
    """What EMR-Merging stores: the unified vector, one mask and one rescaler per task."""

    unified: dict[str, torch.Tensor]
    masks: list[dict[str, torch.Tensor]]
    rescalers: list[float]

    def task_vector(self, task: int) -> dict[str, torch.Tensor]:
        """Task ``task``'s reconstructed vector ``lambda_t * M_t * tau_uni``."""
        scale = self.rescalers[task]
        return {k: scale * (self.masks[task][k] * u) for k, u in self.unified.items()}

    def task_state(self, base: Vector, task: int) -> dict[str, torch.Tensor]:
        """Task ``task``'s weights ``theta_0 + lambda_t * M_t * tau_uni`` (float32), for every key
        of the unified vector.

        >>> emr = emr_merge([{"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])}])
        >>> emr.task_state({"w": torch.tensor([10.0])}, 0)["w"]
        tensor([11.])
        """
        return {k: base[k].float() + v for k, v in self.task_vector(task).items()}


def emr_merge(task_vectors: Sequence[Vector]) -> EMRMerge:
    """Elect, mask and rescale (module doc) over task vectors sharing one set of keys.

    >>> emr = emr_merge([{"w": torch.tensor([1.0, -1.0])}, {"w": torch.tensor([3.0, 1.0])}])
    >>> emr.unified["w"], emr.masks[1]["w"], [round(r, 4) for r in emr.rescalers]
    (tensor([ 3., -1.]), tensor([ True, False]), [0.5, 1.3333])
    """
    if not task_vectors:
        raise MergeMethodError("EMR-Merging needs at least one task vector")
    keys = list(task_vectors[0])
    for i, tv in enumerate(task_vectors):
        if set(tv) != set(keys):
            raise MergeMethodError(f"EMR-Merging: task vector {i} has other keys than task vector 0")
    unified = {k: elect_unified([tv[k] for tv in task_vectors]) for k in keys}
    masks = [{k: task_mask(tv[k], unified[k]) for k in keys} for tv in task_vectors]
    scales = [rescaler(tv, unified, mask) for tv, mask in zip(task_vectors, masks, strict=True)]
    return EMRMerge(unified, masks, scales)
