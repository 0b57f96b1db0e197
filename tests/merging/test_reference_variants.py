"""The reference codes' variants, each against its formula written out by hand in plain torch:
TIES' zero-sum sign and trim counts, Breadcrumbs per row, the disjoint sum, PCB's released code."""

from __future__ import annotations

import pytest
import torch

from modmerge.merging import get_method

T = torch.tensor


# --- TIES: the sign elected where the sum is 0 ----------------------------------------------------


def _ties_reference(taus: list[torch.Tensor], keep: float, zero_sign: str) -> torch.Tensor:
    """TIES authors' merge_utils: topk_values_mask (k = d - int(d K), keep |x| >= k-th smallest),
    resolve_sign 'mass' + resolve_zero_signs 'majority', disjoint 'mean' over agreeing entries."""
    stacked = torch.stack([t.reshape(-1) for t in taus])
    d = stacked.shape[1]
    if keep < 1.0:
        k = d - int(d * keep)
        kth = stacked.abs().kthvalue(k, dim=1, keepdim=True).values
        stacked = stacked * (stacked.abs() >= kth)
    sign = torch.sign(stacked.sum(0))
    fill = torch.sign(sign.sum()) if zero_sign == "majority" else torch.tensor(1.0)
    sign[sign == 0] = fill
    chosen = torch.where(sign > 0, stacked > 0, stacked < 0) & (sign != 0)
    picked = stacked * chosen
    return (picked.sum(0) / chosen.sum(0).clamp(min=1)).reshape(taus[0].shape)


@pytest.mark.parametrize(
    ("models", "zero_sign", "expected"),
    [
        # sums [0, -2, -6, 5]: 'plus' elects + at entry 0 (model 1's 2), 'majority' the sign of
        # (-1) + (-1) + (+1) = -1 (model 2's -2)
        ([[2.0, -1.0, -3.0, 1.0], [-2.0, -1.0, -3.0, 4.0]], "plus", [2.0, -1.0, -3.0, 2.5]),
        ([[2.0, -1.0, -3.0, 1.0], [-2.0, -1.0, -3.0, 4.0]], "majority", [-2.0, -1.0, -3.0, 2.5]),
        # sums [0, 2, -2]: the majority is itself a tie, so entry 0 stays 0
        ([[2.0, 1.0, -1.0], [-2.0, 1.0, -1.0]], "majority", [0.0, 1.0, -1.0]),
    ],
)
def test_ties_zero_sum_sign_hand_computed(models, zero_sign, expected):
    taus = [T(m) for m in models]
    out = get_method("ties")(torch.zeros(len(models[0])), taus, density=1.0, zero_sign=zero_sign)
    torch.testing.assert_close(out, T(expected))
    torch.testing.assert_close(_ties_reference(taus, 1.0, zero_sign), T(expected))


def test_ties_majority_sign_is_over_the_whole_tensor_across_blocks():
    """300k entries (three of TIES' blocks), a few zero sums in each block; density 0.3, int+1."""
    gen = torch.Generator().manual_seed(0)
    n = 300_000
    taus = [torch.randn(n, generator=gen) - 0.05 for _ in range(3)]  # more negative sums: majority -1
    big = torch.arange(0, n, 50_000)
    taus[0][big] = 100.0 + torch.arange(len(big), dtype=torch.float32)  # kept by the trim...
    taus[1][big] = -taus[0][big]  # ...and cancelled exactly
    taus[2][big] = 0.0
    out = get_method("ties")(torch.zeros(n), taus, density=0.3, count="int+1", zero_sign="majority")
    expected = _ties_reference(taus, 0.3, "majority")
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out[big], taus[1][big])  # the negative one wins each zero sum
    plus = get_method("ties")(torch.zeros(n), taus, density=0.3, count="int+1")
    torch.testing.assert_close(plus[big], taus[0][big])


# --- TIES: trim counts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("density", "kept"),
    # of 10 entries: round(f n) halves up / int(f n) / int(f n) + 1
    [(0.25, {"round": 3, "int": 2, "int+1": 3}), (0.34, {"round": 3, "int": 3, "int+1": 4})],
)
def test_ties_trim_count_rules(density, kept):
    tau = T([0.1, -0.9, 0.5, -0.3, 0.7, 0.2, -0.05, 0.6, 0.4, -0.8])
    for rule, k in kept.items():
        out = get_method("ties")(torch.zeros(10), [tau], density=density, count=rule)
        assert int((out != 0).sum()) == k, rule
    torch.testing.assert_close(get_method("ties")(torch.zeros(10), [tau], density=density, count="int+1"),
                               _ties_reference([tau], density, "plus"))


# --- Breadcrumbs per row --------------------------------------------------------------------------


def _breadcrumbs_rows_reference(tau: torch.Tensor, keep: float, remove: float) -> torch.Tensor:
    """Authors' TaskVectorMiddleKeep (remove_first): zero the top int(w * remove) of each row's
    |tau|, then keep the top int(w * keep) of what is left (topk along the last dimension)."""
    w = tau.shape[-1]
    top = torch.topk(tau.abs(), int(w * remove)).indices
    removed = tau * torch.ones(tau.shape).scatter_(tau.dim() - 1, top, 0.0)
    kept = torch.topk(removed.abs(), int(w * keep)).indices
    return removed * torch.zeros(tau.shape).scatter_(tau.dim() - 1, kept, 1.0)


def test_breadcrumbs_per_row_hand_computed():
    # rows ranked apart: row 0 drops 4 and keeps 3, 2; row 1 drops 8 and keeps 5, 2
    tau = T([[4.0, 1.0, 2.0, 3.0], [1.0, 8.0, 5.0, 2.0]])
    out = get_method("breadcrumbs")(torch.zeros(2, 4), [tau], density=0.5, gamma=0.25, scaling=1.0, rank="row",
                                    count="int")
    torch.testing.assert_close(out, T([[0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 5.0, 2.0]]))
    # per tensor instead: the top 2 of 8 (8 and 5) are the outliers, 4 and 3 survive
    per_tensor = get_method("breadcrumbs")(torch.zeros(2, 4), [tau], density=0.25, gamma=0.25, scaling=1.0)
    torch.testing.assert_close(per_tensor, T([[4.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]]))


def test_breadcrumbs_per_row_matches_the_authors_masks_on_random_matrices():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(6, 40, generator=gen)
    models = [base + torch.randn(6, 40, generator=gen) for _ in range(3)]
    out = get_method("breadcrumbs")(base, models, density=0.35, gamma=0.07, scaling=0.4, rank="row", count="int")
    expected = base + 0.4 * sum(_breadcrumbs_rows_reference(m - base, 0.35, 0.07) for m in models)
    torch.testing.assert_close(out, expected)
    # a bias (1-D) is one row
    bias = torch.randn(40, generator=gen)
    out = get_method("breadcrumbs")(torch.zeros(40), [bias], density=0.35, gamma=0.07, scaling=1.0, rank="row",
                                    count="int")
    torch.testing.assert_close(out, _breadcrumbs_rows_reference(bias, 0.35, 0.07))


# --- the 'ties' consensus as a disjoint sum -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("dare", {"drop_rate": 0.0, "scaling": 1.0}),
        ("breadcrumbs", {"density": 1.0, "gamma": 0.0, "scaling": 1.0}),
    ],
)
def test_disjoint_sum_and_mean_hand_computed(name, params):
    # sums [4, -1] elect [+, -]: disjoint sum [1 + 3, -2], disjoint mean [(1 + 3) / 2, -2]
    models, extra = [T([1.0, -2.0]), T([3.0, 1.0])], {}
    if name == "dare":
        extra["generator"] = torch.Generator().manual_seed(0)
    method = get_method(name)
    assert torch.equal(method(torch.zeros(2), models, consensus="ties_sum", **params, **extra), T([4.0, -2.0]))
    assert torch.equal(method(torch.zeros(2), models, consensus="ties", **params, **extra), T([2.0, -2.0]))


@pytest.mark.parametrize("name", ["dare_ties", "breadcrumbs_ties"])
def test_mergekit_presets_normalize_false_is_the_disjoint_sum(name):
    models, extra = [T([1.0, -2.0]), T([3.0, 1.0])], {}
    if name == "dare_ties":
        extra["generator"] = torch.Generator().manual_seed(0)
    method = get_method(name)
    params = {"density": 1.0} if name == "dare_ties" else {"density": 1.0, "gamma": 0.0}
    assert torch.equal(method(torch.zeros(2), models, normalize=False, **params, **extra), T([4.0, -2.0]))
    assert torch.equal(method(torch.zeros(2), models, **params, **extra), T([2.0, -2.0]))


# --- PCB: the authors' released PCB_merge ---------------------------------------------------------


def _pcb_authors_reference(taus: torch.Tensor, pcb_ratio: float) -> torch.Tensor:
    """pcb-merging.py's PCB_merge on (n, d) task vectors, transcribed with torch.sort."""
    n, d = taus.shape

    def norm(x):
        lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
        return (x - lo) / (hi - lo)

    def clamp(x, min_ratio, max_ratio):
        s = torch.sort(x, dim=1).values
        return torch.clamp(x, s[:, int(d * min_ratio)].unsqueeze(1), s[:, int(d * (1 - max_ratio) - 1)].unsqueeze(1))

    absolute = clamp(taus.abs(), 0.0001, 0.0001)
    clipped = torch.sign(taus) * absolute
    task_pcb = torch.exp(n * norm(absolute) ** 2) * torch.tanh(taus * taus.sum(0))
    scale = norm(clamp(task_pcb, 1 - pcb_ratio, 0))
    return (clipped * scale).sum(0) / torch.clamp(scale.sum(0), min=1e-12)


@pytest.mark.parametrize(("d", "drop_ratio"), [(50, 0.8), (20_000, 0.95)])
def test_pcb_authors_variant_matches_the_released_code(d, drop_ratio):
    gen = torch.Generator().manual_seed(d)
    base = torch.randn(d, generator=gen)
    taus = torch.randn(3, d, generator=gen) * 0.01
    out = get_method("pcb")(base, [base + t for t in taus], drop_ratio=drop_ratio, scaling=1.2, variant="authors")
    expected = base + 1.2 * _pcb_authors_reference(torch.stack([(base + t) - base for t in taus]), 1 - drop_ratio)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
