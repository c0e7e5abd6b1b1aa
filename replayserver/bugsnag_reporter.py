"""Bugsnag error reports: every logged failure, with its game id, while the service runs.

``BugsnagReporter`` is a service that watches the global log publisher and sends every logged
failure (``log.failure(...)``, legacy ``log.err(...)``, Twisted's "Unhandled error in
Deferred") at error level or above to Bugsnag, with the game id when the event carries a
``game_id`` field. Reports are posted from one worker thread (bugsnag's urllib delivery
blocks), a bounded number wait in line, and the same error (class, log format, namespace,
game) is sent once per ``repeat_window``. The database pool's reconnect noise (adbapi's
"Rollback failed" and friends) is never sent. This module is imported only when a Bugsnag API
key is configured (docs/operations.md).
"""
from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable
from importlib import metadata
from typing import Any, Protocol

import bugsnag
from bugsnag.delivery import Delivery, default_headers
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from replayserver.config import BugsnagSection
from replayserver.reporting import is_database_noise, logged_failure

#: What one report is deduplicated by: exception class, log namespace, log format, game id.
_ReportKey = tuple[object, object, object, object]


class Reactor(Protocol):
    """What the reporter needs of the reactor: its clock, and a way back from the thread."""

    def seconds(self) -> float: ...

    def callFromThread(self, callable: Callable[..., object], *args: object,
                       **kwargs: object) -> None: ...


class _UrllibDelivery(Delivery):
    """bugsnag delivery that posts synchronously, with a timeout (we call it from our thread)."""

    def __init__(self, timeout: float) -> None:
        Delivery.__init__(self)
        self._timeout = timeout

    def deliver(self, config: bugsnag.Configuration, payload: str,
                options: dict[str, Any] | None = None) -> None:
        options = options or {}
        try:
            uri = options.get("endpoint", config.endpoint)
            api_key = json.loads(payload).get("apiKey", config.api_key)
            request = urllib.request.Request(uri, payload.encode("utf-8", "replace"),
                                             default_headers(api_key))
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                response.read()
        finally:
            done = options.get("post_delivery_callback")
            if done is not None:
                done()


def _version() -> str | None:
    try:
        return metadata.version("replayserver")
    except metadata.PackageNotFoundError:
        return None


@implementer(ILogObserver)
class BugsnagReporter(Service):
    """Sends logged failures to Bugsnag while the service runs (see the module docstring)."""

    name = "bugsnag"

    def __init__(self, *, api_key: str, reactor: Reactor, endpoint: str | None = None,
                 release_stage: str = "production", timeout: float = 10.0,
                 queue_limit: int = 20, repeat_window: float = 3600.0) -> None:
        self._client = bugsnag.Client(
            api_key=api_key, endpoint=endpoint, release_stage=release_stage,
            app_version=_version(), app_type="replayserver", asynchronous=False,
            auto_capture_sessions=False, send_code=False, delivery=_UrllibDelivery(timeout),
            install_sys_hook=False)
        self._reactor = reactor
        self._queue_limit = queue_limit
        self._repeat_window = repeat_window
        self._lock = threading.Lock()
        self._queued = 0
        self._last_sent: dict[_ReportKey, float] = {}
        self._pool: ThreadPool | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name="bugsnag")
        self._pool.start()
        globalLogPublisher.addObserver(self)

    def stopService(self) -> defer.Deferred[None]:
        """Stop watching the log; fires once the reports already in line are sent."""
        globalLogPublisher.removeObserver(self)
        with self._lock:
            pool, self._pool = self._pool, None
        Service.stopService(self)
        if pool is None:  # never started
            return defer.succeed(None)

        def stop(_: None) -> None:
            pool.stop()

        drained: defer.Deferred[None] = defer.Deferred()
        pool.callInThread(self._reactor.callFromThread, drained.callback, None)  # after the queue
        return drained.addCallback(stop)

    def __call__(self, event: LogEvent) -> None:
        if "worker" in event:
            return  # relayed from a worker process, which reports its own (workers/logs.py)
        failure = logged_failure(event)
        if failure is None or failure.value is None or is_database_noise(event):
            return
        level = event.get("log_level")
        if level is not None and level < LogLevel.error:
            return
        game_id = event.get("game_id")
        key = (failure.type, event.get("log_namespace"), event.get("log_format"), game_id)
        pool = self._admit(key)
        if pool is None:
            return
        exception, traceback = failure.value, failure.getTracebackObject()
        details: dict[str, Any] = {
            "log": {"message": formatEvent(event), "namespace": event.get("log_namespace"),
                    "system": event.get("log_system")},
        }
        if game_id is not None:
            details["game"] = {"id": game_id}
        pool.callInThread(self._send, exception, traceback, event.get("log_namespace"), details)

    def _admit(self, key: _ReportKey) -> ThreadPool | None:
        """The pool to send a report with this key in, or None when it may not go now
        (not running, queue full, or sent within the repeat window)."""
        now = self._reactor.seconds()
        with self._lock:
            last = self._last_sent.get(key)
            if self._pool is None or self._queued >= self._queue_limit or (
                    last is not None and now - last < self._repeat_window):
                return None
            if len(self._last_sent) > 1024:
                self._last_sent = {k: t for k, t in self._last_sent.items()
                                   if now - t < self._repeat_window}
            self._last_sent[key] = now
            self._queued += 1
            return self._pool

    def _send(self, exception: BaseException, traceback: object, context: str | None,
              details: dict[str, Any]) -> None:
        try:
            self._client.notify(exception, traceback=traceback, context=context,
                                severity="error", unhandled=True,
                                severity_reason={"type": "unhandledException"},
                                metadata=details)
        finally:
            with self._lock:
                self._queued -= 1


def reporter_from_config(section: BugsnagSection, reactor: Reactor) -> BugsnagReporter:
    """The reporter for the ``bugsnag`` config section (which has an API key)."""
    assert section.api_key is not None
    return BugsnagReporter(api_key=section.api_key, endpoint=section.endpoint,
                           release_stage=section.release_stage, reactor=reactor)
