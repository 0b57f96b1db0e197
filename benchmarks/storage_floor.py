"""The storage floor of a MERGE search: C (eq. 8) of the configuration that merges every task
into one group in every unit (the least storage any grouping reaches with that F), unit by unit,
for each quantisation setting given. It shows which units conditional quantisation keeps at full
precision (their merged range exceeds the mean range of the group's sources), so whether a
G1 storage goal is reachable at all.

    .venv/bin/python benchmarks/storage_floor.py text --method ties \
        --parameters '{"scope": "model", "density": 0.275, "scaling": 0.8}' --granularity tensor channel

Prints one row per unit kind (embeddings, attention, MLP, norms...) with its share of the body's
parameters and its cost in each setting, then the total C of the all-merged configuration.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from modmerge.experts.grouping import GroupingMatrix
from modmerge.objectives.performance import modules_of
from modmerge.objectives.problem import MergeProblem
from modmerge.quantization import QuantConfig
from modmerge.recipes.plan import MethodCall
from modmerge.zoo.store import ZooStore


def unit_kind(unit: str) -> str:
    """``layer3.attention`` -> ``attention``; ``embeddings`` stays."""
    return unit.split(".", 1)[1] if "." in unit else unit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo")
    parser.add_argument("--method", default="task_arithmetic")
    parser.add_argument("--parameters", default="{}", help="JSON of F's parameters")
    parser.add_argument("--granularity", nargs="+", default=["tensor", "channel"], help="quantisation units")
    parser.add_argument("--mode", default="conditional")
    args = parser.parse_args()
    zoo = ZooStore.default().load(args.zoo)
    call = MethodCall.build(args.method, json.loads(args.parameters))
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    shares: dict[str, float] = defaultdict(float)
    totals = {}
    for granularity in args.granularity:
        problem = MergeProblem.from_source(zoo, call, QuantConfig(granularity=granularity, mode=args.mode), limit=1,
                                  prefix_cache_bytes=0)
        g = GroupingMatrix.all_merged(problem.n_tasks, problem.n_units)
        totals[granularity] = problem.storage_cost(g)
        modules = {m.unit: m for m in modules_of(g, problem.unit_ids)}
        for unit, keys in problem.units.items():
            kind = unit_kind(unit)
            rows[kind][granularity] = rows[kind].get(granularity, 0.0) + problem.module_cost(modules[unit])
            if granularity == args.granularity[0]:
                shares[kind] += sum(problem.pretrained[k].numel() for k in keys) / problem.body_parameters
    print(f"zoo {args.zoo}: F = {args.method} {json.loads(args.parameters)}, quantisation {args.mode}, "
          f"all {len(zoo.tasks)} tasks merged in every unit (C of one full-precision body = 1.0)")
    print("| unit kind | share of body | " + " | ".join(f"C ({g})" for g in args.granularity) + " |")
    print("|---|---|" + "---|" * len(args.granularity))
    for kind, costs in rows.items():
        print(f"| {kind} | {shares[kind]:.3f} | " + " | ".join(f"{costs[g]:.3f}" for g in args.granularity) + " |")
    print("| **total** | 1.000 | " + " | ".join(f"**{totals[g]:.3f}**" for g in args.granularity) + " |")


if __name__ == "__main__":
    main()
