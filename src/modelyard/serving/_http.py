"""uvicorn's HTTP protocol with a deadline on request headers.

uvicorn times out a kept-alive connection between requests, but never one that has not sent a whole request
line and headers: a client that connects and sends nothing, or trickles its headers a byte at a time
(slowloris), holds its connection and a file descriptor for ever, and enough of them stop the server from
accepting anyone. Here the headers of each request must have arrived within ``header_timeout`` seconds of
the connection opening or of the request's first byte; otherwise the connection is closed.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

try:  # uvicorn's own choice ("auto"): httptools where it is installed, else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]


class HeaderDeadlineProtocol(_Base):
    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._seen: object = None  # the request cycle whose headers were complete last

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.cycle
        if cycle is not None and cycle is not self._seen:  # a request's headers are complete: it is the app's
            self._seen = cycle
            self._disarm()
        elif self._deadline is None and (cycle is None or cycle.response_complete):
            self._arm()  # the first bytes of the next request: its clock starts

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self._header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol(header_timeout: float) -> Any:
    """The ``http`` argument of ``uvicorn.Config`` (picklable: workers are spawned with their config)."""
    return functools.partial(HeaderDeadlineProtocol, header_timeout=header_timeout)


def uvicorn_options(cfg: Any) -> dict[str, Any]:
    """The ``uvicorn.Config`` arguments of a server with serve config ``cfg`` (one worker or several)."""
    return {
        "host": cfg.host,
        "port": cfg.port,
        "timeout_keep_alive": cfg.limits.keep_alive_s,
        "limit_concurrency": cfg.limits.max_connections,
        "http": protocol(cfg.limits.read_timeout_s),
        "log_level": "warning",
        "access_log": False,
    }
