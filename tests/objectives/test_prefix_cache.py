"""Activation-prefix reuse: same Evaluations as without it, fewer layer forwards, bounded bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modmerge.errors import ModmergeError
from modmerge.experts.grouping import GroupingMatrix
from modmerge.objectives.prefix_cache import PrefixCache, prefix_keys
from modmerge.objectives.problem import MergeProblem
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall

TA = MethodCall.build("task_arithmetic", {})


def make(tiny_zoo, prefix_cache_bytes):
    return MergeProblem.from_source(tiny_zoo, TA, QuantConfig(), limit=32, prefix_cache_bytes=prefix_cache_bytes)


def configurations(n_tasks, units):
    """Matrices that agree on the embeddings and layer 0 and differ in layer 1 (and one that differs
    from the start), so task runs share prefixes of 1 layer, or none."""
    base = np.zeros((n_tasks, len(units)), dtype=int)
    late = [i for i, u in enumerate(units) if u.startswith("layer1.")]
    out = [base.copy()]
    for j, unit in enumerate(late):
        g = base.copy()
        g[j % n_tasks, unit] = 1  # one task alone in one layer-1 unit
        out.append(g)
    g = base.copy()
    g[:2, late] = 1
    out.append(g)
    g = base.copy()
    g[0, 0] = 1  # its own embeddings: nothing to share for task 0
    out.append(g)
    return [GroupingMatrix.from_array(a) for a in out]


@pytest.fixture(scope="module")
def pair(tiny_zoo):
    on, off = make(tiny_zoo, 64 * 2**20), make(tiny_zoo, 0)
    gs = configurations(on.n_tasks, on.unit_ids)
    return on, off, gs, on.evaluate(gs), [off.evaluate_one(g) for g in gs]


def test_prefix_reuse_gives_the_same_evaluations(pair):
    _, _, gs, with_cache, without = pair
    assert len(gs) == 6
    for a, b in zip(with_cache, without, strict=True):
        assert a.per_task == b.per_task  # exact, not approximate
        assert a.performance == b.performance and a.storage_cost == b.storage_cost


def test_prefix_reuse_counts_fewer_layer_forwards(pair):
    on, off, gs, _, _ = pair
    assert on.counters.task_runs == off.counters.task_runs
    assert off.counters.layer_forwards == off.counters.task_runs * off.n_layers
    assert off.counters.prefix_hits == 0 and len(off.prefix_cache) == 0
    assert on.counters.layer_forwards_naive == off.counters.layer_forwards_naive == len(gs) * on.n_tasks * on.n_layers
    assert on.counters.prefix_hits > 0
    assert on.counters.layer_forwards == off.counters.layer_forwards - on.counters.prefix_hits  # each hit skips layer 0


def test_prefix_cache_honours_its_byte_bound(tiny_zoo, pair):
    on = pair[0]
    entry = max(on.prefix_cache.entry_sizes())
    small = make(tiny_zoo, int(1.5 * entry))
    gs = configurations(small.n_tasks, small.unit_ids)
    evaluations = small.evaluate(gs)
    cache = small.prefix_cache
    assert cache.peak_bytes <= cache.max_bytes and cache.nbytes <= cache.max_bytes
    assert len(cache) == 1 and cache.evictions > 0
    assert [e.per_task for e in evaluations] == [e.per_task for e in pair[3]]


def test_lru_cache_evicts_least_recent_and_skips_oversize():
    t = torch.zeros(4, 8)  # 128 bytes
    cache = PrefixCache(max_bytes=256)
    cache.put((0, ("a",)), [t])
    cache.put((0, ("b",)), [t])
    assert cache.longest([(0, ("a",))]) == (0, [t])  # "a" is now the most recent
    cache.put((0, ("c",)), [t])
    assert (0, ("b",)) not in cache and (0, ("a",)) in cache and cache.nbytes == 256
    assert not cache.put((1, ("x",)), [t, t, t]) and len(cache) == 2
    assert cache.longest([(2, ("a",))]) == (-1, None)
    with pytest.raises(ModmergeError, match="max_bytes"):
        PrefixCache(-1)


def test_prefix_keys_grow_by_stage():
    keys = prefix_keys(3, ["e", "a0", "m0", "a1"], [0, 1, 1, 2], n_layers=2)
    assert keys == [(3, ("e", "a0", "m0")), (3, ("e", "a0", "m0", "a1"))]


def test_counters_report_layer_forwards(pair):
    on = pair[0]
    record = on.counters.cost_record()
    assert record["layer_forwards"] == on.counters.layer_forwards < record["layer_forwards_naive"]
    assert record["real_evaluations"] == 6 and record["prefix_hits"] == on.counters.prefix_hits
    assert f"layer forwards {on.counters.layer_forwards}/" in on.counters.progress()


def test_a_body_without_a_stage_split_runs_whole(tiny_zoo, pair, monkeypatch):
    from modmerge.tasks import staged

    monkeypatch.delitem(staged.STAGE_SPECS, "BertModel")
    p = make(tiny_zoo, 64 * 2**20)
    gs = configurations(p.n_tasks, p.unit_ids)[:3]
    assert [e.per_task for e in p.evaluate(gs)] == [e.per_task for e in pair[3][:3]]
    assert p.counters.prefix_hits == 0 and len(p.prefix_cache) == 0
    assert p.counters.layer_forwards == p.counters.task_runs * p.n_layers
