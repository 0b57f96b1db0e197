"""EMR-Merging (Huang et al., NeurIPS 2024): election, masks, rescalers and reconstructed task
models against hand-computed tables and the formula written out in plain torch."""

from __future__ import annotations

import pytest
import torch

from modmerge.errors import MergeMethodError
from modmerge.merging.emr import elect_unified, emr_merge, rescaler, task_mask
from modmerge.objectives.storage import emr_storage_cost

T = torch.tensor

# (task vectors of one tensor, unified vector): sign of the sum (0 -> -1, as the authors' code),
# magnitude = the largest |tau_t| among the tasks agreeing with it.
ELECTION_CASES = [
    # sums [0.6, 0.2]: both +; entry 1 only task 1 agrees (0.3)
    ([[0.2, -0.1], [0.4, 0.3]], [0.4, 0.3]),
    # sums [-2, -3, 0.5]
    ([[1.0, -2.0, 0.5], [-3.0, -1.0, 0.0]], [-3.0, -2.0, 0.5]),
    # sum 0 elects -1: only the negative task agrees
    ([[1.0], [-1.0]], [-1.0]),
    # every task 0: sign -1, no task agrees, magnitude 0
    ([[0.0], [0.0]], [0.0]),
    # three tasks: sum [1 + 1 - 5, 2 - 1 + 0.5] = [-3, 1.5]; agreeing max [5, 2]
    ([[1.0, 2.0], [1.0, -1.0], [-5.0, 0.5]], [-5.0, 2.0]),
]


@pytest.mark.parametrize(("deltas", "expected"), ELECTION_CASES)
def test_election_hand_computed(deltas, expected):
    torch.testing.assert_close(elect_unified([T(d) for d in deltas]), T(expected))


@pytest.mark.parametrize(
    ("delta", "unified", "expected"),
    [
        ([1.0, -2.0, 0.0], [3.0, 2.0, 1.0], [True, False, False]),
        ([-1.0, -2.0], [-3.0, 0.0], [True, False]),  # a zero unified entry masks out
    ],
)
def test_mask_hand_computed(delta, unified, expected):
    assert task_mask(T(delta), T(unified)).tolist() == expected


def test_rescaler_sums_per_tensor_means_over_the_whole_model():
    # tensor a: mean|tau| = 2, mean|M u| = (4 + 0) / 2 = 2; tensor b (4 entries): mean|tau| = 1,
    # mean|M u| = 3 / 4. lambda = (2 + 1) / (2 + 0.75) (the ratio of entry sums would be 8 / 7).
    delta = {"a": T([2.0, -2.0]), "b": T([1.0, 1.0, -1.0, 1.0])}
    unified = {"a": T([4.0, 1.0]), "b": T([3.0, 5.0, 1.0, -2.0])}
    mask = {"a": T([True, False]), "b": T([True, False, False, False])}
    assert rescaler(delta, unified, mask) == pytest.approx(3.0 / 2.75)


def _emr_by_hand(tvs: list[dict[str, torch.Tensor]]):
    """The paper's three steps in plain torch ops, per tensor then over the model."""
    keys = list(tvs[0])
    unified, masks = {}, [{} for _ in tvs]
    for k in keys:
        stacked = torch.stack([tv[k] for tv in tvs])
        sign = torch.ones_like(stacked[0])
        sign[stacked.sum(0) <= 0] = -1.0
        magnitude = torch.zeros_like(stacked[0])
        for tv in tvs:
            agrees = tv[k] * sign > 0
            magnitude = torch.maximum(magnitude, torch.where(agrees, tv[k].abs(), torch.zeros_like(magnitude)))
        unified[k] = sign * magnitude
        for t, tv in enumerate(tvs):
            masks[t][k] = tv[k] * unified[k] > 0
    scales = []
    for t, tv in enumerate(tvs):
        top = sum(tv[k].abs().mean() for k in keys)
        bottom = sum((masks[t][k].float() * unified[k]).abs().mean() for k in keys)
        scales.append(float(top / bottom))
    return unified, masks, scales


def test_emr_matches_the_formula_written_by_hand_and_rebuilds_each_task_model():
    gen = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(6, 5, generator=gen), "b": torch.randn(5, generator=gen)}
    tvs = [{k: 0.1 * torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(3)]
    unified, masks, scales = _emr_by_hand(tvs)
    emr = emr_merge(tvs)
    for k in base:
        torch.testing.assert_close(emr.unified[k], unified[k])
        for t in range(3):
            assert torch.equal(emr.masks[t][k], masks[t][k])
    assert emr.rescalers == pytest.approx(scales)
    for t in range(3):
        state = emr.task_state(base, t)
        for k in base:
            torch.testing.assert_close(state[k], base[k] + scales[t] * masks[t][k].float() * unified[k])


def test_a_single_task_is_rebuilt_exactly():
    tv = {"w": T([0.5, -0.25, 0.0])}
    emr = emr_merge([tv])
    torch.testing.assert_close(emr.task_vector(0)["w"], tv["w"])
    assert emr.rescalers == [1.0]


def test_a_task_whose_mask_is_empty_gets_the_pretrained_body():
    # task 1 disagrees with the elected sign everywhere: M_1 = 0 and lambda_1 = 0 (not 0 / 0)
    emr = emr_merge([{"w": T([2.0, 2.0])}, {"w": T([-1.0, -1.0])}])
    assert emr.rescalers[1] == 0.0
    torch.testing.assert_close(emr.task_state({"w": T([1.0, 1.0])}, 1)["w"], T([1.0, 1.0]))


def test_mismatched_task_vectors_are_refused():
    with pytest.raises(MergeMethodError, match="other keys"):
        emr_merge([{"w": T([1.0])}, {"v": T([1.0])}])
    with pytest.raises(MergeMethodError, match="at least one"):
        emr_merge([])


@pytest.mark.parametrize(
    ("d", "tasks", "rescalers", "expected"),
    [
        (1_000_000, 8, 0, 1.25),  # the MERGE paper's Table I: 1 + 8 / 32
        (1_000_000, 7, 0, 1 + 7 / 32),  # GPT-2 on 7 tasks: 1.22
        (100, 4, 4, (32 * 100 + 4 * 100 + 4 * 32) / (32 * 100)),
    ],
)
def test_emr_storage_cost(d, tasks, rescalers, expected):
    assert emr_storage_cost(d, tasks=tasks, rescalers=rescalers) == pytest.approx(expected, rel=1e-12)
