"""The uvicorn server of `modmerge serve`: keep-alive, a deadline for request heads, a connection cap.

uvicorn closes a kept-alive connection idle for ``timeout_keep_alive``, but only once it has
answered a request on it: a connection that sends nothing, or a request head a byte at a time
(slowloris), is held forever. :func:`head_deadline_protocol` is uvicorn's h11 protocol with one
more timer: from the moment a connection waits for a request head (opened, or its first bytes
after a response) the whole head must arrive within ``header_timeout_s``, else the connection
is closed. Slow bodies are the app's to time (:class:`~modmerge.serve.limits.BodyLimit`).

>>> config = server_config(app, ServeSettings(header_timeout_s=5))  # doctest: +SKIP
>>> uvicorn.Server(config).run()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from modmerge.serve.settings import ServeSettings

logger = logging.getLogger(__name__)


def head_deadline_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request head takes over ``header_timeout_s``."""

    class HeadDeadlineH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # still no complete request head
                if self._head_timer is None and not self.transport.is_closing():
                    self._arm()
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle time
            self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                logger.info("closing %s: no complete request head within %g s", self.client, header_timeout_s)
                self.transport.close()

    return HeadDeadlineH11


def server_config(app: Any, settings: ServeSettings, **extra: Any) -> uvicorn.Config:
    """The uvicorn config that serves ``app`` as ``settings`` say (host, port, timeouts, connection cap).

    ``extra`` goes to ``uvicorn.Config`` as is (e.g. ``log_level``).
    """
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "on", "timeout_graceful_shutdown": 5, **extra}
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, http=head_deadline_protocol(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]  # a float works: call_later takes one
        limit_concurrency=settings.max_connections, **options,
    )
