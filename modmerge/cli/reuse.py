"""`modmerge predict` and `modmerge export` (registered on the main group by importing this module)."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import click

from modmerge.cli import _friendly, _task_progress, err_console, main
from modmerge.errors import ModmergeError

_LIB = click.argument("lib_dir", type=click.Path(file_okay=False, path_type=Path))
_ZOO_CACHE = click.option(
    "--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Zoo cache, only read if the library lacks pretrained weights for routing (default: $MODMERGE_CACHE).",
)


def _open_library(lib_dir: Path) -> Any:
    from modmerge.library import Library

    return Library.open(lib_dir)


def _zoo_store(cache: Path | None) -> Any:
    from modmerge.zoo.store import ZooStore

    return ZooStore(cache) if cache else None


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
@_ZOO_CACHE
@_friendly
def predict(
    lib_dir: Path, budget: float | None, config_id: str | None, input_path: Path, output_path: Path,
    task: str | None, device: str, batch_size: int | None, cache_bytes: int, cache: Path | None,
) -> None:
    """Route every input of --input to its task's expert chain and write one prediction per line."""
    from modmerge.reuse.engine import ReuseEngine
    from modmerge.reuse.inputs import read_jsonl

    if (budget is None) == (config_id is None):
        raise ModmergeError("give exactly one of --budget or --config")
    raws = read_jsonl(input_path)
    engine = ReuseEngine(_open_library(lib_dir), budget=budget, config_id=config_id, device=device,
                         cache_bytes=cache_bytes, batch_size=batch_size, zoo_store=_zoo_store(cache))
    started = time.perf_counter()
    with _task_progress() as bar:
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
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists (atomically).")
@_ZOO_CACHE
@_friendly
def export(lib_dir: Path, out_dir: Path, config_id: str, task: str, overwrite: bool, cache: Path | None) -> None:
    """Write TASK's assembled model under configuration --config as a Hugging Face model directory."""
    from modmerge.reuse.export import export_model

    result = export_model(_open_library(lib_dir), config_id, task, out_dir, overwrite=overwrite,
                          zoo_store=_zoo_store(cache))
    how = "" if result.exact else f" (base model + {out_dir.name}/modmerge_head.safetensors: no exact transformers class)"
    click.echo(f"wrote {out_dir}: {result.architecture}, {result.tensors} tensors, chain {result.chain[:12]}{how}")
    if not result.exact:
        err_console.print("[yellow]the head does not map onto a transformers class; see config.json 'modmerge_head'")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """All lines or none: a temporary sibling renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
