"""Worker log events in the main process's log: relayed as events, not as text.

A worker process logs through `LogPipe`: every event becomes one line of JSON (twisted.logger's
``eventAsJSON``) on a pipe to the main process (`replayserver.workers.wire.LOG_FD` in the
worker). The main process reads the pipe (`LogRelay`, fed by the worker's process protocol),
turns each line back into an event (``eventFromJSON``), tags it with the worker
(``log_system`` ``worker-N``, so that text logs show ``[worker-N]``, and a ``worker`` field)
and publishes it to its own log. So there is one log for the whole server: text logs read as
in one process, ``twistd --logger=replayserver.reporting.json_logger`` writes JSON lines for
worker events too, and logged failures keep their tracebacks (docs/operations.md, "Logs").

Messages are formatted in the worker (the event's ``log_flattened``), so client-provided
strings keep the escaping their format gave them there. A failure's exception cannot travel as
JSON: its message travels in the event's ``failure_message`` field, and the relayed failure's
exception is a `RelayedError` with that message. A line is at most `MAX_LINE` bytes: a larger event is replaced
by a shortened one (its text and traceback cut), and the relay drops a longer line.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from twisted.logger import (
    ILogObserver,
    LogLevel,
    Logger,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
)
from twisted.python.failure import Failure
from zope.interface import implementer

#: Longest JSON line of one event, newline included.
MAX_LINE = 64 << 10
#: How much of an oversized event's text, and of its traceback, is kept.
TRIMMED_TEXT = 4 << 10
TRIMMED_TRACEBACK = 16 << 10
#: Event keys that carry a failure: ``log.failure`` (new style) and ``log.err`` (legacy).
FAILURE_KEYS = ("log_failure", "failure")

LogEvent = dict[str, Any]


class RelayedError(Exception):
    """The exception of a failure logged in a worker process (its message only)."""


def _failure(event: Mapping[str, Any]) -> Failure | None:
    return next((event[key] for key in FAILURE_KEYS if isinstance(event.get(key), Failure)),
                None)


def event_line(event: Mapping[str, Any]) -> bytes:
    """One event as a JSON line of at most `MAX_LINE` bytes (shortened if it was larger)."""
    failure = _failure(event)
    portable = dict(event)
    if failure is not None:
        portable["failure_message"] = failure.getErrorMessage()
    line = (eventAsJSON(portable) + "\n").encode("utf-8")
    if len(line) <= MAX_LINE:
        return line
    text = formatEvent(dict(event))
    shortened: LogEvent = {
        "log_level": event.get("log_level", LogLevel.info),
        "log_namespace": event.get("log_namespace"),
        "log_time": event.get("log_time"),
        "log_format": "{text} [log event of {size} bytes shortened]",
        "text": text[:TRIMMED_TEXT],
        "size": len(line),
    }
    if failure is not None:
        shortened["log_format"] += "\n{traceback}"
        shortened["traceback"] = failure.getTraceback()[-TRIMMED_TRACEBACK:]
    return (eventAsJSON(shortened) + "\n").encode("utf-8")


@implementer(ILogObserver)
class LogPipe:
    """The worker's log observer: one JSON line per event, written whole to ``fd``.

    Events may come from any thread (the vault's pool logs too): one line is written at a
    time. Once the main process is gone the events are dropped (the worker is stopping).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._broken = False

    def __call__(self, event: LogEvent) -> None:
        line = event_line(event)
        with self._lock:
            if self._broken:
                return
            try:
                while line:
                    line = line[os.write(self._fd, line):]
            except OSError:
                self._broken = True


class LogRelay:
    """Main process: a worker's log pipe, split into events that go to ``publish``."""

    _log = Logger()

    def __init__(self, index: int, publish: Callable[[LogEvent], None]) -> None:
        self.index = index
        self._publish = publish
        self._partial = bytearray()
        self._skipping = False  # inside a line longer than MAX_LINE

    def feed(self, data: bytes) -> None:
        lines = data.split(b"\n")
        for line in lines[:-1]:
            self._line(bytes(self._partial) + line)
            self._partial.clear()
        self._partial += lines[-1]
        if len(self._partial) > MAX_LINE:
            self._partial.clear()
            if not self._skipping:
                self._skipping = True
                self._log.warn("Worker {index} wrote a log line over {limit} bytes; dropped",
                               index=self.index, limit=MAX_LINE)

    def _line(self, line: bytes) -> None:
        if self._skipping:
            self._skipping = False  # the end of an overlong line
            return
        if not line:
            return
        try:
            event = eventFromJSON(line.decode("utf-8"))
        except ValueError as error:  # UnicodeDecodeError included
            self._log.warn("Worker {index} wrote a log line that is not a JSON event ({error})",
                           index=self.index, error=error)
            return
        if not isinstance(event, dict):
            self._log.warn("Worker {index} wrote a log line that is not a JSON event",
                           index=self.index)
            return
        message = event.get("failure_message")
        for key in FAILURE_KEYS:
            failure = event.get(key)
            if isinstance(failure, Failure) and isinstance(message, str):
                failure.value = RelayedError(message)
        event["log_system"] = f"worker-{self.index}"
        event["worker"] = self.index
        self._publish(event)

    def end(self) -> None:
        """The pipe closed: what is left of a line (a worker killed mid-write) is dropped."""
        self._partial.clear()
        self._skipping = False
