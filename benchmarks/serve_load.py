"""Load test of `modmerge serve`: N concurrent clients for D seconds from a second process.

Starts `modmerge serve LIB_DIR` as a subprocess on a free loopback port (or uses --url), warms it
up (every expert chain assembled once), then runs --clients concurrent clients that post batches
of --batch inputs for --duration seconds. Prints requests/s, inputs/s, p50/p99 latency, the error
count by status, the server's batching counters, and the server's RSS after warm-up, at the end
and at its peak (sampled every 0.5 s), so growth under load is visible.

Inputs come from a JSON-lines file (``{"text": ...}`` or ``{"image": "path"}`` per line, an
optional ``"task"``) or, by default, the test split of the library's zoo (text zoos).

``--bad-fraction 0.2`` mixes hostile requests into the load (each request is bad with that
probability, the kinds in turn): malformed JSON, an unknown field, too many inputs, a body over
the limit, image bombs (a 20000 x 20000 and a 12000 x 12000 PNG, under the body limit) and a
broken image. It then reports, each beside its goal: errors among the GOOD requests (goal 0),
their p50/p99, bad requests answered other than with their 4xx, and the server's RSS before and
after the load (goal: within 10%). ``$MODMERGE_TOKEN``, when set, is sent as the bearer token.

    .venv/bin/python benchmarks/serve_load.py LIB_DIR --budget 0.5 --clients 8 --duration 30
    .venv/bin/python benchmarks/serve_load.py LIB_DIR --budget 0.5 --duration 20 --bad-fraction 0.2
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:8000 --pid 1234 --inputs x.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
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
           "--max-inputs", str(max_inputs(args)), "--max-body-bytes", str(args.max_body_bytes),
           "--queue-size", str(args.queue_size),
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


def max_inputs(args: argparse.Namespace) -> int:
    return max(args.batch, 64)


def png_of_zeros(width: int, height: int) -> bytes:
    """A greyscale PNG of zeros, compressed row by row (never held whole): a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compressobj(9)
    idat = b"".join([rows.compress(b"\0" * (width + 1)) for _ in range(height)] + [rows.flush()])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def bad_requests(args: argparse.Namespace) -> list[tuple[str, bytes, int]]:
    """(kind, body bytes, the status it must get) of every hostile request the load mixes in."""
    def js(payload: dict) -> bytes:
        return json.dumps(payload).encode()

    def image(data: bytes) -> bytes:
        return js({"inputs": [{"image_b64": base64.b64encode(data).decode()}]})

    bombs = [("bomb_20000x20000", image(png_of_zeros(20000, 20000)), 400),
             ("bomb_12000x12000", image(png_of_zeros(12000, 12000)), 400)]
    for kind, data, _ in bombs:
        if len(data) > args.max_body_bytes:
            sys.exit(f"error: the {kind} body ({len(data)} bytes) is over --max-body-bytes {args.max_body_bytes}")
    return [
        ("malformed_json", b'{"inputs": [{"text": "unfinished', 422),
        ("unknown_field", js({"inputs": [{"txt": "a field the API lacks"}]}), 422),
        ("too_many_inputs", js({"inputs": [{"text": "x"}] * (max_inputs(args) + 1)}), 413),
        ("oversized_body", js({"inputs": [{"text": "x" * (args.max_body_bytes + 1024)}]}), 413),
        *bombs,
        ("broken_image", image(b"\x89PNG\r\n\x1a\n" + os.urandom(2048)), 400),
    ]


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
                 end: float, latencies: list[float], statuses: dict[str, int], sent: list[int],
                 bad: Bad) -> None:
    rng = random.Random(seed)
    while time.monotonic() < end:
        if bad.kinds and rng.random() < args.bad_fraction:
            await bad.send(http, url)
            continue
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


class Bad:
    """The hostile requests, sent in turn; counts each kind's answers and the wrong ones."""

    def __init__(self, kinds: list[tuple[str, bytes, int]]) -> None:
        self.kinds = kinds
        self._next = itertools.cycle(kinds)
        self.answers: dict[str, dict[str, int]] = {kind: {} for kind, _, _ in kinds}
        self.wrong = 0

    async def send(self, http: httpx.AsyncClient, url: str) -> None:
        kind, content, expected = next(self._next)
        try:
            r = await http.post(f"{url}/v1/predict", content=content, headers={"content-type": "application/json"})
            key = str(r.status_code)
        except httpx.HTTPError as err:
            key = type(err).__name__
        self.answers[kind][key] = self.answers[kind].get(key, 0) + 1
        self.wrong += key != str(expected)


async def sample_rss(pid: int | None, samples: list[int], stop: asyncio.Event) -> None:
    if pid is None:
        return
    proc = psutil.Process(pid)
    while not stop.is_set():
        samples.append(proc.memory_info().rss)
        with contextlib.suppress(TimeoutError):  # the sampling period elapsed
            await asyncio.wait_for(stop.wait(), 0.5)


async def load(url: str, pool: list[dict], args: argparse.Namespace, pid: int | None,
               bad: Bad) -> dict:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    token = os.environ.get("MODMERGE_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as http:
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
        await asyncio.gather(*(client(http, url, pool, args, 1000 + i, end, latencies, statuses, sent, bad)
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
        "bad_fraction": args.bad_fraction if bad.kinds else 0.0,
        "bad_requests": sum(sum(v.values()) for v in bad.answers.values()),
        "bad_answered_wrongly": bad.wrong,
        "bad_statuses": {kind: dict(v) for kind, v in bad.answers.items()},
        "bad_expected": {kind: expected for kind, _, expected in bad.kinds},
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
    if result["bad_fraction"]:
        lines += bad_report(result)
    return "\n".join(lines)


def bad_report(result: dict) -> list[str]:
    """The bad-request mode's figures, each beside its goal."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    rss = result["rss_mib"]
    good_errors = result["errors"]
    lines = [f"  mixed load: {result['bad_requests']} bad requests ({100 * result['bad_fraction']:.0f}% asked) "
             f"beside {result['requests_ok'] + good_errors} good ones",
             f"    good requests' errors      {good_errors:>8}   goal 0            {verdict(good_errors == 0)}",
             f"    good requests' p50 / p99   {result['latency_ms']['p50']} / {result['latency_ms']['p99']} ms   "
             "goal: reported",
             f"    bad requests answered otherwise than their 4xx {result['bad_answered_wrongly']}   goal 0   "
             f"{verdict(result['bad_answered_wrongly'] == 0)}"]
    if rss:
        change = (rss["end"] - rss["start"]) / rss["start"]
        lines.append(f"    server RSS before / after  {rss['start']} / {rss['end']} MiB ({100 * change:+.1f}%)   "
                     f"goal within 10%   {verdict(abs(change) <= 0.10)}")
    for kind, answers in result["bad_statuses"].items():
        lines.append(f"    {kind:<20} expected {result['bad_expected'][kind]}, got {answers}")
    return lines


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
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="The server's body limit (what it is started with).")
    p.add_argument("--bad-fraction", type=float, default=0.0,
                   help="Share of requests that are hostile (malformed, oversized, image bombs), e.g. 0.2.")
    p.add_argument("--start-timeout", type=float, default=180.0)
    p.add_argument("--server-arg", action="append", default=[], help="Extra `modmerge serve` argument (repeat).")
    p.add_argument("--json", help="Also write the figures here.")
    args = p.parse_args()
    if (args.lib_dir is None) == (args.url is None):
        sys.exit("error: give LIB_DIR or --url")
    pool = load_inputs(args)
    if not 0.0 <= args.bad_fraction < 1.0:
        sys.exit("error: --bad-fraction must be in [0, 1)")
    bad = Bad(bad_requests(args) if args.bad_fraction else [])
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            url, pid = args.url.rstrip("/"), args.pid
        else:
            proc, url = start_server(args, Path(tmp) / "server.log")
            pid = proc.pid
        try:
            result = asyncio.run(load(url, pool, args, pid, bad))
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
