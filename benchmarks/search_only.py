"""The searches of a zoo recipe's runs without their test phase (for hypervolume ablations).

A hypervolume ablation reads only each run's ``state.json``, and the test phase is ~40% of a
search's time. This runs ``recipe.runs`` seeded searches exactly as ``modmerge search`` does
(same problem, seeds ``seed + i``, state in ``OUT/run<i>/state.json``) and stops there; then

    .venv/bin/python benchmarks/search_ablations.py runs/vision-ta5 runs/vision-ta5-mixedinit

tables them. ``modmerge search RECIPE --out OUT --resume`` later adds the test metrics and the
outputs (summary, plot) without searching again.

    .venv/bin/python benchmarks/search_only.py benchmarks/search/vision-ta5-mixedinit.yaml \\
        --out runs/vision-ta5-mixedinit
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

from modmerge.search.driver import run_one, source_problem
from modmerge.search.recipe import check_resume, load_search_recipe, save_recipe
from modmerge.zoo.store import ZooStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=None, help="override the recipe's runs")
    parser.add_argument("--resume", action="store_true", help="continue the runs saved in --out")
    args = parser.parse_args()
    recipe = load_search_recipe(args.recipe, {"runs": args.runs} if args.runs else None)
    if recipe.source.zoo is None:
        parser.error("a zoo recipe is needed (zoo: NAME)")
    check_resume(recipe, args.out, args.resume)
    zoo = ZooStore.default().load(recipe.source.zoo)
    save_recipe(recipe, args.out)
    for i in range(recipe.runs):
        started = time.perf_counter()
        problem_for = functools.partial(source_problem, recipe, zoo)
        problem = problem_for(recipe.seed + i)
        state = run_one(recipe, problem, problem_for, args.out / f"run{i}", recipe.seed + i, resume=args.resume)
        last = state.history[-1]
        print(f"run {i} (seed {recipe.seed + i}): {last.evaluations} evaluations, HV {last.hypervolume:.4f}, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        del problem, state


if __name__ == "__main__":
    main()
