"""Load test of `modmerge serve`: N concurrent clients for D seconds from a second process.

Starts `modmerge serve LIB_DIR` as a subprocess on a free loopback port (or uses --url), warms it
up (every expert chain assembled once), then runs --clients concurrent clients that post batches
of --batch inputs for --duration seconds. Prints requests/s, inputs/s, p50/p99 latency, the error
count by status, the server's batching counters, and the server's RSS after warm-up, at the end
and at its peak (sampled every 0.5 s), so growth under load is visible.

Inputs come from a JSON-lines file (``{"text": ...}`` or ``{"image": "path"}`` per line, an
optional ``"task"``) or, by default, the test split of the library's zoo (text zoos).

    .venv/bin/python benchmarks/serve_load.py LIB_DIR --budget 0.5 --clients 8 --duration 30
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:8000 --pid 1234 --inputs x.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

MIB = 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_inputs(args: argparse.Namespace) -> list[dict]:
    """Request items (``{"text": ...}`` / ``{"image": ...}`` and maybe ``"task"``) to draw batches from."""
    if args.inputs:
        rows = [json.loads(line) for line in Path(args.inputs).read_text().splitlines() if line.strip()]
        if not rows:
            sys.exit(f"error: {args.inputs}: no inputs")
        return rows
    if args.lib_dir is None:
        sys.exit("error: with --url, give --inputs FILE.jsonl")
    from modmerge.zoo.store import ZooStore

    zoo_name = args.zoo or json.loads((Path(args.lib_dir) / "manifest.json").read_text())["zoo"]
    store = ZooStore(Path(args.cache)) if args.cache else ZooStore.default()
    zoo = store.load(zoo_name)
    rows = []
    for task in zoo.tasks:
        if zoo.entry(task).modality != "text":
            sys.exit(f"error: zoo '{zoo_name}' task '{task}' is not text; give --inputs with image paths")
        texts = zoo.task_data(task)["test"]["inputs"][: args.per_task]
        rows += [{"text": str(t), "task": task} for t in texts]
    return rows


def start_server(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    choice = ["--budget", str(args.budget)] if args.budget is not None else ["--config", args.config or "c0"]
    cmd = [sys.executable, "-m", "modmerge.cli", "serve", str(args.lib_dir), *choice, "--port", str(port),
           "--max-inputs", str(max(args.batch, 64)), "--queue-size", str(args.queue_size),
           *(["--cache", args.cache] if args.cache else []), *args.server_arg]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while True:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"error: the server did not answer /healthz within {args.start_timeout} s")
        time.sleep(0.2)


def body(rows: list[dict], oracle: bool) -> dict:
    payload: dict = {"inputs": [{k: v for k, v in r.items() if k in ("text", "image")} for r in rows]}
    tasks = {r.get("task") for r in rows}
    if oracle and len(tasks) == 1 and None not in tasks:
        payload["task"] = tasks.pop()
    return payload


def draw(pool: list[dict], n: int, rng: random.Random, oracle: bool) -> list[dict]:
    if not oracle:
        return rng.sample(pool, min(n, len(pool)))
    task = rng.choice(pool).get("task")  # one oracle label per request
    same = [r for r in pool if r.get("task") == task]
    return rng.sample(same, min(n, len(same)))


async def client(http: httpx.AsyncClient, url: str, pool: list[dict], args: argparse.Namespace, seed: int,
                 end: float, latencies: list[float], statuses: dict[str, int], sent: list[int]) -> None:
    rng = random.Random(seed)
    while time.monotonic() < end:
        rows = draw(pool, args.batch, rng, args.oracle)
        started = time.perf_counter()
        try:
            r = await http.post(f"{url}/v1/predict", json=body(rows, args.oracle))
            key = str(r.status_code)
        except httpx.HTTPError as err:
            key = type(err).__name__
        statuses[key] = statuses.get(key, 0) + 1
        if key == "200":
            latencies.append(time.perf_counter() - started)
            sent[0] += len(rows)


async def sample_rss(pid: int | None, samples: list[int], stop: asyncio.Event) -> None:
    if pid is None:
        return
    proc = psutil.Process(pid)
    while not stop.is_set():
        samples.append(proc.memory_info().rss)
        with contextlib.suppress(TimeoutError):  # the sampling period elapsed
            await asyncio.wait_for(stop.wait(), 0.5)


async def load(url: str, pool: list[dict], args: argparse.Namespace, pid: int | None) -> dict:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        # warm-up: every task's chain assembled once, so the timed part measures steady state
        tasks = sorted({r.get("task") for r in pool}, key=str)
        for task in tasks * args.warmup:
            rows = [r for r in pool if r.get("task") == task][: args.batch]
            r = await http.post(f"{url}/v1/predict", json=body(rows, args.oracle))
            r.raise_for_status()
        before = (await http.get(f"{url}/v1/stats")).json()
        rss: list[int] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(pid, rss, stop))
        await asyncio.sleep(0)
        latencies: list[float] = []
        statuses: dict[str, int] = {}
        sent = [0]
        started = time.monotonic()
        end = started + args.duration
        await asyncio.gather(*(client(http, url, pool, args, 1000 + i, end, latencies, statuses, sent)
                               for i in range(args.clients)))
        elapsed = time.monotonic() - started
        stop.set()
        await sampler
        after = (await http.get(f"{url}/v1/stats")).json()
    batches = after["batches"] - before["batches"]
    ok = statuses.get("200", 0)
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "url": url, "clients": args.clients, "duration_s": round(elapsed, 2), "batch": args.batch,
        "oracle": args.oracle, "requests_ok": ok, "errors": sum(v for k, v in statuses.items() if k != "200"),
        "statuses": statuses, "requests_per_s": round(ok / elapsed, 1), "inputs_per_s": round(sent[0] / elapsed, 1),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1),
                       "max": round(float(lat.max()), 1)},
        "server_batches": batches,
        "server_inputs_per_batch": round((after["inputs"] - before["inputs"]) / batches, 2) if batches else None,
        "server_requests_per_batch": round((after["requests"] - before["requests"]) / batches, 2) if batches else None,
        "rss_mib": None if not rss else {
            "start": round(rss[0] / MIB, 1), "end": round(rss[-1] / MIB, 1), "peak": round(max(rss) / MIB, 1),
            "growth": round((rss[-1] - rss[0]) / MIB, 1), "samples": len(rss),
            # allocator pools settle early; a leak keeps growing in the second half too
            "growth_second_half": round((rss[-1] - rss[len(rss) // 2]) / MIB, 1),
            "trace": [round(r / MIB, 1) for r in rss[:: max(1, len(rss) // 20)]],
        },
    }


def report(result: dict) -> str:
    rss = result["rss_mib"]
    lines = [
        f"{result['clients']} clients x {result['duration_s']} s, {result['batch']} inputs/request "
        f"({'oracle task' if result['oracle'] else 'routed'}) against {result['url']}",
        f"  requests/s {result['requests_per_s']}   inputs/s {result['inputs_per_s']}   "
        f"ok {result['requests_ok']}   errors {result['errors']} {result['statuses']}",
        f"  latency p50 {result['latency_ms']['p50']} ms   p99 {result['latency_ms']['p99']} ms   "
        f"max {result['latency_ms']['max']} ms",
        f"  server: {result['server_batches']} batches, {result['server_requests_per_batch']} requests and "
        f"{result['server_inputs_per_batch']} inputs per batch",
    ]
    if rss:
        lines.append(f"  server RSS MiB: start {rss['start']}  end {rss['end']}  peak {rss['peak']}  "
                     f"growth {rss['growth']} (second half {rss['growth_second_half']}; {rss['samples']} samples)")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("lib_dir", nargs="?", help="Library to serve (starts `modmerge serve` as a subprocess).")
    p.add_argument("--url", help="Use a running server instead.")
    p.add_argument("--pid", type=int, help="With --url: the server's pid, for RSS.")
    p.add_argument("--budget", type=float)
    p.add_argument("--config")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--batch", type=int, default=4, help="Inputs per request.")
    p.add_argument("--oracle", action="store_true", help="Send the task label (skip the router).")
    p.add_argument("--inputs", help="JSON-lines inputs; default: the zoo's test split.")
    p.add_argument("--zoo", help="Zoo to draw inputs from (default: the library's).")
    p.add_argument("--cache", help="Zoo cache (inputs; and the server's, for routing features).")
    p.add_argument("--per-task", type=int, default=200, help="Test inputs taken per task.")
    p.add_argument("--warmup", type=int, default=2, help="Warm-up requests per task.")
    p.add_argument("--queue-size", type=int, default=64)
    p.add_argument("--start-timeout", type=float, default=180.0)
    p.add_argument("--server-arg", action="append", default=[], help="Extra `modmerge serve` argument (repeat).")
    p.add_argument("--json", help="Also write the figures here.")
    args = p.parse_args()
    if (args.lib_dir is None) == (args.url is None):
        sys.exit("error: give LIB_DIR or --url")
    pool = load_inputs(args)
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            url, pid = args.url.rstrip("/"), args.pid
        else:
            proc, url = start_server(args, Path(tmp) / "server.log")
            pid = proc.pid
        try:
            result = asyncio.run(load(url, pool, args, pid))
        finally:
            if proc is not None:
                proc.terminate()  # uvicorn shuts down gracefully on SIGTERM
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
