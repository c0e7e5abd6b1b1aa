"""The operator's HTTP listener: Prometheus metrics, the live-games API and the health check.

Resources (all JSON except /metrics):

* ``GET /metrics``: the service's Prometheus registry (text exposition format).
* ``GET /live``: every game the registry holds, ``Game.snapshot()`` each.
* ``GET /live/<id>``: one game, ``Game.snapshot(detail=True)`` (with writer provenance);
  404 ``{"error": ...}`` for an id the registry does not hold.
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

from prometheus_client import CollectorRegistry
from prometheus_client.twisted import MetricsResource
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
    """What the live API needs from the game registry."""

    def games(self) -> Iterable[GameView]: ...

    def get(self, game_id: int) -> GameView | None: ...


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

    def __init__(self, games: GameSource) -> None:
        super().__init__()
        self._games = games

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        if not path.isdigit():
            return _JsonError(http.NOT_FOUND, "game ids are decimal integers")
        return LiveGame(self._games, int(path))

    def render_GET(self, request: Request) -> bytes:
        return _json(request, http.OK, {"games": [g.snapshot() for g in self._games.games()]})


class LiveGame(Resource):
    """``/live/<id>``: one game with the provenance of each writer."""

    isLeaf = True

    def __init__(self, games: GameSource, game_id: int) -> None:
        super().__init__()
        self._games = games
        self._game_id = game_id

    def render_GET(self, request: Request) -> bytes:
        game = self._games.get(self._game_id)
        if game is None:
            return _json(request, http.NOT_FOUND, {"error": f"no running game {self._game_id}"})
        return _json(request, http.OK, game.snapshot(detail=True))


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
        finished = []
        request.notifyFinish().addBoth(finished.append)
        names = list(self._checks)
        results = defer.gatherResults([self._run(n, self._checks[n]) for n in names])

        def respond(reasons: list[str | None]) -> None:
            if finished:
                return  # the client went away
            failing = {n: r for n, r in zip(names, reasons) if r is not None}
            body = {"status": "failing" if failing else "ok",
                    "checks": {n: failing.get(n, "ok") for n in names}}
            request.write(_json(request, http.SERVICE_UNAVAILABLE if failing else http.OK, body))
            request.finish()

        results.addCallback(respond)
        results.addErrback(lambda f: log.failure("health check response failed", f))
        return NOT_DONE_YET


def vault_writable(directory: str) -> HealthCheck:
    """A check that creates and removes a file in ``directory`` (in a thread)."""

    def probe() -> None:
        fd, path = tempfile.mkstemp(dir=directory, prefix=".healthz-")
        os.close(fd)
        os.unlink(path)

    return lambda: threads.deferToThread(probe)


def make_site(*, metrics: CollectorRegistry, games: GameSource,
              checks: Mapping[str, HealthCheck], clock: IReactorTime) -> Site:
    """The HTTP site for ``server.http_listen``."""
    root = _Root()
    root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"live", LiveGames(games))
    root.putChild(b"healthz", Health(checks, clock))
    site = Site(root)
    site.noisy = False
    return site
