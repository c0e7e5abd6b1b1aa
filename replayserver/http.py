"""The operator's HTTP listener: Prometheus metrics, the live-games API and the health check
(docs/operations.md, "Metrics", "/live and /live/<id>", "/healthz").

Resources (all JSON except /metrics):

* ``GET /metrics``: Prometheus metrics (text exposition format).
* ``GET /live``: every running game, ``Game.snapshot()`` each.
* ``GET /live/<id>``: one game, ``Game.snapshot(detail=True)`` (with writer provenance);
  404 ``{"error": ...}`` for an id that is not running, and for one that is not a game id
  (decimal digits, below 2^64, as in the ``P/`` / ``G/`` header).
* ``GET /healthz``: runs every health check; 200 when all pass, 503 with the reasons otherwise.

The games come from a `LiveSource`: `RegistryLive` for the games of this process, or the
main process's view of every worker (`replayserver.workers.status.WorkerStatus`).

A health check is a callable taking no argument that returns (anything, or a Deferred firing
with anything) when the thing it watches is fine, and raises or fails with an exception whose
text says what is wrong. The service says which checks there are; a check that does not answer
within `CHECK_TIMEOUT` seconds fails.

Every resource answers GET (and HEAD); other methods get 405. There is no access log: nothing
reads one, and every scrape of ``/metrics`` would be a line. The lines Twisted logs about a
request show its path escaped, so no client can forge a line.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from replayserver.accept.handshake import MAX_GAME_ID

#: A health check: fine unless it raises or its Deferred fails.
HealthCheck = Callable[[], object]

#: How long one health check may take before it counts as failed.
CHECK_TIMEOUT = 5.0

log = Logger()

#: A game's snapshot, as the live API shows it.
Snapshot = dict[str, Any]


class GameView(Protocol):
    def snapshot(self, detail: bool = False) -> Snapshot: ...


class GameSource(Protocol):
    """The game registry of this process, as the live API sees it."""

    def games(self) -> Iterable[GameView]: ...

    def get(self, game_id: int) -> GameView | None: ...


class LiveSource(Protocol):
    """Where the live API's snapshots come from (possibly other processes, hence Deferreds)."""

    def snapshots(self) -> defer.Deferred[list[Snapshot]]: ...

    def snapshot(self, game_id: int) -> defer.Deferred[Snapshot | None]: ...


class RegistryLive:
    """The `LiveSource` of the games running in this process."""

    def __init__(self, registry: GameSource) -> None:
        self._registry = registry

    def snapshots(self) -> defer.Deferred[list[Snapshot]]:
        return defer.succeed([game.snapshot() for game in self._registry.games()])

    def snapshot(self, game_id: int) -> defer.Deferred[Snapshot | None]:
        game = self._registry.get(game_id)
        return defer.succeed(None if game is None else game.snapshot(detail=True))


def game_id_of(segment: bytes) -> int | None:
    """The game id a path segment names, or None when it names none: ASCII decimal digits
    only, below 2^64 (leading zeros allowed). Never converts more digits than a game id has."""
    if not segment.isdigit():  # bytes: ASCII digits only
        return None
    digits = segment.lstrip(b"0") or b"0"
    if len(digits) > len(str(MAX_GAME_ID)):
        return None
    game_id = int(digits)
    return game_id if game_id <= MAX_GAME_ID else None


def respond_later(request: Request, answer: defer.Deferred[Any],
                  render: Callable[[Any], bytes]) -> object:
    """Finish ``request`` with ``render(result)`` once ``answer`` fires (unless the client left)."""
    finished: list[object] = []
    request.notifyFinish().addBoth(finished.append)

    def write(result: Any) -> None:
        body = render(result)
        if not finished:
            request.write(body)
            request.finish()

    def fail(failure: Failure) -> None:
        """The answer could not be had (a worker could not give it): that request fails."""
        log.warn("HTTP request {path!r} failed: {error}", path=request.uri,
                 error=failure.getErrorMessage())
        if not finished:
            request.write(_json(request, http.SERVICE_UNAVAILABLE,
                                {"error": failure.getErrorMessage()}))
            request.finish()

    answer.addCallbacks(write, fail)
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
        Resource.__init__(self)
        self._code = code
        self._message = message

    def render_GET(self, request: Request) -> bytes:
        return _json(request, self._code, {"error": self._message})


class _Root(Resource):
    def __init__(self) -> None:
        Resource.__init__(self)

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _JsonError(http.NOT_FOUND, "no such resource")

    def render_GET(self, request: Request) -> bytes:
        return _json(request, http.OK, {"resources": ["/metrics", "/live", "/healthz"]})


class LiveGames(Resource):
    """``/live`` and ``/live/<id>``."""

    def __init__(self, live: LiveSource) -> None:
        Resource.__init__(self)
        self._live = live

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        game_id = game_id_of(path)
        if game_id is None:
            return _JsonError(http.NOT_FOUND, "game ids are decimal integers below 2^64")
        return LiveGame(self._live, game_id)

    def render_GET(self, request: Request) -> object:
        return respond_later(request, self._live.snapshots(),
                             lambda games: _json(request, http.OK, {"games": games}))


class LiveGame(Resource):
    """``/live/<id>``: one game with the provenance of each writer."""

    isLeaf = True

    def __init__(self, live: LiveSource, game_id: int) -> None:
        Resource.__init__(self)
        self._live = live
        self._game_id = game_id

    def render_GET(self, request: Request) -> object:
        def render(game: Snapshot | None) -> bytes:
            if game is None:
                return _json(request, http.NOT_FOUND,
                             {"error": f"no running game {self._game_id}"})
            return _json(request, http.OK, game)

        return respond_later(request, self._live.snapshot(self._game_id), render)


class MetricsText(Resource):
    """``/metrics`` from a source of exposition text that may have to ask other processes."""

    isLeaf = True

    def __init__(self, text: Callable[[], defer.Deferred[bytes]]) -> None:
        Resource.__init__(self)
        self._text = text

    def render_GET(self, request: Request) -> object:
        def render(text: bytes) -> bytes:
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
            return text

        return respond_later(request, self._text(), render)


class Health(Resource):
    """``/healthz``: 200 ``{"status": "ok", ...}`` or 503 ``{"status": "failing", ...}``.

    Runs the checks it is given on each request, all at once; one that raises, fails, or does
    not answer within ``timeout`` seconds (it is then cancelled) is failing, with its reason.
    """

    isLeaf = True

    def __init__(self, checks: Mapping[str, HealthCheck], clock: IReactorTime,
                 timeout: float = CHECK_TIMEOUT) -> None:
        Resource.__init__(self)
        self._checks = dict(checks)
        self._clock = clock
        self._timeout = timeout

    def _run(self, check: HealthCheck) -> defer.Deferred[str | None]:
        """None when the check passes, else why it fails; never fails itself."""
        d = defer.maybeDeferred(check)
        d.addTimeout(self._timeout, self._clock)
        return d.addCallbacks(lambda _: None, self._reason)

    def _reason(self, failure: Failure) -> str:
        if failure.check(defer.TimeoutError):
            return f"TimeoutError: no answer within {self._timeout:g} s"
        return f"{type(failure.value).__name__}: {failure.value}"

    def render_GET(self, request: Request) -> object:
        names = list(self._checks)
        results = defer.gatherResults([self._run(self._checks[name]) for name in names])

        def render(reasons: list[str | None]) -> bytes:
            failing = {n: r for n, r in zip(names, reasons) if r is not None}
            body = {"status": "failing" if failing else "ok",
                    "checks": {n: failing.get(n, "ok") for n in names}}
            return _json(request, http.SERVICE_UNAVAILABLE if failing else http.OK, body)

        return respond_later(request, results, render)


class _Request(Request):
    """A request of the operator's API, which takes GET (and HEAD) only.

    Any other method is answered here, 405 in JSON, before a resource sees it: Twisted's own
    answer quotes the path, and fails with an error (and a traceback in the log) on one with
    bytes beyond ASCII. Twisted's log lines about a request (a HEAD answered with a body, say)
    show it by its repr, which would hold the path as the client sent it: escaped here.
    """

    def render(self, resrc: IResource) -> None:
        if self.method in (b"GET", b"HEAD"):
            Request.render(self, resrc)
            return
        request: Request = self  # (Twisted's type: mypy lets its untyped calls through so)
        request.setHeader(b"allow", b"GET, HEAD")
        body = _json(request, http.NOT_ALLOWED, {"error": "only GET is supported"})
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def __repr__(self) -> str:
        return f"<Request {self.method!r} {self.uri!r}>"


class _Site(Site):
    """A `Site` without an access log (see the module's docstring)."""

    requestFactory = _Request

    def __init__(self, root: Resource) -> None:
        Site.__init__(self, root)
        self.noisy = False

    def log(self, request: http.Request) -> None:
        """No access log."""


def make_site(*, metrics: IResource, live: LiveSource,
              checks: Mapping[str, HealthCheck], clock: IReactorTime) -> Site:
    """The HTTP site for ``server.http_listen`` (``metrics``: the ``/metrics`` resource)."""
    root = _Root()
    root.putChild(b"metrics", metrics)
    root.putChild(b"live", LiveGames(live))
    root.putChild(b"healthz", Health(checks, clock))
    return _Site(root)
