"""The first pipeline stages' commands: ``merge``, ``inspect``, ``methods``, ``zoo``, ``suite``,
``baselines`` and ``search``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from modmerge.atomic import write_json
from modmerge.cli.common import CACHE_OPTION, err_console, friendly, main, task_progress
from modmerge.errors import ModmergeError

if TYPE_CHECKING:
    from modmerge.objectives.performance import EvaluationCounters
    from modmerge.search.state import GenerationRecord
    from modmerge.zoo.store import ZooStore

def _methods_epilog() -> str:
    from modmerge.merging import REGISTRY, get_method

    get_method("task_arithmetic")  # imports every method module
    return "\b\nMerge methods:\n" + "\n".join(f"  {m.name}: {m.summary}" for m in REGISTRY)


@main.command(epilog=_methods_epilog())
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--allow-pickle", is_flag=True, help="Allow .bin/.pt pickle checkpoints (loaded with weights_only=True).")
@click.option("--overwrite", is_flag=True,
              help="Replace OUT_DIR if an earlier `modmerge merge` wrote it (its modmerge.json says so); the new "
                   "model is swapped in only when complete. Any other directory is refused.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR whatever it holds, even if no merge wrote it "
                                            "(implies --overwrite).")
@click.option("--device", default="cpu", show_default=True, help="Where merge arithmetic runs: cpu, cuda, cuda:1, mps.")
@click.option("--dry-run", is_flag=True, help="Validate the recipe and checkpoints, print the plan, write nothing.")
@click.option("--stats-json", type=click.Path(dir_okay=False, path_type=Path), help="Also write timing and byte counts as JSON.")
@click.option("--body-only", is_flag=True,
              help="With task models that carry heads: write the merged body alone (with the base's pooler) "
                   "instead of one model per task.")
@friendly
def merge(
    recipe: Path, out_dir: Path, allow_pickle: bool, overwrite: bool, force: bool, device: str, dry_run: bool,
    stats_json: Path | None, body_only: bool,
) -> None:
    """Merge the models of RECIPE (YAML) into a Hugging Face model directory OUT_DIR.

    Task models saved with their heads (AutoModelFor...Classification directories) over a bare
    pretrained base are merged body only, the classifier and the pooler staying each task's own:
    OUT_DIR then holds one loadable model per task, OUT_DIR/<model folder name>/ (the merged body
    with that task's head, in its own format), or with --body-only the merged body alone.

    OUT_DIR also gets modmerge.json, which marks it as a merge's output: only such a directory is
    replaced by --overwrite; --force replaces any directory."""
    from modmerge.recipes import load_recipe, run_recipe
    from modmerge.recipes.inspect import describe_plan

    parsed = load_recipe(recipe)
    if dry_run:
        Console().print(describe_plan(parsed, allow_pickle=allow_pickle))
        return
    with _progress() as bar:
        task = bar.add_task("merging", total=None)

        def advance(key: str, nbytes: int) -> None:
            bar.update(task, advance=1, description=f"merging {key[-48:]}")

        result = run_recipe(
            parsed,
            out_dir,
            allow_pickle=allow_pickle,
            overwrite=overwrite,
            force=force,
            device=device,
            progress=advance,
            on_total=lambda n: bar.update(task, total=n),
            body_only=body_only,
        )
    if stats_json is not None:
        write_json(stats_json, result.to_json())
    methods = ", ".join(f"{name} x{count}" for name, count in sorted(result.methods.items()))
    if result.task_models:
        methods += f"; one model per task: {', '.join(result.task_models)}"
    click.echo(
        f"wrote {result.out_dir} ({result.tensors} tensors, {result.bytes_written / 2**20:.1f} MiB) "
        f"in {result.seconds:.2f} s; read {result.bytes_read / 2**20:.1f} MiB; methods: {methods}"
    )


@main.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--architecture", default=None, help="Built-in architecture name or a YAML file (default: detect).")
@click.option("--granularity", type=click.Choice(["model", "layer", "component"]), default="component", show_default=True)
@click.option("--allow-pickle", is_flag=True, help="Allow .bin/.pt pickle checkpoints.")
@friendly
def inspect(model: str, as_json: bool, architecture: str | None, granularity: str, allow_pickle: bool) -> None:
    """Print MODEL's component table: component, kind, layer, parameters, tensors."""
    from modmerge.recipes.inspect import inspect_model

    rows, unmatched, arch = inspect_model(model, architecture=architecture, granularity=granularity, allow_pickle=allow_pickle)
    if as_json:
        click.echo(json.dumps({"architecture": arch, "granularity": granularity, "components": rows, "unmatched": unmatched}, indent=2))
        return
    table = Table(title=f"{model} ({arch}, granularity {granularity})")
    for col in ("component", "kind", "layer", "parameters", "tensors"):
        table.add_column(col, justify="right" if col in ("layer", "parameters", "tensors") else "left")
    for r in rows:
        table.add_row(r["component"], r["kind"], str(r["layer"]), f"{r['parameters']:,}", str(r["tensors"]))
    total = sum(r["parameters"] for r in rows)
    table.add_section()
    table.add_row("total", "", "", f"{total:,}", str(sum(r["tensors"] for r in rows)))
    Console().print(table)
    if unmatched:
        err_console.print(f"[yellow]{len(unmatched)} parameter(s) matched no rule (kind 'other'): {', '.join(unmatched[:5])}")


@main.command()
@click.argument("name", required=False)
def methods(name: str | None) -> None:
    """List merge methods, or show one method's parameters."""
    from modmerge.merging import REGISTRY, get_method

    try:
        chosen = [get_method(name)] if name else list(REGISTRY)
    except ModmergeError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    click.echo("\n\n".join(m.help_text() for m in chosen))


@main.group()
def zoo() -> None:
    """Benchmark zoos: a pretrained backbone, T fine-tuned task models, fixed splits."""


def _store(cache: Path | None) -> ZooStore:
    from modmerge.zoo.store import ZooStore

    return ZooStore(cache) if cache else ZooStore.default()


@zoo.command("build")
@click.argument("name")
@CACHE_OPTION
@click.option("--seed", default=0, show_default=True, help="Seed for splits, initialisation and training.")
@friendly
def zoo_build(name: str, cache: Path | None, seed: int) -> None:
    """Build zoo NAME (resumable: tasks already built are skipped)."""
    from modmerge.zoo.registry import build_zoo

    store = _store(cache)
    with task_progress() as bar:
        built = build_zoo(name, store, seed=seed, progress=bar)
    rows = [(t.name, t.metrics.get("individual_test"), t.metrics.get("pretrained_test")) for t in built.manifest.tasks]
    table = Table(title=f"zoo '{name}' at {built.root} (built in {built.manifest.build_seconds:.0f} s)")
    for col in ("task", "individual (test)", "pretrained + head (test)"):
        table.add_column(col)
    for task, ind, pre in rows:
        table.add_row(task, f"{ind:.3f}" if ind is not None else "-", f"{pre:.3f}" if pre is not None else "-")
    Console().print(table)
    if built.manifest.backbone.self_pretrained:
        click.echo(f"note: the backbone ({built.manifest.backbone.name}) was pretrained inside this project.")
    if (built.root / "suite" / "suite.yaml").is_file():
        click.echo(f"as a task suite: {built.root / 'suite' / 'suite.yaml'} (every command that takes a zoo takes it)")


@zoo.command("list")
@CACHE_OPTION
@friendly
def zoo_list(cache: Path | None) -> None:
    """List the zoos modmerge can build and which are built."""
    from modmerge.zoo.registry import list_zoos

    store = _store(cache)
    table = Table(title=f"zoos under {store.root}")
    for col in ("name", "built", "tasks", "backbone", "size", "description"):
        table.add_column(col, justify="right" if col in ("tasks", "size") else "left")
    for row in list_zoos(store):
        size = f"{row.size_bytes / 2**20:.1f} MiB" if row.size_bytes else "-"
        table.add_row(row.name, "yes" if row.built else "no", str(row.tasks) if row.built else "-",
                      row.backbone or "-", size, row.description)
    Console().print(table)


@main.group()
def suite() -> None:
    """Task suites: your pretrained model, fine-tuned task models and their data files."""


@suite.command("check")
@click.argument("suite_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--allow-pickle", is_flag=True, help="Allow .bin/.pt pickle checkpoints (loaded with weights_only=True).")
@friendly
def suite_check(suite_file: Path, allow_pickle: bool) -> None:
    """Validate SUITE_FILE before any work: models open and share the pretrained architecture,
    heads fit their labels, data files parse, named fields exist, labels fit the heads."""
    from modmerge.tasks.check import check_suite

    rows = check_suite(suite_file, allow_pickle=allow_pickle)
    table = Table(title=f"{suite_file}: {len(rows)} tasks ok")
    for col in ("task", "modality", "metric", "labels", "pooling", "splits"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["task"], r["modality"], r["metric"], str(r["labels"]), r["pooling"],
                      ", ".join(f"{k} {v}" for k, v in r["splits"].items()))
    Console().print(table)


def _rows_epilog() -> str:
    from modmerge.objectives.baseline_rows import rows_epilog

    return rows_epilog()


@main.command(epilog=_rows_epilog())
@click.argument("source_name", metavar="SUITE_OR_ZOO")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@CACHE_OPTION
@click.option("--methods", default=None, help="Comma-separated subset of table rows, e.g. 'Individual,TIES' (rows below).")
@click.option("--val-limit", default=200, show_default=True, help="Validation examples per task for tuning.")
@click.option("--test-limit", default=None, type=int, help="Test examples per task (default: all).")
@click.option("--points", default=None, type=int, help="Grid points per tuned parameter (default: per method).")
@click.option("--seed", default=0, show_default=True)
@click.option("--adapt-split", type=click.Choice(["validation", "test"]), default="validation", show_default=True,
              help="AdaMerging rows: whose unlabeled inputs the coefficients are learned on (the first --val-limit / "
                   "--test-limit of the split); 'test' is the paper's test-time adaptation.")
@click.option("--adapt-steps", default=500, show_default=True, help="AdaMerging rows: Adam steps (paper: 500).")
@click.option("--adapt-lr", default=1e-3, show_default=True, help="AdaMerging rows: Adam learning rate.")
@click.option("--adapt-batch-size", default=16, show_default=True,
              help="AdaMerging rows: unlabeled inputs per task per step.")
@friendly
def baselines(
    source_name: str, out_dir: Path, cache: Path | None, methods: str | None, val_limit: int,
    test_limit: int | None, points: int | None, seed: int, adapt_split: str, adapt_steps: int, adapt_lr: float,
    adapt_batch_size: int,
) -> None:
    """Evaluate every baseline row on SUITE_OR_ZOO (a task suite file or a built zoo's name);
    write baselines.json and baselines.md.

    Static methods are tuned on validation. AdaMerging learns its coefficients by entropy
    minimisation on unlabeled inputs (--adapt-*); regression tasks are left out of its loss.
    EMR-Merging runs with oracle task labels (no router yet); its C counts the unified vector,
    a 1-bit mask and a rescaler per task."""
    from modmerge.cli.sources import open_source
    from modmerge.errors import ModmergeError as _Err
    from modmerge.objectives.adamerging import AdaMergingSettings
    from modmerge.objectives.baselines import BASELINES, markdown_table, report_json, run_baselines

    adaptation = AdaMergingSettings(split=adapt_split, steps=adapt_steps, lr=adapt_lr,  # type: ignore[arg-type]
                                    batch_size=adapt_batch_size, seed=seed)
    zoo_obj = open_source(source_name, cache)
    chosen = BASELINES
    if methods:
        wanted = [m.strip() for m in methods.split(",")]
        unknown = [m for m in wanted if m not in {b.name for b in BASELINES}]
        if unknown:
            raise _Err(f"--methods: unknown row {unknown[0]!r} (rows: {', '.join(b.name for b in BASELINES)})")
        chosen = tuple(b for b in BASELINES if b.name in wanted)
    previous = out_dir / "baselines.json"
    kept = {m["name"]: m for m in json.loads(previous.read_text())["methods"]} if methods and previous.exists() else {}
    done: list = []

    def write_report(row: object = None) -> str:
        if row is not None:
            done.append(row)
            err_console.print(f"{row.name}: test mean {100 * row.test_mean:.1f} ({row.seconds:.0f} s) {row.parameters}")
        report = report_json(zoo_obj, done, val_limit=val_limit, test_limit=test_limit)
        # --methods re-runs some rows of an existing report: keep its other rows, in table order
        rows = {**kept, **{m["name"]: m for m in report["methods"]}}
        report["methods"] = [rows[b.name] for b in BASELINES if b.name in rows]
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "baselines.json").write_text(json.dumps(report, indent=2))
        table = markdown_table(report)
        (out_dir / "baselines.md").write_text(table)
        return table

    run_baselines(
        zoo_obj, baselines=chosen, val_limit=val_limit, test_limit=test_limit, points=points, seed=seed,
        adamerging=adaptation, on_row=write_report,
    )
    click.echo(write_report())


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@CACHE_OPTION
@click.option("--resume", is_flag=True, help="Continue the runs saved in --out (state.json per run).")
@click.option("--overwrite", is_flag=True,
              help="Replace a previous search in --out (its run files and run<i>/ folders; nothing else is removed). "
                   "Without it, or --resume, a used --out is refused.")
@click.option("--runs", type=int, default=None, help="Independent seeded runs (mean and std reported).")
@click.option("--budget", type=int, default=None, help="Real evaluations per run (paper: 300).")
@click.option("--population", type=int, default=None, help="Population size (paper: 20).")
@click.option("--seed", type=int, default=None)
@click.option("--no-surrogate", is_flag=True, help="Ablation: evaluate NSGA-II offspring without the RF surrogate.")
@click.option("--init", type=click.Choice(["kmeans", "random", "mixed"]), default=None,
              help="Initial population: K-means (the paper), random (the ablation), or mixed (half each; not in the "
                   "paper; on the vision zoo it landed between the two, below random).")
@click.option("--granularity", type=click.Choice(["model", "layer", "component"]), default=None)
@click.option("--precision", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="What every evaluation forward runs at (default float32); bfloat16/float16 run under "
                   "torch.autocast: approximate metrics, faster only on hardware with units for them "
                   "(1.9x on an AVX-512-BF16 CPU; a warning says when it is slower).")
@friendly
def search(
    recipe: Path, out_dir: Path, cache: Path | None, resume: bool, overwrite: bool, runs: int | None, budget: int | None,
    population: int | None, seed: int | None, no_surrogate: bool, init: str | None, granularity: str | None,
    precision: str | None,
) -> None:
    """MERGE offline optimisation: search the Pareto set of (storage cost, performance) on a task
    suite (recipe field `suite:`), a built zoo (`zoo:`), or evaluator callables (pretrained,
    models and evaluators)."""
    from modmerge.search.driver import prepare_out_dir, run_search_recipe
    from modmerge.search.recipe import check_resume, load_search_recipe

    overrides = {"runs": runs, "budget": budget, "population": population, "seed": seed, "init": init,
                 "granularity": granularity, "surrogate": False if no_surrogate else None, "precision": precision}
    parsed = load_search_recipe(recipe, overrides)
    check_resume(parsed, out_dir, resume)  # refusals before the source opens
    if not overwrite:
        prepare_out_dir(out_dir, resume=resume, overwrite=False)
    source = None
    if parsed.has_source:  # a missing suite or zoo is an error before any work
        from modmerge.cli.sources import open_source

        source = open_source(str(getattr(parsed.source, parsed.source.form)), cache)
    started = time.perf_counter()
    with task_progress() as bar:
        task = bar.add_task("search", total=parsed.budget * parsed.runs)

        def show(run: int, rec: GenerationRecord, counters: EvaluationCounters | None = None) -> None:
            work = "" if counters is None else f" {counters.progress()}"
            line = (f"run {run} gen {rec.generation}: evals {rec.evaluations}/{parsed.budget} "
                    f"HV {rec.hypervolume:.4f} best P {rec.best_performance:.4f} least C {rec.least_storage:.3f}{work}")
            bar.update(task, completed=run * parsed.budget + rec.evaluations, description=line)
            if not err_console.is_terminal:  # a log file gets one line per generation instead of a bar
                click.echo(f"[{time.perf_counter() - started:7.0f} s] {line}", err=True)

        def show_test(run: int, done: int, total: int) -> None:
            line = f"run {run} test metrics of the Pareto set: {done}/{total} task runs"
            bar.update(task, description=line)
            if not err_console.is_terminal and (done == total or done % max(1, total // 10) == 0):
                click.echo(f"[{time.perf_counter() - started:7.0f} s] {line}", err=True)

        payload = run_search_recipe(parsed, out_dir, source=source, resume=resume, overwrite=overwrite, callback=show,
                                    test_progress=show_test)
    click.echo((out_dir / "summary.md").read_text())
    click.echo(f"wrote {out_dir}/pareto.json, history.json, summary.md, pareto.png, hypervolume.png ({len(payload['runs'])} run(s))")


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tensors"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


