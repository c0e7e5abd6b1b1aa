"""The operator's HTTP listener: Prometheus metrics, the live-games API and the health check.

Resources (all JSON except /metrics):

* ``GET /metrics``: Prometheus metrics (text exposition format).
* ``GET /live``: every running game, ``Game.snapshot()`` each.
* ``GET /live/<id>``: one game, ``Game.snapshot(detail=True)`` (with writer provenance);
  404 ``{"error": ...}`` for an id that is not running.

The games come from a `LiveSource`: `RegistryLive` for the games of this process, or the
main process's view of every worker (`replayserver.workers.status.WorkerStatus`).
* ``GET /healthz``: runs every health check; 200 when all pass, 503 with the reasons otherwise.

A health check is a callable taking no argument that returns ``None`` or a Deferred when the
thing it watches is fine, and raises (or fails) with an exception whose text says what is wrong.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

HealthCheck = Callable[[], "defer.Deferred[Any] | None"]

#: How long one health check may take before it counts as failed.
CHECK_TIMEOUT = 5.0

log = Logger()


class GameView(Protocol):
    def snapshot(self, detail: bool = False) -> dict: ...


class GameSource(Protocol):
    """The game registry of this process, as the live API sees it."""

    def games(self) -> Iterable[GameView]: ...

    def get(self, game_id: int) -> GameView | None: ...


class LiveSource(Protocol):
    """Where the live API's snapshots come from (possibly other processes, hence Deferreds)."""

    def snapshots(self) -> defer.Deferred[list[dict]]: ...

    def snapshot(self, game_id: int) -> defer.Deferred[dict | None]: ...


class RegistryLive:
    """The `LiveSource` of the games running in this process."""

    def __init__(self, registry: GameSource) -> None:
        self._registry = registry

    def snapshots(self) -> defer.Deferred[list[dict]]:
        return defer.succeed([game.snapshot() for game in self._registry.games()])

    def snapshot(self, game_id: int) -> defer.Deferred[dict | None]:
        game = self._registry.get(game_id)
        return defer.succeed(None if game is None else game.snapshot(detail=True))


def respond_later(request: Request, answer: defer.Deferred, render: Callable[[Any], bytes]) -> object:
    """Finish ``request`` with ``render(result)`` once ``answer`` fires (unless the client left)."""
    finished: list = []
    request.notifyFinish().addBoth(finished.append)

    def write(result: Any) -> None:
        body = render(result)
        if not finished:
            request.write(body)
            request.finish()

    answer.addCallback(write)
    answer.addErrback(lambda failure: log.failure("HTTP response failed", failure))
    return NOT_DONE_YET


def _json(request: Request, code: int, value: object) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


class _JsonError(Resource):
    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self._code = code
        self._message = message

    def render(self, request: Request) -> bytes:
        return _json(request, self._code, {"error": self._message})


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        return _JsonError(http.NOT_FOUND, "no such resource")

    def render_GET(self, request: Request) -> bytes:
        return _json(request, http.OK, {"resources": ["/metrics", "/live", "/healthz"]})


class LiveGames(Resource):
    """``/live`` and ``/live/<id>``."""

    def __init__(self, live: LiveSource) -> None:
        super().__init__()
        self._live = live

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        if not path.isdigit():
            return _JsonError(http.NOT_FOUND, "game ids are decimal integers")
        return LiveGame(self._live, int(path))

    def render_GET(self, request: Request) -> object:
        return respond_later(request, self._live.snapshots(),
                             lambda games: _json(request, http.OK, {"games": games}))


class LiveGame(Resource):
    """``/live/<id>``: one game with the provenance of each writer."""

    isLeaf = True

    def __init__(self, live: LiveSource, game_id: int) -> None:
        super().__init__()
        self._live = live
        self._game_id = game_id

    def render_GET(self, request: Request) -> object:
        def render(game: dict | None) -> bytes:
            if game is None:
                return _json(request, http.NOT_FOUND,
                             {"error": f"no running game {self._game_id}"})
            return _json(request, http.OK, game)

        return respond_later(request, self._live.snapshot(self._game_id), render)


class MetricsText(Resource):
    """``/metrics`` from a source of exposition text that may have to ask other processes."""

    isLeaf = True

    def __init__(self, text: Callable[[], defer.Deferred[bytes]]) -> None:
        super().__init__()
        self._text = text

    def render_GET(self, request: Request) -> object:
        def render(text: bytes) -> bytes:
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
            return text

        return respond_later(request, self._text(), render)


class Health(Resource):
    """``/healthz``: 200 ``{"status": "ok", ...}`` or 503 ``{"status": "failing", ...}``."""

    isLeaf = True

    def __init__(self, checks: Mapping[str, HealthCheck], clock: IReactorTime,
                 timeout: float = CHECK_TIMEOUT) -> None:
        super().__init__()
        self._checks = dict(checks)
        self._clock = clock
        self._timeout = timeout

    def _run(self, name: str, check: HealthCheck) -> defer.Deferred[str | None]:
        d = defer.maybeDeferred(check)
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(lambda _: None, lambda f: f"{f.type.__name__}: {f.getErrorMessage()}")
        return d

    def render_GET(self, request: Request) -> object:
        names = list(self._checks)
        results = defer.gatherResults([self._run(n, self._checks[n]) for n in names])

        def render(reasons: list[str | None]) -> bytes:
            failing = {n: r for n, r in zip(names, reasons) if r is not None}
            body = {"status": "failing" if failing else "ok",
                    "checks": {n: failing.get(n, "ok") for n in names}}
            return _json(request, http.SERVICE_UNAVAILABLE if failing else http.OK, body)

        return respond_later(request, results, render)


def make_site(*, metrics: Resource, live: LiveSource,
              checks: Mapping[str, HealthCheck], clock: IReactorTime) -> Site:
    """The HTTP site for ``server.http_listen`` (``metrics``: the ``/metrics`` resource)."""
    root = _Root()
    root.putChild(b"metrics", metrics)
    root.putChild(b"live", LiveGames(live))
    root.putChild(b"healthz", Health(checks, clock))
    site = Site(root)
    site.noisy = False
    return site
