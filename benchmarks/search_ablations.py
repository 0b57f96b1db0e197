"""Hypervolume and storage figures of search run directories side by side (the ablation table).

Reads every ``RUN_DIR/run<i>/state.json`` that has spent its budget (finished runs only, so a
set still running can be tabled), and prints per directory: runs, hypervolume at the budget,
after <= ``--at`` evaluations and of the initial population (mean ± std), the initial
population's diversity, least storage and best validation P over the runs.

Diversity of a population: the mean, over pairs of its grouping matrices, of the share of
(unit, task pair) entries where one merges the two tasks and the other does not (0: all equal;
it does not depend on how groups are numbered).

``--plot FILE.png`` also draws each directory's hypervolume against real evaluations (mean over
its finished runs, with a band of ± one sample std). ``--by-seed`` prints each run's hypervolume at the
budget by seed, for paired comparisons of sets with few runs.

    .venv/bin/python benchmarks/search_ablations.py runs/vision-ta5 runs/vision-ta5-nosurr \\
        runs/vision-ta5-randinit runs/vision-ta5-layer runs/vision-ta5-model --plot runs/vision-hv.png
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
    if len(values) == 1:  # no spread to show from one run
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def print_by_seed(sets: dict[Path, list[dict]]) -> None:
    """HV at the budget per directory and seed: variants run with the same seed share their
    random stream up to where they differ, so same-seed differences are the paired ones."""
    by_dir = {d: {s["config"]["seed"]: s["history"][-1]["hypervolume"] for s in states} for d, states in sets.items()}
    seeds = sorted({seed for hv in by_dir.values() for seed in hv})
    print("\n| run dir | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|" + "---|" * len(seeds))
    for d, hv in by_dir.items():
        print(f"| {d} | " + " | ".join(f"{hv[s]:.4f}" if s in hv else "-" for s in seeds) + " |")


def plot_curves(sets: dict[Path, list[dict]], path: Path) -> None:
    """Hypervolume against real evaluations per directory: mean over finished runs ± sample std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run_dir, states in sets.items():
        if not states:
            continue
        grid = sorted({h["evaluations"] for s in states for h in s["history"]})
        curves = np.array([[hv_after(s, e) for e in grid] for s in states])
        mean = curves.mean(0)
        std = curves.std(0, ddof=1) if len(states) > 1 else np.zeros_like(mean)
        ax.plot(grid, mean, label=f"{run_dir.name} ({len(states)} run{'s' if len(states) > 1 else ''})")
        ax.fill_between(grid, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("real evaluations")
    ax.set_ylabel("hypervolume")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--at", type=int, default=100, help="also report the hypervolume after this many evaluations")
    parser.add_argument("--plot", type=Path, default=None, help="also draw hypervolume against evaluations here (.png)")
    parser.add_argument("--by-seed", action="store_true",
                        help="also print each finished run's hypervolume at the budget by seed (paired comparisons)")
    args = parser.parse_args()
    print(f"| run dir | finished runs | HV @budget | HV @{args.at} | HV initial | initial diversity | least C | best val P |")
    print("|---|---|---|---|---|---|---|---|")
    sets = {run_dir: finished_runs(run_dir) for run_dir in args.run_dirs}  # each state file read once
    for run_dir, states in sets.items():
        if not states:
            print(f"| {run_dir} | 0 | - | - | - | - | - | - |")
            continue
        records = [r for s in states for r in s["records"]]
        print(f"| {run_dir} | {len(states)} | {mean_std([s['history'][-1]['hypervolume'] for s in states])} | "
              f"{mean_std([hv_after(s, args.at) for s in states], 3)} | "
              f"{mean_std([s['history'][0]['hypervolume'] for s in states], 3)} | "
              f"{mean_std([diversity([r['grouping'] for r in initial(s)]) for s in states], 3)} | "
              f"{min(r['storage_cost'] for r in records):.3f} | {max(r['performance'] for r in records):.3f} |")
    if args.by_seed:
        print_by_seed(sets)
    if args.plot is not None:
        plot_curves(sets, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
