"""A zoo run as a plain task suite gives the zoo's figures, at the zoo's cost.

The zoo's suite file (``modmerge zoo build`` writes it) is copied with everything it names (the
pretrained directory, each task's body and head, the JSONL splits) into a stand-alone suite
directory that shares no file with the zoo. Then, in fresh processes, ``modmerge baselines``
and ``modmerge search`` run once on ``zoo: NAME`` and once on ``suite: DIR/suite.yaml`` with the
same settings and seed. Printed: the largest difference between the two baselines tables and
between the two Pareto sets (groupings, C, validation and test P; goal: 0), and each run's wall
time and peak RSS side by side (goal: the suite within noise of the zoo; ``--repeats`` runs the
pair more than once, alternating, to show the noise).

    .venv/bin/python benchmarks/suite_vs_zoo.py --zoo text --out /tmp/suite-vs-zoo
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from modmerge.zoo.store import ZooStore
from modmerge.zoo.suite_export import write_suite

CHILD = (
    "import resource, runpy, sys\n"
    "sys.argv = ['modmerge', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('modmerge', run_name='__main__')\n"
    "finally:\n"
    "    print('MAXRSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def plain_suite(zoo_name: str, out: Path) -> Path:
    """Copy the zoo's suite and every file it names into ``out``; returns the new suite file."""
    zoo = ZooStore.default().load(zoo_name)
    source = zoo.root / "suite" / "suite.yaml"
    if not source.is_file():
        source = write_suite(zoo)
    suite = yaml.safe_load(source.read_text())
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    def copy(relative: str, into: str) -> str:
        src = (source.parent / relative).resolve()
        dst = out / into
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        return into

    suite["pretrained"] = copy(suite["pretrained"], "models/pretrained")
    for task, entry in suite["tasks"].items():
        entry["model"] = copy(entry["model"], f"models/{task}")
        if "head" in entry:
            entry["head"] = copy(entry["head"], f"models/{task}-head.safetensors")
        entry["data"] = {split: copy(path, f"data/{task}/{split}.jsonl") for split, path in entry["data"].items()}
    suite["description"] = f"the '{zoo_name}' zoo exported as a plain suite directory"
    (out / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    return out / "suite.yaml"


def run(args: list[str], log: Path) -> tuple[float, float]:
    """``modmerge ARGS`` in a fresh process: (wall seconds, peak RSS in MiB)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - started
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"modmerge {' '.join(args)} failed (exit {done.returncode}); see {log}")
    rss = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("MAXRSS_KIB"))
    return wall, rss / 1024


def baselines_diff(a: Path, b: Path) -> tuple[int, float]:
    rows_a = {r["name"]: r for r in json.loads(a.read_text())["methods"]}
    rows_b = {r["name"]: r for r in json.loads(b.read_text())["methods"]}
    if rows_a.keys() != rows_b.keys():
        return len(rows_a), float("inf")
    worst = 0.0
    for name, row in rows_a.items():
        for field in ("validation_mean", "test_mean", "storage_cost"):
            x, y = row.get(field), rows_b[name].get(field)
            if (x is None) != (y is None):
                return len(rows_a), float("inf")
            if x is not None:
                worst = max(worst, abs(float(x) - float(y)))
    return len(rows_a), worst


def pareto_diff(a: Path, b: Path) -> tuple[int, bool, float]:
    """(solutions, same groupings in the same order, largest |difference| of C and P)."""
    sols_a = [s for r in json.loads(a.read_text())["runs"] for s in r["solutions"]]
    sols_b = [s for r in json.loads(b.read_text())["runs"] for s in r["solutions"]]
    same = [s["grouping"] for s in sols_a] == [s["grouping"] for s in sols_b]
    worst = 0.0
    if same:
        for x, y in zip(sols_a, sols_b, strict=True):
            worst = max(worst, abs(x["storage_cost"] - y["storage_cost"]),
                        abs(x["validation"]["mean"] - y["validation"]["mean"]),
                        abs((x["test"] or {}).get("mean", 0.0) - (y["test"] or {}).get("mean", 0.0)))
    return len(sols_a), same, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="text")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", default="Weight Averaging,Task Arithmetic,TIES,RegMean")
    parser.add_argument("--points", type=int, default=3, help="grid points per tuned baseline parameter")
    parser.add_argument("--val-limit", type=int, default=100)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--method", default="task_arithmetic")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    suite = plain_suite(args.zoo, out / "suite")
    print(f"plain suite: {suite} (no file shared with the zoo)", flush=True)
    inputs = {"zoo": args.zoo, "suite": str(suite)}
    timings: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for rep in range(args.repeats):
        for kind, name in inputs.items():
            base_dir = out / f"{kind}-baselines"
            shutil.rmtree(base_dir, ignore_errors=True)
            timings.setdefault(("baselines", kind), []).append(run(
                ["baselines", name, "--out", str(base_dir), "--methods", args.methods, "--val-limit",
                 str(args.val_limit), "--test-limit", str(args.test_limit), "--points", str(args.points)], out / f"{kind}-baselines.log"))
            recipe = out / f"{kind}-search.yaml"
            recipe.write_text(yaml.safe_dump({
                kind: name, "method": args.method, "budget": args.budget, "population": args.population,
                "validation_limit": args.val_limit, "test_limit": args.test_limit, "seed": 0,
                "baselines": str(base_dir / "baselines.json")}))
            timings.setdefault(("search", kind), []).append(run(
                ["search", str(recipe), "--out", str(out / f"{kind}-search"), "--overwrite"],
                out / f"{kind}-search.log"))
            print(f"repeat {rep} {kind}: done", flush=True)
    rows, worst = baselines_diff(out / "zoo-baselines" / "baselines.json", out / "suite-baselines" / "baselines.json")
    print(f"\nbaselines: {rows} rows; largest |zoo - suite| of validation P, test P and C: {worst:.3g} (goal 0)")
    n, same, worst = pareto_diff(out / "zoo-search" / "pareto.json", out / "suite-search" / "pareto.json")
    print(f"search (seed 0, budget {args.budget}): {n} Pareto solutions; same groupings in the same order: {same}; "
          f"largest |zoo - suite| of C, validation P and test P: {worst:.3g} (goal 0)")
    print("\n| command | input | wall s (each repeat) | peak RSS MiB (each repeat) |\n|---|---|---|---|")
    for (command, kind), values in timings.items():
        print(f"| {command} | {kind} | {', '.join(f'{w:.1f}' for w, _ in values)} | "
              f"{', '.join(f'{r:.0f}' for _, r in values)} |")
    for command in ("baselines", "search"):
        zoo_w = min(w for w, _ in timings[(command, "zoo")])
        suite_w = min(w for w, _ in timings[(command, "suite")])
        zoo_r = max(r for _, r in timings[(command, "zoo")])
        suite_r = max(r for _, r in timings[(command, "suite")])
        print(f"{command}: suite / zoo wall {suite_w / zoo_w:.2f} (best of repeats), peak RSS {suite_r / zoo_r:.2f} "
              "(goal: within noise, about 1.00 +- 0.10)")


if __name__ == "__main__":
    main()
