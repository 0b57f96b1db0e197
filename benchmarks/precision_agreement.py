"""How far a lower-precision search's objective is from float32: the Pareto set of a run searched
with ``precision: bfloat16`` (or float16), evaluated again on the same validation subset at
float32, configuration by configuration.

    .venv/bin/python benchmarks/precision_agreement.py runs/text-tm-bf16 --run 0 \
        --recipe benchmarks/search/text-tm-bf16.yaml   # default: RUN_DIR/search_recipe.json

Prints, per Pareto configuration, C, P at the search's precision and at float32, then the mean
and largest absolute difference, the rank correlation, and whether the set is still
non-dominated at float32. The float32 evaluations reuse the search's caches (chains, prefixes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from modmerge.search.driver import source_problem
from modmerge.search.pareto import non_dominated
from modmerge.search.recipe import SearchRecipe, load_search_recipe
from modmerge.search.state import load_state
from modmerge.zoo.store import ZooStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--run", type=int, default=0)
    parser.add_argument("--recipe", type=Path, default=None, help="the search's recipe (default: the run's saved one)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.recipe is not None:
        recipe = load_search_recipe(args.recipe)
    else:
        recipe = SearchRecipe.model_validate(json.loads((args.run_dir / "search_recipe.json").read_text()))
    state = load_state(args.run_dir / f"run{args.run}" / "state.json")
    pareto = state.pareto()
    zoo = ZooStore.default().load(recipe.source.zoo)
    problem = source_problem(recipe.model_copy(update={"precision": "float32"}), zoo, seed=recipe.seed + args.run)
    exact = problem.evaluate([r.grouping for r in pareto])
    print(f"{args.run_dir} run {args.run}: {len(pareto)} Pareto configurations, searched at {recipe.source.precision}, "
          f"{recipe.source.validation_limit} validation examples per task")
    print(f"| C | P ({recipe.source.precision}) | P (float32) | difference |")
    print("|---|---|---|---|")
    low = np.array([r.performance for r in pareto])
    full = np.array([e.performance for e in exact])
    for r, p in zip(pareto, full, strict=True):
        print(f"| {r.storage_cost:.3f} | {100 * r.performance:.2f} | {100 * p:.2f} | {100 * (p - r.performance):+.2f} |")
    diff = np.abs(full - low)
    rho = spearmanr(low, full).statistic
    front = non_dominated(np.stack([[r.storage_cost for r in pareto], -full], axis=1))
    print(f"mean |difference| {100 * diff.mean():.2f} points, largest {100 * diff.max():.2f}; Spearman rank "
          f"correlation {rho:.3f}; {len(front)} of {len(pareto)} stay non-dominated at float32")


if __name__ == "__main__":
    main()
