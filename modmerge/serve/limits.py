"""ASGI middleware that refuses a request before anything parses it: no (or a wrong) bearer
token, an oversized body, or a body that arrives too slowly."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Collection
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
# how much of an oversized body is read (and dropped) so that its client can read the 413
DRAIN_FACTOR = 4


class BodyLimit:
    """Answer 413 when a body is over ``max_bytes``: by Content-Length, or while it streams in;
    408 when all of it has not arrived within ``timeout_s`` (a slow client holds no worker long).

    The (bounded) body is buffered and replayed to the app, so a chunked upload without a
    Content-Length cannot slip past the limit either. The rest of an oversized body, up to
    ``DRAIN_FACTOR`` x ``max_bytes`` and within ``timeout_s``, is read and dropped before the
    413: a server that closes while a client still sends makes the client's kernel reset the
    connection, and the client never reads its 413.

    Example::

        app = BodyLimit(fastapi_app, max_bytes=1 << 20, timeout_s=30)
    """

    def __init__(self, app: Any, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

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
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s

        async def next_message() -> Message | None:
            """The next message; None (a 408 sent) when the body is too slow."""
            try:
                return await asyncio.wait_for(receive(), None if deadline is None else deadline - loop.time())
            except TimeoutError:
                await _reply(send, 408, f"request body: not all of it arrived within {self.timeout_s:g} s (body_timeout_s)")
                return None

        if declared is not None and size > self.max_bytes:
            if size <= DRAIN_FACTOR * self.max_bytes and not await self._drain(next_message, 0):
                return
            await _reply(send, 413, self._message(size))
            return
        chunks, total = [], 0
        while True:
            message = await next_message()
            if message is None or message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                if message.get("more_body", False) and not await self._drain(next_message, total):
                    return
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

    async def _drain(self, next_message: Any, total: int) -> bool:
        """Read and drop the body until it ends or DRAIN_FACTOR x max_bytes have come; False when
        there is no one left to answer (a 408 was sent, or the client left)."""
        while total <= DRAIN_FACTOR * self.max_bytes:
            message = await next_message()
            if message is None or message["type"] == "http.disconnect":
                return False
            total += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return True

    def _message(self, size: int, streamed: bool = False) -> str:
        got = f"more than {self.max_bytes} bytes arrived" if streamed else f"{size} bytes"
        return f"request body: {got}, over the limit of {self.max_bytes} bytes (max_body_bytes)"


class BearerAuth:
    """Answer 401 unless the request carries ``Authorization: Bearer <token>`` (paths in ``open_paths``
    excepted), before its body is read. Tokens are compared in constant time (their sha256
    digests, so not even the length leaks).

    Example::

        app = BearerAuth(fastapi_app, token="s3cr3t-s3cr3t-s3cr3t", open_paths=("/healthz",))
    """

    def __init__(self, app: Any, token: str, open_paths: Collection[str] = ()) -> None:
        self.app = app
        self._digest = hashlib.sha256(token.encode()).digest()
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credential = given.partition(b" ")
        if scheme.lower() != b"bearer" or not credential.strip():
            await _reply(send, 401, "authorization: this server needs 'Authorization: Bearer <token>'", _CHALLENGE)
            return
        if not hmac.compare_digest(hashlib.sha256(credential.strip()).digest(), self._digest):
            await _reply(send, 401, "authorization: wrong bearer token", _CHALLENGE)
            return
        await self.app(scope, receive, send)


_CHALLENGE = [(b"www-authenticate", b'Bearer realm="modmerge"')]


async def _reply(send: Any, status: int, error: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps({"error": error}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        # the rest of the body is never read: tell the client not to reuse the connection
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": payload})
