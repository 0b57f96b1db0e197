"""Hypervolume and storage figures of search run directories side by side (the ablation table).

Reads every ``RUN_DIR/run<i>/state.json`` that has spent its budget (finished runs only, so a
set still running can be tabled), and prints per directory: runs, hypervolume at the budget,
after <= ``--at`` evaluations and of the initial population (mean ± std), the initial
population's diversity, least storage and best validation P over the runs.

Diversity of a population: the mean, over pairs of its grouping matrices, of the share of
(unit, task pair) entries where one merges the two tasks and the other does not (0: all equal;
it does not depend on how groups are numbered).

    .venv/bin/python benchmarks/search_ablations.py runs/vision-ta5 runs/vision-ta5-nosurr \\
        runs/vision-ta5-randinit runs/vision-ta5-layer runs/vision-ta5-model
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import numpy as np


def finished_runs(run_dir: Path) -> list[dict]:
    """The states of ``run_dir``'s runs whose history reached the configured budget."""
    states = []
    for path in sorted(run_dir.glob("run*/state.json"), key=lambda p: int(p.parent.name[3:])):
        state = json.loads(path.read_text())
        if state["history"] and state["history"][-1]["evaluations"] >= state["config"]["budget"]:
            states.append(state)
    return states


def hv_after(state: dict, evaluations: int) -> float:
    """Hypervolume after the last generation that had used at most ``evaluations``."""
    return max((h["hypervolume"] for h in state["history"] if h["evaluations"] <= evaluations), default=0.0)


def diversity(groupings: list[list[list[int]]]) -> float:
    """Mean pairwise share of (unit, task pair) co-membership disagreements (see the module doc)."""
    together = []
    for g in groupings:
        a = np.asarray(g)  # T x L
        upper = np.triu_indices(a.shape[0], 1)
        together.append((a[:, None, :] == a[None, :, :])[upper])
    return float(np.mean([np.mean(x != y) for x, y in itertools.combinations(together, 2)])) if len(together) > 1 else 0.0


def initial(state: dict) -> list[dict]:
    """The records of the initial population (generation 0)."""
    return [r for r in state["records"] if r["generation"] == 0]


def mean_std(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--at", type=int, default=100, help="also report the hypervolume after this many evaluations")
    args = parser.parse_args()
    print(f"| run dir | finished runs | HV @budget | HV @{args.at} | HV initial | initial diversity | least C | best val P |")
    print("|---|---|---|---|---|---|---|---|")
    for run_dir in args.run_dirs:
        states = finished_runs(run_dir)
        if not states:
            print(f"| {run_dir} | 0 | - | - | - | - | - | - |")
            continue
        records = [r for s in states for r in s["records"]]
        print(f"| {run_dir} | {len(states)} | {mean_std([s['history'][-1]['hypervolume'] for s in states])} | "
              f"{mean_std([hv_after(s, args.at) for s in states], 3)} | "
              f"{mean_std([s['history'][0]['hypervolume'] for s in states], 3)} | "
              f"{mean_std([diversity([r['grouping'] for r in initial(s)]) for s in states], 3)} | "
              f"{min(r['storage_cost'] for r in records):.3f} | {max(r['performance'] for r in records):.3f} |")


if __name__ == "__main__":
    main()
