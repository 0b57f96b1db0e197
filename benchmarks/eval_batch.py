"""Evaluation throughput of a zoo's task pool by batch size: what one real evaluation of the
MERGE search costs per task (the task's own fine-tuned body on its first N validation examples).

Texts are batched longest first, so a smaller batch pads less; a larger one multiplies bigger
matrices. The figures chose ``DEFAULT_BATCH`` in :mod:`modmerge.zoo.taskpool`.

    .venv/bin/python benchmarks/eval_batch.py text --limit 200 --batch 128 64 32 16
    .venv/bin/python benchmarks/eval_batch.py text --batch 32 --precision float32 bfloat16   # autocast

Prints, per batch size, seconds per task (best of ``--repeats``, after one warm-up run), the
total, examples/s, and the share of real tokens among the padded ones.
"""

from __future__ import annotations

import argparse
import time

import torch
from modmerge.zoo.batching import EncodedTexts, eval_batches
from modmerge.zoo.taskpool import DEFAULT_BATCH, TaskPool

from modmerge.zoo.store import ZooStore


def padding_share(inputs: object, batch_size: int) -> float | None:
    """Real tokens over padded tokens when batched longest first (None for images)."""
    if not isinstance(inputs, EncodedTexts):
        return None
    padded = sum(batch["input_ids"].numel() for _, batch in eval_batches(inputs, batch_size))
    return float(inputs.lengths.sum()) / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo", nargs="?", default="text")
    parser.add_argument("--limit", type=int, default=200, help="validation examples per task (search default 200)")
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 64, 32, 16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", nargs="+", default=["float32"], help="evaluation precisions (TaskPool)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    zoo = ZooStore.default().load(args.zoo)
    modality = zoo.entry(zoo.tasks[0]).modality
    print(f"zoo {args.zoo}: {len(zoo.tasks)} tasks, first {args.limit} validation examples each, "
          f"{args.threads} threads; default batch {DEFAULT_BATCH[modality]}")
    print("| precision | batch | " + " | ".join(zoo.tasks) + " | total s | examples/s | real/padded tokens |")
    print("|---|---|" + "---|" * (len(zoo.tasks) + 3))
    for precision, size in [(p, b) for p in args.precision for b in args.batch]:
        pool = TaskPool(zoo, split="validation", limit=args.limit, batch_size=size, precision=precision)
        seconds, real, padded = [], 0.0, 0.0
        for task in zoo.tasks:
            state = pool.own_state(task)
            pool.evaluate_from(task, state)  # warm-up: encodings, weights in cache
            best = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                pool.evaluate_from(task, state)
                best = min(best, time.perf_counter() - started)
            seconds.append(best)
            inputs = pool.inputs(task, "validation")
            share = padding_share(inputs, size)
            if share is not None:
                real += float(inputs.lengths.sum())
                padded += float(inputs.lengths.sum()) / share
        n = args.limit * len(zoo.tasks)
        tokens = f"{real / padded:.2f}" if padded else "-"
        print(f"| {precision} | {size} | " + " | ".join(f"{s:.2f}" for s in seconds)
              + f" | {sum(seconds):.2f} | {n / sum(seconds):.0f} | {tokens} |")


if __name__ == "__main__":
    main()
