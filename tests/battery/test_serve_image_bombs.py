"""Image bombs and broken uploads through the service: 400 for the culprit, 200 for its batch-mates.

A 380 KiB PNG claiming 20000 x 20000 pixels raised PIL's DecompressionBombError, answered 500,
and failed every good request batched with it. Now the engine's ``prepare`` decodes each request
alone within ``max_image_pixels`` and the batcher isolates whatever a bad request raises.
"""

from __future__ import annotations

import gc
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from serve_battery_support import (
    b64,
    grey_png,
    header_bomb,
    image_engine,
    pixel_decodes,
    png,
    running,
)

from modmerge.errors import ModmergeError
from modmerge.image_files import DEFAULT_MAX_IMAGE_PIXELS
from modmerge.serve import ServeSettings, create_app


@pytest.fixture
def client():
    with httpx.Client(timeout=20) as c:
        yield c


def config(app):
    return uvicorn.Config(app, log_level="warning", lifespan="on")


def hold_first_call(engine):
    """Make the engine's first ``predict`` wait on a gate, so later requests queue into one batch."""
    gate, entered, original = threading.Event(), threading.Event(), engine.predict

    def gated(inputs, tasks=None):
        if not entered.is_set():
            entered.set()
            assert gate.wait(10), "test gate never opened"
        return original(inputs, tasks)

    engine.predict = gated
    return gate, entered


def wait_for_depth(client, url, depth, timeout=5.0):
    deadline = time.monotonic() + timeout
    while client.get(f"{url}/healthz").json()["queue_depth"] < depth:
        assert time.monotonic() < deadline, f"queue never reached depth {depth}"
        time.sleep(0.01)


def test_bombs_get_400_and_their_batch_mates_200_in_one_engine_call(tmp_path, client):
    engine = image_engine(tmp_path / "backbone")
    gate, entered = hold_first_call(engine)
    app = create_app(engine, ServeSettings(batch_window_ms=200, queue_size=32))
    bombs = {
        3: (b64(header_bomb(20000)), "input 0: image_b64 ({n} bytes) is over the limit of 16777216 pixels (max_image_pixels)"),
        7: (b64(png(5000, 5000)), "input 0: image_b64 ({n} bytes) is 5000 x 5000 pixels, over the limit of 16777216 pixels (max_image_pixels)"),
        9: (b64(png(28, 28)[:40]), "input 0: image_b64 holds no readable image ({n} bytes)"),
        12: ("not base64!", "input 0: 'image_b64' is not valid base64"),
    }
    levels = {i: 10 * i for i in range(16) if i not in bombs}
    with running(config(app)) as url, ThreadPoolExecutor(17) as pool:
        post = lambda item: client.post(f"{url}/v1/predict", json={"inputs": [item]})  # noqa: E731
        warm = pool.submit(post, {"image_b64": b64(grey_png(1))})
        assert entered.wait(10)
        answers = {i: pool.submit(post, {"image_b64": bombs[i][0] if i in bombs else b64(grey_png(levels[i]))})
                   for i in range(16)}
        wait_for_depth(client, url, 16)
        gate.set()
        assert warm.result().status_code == 200
        answers = {i: f.result() for i, f in answers.items()}
        stats = client.get(f"{url}/v1/stats").json()
    for i, r in answers.items():
        if i in bombs:
            size = len(bombs[i][0]) * 3 // 4 - bombs[i][0].count("=")
            assert r.status_code == 400, (i, r.text)
            assert r.json()["error"] == bombs[i][1].format(n=size)
        else:
            assert r.status_code == 200, (i, r.text)
            assert r.json()["outputs"][0]["label"] == levels[i]
    # the 12 good requests were answered together, in one engine call after the warm-up's
    assert len(engine.calls) == 2 and len(engine.calls[1]) == 12
    assert stats["failed"] == 4 and stats["recent_batches"][-1] == {"requests": 12, "inputs": 12}


def test_the_pixel_limit_is_a_setting_of_the_engine(tmp_path, client):
    engine = image_engine(tmp_path / "backbone", max_image_pixels=60 * 60)
    with running(config(create_app(engine, ServeSettings()))) as url:
        small = client.post(f"{url}/v1/predict", json={"inputs": [{"image_b64": b64(grey_png(50, side=60))}]})
        big = client.post(f"{url}/v1/predict", json={"inputs": [{"image_b64": b64(grey_png(50, side=61))}]})
    assert small.status_code == 200 and small.json()["outputs"][0]["label"] == 50
    assert big.status_code == 400
    assert "is 61 x 61 pixels, over the limit of 3600 pixels (max_image_pixels)" in big.json()["error"]


class Exploding:
    """An engine WITHOUT ``prepare`` whose predict raises a non-modmerge error on the text 'boom'."""

    def __init__(self):
        self.config = {"id": "c1", "chains": {"a": "ch-a"}}
        self.calls = []

    def predict(self, inputs, tasks=None):
        self.calls.append(len(inputs))
        if any(x.get("text") == "boom" for x in inputs):
            raise MemoryError("boom") if len(inputs) == 1 else ValueError("a bug that is not a ModmergeError")
        if any(x.get("text") == "refused" for x in inputs):
            raise ModmergeError("input 0: refused")
        return [{"task": "a", "label": len(x["text"]), "chain": "ch-a"} for x in inputs]

    def configs(self):
        return []


def test_any_exception_is_isolated_to_its_own_request(client):
    engine = Exploding()
    gate, entered = hold_first_call(engine)
    app = create_app(engine, ServeSettings(batch_window_ms=200))
    texts = ["a", "bb", "boom", "ccc", "refused", "dddd"]
    with running(config(app)) as url, ThreadPoolExecutor(7) as pool:
        post = lambda t: client.post(f"{url}/v1/predict", json={"inputs": [{"text": t}]})  # noqa: E731
        warm = pool.submit(post, "w")
        assert entered.wait(10)
        answers = [pool.submit(post, t) for t in texts]
        wait_for_depth(client, url, len(texts))
        gate.set()
        answers = [f.result() for f in answers]
    assert warm.result().status_code == 200
    assert [r.status_code for r in answers] == [200, 200, 500, 200, 400, 200]
    assert [r.json()["outputs"][0]["label"] for r in answers if r.status_code == 200] == [1, 2, 3, 4]
    assert answers[2].json()["error"] == "engine failed: MemoryError: boom"
    assert answers[4].json()["error"] == "input 0: refused"


def test_what_one_request_may_cost_is_bounded_by_settings():
    settings = ServeSettings()
    assert settings.max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS == 4096 * 4096
    assert settings.decode_bytes_bound == 5 * 4096 * 4096  # widest PIL mode (4 bytes) + its greyscale copy
    assert (settings.max_body_bytes, settings.max_inputs) == (1 << 20, 64)
    assert ServeSettings(max_image_pixels=1000).decode_bytes_bound == 5000


def test_a_header_bomb_is_refused_without_decompressing(tmp_path, monkeypatch):
    engine = image_engine(tmp_path / "backbone")
    decoded = pixel_decodes(monkeypatch)
    with pytest.raises(ModmergeError, match="is over the limit of 16777216 pixels"):
        engine.prepare([{"image_b64": b64(header_bomb(20000))}])
    with pytest.raises(ModmergeError, match="is 5000 x 5000 pixels, over the limit"):
        engine.prepare([{"image_b64": b64(png(5000, 5000))}])
    assert decoded == []  # 400 MB or 25 MB of pixels were never decoded


def cyclic_garbage_after(fn):
    """(frames, sizes of the str/bytes over 10 kB) that only the cycle collector would free after ``fn()``."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        fn()
        gc.collect()
        frames = sum(isinstance(x, types.FrameType) for x in gc.garbage)
        big = {id(r): len(r) for x in gc.garbage for r in gc.get_referents(x)
               if isinstance(r, str | bytes) and len(r) > 10_000}
        return frames, sorted(big.values())
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_refused_bombs_leave_no_cycles_holding_their_bodies(tmp_path, client):
    """A refused request's body used to sit in reference cycles (error -> traceback -> frame ->
    future -> error) until a full GC: +150 MiB RSS under a stream of bombs. What may remain is
    the web framework's own per-request cycle: one copy of the upload, as for a good request."""
    engine = image_engine(tmp_path / "backbone")
    upload = b64(png(5000, 5000))
    with running(config(create_app(engine, ServeSettings()))) as url:
        def send():
            for _ in range(5):
                assert client.post(f"{url}/v1/predict", json={"inputs": [{"image_b64": upload}]}).status_code == 400
                assert client.post(f"{url}/v1/predict", json={"inputs": [{"image_b64": b64(header_bomb())}]}
                                   ).status_code == 400

        frames, big = cyclic_garbage_after(send)
    assert frames == 0
    assert len(big) <= 5 and all(len(upload) <= n < len(upload) + 100 for n in big)  # the body's text, once


def test_serve_passes_max_image_pixels_to_the_engine(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import modmerge.cli.reuse
    import modmerge.library
    import modmerge.reuse
    from modmerge.cli import main

    seen = {}

    def fake_engine(library, **kwargs):
        seen.update(kwargs)
        raise ModmergeError("stopped after the engine was configured")

    monkeypatch.setattr(modmerge.reuse, "ReuseEngine", fake_engine)
    monkeypatch.setattr(modmerge.library.Library, "open", classmethod(lambda cls, path: None))
    monkeypatch.setattr(modmerge.cli.reuse, "library_source", lambda lib, cache: None)
    args = ["serve", str(tmp_path), "--config", "c0"]
    result = CliRunner().invoke(main, [*args, "--max-image-pixels", "4321"], env={"MODMERGE_TOKEN": ""})
    assert result.exit_code == 2 and "stopped after the engine was configured" in result.output
    assert seen["max_image_pixels"] == 4321
    refused = CliRunner().invoke(main, [*args, "--max-image-pixels", "0"])
    assert refused.exit_code == 2 and "--max-image-pixels" in refused.output
