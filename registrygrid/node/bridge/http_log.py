"""The log of aiohttp's HTTP server, with clients' malformed requests
counted instead of logged as errors, and answers cut short told apart.

aiohttp answers a request it cannot parse (a bad request line, a byte no
URL may hold, a line over its limit) with 400 itself, before any route or
middleware sees it, and logs each one at ERROR with a full traceback. That
is the client's fault, not the node's: an operator would take it for a
crash, and any client could fill the node's log with twenty lines per
request. Here each such request is counted
(``rgrid_http_malformed_requests_total``) and logged at DEBUG on one line;
any other error keeps its level and traceback.

An answer that fails after its headers went out (a blob store failing in
the middle of a download, a bundle's URL refused) can get no error answer:
the app raises ``AnswerCut`` and aiohttp closes the connection, so the
client sees the body end early. The app logged and counted it already; what
aiohttp logs of it goes to DEBUG, as for any ConnectionError (a client
gone mid-answer, one cut for taking nothing: streaming.SlowClient), which
aiohttp logged at ERROR with a traceback each.

    web.AppRunner(app, logger=ServerLog(on_malformed=metrics.malformed.inc))
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

LOGGER_NAME = "registrygrid.bridge.http"


class AnswerCut(ConnectionResetError):
    """An answer under way ended by an error: cut the connection. (aiohttp
    wrote an error answer into the body under way for any other exception,
    status line and all, and kept the connection: a client read it as part
    of the body, or failed on the chunk framing it broke.)"""


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """What aiohttp's request handler logs, as ``LOGGER_NAME``; one per
    bridge, so that each counts its own clients' malformed requests."""

    def __init__(self, on_malformed: Callable[[], None]) -> None:
        super().__init__(logging.getLogger(LOGGER_NAME), {})
        self.on_malformed = on_malformed

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, ConnectionError):  # AnswerCut, a slow client cut, a client gone: no crash
            kwargs.pop("exc_info")
            level, msg = logging.DEBUG, f"{msg}: {type(exc).__name__}: {exc}".replace("%", "%%")
        elif isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            self.on_malformed()
            kwargs.pop("exc_info")
            said = " ".join(str(exc.message).split()).replace("%", "%%")  # one line; the URL may hold a %
            level, msg = logging.DEBUG, f"{msg}: answered {exc.code}: {said}"
        super().log(level, msg, *args, **kwargs)
