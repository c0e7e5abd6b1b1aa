"""The listeners of a server process: bound at once, stopped in order, watched by /healthz.

Both modes (one process, or the listening process of worker mode) use `Listeners`. The ports
are bound when the service is made (`bind`), before the reactor runs, so that a port in use
stops the start with one line naming the key (`replayserver.config.ConfigError`) instead of a
traceback later. On stop the replay listeners (TCP and WebSocket) close first, so that no new
connection arrives while games are saved, and the HTTP listener last, so that ``/metrics`` and
``/healthz`` answer until the end.
"""
from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from replayserver.config import ConfigError

log = Logger()

#: A health check (``/healthz``): returns None or a Deferred when what it watches is fine,
#: raises (or fails) with an exception whose text says what is wrong.
HealthCheck = Callable[[], "defer.Deferred[Any] | None"]


def listen_now(reactor: object, key: str, description: str, factory: Factory) -> IListeningPort:
    """Listen on a Twisted endpoint now; a failure (port in use...) raises `ConfigError`
    naming the configuration ``key``."""
    listening = endpoints.serverFromString(reactor, description).listen(factory)
    outcome: list[IListeningPort | Failure] = []
    listening.addBoth(outcome.append)
    if not outcome:
        raise ConfigError(key, f"{description} did not start listening at once")
    result = outcome[0]
    if isinstance(result, Failure):
        raise ConfigError(key, f"cannot listen on {description}: {result.getErrorMessage()}")
    return result


class Listeners:
    """The replay listeners (``server.listen``, ``server.websocket_listen``) and the HTTP one."""

    _log = Logger()

    def __init__(self, reactor: object) -> None:
        self._reactor = reactor
        self._replay: list[tuple[str, IListeningPort]] = []
        self._http: IListeningPort | None = None

    def bind(self, key: str, description: str, factory: Factory, announcement: str) -> None:
        """Listen for replay connections; ``announcement`` is the log line's format, with
        ``{address}`` and the fields given to `announce`."""
        self._replay.append((announcement, listen_now(self._reactor, key, description, factory)))

    def bind_http(self, description: str, factory: Factory) -> None:
        self._http = listen_now(self._reactor, "server.http_listen", description, factory)

    def announce(self, **details: object) -> None:
        """Log where each listener listens, the HTTP one first and the first replay listener
        (the raw TCP one) last: the server is ready once that line is out."""
        if self._http is not None:
            self._log.info("HTTP listener on {address}", address=self._http.getHost())
        for announcement, port in reversed(self._replay):
            self._log.info(announcement, address=port.getHost(), **details)

    def check(self) -> None:
        """Health check: the replay listeners accept connections (until the stop)."""
        if not self._replay:
            raise RuntimeError("the replay listeners are not listening")

    async def stop_replay(self) -> None:
        """Stop accepting replay connections (the first step of a stop)."""
        ports, self._replay = self._replay, []
        for _, port in ports:
            await defer.maybeDeferred(port.stopListening)

    async def stop_http(self) -> None:
        """Stop the HTTP listener (the last step of a stop)."""
        port, self._http = self._http, None
        if port is not None:
            await defer.maybeDeferred(port.stopListening)


def raise_file_limit() -> None:
    """Raise the open-file soft limit to the hard limit: thousands of connections are normal."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warn("Cannot raise the open-file limit from {soft} to {hard}: {e}",
                     soft=soft, hard=hard, e=e)
            return
    log.info("Open-file limit: {limit}", limit=hard)
