"""Named outcomes: how a connection ended, and what it turned out to be.

`ConnectionResult` values are the ``result`` label of ``replayserver_served_connections_total``
(the texts FAF's dashboards know) and the word the connection's log line ends with.
`ConnectionCategory` values are the ``category`` label of
``replayserver_active_connections_count``. See docs/operations.md.
"""
from __future__ import annotations

import enum

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure


class ConnectionResult(enum.Enum):
    """How a connection ended."""

    SUCCESS = "Success"  # a clean end: the writer's EOF, or the reader got everything
    BAD_DATA = "Bad data"  # a bad header or replay stream, or a limit of what it may send
    IO_ERROR = "I/O error"  # the connection broke (reset, WebSocket closed uncleanly)
    NO_REPLAY = "No replay matched"  # a reader for a game that is not running
    TIMEOUT = "Timeout"  # too slow: a header not sent in time, a reader taking nothing
    REFUSED = "Refused"  # a limit, admission, or a game that does not take it


class ConnectionCategory(enum.Enum):
    """What an open connection is."""

    INITIAL = "initial"  # its P/ or G/ header is not complete yet
    READER = "reader"
    WRITER = "writer"


class BadData(ConnectionLost):
    """Why a connection was cut when the transport found it broke the protocol (a WebSocket
    text message, say): the protocol above counts it as `ConnectionResult.BAD_DATA`."""


def ended_by(reason: Failure) -> ConnectionResult:
    """The result of a connection that its peer (or the network) ended for ``reason``."""
    if reason.check(ConnectionDone):
        return ConnectionResult.SUCCESS
    if reason.check(BadData):
        return ConnectionResult.BAD_DATA
    return ConnectionResult.IO_ERROR
