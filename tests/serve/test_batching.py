"""Cross-request batching and back-pressure, made deterministic by holding the engine on a gate."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from serve_support import FakeEngine


def wait_for_depth(client, url, depth, timeout=5.0):
    deadline = time.monotonic() + timeout
    while client.get(f"{url}/healthz").json()["queue_depth"] != depth:
        assert time.monotonic() < deadline, f"queue never reached depth {depth}"
        time.sleep(0.01)


def test_concurrent_requests_share_one_engine_call(serve, client):
    engine = FakeEngine(gate=threading.Event())
    url, _ = serve(engine, queue_size=4, batch_window_ms=50)
    post = lambda texts: client.post(f"{url}/v1/predict", json={"inputs": [{"text": t} for t in texts]})  # noqa: E731
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, ["warm"])
        assert engine.entered.wait(5)  # the worker is busy with `first` ...
        second, third = pool.submit(post, ["ab", "c"]), pool.submit(post, ["def"])
        wait_for_depth(client, url, 2)  # ... while two more requests wait together
        engine.gate.set()
        answers = [f.result() for f in (first, second, third)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert [o["label"] for o in answers[1].json()["outputs"]] == [2, 1]
    assert [o["label"] for o in answers[2].json()["outputs"]] == [3]
    assert len(engine.calls) == 2  # `first` alone, then both waiting requests in ONE call
    assert sorted(x["text"] for x in engine.calls[1][0]) == ["ab", "c", "def"]
    stats = client.get(f"{url}/v1/stats").json()
    assert stats["batches"] == 2 and stats["max_requests_per_batch"] == 2 and stats["max_inputs_per_batch"] == 3
    assert stats["recent_batches"] == [{"requests": 1, "inputs": 1}, {"requests": 2, "inputs": 3}]


def test_routed_and_oracle_requests_in_one_batch_use_one_call_each(serve, client):
    engine = FakeEngine(gate=threading.Event())
    url, _ = serve(engine, queue_size=4)
    post = lambda payload: client.post(f"{url}/v1/predict", json=payload)  # noqa: E731
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(post, {"inputs": [{"text": "warm"}]})
        assert engine.entered.wait(5)
        routed = pool.submit(post, {"inputs": [{"text": "xyz"}]})
        oracle = pool.submit(post, {"inputs": [{"text": "xyz"}], "task": "b"})
        wait_for_depth(client, url, 2)
        engine.gate.set()
        assert [f.result().status_code for f in (first, routed, oracle)] == [200, 200, 200]
    assert routed.result().json()["outputs"][0]["task"] == "a"
    assert oracle.result().json()["outputs"][0]["task"] == "b"
    assert sorted(str(tasks) for _, tasks in engine.calls[1:]) == ["None", "['b']"]
    assert client.get(f"{url}/v1/stats").json()["batches"] == 2


def test_full_queue_answers_503_at_once(serve, client):
    engine = FakeEngine(gate=threading.Event())
    url, _ = serve(engine, queue_size=1)
    post = lambda: client.post(f"{url}/v1/predict", json={"inputs": [{"text": "a"}]})  # noqa: E731
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(post)
        assert engine.entered.wait(5)
        queued = pool.submit(post)
        wait_for_depth(client, url, 1)
        refused = post()  # answered while the engine is still held: it never waited for a slot
        assert not engine.gate.is_set() and refused.status_code == 503
        assert refused.json()["error"] == "the request queue is full (1 waiting); retry later"
        assert refused.headers["retry-after"] == "1"
        engine.gate.set()
        assert busy.result().status_code == 200 and queued.result().status_code == 200
    assert client.get(f"{url}/v1/stats").json()["rejected_queue_full"] == 1


def test_batches_never_exceed_max_batch(serve, client):
    engine = FakeEngine(gate=threading.Event())
    url, _ = serve(engine, queue_size=8, max_inputs=3, max_batch=4)
    post = lambda n: client.post(f"{url}/v1/predict", json={"inputs": [{"text": "t"}] * n})  # noqa: E731
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, 1)
        assert engine.entered.wait(5)
        rest = [pool.submit(post, 3), pool.submit(post, 1)]
        rest.append(pool.submit(post, 2))
        wait_for_depth(client, url, 3)
        engine.gate.set()
        assert all(f.result().status_code == 200 for f in [first, *rest])
    assert all(len(inputs) <= 4 for inputs, _ in engine.calls)
    assert sum(len(inputs) for inputs, _ in engine.calls) == 7
