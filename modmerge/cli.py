"""The `modmerge` command line: thin wrappers that parse arguments and call the library.

Every :class:`~modmerge.errors.ModmergeError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from modmerge.errors import ModmergeError

F = TypeVar("F", bound=Callable[..., Any])
err_console = Console(stderr=True)


def _friendly(fn: F) -> F:
    """Turn library errors into one line and a non-zero exit (no traceback for user mistakes)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModmergeError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _methods_epilog() -> str:
    from modmerge.merging import REGISTRY, get_method

    get_method("task_arithmetic")  # imports every method module
    return "\b\nMerge methods:\n" + "\n".join(f"  {m.name}: {m.summary}" for m in REGISTRY)


@click.group()
@click.version_option(package_name="modmerge")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """modmerge: fine-grained model merging (MERGE) from the command line."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@main.command(epilog=_methods_epilog())
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--allow-pickle", is_flag=True, help="Allow .bin/.pt pickle checkpoints (loaded with weights_only=True).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists (atomically).")
@click.option("--device", default="cpu", show_default=True, help="Where merge arithmetic runs: cpu, cuda, cuda:1, mps.")
@click.option("--dry-run", is_flag=True, help="Validate the recipe and checkpoints, print the plan, write nothing.")
@click.option("--stats-json", type=click.Path(dir_okay=False, path_type=Path), help="Also write timing and byte counts as JSON.")
@_friendly
def merge(
    recipe: Path, out_dir: Path, allow_pickle: bool, overwrite: bool, device: str, dry_run: bool, stats_json: Path | None
) -> None:
    """Merge the models of RECIPE (YAML) into a Hugging Face model directory OUT_DIR."""
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
            device=device,
            progress=advance,
            on_total=lambda n: bar.update(task, total=n),
        )
    if stats_json is not None:
        stats_json.write_text(json.dumps(result.to_json(), indent=2))
    methods = ", ".join(f"{name} x{count}" for name, count in sorted(result.methods.items()))
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
@_friendly
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


if __name__ == "__main__":
    main()
