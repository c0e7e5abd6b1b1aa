"""Log events for tools beyond stderr: JSON log lines, and what a log event says of a failure.

* ``json_logger`` writes every log event as one JSON object per line to standard output, for
  log shippers: ``twistd --logger=replayserver.reporting.json_logger -n replayserver ...``
  (it replaces twistd's text log).
* ``logged_failure`` and ``is_database_noise`` tell which events are failures worth an error
  report (`replayserver.bugsnag_reporter`).
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from twisted.logger import FileLogObserver, jsonFileLogObserver
from twisted.python.failure import Failure

#: Texts that Twisted's adbapi logs (as legacy ``log.err``) whenever a pooled connection dies;
#: the database layer reconnects and retries, so these are not errors worth a report.
DATABASE_NOISE = frozenset({"Rollback failed", "Connection close failed", "Cursor creation failed"})


def logged_failure(event: Mapping[str, Any]) -> Failure | None:
    """The failure a log event carries, new-style (``log_failure``) or legacy (``log.err``)."""
    failure = event.get("log_failure")
    if failure is None and event.get("isError"):
        failure = event.get("failure")
    return failure if isinstance(failure, Failure) else None


def is_database_noise(event: Mapping[str, Any]) -> bool:
    return (event.get("why") in DATABASE_NOISE
            or str(event.get("log_namespace", "")).startswith("twisted.enterprise.adbapi"))


def json_logger() -> FileLogObserver:
    """twistd ``--logger`` factory: one JSON object per line on standard output."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
