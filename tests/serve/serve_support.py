"""A deterministic fake engine and a real uvicorn server on loopback in a background thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn

from modmerge.errors import ModmergeError


@dataclass
class FakeEngine:
    """Routes by text length, labels by parity; records every call; can hold a call on a gate."""

    config: dict = field(default_factory=lambda: {"id": "c1", "chains": {"a": "ch-a", "b": "ch-b"}})
    calls: list[tuple[list[dict], list[str] | None]] = field(default_factory=list)
    gate: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)

    def predict(self, inputs: list[dict], tasks: list[str] | None = None) -> list[dict]:
        self.calls.append((list(inputs), tasks))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        out = []
        for i, x in enumerate(inputs):
            if x.get("text") == "bad":
                raise ModmergeError("inputs: the text 'bad' is refused by the fake engine")
            task = tasks[i] if tasks else ("a" if len(x.get("text", "")) % 2 else "b")
            out.append({"task": task, "label": len(x.get("text", "x")), "label_name": None, "chain": f"ch-{task}"})
        return out

    def configs(self) -> list[dict]:
        return [{"id": "c0", "storage_cost": 0.3, "validation": {"mean": 0.7}},
                {"id": "c1", "storage_cost": 0.6, "validation": {"mean": 0.8}}]


@contextlib.contextmanager
def live_server(app, timeout: float = 10.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) in a thread; yields the base URL; stops cleanly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
        assert not thread.is_alive(), "server did not stop"
