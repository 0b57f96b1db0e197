"""Helpers of the serve / blob / predict battery: a tiny real library, hostile PNGs, slow sockets."""

from __future__ import annotations

import base64
import contextlib
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from modmerge.library import build_library
from modmerge.search.driver import run_search_recipe
from modmerge.search.recipe import SearchRecipe
from modmerge.zoo.store import ZooStore


def build_tiny_library(tiny_zoo, root: Path) -> Path:
    """LIB_DIR of a one-run, population-2 search on the ``tiny`` zoo (no router: give tasks)."""
    source = ZooStore(tiny_zoo.root.parent.parent).load("tiny")
    recipe = SearchRecipe(zoo="tiny", budget=2, population=2, runs=1, validation_limit=8, test_limit=8,
                          surrogate=False, init="random")
    run_search_recipe(recipe, root / "run", source=source)
    build_library(root / "run", root / "lib", source=source)
    return root / "lib"


def png(width: int, height: int, *, idat: bytes | None = None) -> bytes:
    """A greyscale PNG of ``width`` x ``height`` zeros; ``idat`` replaces its compressed pixels
    (a few bytes give a "header bomb": the size claimed, but nothing behind it)."""
    if idat is None:
        rows = zlib.compressobj(9)
        idat = b"".join([rows.compress(b"\0" * (width + 1)) for _ in range(height)] + [rows.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def header_bomb(side: int = 20000) -> bytes:
    """A 100-byte PNG whose header claims ``side`` x ``side`` pixels."""
    return png(side, side, idat=zlib.compress(b"\0" * 64))


def pixel_decodes(monkeypatch) -> list[tuple[int, int]]:
    """The sizes of the images PIL decompresses from now on (a list that grows per decode)."""
    from PIL import ImageFile

    decoded: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def counting_load(self):  # type: ignore[no-untyped-def]
        decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return decoded


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@contextlib.contextmanager
def running(config: uvicorn.Config, timeout: float = 10.0) -> Iterator[str]:
    """Run the uvicorn ``config`` (host/port ignored: a free 127.0.0.1 port) in a thread; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
        assert not thread.is_alive(), "server did not stop"


def seconds_until_closed(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the peer closes ``sock`` (reads and drops what it sends), or None within ``limit``."""
    started = time.monotonic()
    sock.settimeout(0.05)
    while time.monotonic() - started < limit:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - started
    return None


def image_engine(backbone_dir: Path, *, max_image_pixels: int | None = None, image_size: int = 28):
    """A real ReuseEngine over a one-task IMAGE library stub (no weights): its ``prepare`` is the
    real one; ``predict`` answers each image's mean grey level (x 255) as its label, from the real
    :func:`~modmerge.reuse.inputs.encode_images`, and records every call in ``engine.calls``."""
    from types import SimpleNamespace

    import transformers

    from modmerge.reuse import ReuseEngine
    from modmerge.reuse.inputs import encode_images, parse_input

    transformers.ViTConfig(image_size=image_size, num_channels=1).save_pretrained(backbone_dir)
    config = SimpleNamespace(id="c0", storage_cost=1.0, validation={"mean": 1.0}, test=None,
                             chains={"digits": "ch-digits"}, modules=[])
    task = SimpleNamespace(name="digits", modality="image", metric="accuracy", labels=[], pooling="cls", max_length=0)
    library = SimpleNamespace(configurations=[config], tasks=[task], backbone_dir=backbone_dir, root=backbone_dir,
                              select=lambda budget: config)
    extra = {} if max_image_pixels is None else {"max_image_pixels": max_image_pixels}
    engine = ReuseEngine(library, config_id="c0", **extra)
    engine.calls = []

    def predict(inputs, tasks=None):
        engine.calls.append(list(inputs))
        raws = [x if not isinstance(x, dict) else parse_input(x, where=f"input {i}") for i, x in enumerate(inputs)]
        pixels = encode_images(raws, engine.image_size, max_pixels=engine.max_image_pixels)
        grey = pixels.flatten(1).mean(1) * 0.5 + 0.5  # pixel_values maps [0, 1] to [-1, 1]
        return [{"task": "digits", "label": round(float(g) * 255), "chain": "ch-digits"} for g in grey.tolist()]

    engine.predict = predict
    return engine


def grey_png(level: int, side: int = 28) -> bytes:
    """A ``side`` x ``side`` PNG of one grey ``level`` (0-255)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (side, side), level).save(out, format="PNG")
    return out.getvalue()


class FakeTextEngine:
    """A text engine that labels each text by its length (one task ``a``)."""

    def __init__(self) -> None:
        self.config = {"id": "c1", "chains": {"a": "ch-a"}}

    def predict(self, inputs: list[dict], tasks: list[str] | None = None) -> list[dict]:
        return [{"task": "a", "label": len(x["text"]), "chain": "ch-a"} for x in inputs]

    def configs(self) -> list[dict]:
        return []
