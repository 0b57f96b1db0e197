"""G1/G2/G3 (Table I) over the finished runs of search run directories, while a set still runs.

``modmerge search`` writes ``summary.md`` once every run of a recipe is done. This script reads
what each finished run keeps (``run<i>/state.json`` at its budget and ``run<i>/test_metrics.json``
with every Pareto solution measured) and the bars of the directory's ``pareto.json`` (G1: F on the
whole model, G2: the best baseline, both validation P), and prints per directory the storage
cost and test mean (x100) of G1, G2 and G3: mean ± std over the finished runs.

    .venv/bin/python benchmarks/search_representatives.py runs/text-tm-bf16 runs/text-ta-bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from modmerge.experts.grouping import GroupingMatrix
from modmerge.search.representatives import select_representatives
from modmerge.search.state import load_state


def mean_std(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def finished(run_dir: Path) -> list[tuple[int, list, dict]]:
    """(run index, Pareto set, test mean by grouping) of every run with its budget spent and its
    whole Pareto set measured on test."""
    out = []
    for path in sorted(run_dir.glob("run*/state.json"), key=lambda p: int(p.parent.name[3:])):
        state = load_state(path)
        tests_path = path.parent / "test_metrics.json"
        if not state.history or state.history[-1].evaluations < state.config.budget or not tests_path.is_file():
            continue
        tests = {GroupingMatrix.from_array(e["grouping"]): statistics.mean(e["test"].values())
                 for e in json.loads(tests_path.read_text())["solutions"]}
        pareto = state.pareto()
        if all(r.grouping in tests for r in pareto):
            out.append((int(path.parent.name[3:]), pareto, tests))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run dir | finished runs | G1 C | G1 test | G2 C | G2 test | G3 C | G3 test |")
    print("|---|---|---|---|---|---|---|---|")
    for run_dir in args.run_dirs:
        bars = json.loads((run_dir / "pareto.json").read_text())["bars"]
        runs = finished(run_dir)
        cells = []
        for name in ("g1", "g2", "g3"):
            picked = [(getattr(select_representatives(
                pareto, base_performance=bars["base_method_validation"],
                best_baseline_performance=bars["best_baseline_validation"]), name), tests) for _, pareto, tests in runs]
            picked = [(r, tests) for r, tests in picked if r is not None]
            cells += [mean_std([r.storage_cost for r, _ in picked], 3),
                      mean_std([100 * tests[r.grouping] for r, tests in picked], 1)]
        print(f"| {run_dir} | {len(runs)} ({', '.join(str(i) for i, _, _ in runs)}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
