"""ASGI middleware that refuses oversized request bodies before anything parses them."""

from __future__ import annotations

import json
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


class BodyLimit:
    """Answer 413 when a body is over ``max_bytes``: by Content-Length, or while it streams in.

    The (bounded) body is buffered and replayed to the app, so a chunked upload without a
    Content-Length cannot slip past the limit either.

    Example::

        app = BodyLimit(fastapi_app, max_bytes=1 << 20)
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _reply(send, 400, f"Content-Length: not a number ({declared[:32]!r})")
                return
            if size > self.max_bytes:
                await _reply(send, 413, self._message(size))
                return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await _reply(send, 413, self._message(total, streamed=True))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _message(self, size: int, streamed: bool = False) -> str:
        got = f"more than {self.max_bytes} bytes arrived" if streamed else f"{size} bytes"
        return f"request body: {got}, over the limit of {self.max_bytes} bytes (max_body_bytes)"


async def _reply(send: Any, status: int, error: str) -> None:
    payload = json.dumps({"error": error}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        # the rest of an oversized body is never read: tell the client not to reuse the connection
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": payload})
