"""Routed batched inference against per-input dynamic merging and the individual models, same inputs.

One run, one mixed stream of test inputs from every task of the library's zoo (seeded shuffle):

- **routed batched** (MERGE, Algorithm 2): `ReuseEngine.predict` under a storage budget: route
  every input with the library's router, group by expert chain, assemble each chain once, run
  each group in batches. Timed cold (assembly, router and heads loaded inside the timing) and warm.
- **per-input dynamic merging** (as Twin-Merging does): for each input, the router's softmax
  weights p_t over tasks give a body theta_pre + sum_t p_t tau_t merged from the T task vectors;
  the input then runs alone through it with the most probable task's head. Timed on the first
  `--dynamic-inputs` inputs of the stream (it is slow; examples/s is what is compared).
- **individual models, oracle labels**: the T fine-tuned task models all loaded; inputs grouped
  by their true task and run in batches.

Every method starts from the same raw inputs (texts / uint8 images) and includes encoding. The
script also prints each method's mean task metric, and the resident memory (RSS growth, measured
in a fresh child process each) of the engine with every chain of the configuration assembled
against the T individual models loaded.

    .venv/bin/python benchmarks/inference.py runs/vision-lib --budget 1.0
    .venv/bin/python benchmarks/inference.py LIB_DIR --config c3 --per-task 100 --dynamic-inputs 100
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import time
from pathlib import Path

import torch

MIB = 2**20


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def mixed_stream(zoo, per_task: int, seed: int) -> list[tuple[str, object, int]]:
    """(true task, raw input, label) for the first ``per_task`` test examples of each task, shuffled."""
    rows = []
    for task in zoo.tasks:
        test = zoo.task_data(task)["test"]
        inputs, labels = test["inputs"], test["labels"]
        for i in range(min(per_task, len(labels))):
            rows.append((task, inputs[i], int(labels[i])))
    random.Random(seed).shuffle(rows)
    return rows


def as_input(modality: str, raw: object) -> dict:
    return {"text": raw} if modality == "text" else {"image": raw}


def mean_accuracy(tasks: list[str], labels: list[int], predicted: list[int]) -> float:
    per: dict[str, list[bool]] = {}
    for t, y, p in zip(tasks, labels, predicted, strict=True):
        per.setdefault(t, []).append(y == p)
    return sum(sum(v) / len(v) for v in per.values()) / len(per)


class Individual:
    """The T fine-tuned task models (body + head), each its own module, all resident."""

    def __init__(self, zoo, engine) -> None:
        from modmerge.zoo.models import (
            TaskClassifier,
            body_from_config,
            head_from_state,
            load_body_state,
        )

        self.engine, self.models = engine, {}
        backbone = zoo.root / zoo.manifest.backbone.path
        for task in zoo.tasks:
            with zoo.task_body(task) as ckpt:
                state = {k: ckpt.get(k).clone() for k in ckpt.keys()}
            body = body_from_config(backbone, list(state))
            load_body_state(body, state)
            entry = zoo.entry(task)
            self.models[task] = TaskClassifier(body, head_from_state(zoo.task_head(task)), entry.pooling).eval()

    def predict(self, stream: list[tuple[str, object, int]]) -> list[int]:
        from modmerge.zoo.batching import eval_batches

        from modmerge.reuse.inputs import encode_images, encode_texts, parse_input

        engine, out = self.engine, [0] * len(stream)
        groups: dict[str, list[int]] = {}
        for i, (task, _, _) in enumerate(stream):
            groups.setdefault(task, []).append(i)
        with torch.inference_mode():
            for task, rows in groups.items():
                raws = [parse_input(as_input(engine.modality, stream[i][1]), where="x") for i in rows]
                if engine.modality == "text":
                    encoded = encode_texts(engine.tokenizer, raws, engine.tasks[task].max_length)
                else:
                    encoded = encode_images(raws, engine.image_size)
                for idx, batch in eval_batches(encoded, engine.batch_size):
                    pred = self.models[task](**batch).argmax(-1)
                    for j, p in zip(idx.tolist(), pred.tolist(), strict=True):
                        out[rows[j]] = p
        return out


class DynamicMerging:
    """Per input: router softmax weights p -> theta_pre + sum_t p_t tau_t -> run the input alone.

    The T task vectors are stacked as one T x P matrix, so each input's merge is one vector-matrix
    product (the fastest form of this baseline), then written into the body's parameters.
    """

    def __init__(self, zoo, engine) -> None:
        from modmerge.zoo.models import body_from_config, body_state

        self.engine = engine
        with zoo.backbone() as ckpt:  # the whole pretrained body (the library may keep only the router's part)
            pre = {k: ckpt.get(k).clone() for k in ckpt.keys()}
        self.body = body_from_config(zoo.root / zoo.manifest.backbone.path, list(pre)).eval()
        self.targets = {k: v for k, v in body_state(self.body).items() if v.is_floating_point()}
        with torch.no_grad():
            for name, target in body_state(self.body).items():
                target.copy_(pre[name])
        self.names = list(self.targets)
        self.pre = torch.cat([pre[k].float().reshape(-1) for k in self.names])
        rows = []
        for task in engine._router[1].tasks:
            with zoo.task_body(task) as ckpt:
                rows.append(torch.cat([ckpt.get(k).float().reshape(-1) for k in self.names]) - self.pre)
        self.vectors = torch.stack(rows)

    def predict(self, stream: list[tuple[str, object, int]]) -> list[tuple[str, int]]:
        """(task with the largest router weight, its head's label) per input."""
        from modmerge.zoo.batching import eval_batches

        from modmerge.reuse.inputs import encode_images, encode_texts, parse_input
        from modmerge.reuse.router import router_features

        engine, out = self.engine, []
        router, config = engine._router
        tasks = list(config.tasks)
        with torch.inference_mode():
            for _, raw, _ in stream:
                x = [parse_input(as_input(engine.modality, raw), where="x")]
                if engine.modality == "text":
                    encoded = encode_texts(engine.tokenizer, x, max(t.max_length for t in engine.tasks.values()))
                    batch = next(iter(eval_batches(encoded, 1)))[1]
                else:
                    batch = {"pixel_values": encode_images(x, engine.image_size)}
                feats = router_features(engine._pretrained_body, batch, config.pooling)
                probs = torch.softmax(router(feats.float()), -1)[0]  # forward standardises features
                merged = torch.addmv(self.pre, self.vectors.T, probs)
                offset = 0
                for name in self.names:
                    target = self.targets[name]
                    target.copy_(merged[offset: offset + target.numel()].view_as(target))
                    offset += target.numel()
                task = tasks[int(probs.argmax())]
                hidden = self.body(**batch).last_hidden_state
                out.append((task, int(engine._head(task)(hidden).argmax(-1))))
        return out


def _memory_probe(kind: str, lib_dir: str, config_id: str, cache: str | None, queue: mp.Queue) -> None:
    torch.set_num_threads(1)
    from modmerge.library import Library
    from modmerge.reuse import ReuseEngine
    from modmerge.zoo.store import ZooStore

    lib = Library.open(lib_dir)
    store = ZooStore(Path(cache)) if cache else ZooStore.default()
    zoo = store.load(lib.manifest.zoo)
    before = rss_bytes()
    engine = ReuseEngine(lib, config_id=config_id, source=store.load(lib.manifest.zoo))
    if kind == "library":
        for task in zoo.tasks:
            engine.cache.get(engine.chain_of(task))
            engine._head(task)
        _ = engine._router, engine._pretrained_body
    else:
        keep = Individual(zoo, engine)  # noqa: F841 (held while measuring)
    queue.put(rss_bytes() - before)


def memory(kind: str, lib_dir: str, config_id: str, cache: str | None) -> int:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_probe, args=(kind, lib_dir, config_id, cache, queue))
    proc.start()
    value = queue.get(timeout=900)
    proc.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lib_dir")
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--config", default=None)
    parser.add_argument("--per-task", type=int, default=200, help="test inputs per task in the stream")
    parser.add_argument("--dynamic-inputs", type=int, default=100, help="inputs timed for per-input merging")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cache", default=None, help="zoo cache root (for the individual models)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from modmerge.library import Library
    from modmerge.reuse import ReuseEngine
    from modmerge.zoo.store import ZooStore

    lib = Library.open(args.lib_dir)
    store = ZooStore(Path(args.cache)) if args.cache else ZooStore.default()
    zoo = store.load(lib.manifest.zoo)
    engine = ReuseEngine(lib, budget=args.budget, config_id=args.config, source=store.load(lib.manifest.zoo))
    stream = mixed_stream(zoo, args.per_task, args.seed)
    tasks, labels = [t for t, _, _ in stream], [y for _, _, y in stream]
    inputs = [as_input(engine.modality, raw) for _, raw, _ in stream]
    n, chains = len(stream), len({engine.chain_of(t) for t in zoo.tasks})
    print(f"library {args.lib_dir} (zoo '{zoo.name}'), configuration {engine.config.id}: storage cost "
          f"{engine.config.storage_cost:.3f}, {chains} distinct expert chains for {len(zoo.tasks)} tasks; "
          f"{n} mixed test inputs; torch threads {args.threads}")

    rows = []
    started = time.perf_counter()
    routed = engine.predict(inputs)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    routed = engine.predict(inputs)
    warm = time.perf_counter() - started
    acc = mean_accuracy(tasks, labels, [r["label"] if r["task"] == t else -1 for r, t in zip(routed, tasks, strict=True)])
    routing = sum(r["task"] == t for r, t in zip(routed, tasks, strict=True)) / n
    rows.append(("routed batched (cold)", n / cold, acc))
    rows.append(("routed batched (warm)", n / warm, acc))
    started = time.perf_counter()
    oracle = engine.predict(inputs, tasks=tasks)
    rows.append(("MERGE chains, oracle labels", n / (time.perf_counter() - started),
                 mean_accuracy(tasks, labels, [r["label"] for r in oracle])))

    individual = Individual(zoo, engine)
    started = time.perf_counter()
    ind = individual.predict(stream)
    ind_rate = n / (time.perf_counter() - started)
    rows.append(("individual models, oracle labels", ind_rate, mean_accuracy(tasks, labels, ind)))

    dynamic = DynamicMerging(zoo, engine)
    sub = stream[: args.dynamic_inputs]
    started = time.perf_counter()
    dyn = dynamic.predict(sub)
    dyn_rate = len(sub) / (time.perf_counter() - started)
    rows.append((f"per-input dynamic merging ({len(sub)} inputs)", dyn_rate,
                 mean_accuracy([t for t, _, _ in sub], [y for _, _, y in sub],
                               [label if task == t else -1 for (task, label), (t, _, _) in zip(dyn, sub, strict=True)])))

    print(f"\n{'method':<44} {'examples/s':>11} {'mean acc':>9}")
    for name, rate, accuracy in rows:
        print(f"{name:<44} {rate:>11.1f} {'-' if accuracy is None else f'{accuracy:.3f}':>9}")
    warm_rate = rows[1][1]
    print(f"\nrouting accuracy {routing:.3f}; routed warm vs per-input merging {warm_rate / dyn_rate:.1f}x (goal >= 10x); "
          f"vs individual models {warm_rate / ind_rate:.2f}x (goal >= 0.7x). Routed accuracies count an input "
          f"routed to the wrong task as wrong.")

    lib_mem = memory("library", args.lib_dir, engine.config.id, args.cache)
    ind_mem = memory("individual", args.lib_dir, engine.config.id, args.cache)
    assembled = chains * sum(p.numel() * p.element_size() for p in engine.cache.get(engine.chain_of(zoo.tasks[0])).parameters())
    print(f"resident memory (RSS growth in a fresh process): library engine, every chain assembled "
          f"{lib_mem / MIB:.1f} MiB (assembled bodies {assembled / MIB:.1f} MiB + router, pretrained body, heads) "
          f"vs {len(zoo.tasks)} individual models {ind_mem / MIB:.1f} MiB ({lib_mem / max(ind_mem, 1):.2f}x)")


if __name__ == "__main__":
    main()
