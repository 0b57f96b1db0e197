"""The module caches are bounded in bytes: evicted modules are built again, identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modmerge.errors import ModmergeError
from modmerge.experts.grouping import GroupingMatrix
from modmerge.lru import BytesLRU
from modmerge.objectives.problem import MergeProblem
from modmerge.quantization import QuantConfig, compress
from modmerge.recipes.plan import MethodCall


def test_bytes_lru_evicts_least_recently_used_first():
    lru: BytesLRU[str, str] = BytesLRU(max_bytes=10)
    assert lru.put("a", "A", 4) and lru.put("b", "B", 4)
    assert lru.get("a") == "A"  # now b is the least recently used
    assert lru.put("c", "C", 4)
    assert "b" not in lru and lru.get("a") == "A" and lru.get("c") == "C"
    assert (lru.nbytes, lru.peak_bytes, lru.evictions, len(lru)) == (8, 8, 1, 2)
    assert not lru.put("huge", "H", 11) and "huge" not in lru
    assert lru.put("a", "A2", 6) and lru.nbytes == 10 and lru.get("a") == "A2"  # replaced, not added
    with pytest.raises(ModmergeError, match="max_bytes must be >= 0"):
        BytesLRU(-1)


def test_full_precision_tensors_dequantise_without_a_copy():
    merged = torch.randn(4, 3)
    kept = compress(merged, [merged * 0.1], mode="conditional")  # range grew: kept at float32
    assert not bool(kept.quantised.any())
    out = kept.dequantize()
    assert torch.equal(out, merged) and out.data_ptr() == kept.full_part.data_ptr()
    quantised = compress(merged, [merged * 2], mode="conditional")
    assert bool(quantised.quantised.all()) and quantised.dequantize().data_ptr() != merged.data_ptr()


def test_a_tiny_module_cache_rebuilds_modules_and_gives_the_same_objectives(tiny_zoo):
    call, quant = MethodCall.build("ties", {"density": 0.5}), QuantConfig()
    roomy = MergeProblem.from_source(tiny_zoo, call, quant, limit=32, prefix_cache_bytes=0)
    tight = MergeProblem.from_source(tiny_zoo, call, quant, limit=32, prefix_cache_bytes=0, cache_bytes=1)
    rng = np.random.default_rng(0)
    gs = [GroupingMatrix.from_array(rng.integers(0, 2, (roomy.n_tasks, roomy.n_units))) for _ in range(3)]
    gs.append(gs[0])
    a, b = roomy.evaluate(gs), tight.evaluate(gs)
    assert [(e.performance, e.storage_cost) for e in a] == [(e.performance, e.storage_cost) for e in b]
    assert len(tight.builder._modules) == 0 and tight.builder.builds > roomy.builder.builds


def test_fisher_modules_normalise_by_each_tasks_whole_body_norm():
    """A module merges one unit, but normalize divides by the Fisher norm over every unit."""
    from modmerge.experts.modules import ExpertBuilder, ModuleKey

    gen = torch.Generator().manual_seed(0)
    keys = {"u0": ["a"], "u1": ["b"]}
    pretrained = {"a": torch.zeros(3), "b": torch.zeros(2)}
    tasks = [{"a": torch.randn(3, generator=gen), "b": torch.randn(2, generator=gen)} for _ in range(2)]
    stats = [{"a": torch.tensor([1.0, 2.0, 2.0]), "b": torch.tensor([4.0, 0.0])},
             {"a": torch.tensor([3.0, 0.0, 4.0]), "b": torch.tensor([0.0, 12.0])}]
    call = MethodCall.build("fisher", {"normalize": True, "epsilon": 1e-6})
    builder = ExpertBuilder(pretrained, tasks, keys, call, QuantConfig(mode="never"), statistics=stats)
    got = builder.dense(ModuleKey("u0", (0, 1)))["a"]
    norms = [(1 + 4 + 4 + 16) ** 0.5, (9 + 16 + 144) ** 0.5]  # 5 and 13, over a and b together
    f = [torch.tensor([1.0, 2.0, 2.0]) / norms[0], torch.tensor([3.0, 1e-6, 4.0]) / norms[1]]
    expected = (f[0] * tasks[0]["a"] + f[1] * tasks[1]["a"]) / (f[0] + f[1])
    torch.testing.assert_close(got, expected)
