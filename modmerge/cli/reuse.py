"""`modmerge predict` and `modmerge export` (registered on the main group by importing this module)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import click

from modmerge.atomic import write_json, write_text
from modmerge.cli.common import err_console, friendly, main, task_progress
from modmerge.errors import ModmergeError
from modmerge.image_files import DEFAULT_MAX_IMAGE_PIXELS

_LIB = click.argument("lib_dir", type=click.Path(file_okay=False, path_type=Path))
_ZOO_CACHE = click.option(
    "--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Cache root holding the library's zoo, only read if an older library lacks pretrained weights for "
         "routing or a task's pooler (default: $MODMERGE_CACHE).",
)


def _open_library(lib_dir: Path) -> Any:
    from modmerge.library import Library

    return Library.open(lib_dir)


def library_source(lib: Any, cache: Path | None) -> Any:
    """A callable that opens the task source ``lib`` was built from (its suite, or its zoo)."""
    from modmerge.cli.sources import reopen_source

    description = lib.manifest.source or {"zoo": lib.manifest.zoo}
    return lambda: reopen_source(description, cache)


@main.command()
@_LIB
@click.option("--budget", type=float, default=None, help="Storage budget pi: the best configuration with cost <= pi.")
@click.option("--config", "config_id", default=None, help="A configuration id (see `modmerge library ls`).")
@click.option("--input", "input_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help='JSON lines: {"text": ...} or {"image": "path"}, optional "task" and "id".')
@click.option("--output", "output_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--task", default=None, help="Oracle task for every input (skips the router).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", type=int, default=None, help="Examples per body forward (default: 128 text, 256 image).")
@click.option("--cache-bytes", type=int, default=1 << 30, show_default=True, help="Bound on assembled bodies kept.")
@click.option("--max-image-pixels", type=click.IntRange(1), default=DEFAULT_MAX_IMAGE_PIXELS, show_default=True,
              help="Image files with more pixels are refused before they are decoded.")
@_ZOO_CACHE
@friendly
def predict(
    lib_dir: Path, budget: float | None, config_id: str | None, input_path: Path, output_path: Path,
    task: str | None, device: str, batch_size: int | None, cache_bytes: int, max_image_pixels: int,
    cache: Path | None,
) -> None:
    """Route every input of --input to its task's expert chain and write one prediction per line."""
    from modmerge.reuse.engine import ReuseEngine
    from modmerge.reuse.inputs import read_jsonl

    if (budget is None) == (config_id is None):
        raise ModmergeError("give exactly one of --budget or --config")
    raws = read_jsonl(input_path)
    lib = _open_library(lib_dir)
    engine = ReuseEngine(lib, budget=budget, config_id=config_id, device=device, cache_bytes=cache_bytes,
                         batch_size=batch_size, source=library_source(lib, cache), max_image_pixels=max_image_pixels)
    started = time.perf_counter()
    with task_progress() as bar:
        job = bar.add_task(f"predict ({engine.config.id})", total=len(raws))
        results = engine.predict(raws, tasks=None if task is None else [task] * len(raws),
                                 progress=lambda n: bar.advance(job, n))
    seconds = time.perf_counter() - started
    _write_jsonl(output_path, results)
    chains = len({r["chain"] for r in results})
    click.echo(
        f"config {engine.config.id} (storage cost {engine.config.storage_cost:.3f}): {len(results)} inputs, "
        f"{chains} expert chain(s), {len(results) / max(seconds, 1e-9):.1f} examples/s; wrote {output_path}"
    )


@main.command()
@_LIB
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--config", "config_id", required=True, help="A configuration id (see `modmerge library ls`).")
@click.option("--task", required=True, help="The task whose assembled model to export.")
@click.option("--overwrite", is_flag=True,
              help="Replace OUT_DIR (atomically) if an earlier `modmerge export` or `merge` wrote it (its modmerge.json).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR (atomically) whatever it holds.")
@_ZOO_CACHE
@friendly
def export(lib_dir: Path, out_dir: Path, config_id: str, task: str, overwrite: bool, force: bool,
           cache: Path | None) -> None:
    """Write TASK's assembled model under configuration --config as a Hugging Face model directory."""
    from modmerge.reuse.export import export_model

    lib = _open_library(lib_dir)
    result = export_model(lib, config_id, task, out_dir, overwrite=overwrite, force=force,
                          source=library_source(lib, cache))
    how = "" if result.exact else f" (base model + {out_dir.name}/modmerge_head.safetensors: no exact transformers class)"
    click.echo(f"wrote {out_dir}: {result.architecture}, {result.tensors} tensors, chain {result.chain[:12]}{how}")
    if not result.exact:
        err_console.print("[yellow]the head does not map onto a transformers class; see config.json 'modmerge_head'")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """All lines or none: a temporary sibling renamed into place."""
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


@main.command("evaluate")
@_LIB
@click.option("--budget", "budgets", type=float, multiple=True,
              help="A storage budget pi (repeatable). Default: three budgets along the front.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["validation", "test"]))
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Examples per task (default: all).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the rows as JSON here.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache root holding the library's zoo, when it was built from one (its splits are evaluated; "
                   "default: $MODMERGE_CACHE). A suite's files are read where the library recorded them.")
@friendly
def evaluate(lib_dir: Path, budgets: tuple[float, ...], split: str, limit: int | None, out_path: Path | None,
             device: str, cache: Path | None) -> None:
    """The budget table: per budget pi, the configuration chosen, its storage cost, performance with
    oracle task labels and with the router, and routing accuracy, on SPLIT of the task source the
    library was built from (its suite or zoo)."""
    from rich.console import Console
    from rich.table import Table

    from modmerge.reuse import ReuseEngine, evaluate_library
    from modmerge.tasks.taskpool import TaskPool

    lib = _open_library(lib_dir)
    zoo = library_source(lib, cache)()
    if not budgets:
        budgets = _default_budgets([c.storage_cost for c in lib.configurations])
    pool = TaskPool(zoo, split=split, limit=limit, device=device)
    has_router = lib.manifest.router is not None
    rows = []
    for budget in budgets:
        chosen = lib.select(budget)
        engine = ReuseEngine(lib, config_id=chosen.id, device=device, source=zoo)
        row = evaluate_library(lib, chosen.id, zoo, split=split, limit=limit, use_router=has_router,
                               engine=engine, pool=pool)
        rows.append({"budget": budget, **row})
    table = Table(title=f"{lib.root}: {split} split{'' if limit is None else f', first {limit} per task'}")
    for col in ("budget", "config", "storage cost", "oracle P", "routed P", "routing acc."):
        table.add_column(col, justify="right")
    for r in rows:
        routed = "-" if r["routed_mean"] is None else f"{100 * r['routed_mean']:.1f}"
        acc = r.get("routing_accuracy")
        table.add_row(f"{r['budget']:g}", r["config"], f"{r['storage_cost']:.3f}", f"{100 * r['oracle_mean']:.1f}",
                      routed, "-" if acc is None else f"{100 * acc:.1f}")
    Console().print(table)
    if out_path is not None:
        write_json(out_path, {"library": str(lib.root), "split": split, "limit": limit, "rows": rows})


def _default_budgets(costs: list[float]) -> tuple[float, ...]:
    """Three budgets along the front: the cheapest configuration, the median one, the dearest."""
    ordered = sorted(costs)
    picks = [ordered[0], ordered[len(ordered) // 2], ordered[-1]]
    # rounded up, so a printed budget never falls below the cost it was taken from
    return tuple(dict.fromkeys(math.ceil(c * 1e6) / 1e6 for c in picks))
