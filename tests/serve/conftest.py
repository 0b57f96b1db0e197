"""A real uvicorn server on loopback in a background thread, and a deterministic fake engine."""

from __future__ import annotations

import contextlib

import httpx
import pytest
from serve_support import FakeEngine, live_server

from modmerge.serve import ServeSettings, create_app


@pytest.fixture
def serve():
    """``serve(engine=None, **settings)`` -> (base_url, engine); servers stop at test end."""
    stack = contextlib.ExitStack()

    def start(engine: FakeEngine | None = None, **settings) -> tuple[str, FakeEngine]:
        engine = engine or FakeEngine()
        url = stack.enter_context(live_server(create_app(engine, ServeSettings(**settings))))
        return url, engine

    with stack:
        yield start


@pytest.fixture
def client():
    with httpx.Client(timeout=10) as c:
        yield c
