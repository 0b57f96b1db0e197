"""`modmerge library build|verify|ls` (registered on the main group by importing this module)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from modmerge.cli.common import CACHE_OPTION, err_console, friendly, main, task_progress

_LIB = click.argument("lib_dir", type=click.Path(file_okay=False, path_type=Path))


@main.group()
def library() -> None:
    """The modular expert library: every Pareto configuration's modules, stored once."""


@library.command("build")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@_LIB
@CACHE_OPTION
@click.option("--no-router", is_flag=True, help="Store no router (inputs must then name their task).")
@click.option("--router-per-task", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Router training examples per task (the paper's setting).")
@click.option("--router-epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--router-test-limit", type=click.IntRange(min=1), default=None,
              help="Test examples per task for the router's reported accuracy (default: all).")
@click.option("--router-feature-layers", type=click.IntRange(min=0), default=None,
              help="Router features from the pretrained backbone's first K encoder layers (default: all); "
                   "routing then costs K layers per input, not a full forward (0: embeddings only, needs "
                   "--router-pooling mean).")
@click.option("--router-pooling", type=click.Choice(["cls", "mean"]), default=None,
              help="How router features pool tokens (default: mean for texts, cls for images).")
@click.option("--device", default="cpu", show_default=True, help="Device for router features and training.")
@friendly
def library_build(run_dir: Path, lib_dir: Path, cache: Path | None, no_router: bool, router_per_task: int,
                  router_epochs: int, router_test_limit: int | None, router_feature_layers: int | None,
                  router_pooling: str | None, device: str) -> None:
    """Store the modular experts of every configuration in RUN_DIR/pareto.json into LIB_DIR (atomic).

    Unless --no-router, first trains the task router (a 3-layer MLP on the pretrained backbone's
    features, lr 5e-4) on the task source's train splits (validation where a suite task has no
    train split) and stores it, with the pretrained body it reads features from, so the library
    routes inputs without the source. The run's task source (its suite file, or its zoo in the
    cache) is reopened from RUN_DIR/pareto.json.

    LIB_DIR may be absent, an empty directory, or an expert library, which is replaced once the
    new one is complete; any other directory (a zoo, a model, your files) is refused, untouched.
    """
    from modmerge.cli.sources import reopen_source
    from modmerge.library import build_library
    from modmerge.library.build import check_library_target, run_source

    check_library_target(lib_dir)  # before the router's training, not after
    zoo = reopen_source(run_source(run_dir), cache)
    router = None
    if not no_router:
        from modmerge.reuse.router import RouterConfig, fit_router

        config = RouterConfig.for_source(zoo, per_task=router_per_task, epochs=router_epochs,
                                      feature_layers=router_feature_layers,
                                      **({"pooling": router_pooling} if router_pooling else {}))
        with task_progress() as bar:
            model, report = fit_router(zoo, config, device=device, progress=bar, test_limit=router_test_limit)
        click.echo(f"router: test accuracy {report['test_accuracy']:.3f} over {len(config.tasks)} tasks "
                   f"({report['train_examples']} training examples, {report['seconds']:.0f} s)")
        summary = {k: v for k, v in report.items() if k != "config"}
        router = (model.to("cpu").to_state(), {**config.to_dict(), "test_accuracy": report["test_accuracy"],
                                               "report": summary})
    # Transient: an error then leaves just its one line.
    bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total} modules"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=err_console, transient=True)
    with bar:
        task = bar.add_task("loading models", total=None)

        def advance(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what[-40:])

        lib = build_library(run_dir, lib_dir, source=zoo, router=router, progress=advance)
    blobs = sum(lib.manifest.blob_sizes().values())
    click.echo(
        f"wrote {lib.root}: {len(lib.configurations)} configurations, {len(lib.manifest.modules)} modules, "
        f"{len(lib.manifest.chains)} expert chains, {lib.blob_count} blobs ({blobs / 2**20:.2f} MiB)"
    )


@library.command("verify")
@_LIB
@friendly
def library_verify(lib_dir: Path) -> None:
    """Check every blob of LIB_DIR against its sha256; exit 2 listing each problem."""
    from modmerge.library import Library

    lib = Library.open(lib_dir)
    problems = lib.verify()
    if problems:
        for line in problems:
            click.echo(f"error: {line}", err=True)
        raise SystemExit(2)
    click.echo(f"ok: {lib.blob_count} blobs verified")


@library.command("ls", short_help="One row per configuration: storage cost, bytes on disk, performance.")
@_LIB
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly
def library_ls(lib_dir: Path, as_json: bool) -> None:
    """One row per configuration: storage cost (eq. 8), bytes on disk, performance, modules."""
    from modmerge.library import Library

    lib = Library.open(lib_dir)
    rows = lib.describe()
    body = lib.pretrained_body_bytes()
    heads = sum(t.head_bytes for t in lib.tasks)
    if as_json:
        click.echo(json.dumps({"library": str(lib.root), "zoo": lib.manifest.zoo, "pretrained_body_bytes": body,
                               "head_bytes": heads, "configurations": rows}, indent=2))
        return
    table = Table(title=f"{lib.root} (zoo '{lib.manifest.zoo}', {lib.manifest.method['name']})")
    for col in ("id", "storage cost", "bytes on disk", "disk / (C x body)", "validation", "test", "modules", "chains"):
        table.add_column(col, justify="left" if col == "id" else "right")
    for r in rows:
        table.add_row(r["id"], f"{r['storage_cost']:.4f}", f"{r['bytes_on_disk']:,}", _fmt(r["disk_ratio"], 3),
                      _fmt(r["validation"]), _fmt(r["test"]), str(r["modules"]), str(r["chains"]))
    Console().print(table)
    ratios = [r["disk_ratio"] for r in rows if r["disk_ratio"] is not None]
    if ratios:
        click.echo(
            f"pretrained body (eq. 8's unit): {lib.manifest.body_parameters:,} parameters x 32 bits = {body:,} bytes. "
            f"disk / (C x body) ranges {min(ratios):.3f}-{max(ratios):.3f}: above 1 is file overhead "
            f"(safetensors headers, quantisation masks and metadata) that eq. (8) does not count. "
            f"Task heads add {heads:,} bytes to every configuration."
        )


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
