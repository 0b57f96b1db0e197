"""Activation-prefix reuse on a real zoo: time and encoder-layer forwards with and without the cache.

Two parts, both on search-shaped configurations (NSGA-II operators from :mod:`modmerge.search`
driven by a cheap proxy objective, so no real evaluation is spent on making them):

* ``measure``: real evaluations of ``--offspring`` second-generation configurations, each after
  its nearest first-generation configuration (its stand-in parent, evaluated first as in a real
  search), once with the prefix cache and once without; wall and process CPU seconds, layer
  forwards, and a check that both give the same P.
* ``replay``: a whole ``--budget`` search's configurations replayed through the evaluator's
  chain / prefix bookkeeping (result cache, prefix-sharing order, byte-bounded LRU with the real
  per-task hidden-state sizes) without running models: layer forwards at several byte bounds.

    .venv/bin/python benchmarks/prefix_reuse.py measure --zoo text --offspring 4
    .venv/bin/python benchmarks/prefix_reuse.py replay --zoo text --budget 300
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from modmerge.zoo.batching import eval_batches

from modmerge.experts.grouping import GroupingMatrix
from modmerge.objectives.evaluation import Evaluation
from modmerge.objectives.performance import chain
from modmerge.objectives.prefix_cache import PrefixCache, prefix_keys
from modmerge.objectives.problem import MergeProblem
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.search.config import SearchConfig
from modmerge.search.nsga import run_search
from modmerge.zoo.store import ZooStore


class ProxyProblem:
    """Storage-cost-shaped fitness with noise: gives the operators' configurations for free."""

    def __init__(self, n_tasks: int, n_units: int, seed: int = 0) -> None:
        self.n_tasks, self.n_units, self.rng = n_tasks, n_units, np.random.default_rng(seed)

    def storage_cost(self, g: GroupingMatrix) -> float:
        return float(sum(g.n_groups(u) for u in range(self.n_units)) / self.n_units)

    def evaluate(self, gs: list[GroupingMatrix]) -> list[Evaluation]:
        out = []
        for g in gs:
            c = self.storage_cost(g)
            p = 0.5 + 0.05 * c + 0.02 * float(self.rng.standard_normal())
            out.append(Evaluation(p, {str(t): p for t in range(self.n_tasks)}, c, 0.0))
        return out


def proxy_generations(n_tasks: int, n_units: int, budget: int, seed: int = 0) -> list[list[GroupingMatrix]]:
    config = SearchConfig(hv_storage_ref=float(n_tasks), hv_performance_ref=0.0, population_size=20, budget=budget,
                          seed=seed, init="random")
    state = run_search(ProxyProblem(n_tasks, n_units, seed), config)
    gens: dict[int, list[GroupingMatrix]] = {}
    for r in state.records:
        gens.setdefault(r.generation, []).append(r.grouping)
    return [gens[k] for k in sorted(gens)]


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def measure(args: argparse.Namespace) -> dict:
    zoo = ZooStore.default().load(args.zoo)

    def problem(prefix_bytes: int) -> MergeProblem:
        return MergeProblem.from_source(zoo, MethodCall.build(args.method, {}), QuantConfig(), limit=args.limit,
                               prefix_cache_bytes=prefix_bytes)

    first = problem(args.prefix_mb * 2**20)
    gens = proxy_generations(first.n_tasks, first.n_units, 40)
    arrays = [[g.to_list() for g in gen] for gen in gens[:2]]
    offspring = gens[1][: args.offspring]
    parents: list[GroupingMatrix] = []
    for g in offspring:
        a = np.array(g.to_list())
        best = max(range(len(gens[0])), key=lambda j: int((np.array(arrays[0][j]) == a).sum()))
        if gens[0][best] not in parents:
            parents.append(gens[0][best])
    out: dict = {"zoo": args.zoo, "limit": args.limit, "configurations": len(parents) + len(offspring),
                 "torch_threads": torch.get_num_threads()}
    for name, prefix_bytes in (("prefix_cache", args.prefix_mb * 2**20), ("no_prefix_cache", 0)):
        p = first if prefix_bytes else problem(0)
        before = load()
        wall, cpu = time.perf_counter(), time.process_time()
        evaluations = p.evaluate(parents) + p.evaluate(offspring)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        out[name] = {"load_before": before, "load_after": load(), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                     "wall_per_evaluation_s": round(wall / len(evaluations), 2),
                     **p.counters.cost_record(), "prefix_peak_mb": round(p.prefix_cache.peak_bytes / 2**20, 1),
                     "performance": [e.performance for e in evaluations]}
        print(name, json.dumps(out[name]), flush=True)
    out["same_performance"] = out["prefix_cache"]["performance"] == out["no_prefix_cache"]["performance"]
    return out


def replay(args: argparse.Namespace) -> dict:
    zoo = ZooStore.default().load(args.zoo)
    from modmerge.zoo.taskpool import TaskPool

    pool = TaskPool(zoo, split="validation", limit=args.limit)
    staged = pool.staged(zoo.tasks[0])
    if staged is None:
        raise SystemExit(f"zoo {args.zoo}: its body has no stage split")
    hidden = int(pool._body(zoo.entry(zoo.tasks[0]).modality).config.hidden_size)
    entry_bytes = [
        sum(len(idx) * next(iter(b.values())).shape[1] * hidden * 4 for idx, b in
            eval_batches(pool.inputs(t, "validation"), pool.batch_size(zoo.entry(t))))
        for t in zoo.tasks
    ]
    units = zoo.component_map().units("component", exclude_kinds=("head",))
    unit_ids = list(units)
    first = [min(staged.stage_of(k) for k in keys) for keys in units.values()]
    n_tasks, n_layers = len(zoo.tasks), staged.n_layers
    gens = proxy_generations(n_tasks, len(unit_ids), args.budget)

    def run(max_bytes: int) -> dict:
        cache, results, layers, runs = PrefixCache(max_bytes), set(), 0, 0
        for gen in gens:
            todo = {(t, chain(g, t, unit_ids)) for g in gen for t in range(n_tasks)} - results
            for t, ch in sorted(todo, key=lambda k: (k[0], tuple(sorted(zip(first, range(len(first)), k[1], strict=True))))):
                results.add((t, ch))
                runs += 1
                keys = prefix_keys(t, ch, first, n_layers)
                done, _ = cache.longest(keys) if cache.enabled else (-1, None)
                layers += n_layers - (done + 1)
                for k in range(done + 1, n_layers) if cache.enabled else ():
                    if keys[k][1] != ch:
                        cache.put(keys[k], [torch.empty(entry_bytes[t] // 4, device="meta")])
        naive = sum(len(g) for g in gens) * n_tasks * n_layers
        return {"task_runs": runs, "layer_forwards": layers, "layer_forwards_naive": naive,
                "saved_vs_naive": round(1 - layers / naive, 3), "saved_vs_chain_cache": round(1 - layers / (runs * n_layers), 3)}

    out = {"zoo": args.zoo, "budget": args.budget, "entry_mb_per_task_layer": [round(b / 2**20, 1) for b in entry_bytes]}
    for mb in (0, 256, 512, 2048, 10**7):
        out[f"{mb}MB" if mb < 10**7 else "unbounded"] = run(mb * 2**20)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["measure", "replay"])
    parser.add_argument("--zoo", default="text")
    parser.add_argument("--method", default="task_arithmetic")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--offspring", type=int, default=4)
    parser.add_argument("--prefix-mb", type=int, default=512)
    parser.add_argument("--budget", type=int, default=300)
    args = parser.parse_args()
    result = measure(args) if args.mode == "measure" else replay(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
