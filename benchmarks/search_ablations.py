"""Hypervolume and storage figures of search run directories side by side (the ablation table).

Reads every ``RUN_DIR/run<i>/state.json`` that has spent its budget (finished runs only, so a
set still running can be tabled), and prints per directory: runs, hypervolume at the budget and
after <= ``--at`` evaluations (mean ± std), least storage and best validation P over the runs.

    .venv/bin/python benchmarks/search_ablations.py runs/vision-ta5 runs/vision-ta5-nosurr \\
        runs/vision-ta5-randinit runs/vision-ta5-layer runs/vision-ta5-model
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


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
    print(f"| run dir | finished runs | HV @budget | HV @{args.at} | least C | best val P |")
    print("|---|---|---|---|---|---|")
    for run_dir in args.run_dirs:
        states = finished_runs(run_dir)
        if not states:
            print(f"| {run_dir} | 0 | - | - | - | - |")
            continue
        records = [r for s in states for r in s["records"]]
        print(f"| {run_dir} | {len(states)} | {mean_std([s['history'][-1]['hypervolume'] for s in states])} | "
              f"{mean_std([hv_after(s, args.at) for s in states], 3)} | "
              f"{min(r['storage_cost'] for r in records):.3f} | {max(r['performance'] for r in records):.3f} |")


if __name__ == "__main__":
    main()
