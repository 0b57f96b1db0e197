"""``modmerge extract-lora``: a PEFT LoRA adapter from a base model and a fine-tuned one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from modmerge.cli.common import err_console, friendly, main, task_progress

if TYPE_CHECKING:
    from modmerge.checkpoints.lora_writer import ExtractionReport

# Rows of the per-kind table before the rest are summed up in one line.
_SHOWN_KINDS = 12


@main.command("extract-lora")
@click.argument("base")
@click.argument("tuned")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--rank", type=int, default=16, show_default=True, help="Largest rank of each LoRA update.")
@click.option("--energy", type=float, default=None,
              help="Per module, the smallest rank (up to --rank) whose singular values hold this fraction "
                   "of the update's squared Frobenius norm, e.g. 0.9.")
@click.option("--embeddings", type=click.Choice(["save", "lora", "drop"]), default="save", show_default=True,
              help="Changed embeddings: saved whole (modules_to_save), factorised like linear weights, or dropped.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
              show_default=True, help="dtype of the LoRA factors (auto: the base weight's); saved modules keep theirs.")
@click.option("--device", default="cpu", show_default=True, help="Where the SVDs run: cpu, cuda, cuda:1, mps.")
@click.option("--allow-pickle", is_flag=True, help="Allow .bin/.pt pickle checkpoints (loaded with weights_only=True).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists (atomically).")
@click.option("--stats-json", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every module's rank and error, and where each change went, as JSON.")
@friendly
def extract_lora(
    base: str, tuned: str, out_dir: Path, rank: int, energy: float | None, embeddings: str, dtype: str, device: str,
    allow_pickle: bool, overwrite: bool, stats_json: Path | None,
) -> None:
    """Write the PEFT LoRA adapter that takes BASE to TUNED into OUT_DIR, from the truncated SVD of
    every changed linear weight. BASE and TUNED are HF directories, .safetensors files or hub ids.

    Changed norms and other modules LoRA cannot carry are saved whole (modules_to_save); bias
    changes go into lora_B.bias when PEFT allows it; what is dropped is listed."""
    from modmerge.checkpoints import open_checkpoint
    from modmerge.checkpoints.lora_writer import LoraExtractOptions, extract_lora
    from modmerge.checkpoints.writer import check_output_directory

    options = LoraExtractOptions(rank=rank, energy=energy, embeddings=embeddings, dtype=dtype, device=device)
    check_output_directory(out_dir, overwrite=overwrite)
    with (
        open_checkpoint(base, allow_pickle=allow_pickle) as base_ckpt,
        open_checkpoint(tuned, allow_pickle=allow_pickle) as tuned_ckpt,
        task_progress(transient=True) as bar,
    ):
        task = bar.add_task("extracting", total=len(base_ckpt.keys()))  # tensors of BASE, read in pairs
        report = extract_lora(
            base_ckpt, tuned_ckpt, out_dir, options, base_model=_base_name(base), overwrite=overwrite,
            progress=lambda key: bar.update(task, advance=1, description=f"extracting {key[-48:]}"),
        )
    _print_report(report)
    if stats_json is not None:
        stats_json.write_text(json.dumps(report.to_json(), indent=2) + "\n")


def _base_name(spec: str) -> str:
    """What ``adapter_config.json`` names as the base: a local path made absolute, a hub id as given."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _print_report(report: ExtractionReport) -> None:
    rows = report.by_kind()
    table = Table(title="relative Frobenius error ||delta - B A|| / ||delta|| per module kind")
    for col in ("modules", "count", "rank", "error", "worst", "worst module"):
        table.add_column(col, justify="left" if col in ("modules", "worst module") else "right")
    for row in rows[:_SHOWN_KINDS]:
        ranks = str(row.ranks[0]) if row.ranks[0] == row.ranks[1] else f"{row.ranks[0]}-{row.ranks[1]}"
        table.add_row(row.pattern, str(row.modules), ranks, f"{row.relative_error:.4f}", f"{row.worst_error:.4f}",
                      row.worst_module)
    if len(rows) > _SHOWN_KINDS:
        table.add_row(f"... {len(rows) - _SHOWN_KINDS} more kinds (all in --stats-json)", "", "", "", "", "")
    if rows:
        Console().print(table)
    if report.note:
        err_console.print(f"[yellow]{report.note}")
    if report.saved_modules:
        shown = ", ".join(report.saved_modules[:6]) + (" ..." if len(report.saved_modules) > 6 else "")
        click.echo(f"saved whole (modules_to_save): {len(report.saved_modules)} module(s): {shown}")
    if report.lora_bias:
        click.echo("bias changes of LoRA targets: in lora_B.bias (lora_bias=True)")
    if report.dropped:
        err_console.print(f"[yellow]dropped {len(report.dropped)} change(s) an adapter cannot carry:")
        for key, why in list(report.dropped.items())[:8]:
            err_console.print(f"[yellow]  {key}: {why}")
        if len(report.dropped) > 8:
            err_console.print(f"[yellow]  ... and {len(report.dropped) - 8} more (all in --stats-json)")
    low, high = min(f.rank for f in report.fits), max(f.rank for f in report.fits)
    ranks = f"rank {low}" if low == high else f"ranks {low}-{high}"
    click.echo(
        f"wrote {report.out_dir} ({len(report.fits)} LoRA module(s), {ranks}; "
        f"adapter {_size(report.adapter_bytes)}, {report.adapter_bytes / max(report.tuned_bytes, 1):.1%} "
        f"of the tuned model's {_size(report.tuned_bytes)}; {report.unchanged} tensor(s) unchanged)"
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
