"""The operator's HTTP listener: Prometheus metrics, the live-games API and the health check
(docs/operations.md, "Metrics", "/live and /live/<id>", "/healthz").

Paths (all JSON except /metrics):

* ``GET /metrics``: Prometheus metrics (text exposition format).
* ``GET /live``: every running game, ``Game.snapshot()`` each.
* ``GET /live/<id>``: one game, ``Game.snapshot(detail=True)`` (with writer provenance);
  404 ``{"error": ...}`` for an id that is not running, and for one that is not a game id
  (decimal digits, below 2^64, as in the ``P/`` / ``G/`` header).
* ``GET /healthz``: runs every health check; 200 when all pass, 503 with the reasons otherwise.
* ``GET /``: the list of these; any other path: 404 ``{"error": ...}``.

The games come from a `LiveSource`: `RegistryLive` for the games of this process, or the
main process's view of every worker (`replayserver.workers.status.WorkerStatus`).

A health check (`replayserver.listeners.HealthCheck`) returns (anything, or a Deferred firing
with anything) when the thing it watches is fine, and raises or fails with an exception whose
text says what is wrong. The service says which checks there are; a check that does not answer
within `CHECK_TIMEOUT` seconds fails.

Built on Twisted's HTTP protocol (``twisted.web.http``: parsing, keep-alive, chunking, HEAD)
without ``twisted.web.server``'s resource tree: these five paths do not need one, and leaving
it (with the modules it imports) out saves about 3 MB in every process that serves HTTP.
Every path answers GET (and HEAD); other methods get 405. There is no access log: nothing
reads one, and every scrape of ``/metrics`` would be a line. Where Twisted logs a request, it
shows it by a repr in which the path is escaped, so no client can forge a line.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http

from replayserver.accept.handshake import MAX_GAME_ID
from replayserver.listeners import HealthCheck

#: How long one health check may take before it counts as failed.
CHECK_TIMEOUT = 5.0

#: An HTTP connection idle this long is closed.
IDLE_TIMEOUT = 60.0

log = Logger()

#: A game's snapshot, as the live API shows it.
Snapshot = dict[str, Any]

#: An answer: status code, content type, body.
Answer = tuple[int, bytes, bytes]

#: The exposition text of ``/metrics``, possibly gathered from other processes.
MetricsText = Callable[[], "defer.Deferred[bytes]"]

_JSON = b"application/json"
_PATHS = ["/metrics", "/live", "/healthz"]


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


def registry_text(registry: CollectorRegistry) -> MetricsText:
    """The `MetricsText` of a registry of this process."""
    return lambda: defer.succeed(generate_latest(registry))


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


def json_answer(code: int, value: object) -> Answer:
    return code, _JSON, json.dumps(value, separators=(",", ":")).encode("utf-8")


class Health:
    """``/healthz``: 200 ``{"status": "ok", ...}`` or 503 ``{"status": "failing", ...}``.

    Runs the checks it is given on each request, all at once; one that raises, fails, or does
    not answer within ``timeout`` seconds (it is then cancelled) is failing, with its reason.
    """

    def __init__(self, checks: Mapping[str, HealthCheck], clock: IReactorTime,
                 timeout: float = CHECK_TIMEOUT) -> None:
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

    def answer(self) -> defer.Deferred[Answer]:
        names = list(self._checks)
        results = defer.gatherResults([self._run(self._checks[name]) for name in names])

        def answer(reasons: list[str | None]) -> Answer:
            failing = {n: r for n, r in zip(names, reasons) if r is not None}
            body = {"status": "failing" if failing else "ok",
                    "checks": {n: failing.get(n, "ok") for n in names}}
            return json_answer(http.SERVICE_UNAVAILABLE if failing else http.OK, body)

        return results.addCallback(answer)


class OperatorSite(http.HTTPFactory):
    """The HTTP factory of ``server.http_listen``: answers the paths of the module's doc."""

    def __init__(self, *, metrics: MetricsText, live: LiveSource,
                 checks: Mapping[str, HealthCheck], clock: IReactorTime) -> None:
        http.HTTPFactory.__init__(self, timeout=IDLE_TIMEOUT, reactor=clock)
        self.noisy = False
        self._metrics = metrics
        self._live = live
        self._health = Health(checks, clock)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        channel = http.HTTPFactory.buildProtocol(self, addr)
        if channel is not None:
            channel.requestFactory = OperatorRequest  # (its setter reaches the HTTP/1 channel)
        return channel

    def startFactory(self) -> None:
        """No access log, so none of Twisted's once-a-second timer for its timestamps."""

    def stopFactory(self) -> None:
        pass

    def log(self, request: http.Request) -> None:
        """No access log."""

    def answer(self, path: bytes) -> defer.Deferred[Answer]:
        """The answer to a GET of ``path`` (without its query)."""
        first, _, rest = path[1:].partition(b"/")
        if first == b"metrics":
            return self._metrics().addCallback(
                lambda text: (http.OK, CONTENT_TYPE_LATEST.encode("ascii"), text))
        if first == b"healthz":
            return self._health.answer()
        if first == b"live":
            segment = rest.partition(b"/")[0]
            if not segment:
                return self._live.snapshots().addCallback(
                    lambda games: json_answer(http.OK, {"games": games}))
            game_id = game_id_of(segment)
            if game_id is None:
                return defer.succeed(json_answer(
                    http.NOT_FOUND, {"error": "game ids are decimal integers below 2^64"}))
            return self._live.snapshot(game_id).addCallback(self._game, game_id)
        if path == b"/":
            return defer.succeed(json_answer(http.OK, {"resources": _PATHS}))
        return defer.succeed(json_answer(http.NOT_FOUND, {"error": "no such resource"}))

    @staticmethod
    def _game(game: Snapshot | None, game_id: int) -> Answer:
        if game is None:
            return json_answer(http.NOT_FOUND, {"error": f"no running game {game_id}"})
        return json_answer(http.OK, game)


class OperatorRequest(http.Request):
    """A request of the operator's API, which takes GET (and HEAD) only: any other method is
    answered 405 in JSON. Twisted's log lines about a request show it by its repr, which would
    hold the path as the client sent it: escaped here."""

    def process(self) -> None:
        if self.method not in (b"GET", b"HEAD"):
            request: http.Request = self  # (Twisted's type: mypy lets its untyped calls through)
            request.setHeader(b"allow", b"GET, HEAD")
            self._send(json_answer(http.NOT_ALLOWED, {"error": "only GET is supported"}))
            return
        site: OperatorSite = self.channel.factory
        finished: list[object] = []
        self.notifyFinish().addBoth(finished.append)

        def send(answer: Answer) -> None:
            if not finished:  # else the client left
                self._send(answer)

        def fail(failure: Failure) -> None:
            """The answer could not be had (a worker could not give it): that request fails."""
            log.warn("HTTP request {request!r} failed: {error}", request=self,
                     error=failure.getErrorMessage())
            send(json_answer(http.SERVICE_UNAVAILABLE, {"error": failure.getErrorMessage()}))

        answered = defer.maybeDeferred(site.answer, self.path)
        answered.addCallbacks(send, fail)
        answered.addErrback(lambda failure: log.failure("HTTP response failed", failure))

    def _send(self, answer: Answer) -> None:
        code, content_type, body = answer
        request: http.Request = self  # (as above)
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def __repr__(self) -> str:
        return f"<Request {self.method!r} {self.uri!r}>"
