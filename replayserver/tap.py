"""twistd entry point: ``twistd -n replayserver [--config PATH]``.

`Options` loads and checks the configuration; `makeService` builds the service of the mode the
configuration asks for (one process, or a listening process with worker processes), takes what
the start needs (the directories, the spool's lock, the listening ports) and returns it. Any of
that failing (a bad value, a port in use, an unwritable vault or spool, a spool used by another
server) ends the start with one line on standard error naming the cause and the key, and exit
status 1: no traceback, no usage text (docs/operations.md).

The twistd plugin (``twisted/plugins/replayserver_plugin.py``) imports this module only when
``twistd replayserver`` runs.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

from twisted.application.service import IService
from twisted.python import usage

from replayserver.config import Config, ConfigError, load_config
from replayserver.listeners import raise_file_limit
from replayserver.service import ReplayService
from replayserver.workers.placement import assign_spool, worker_count

def fail(message: str) -> NoReturn:
    """End the start with one line on standard error and exit status 1."""
    sys.stderr.write(f"replayserver: {message}\n")
    sys.stderr.flush()
    raise SystemExit(1)


class Options(usage.Options):
    """Command-line options; the configuration is loaded and checked here."""

    optParameters = [
        ["config", "c", None,
         "YAML configuration file (default: built-in defaults; see etc/replayserver.yaml)"],
    ]

    def postOptions(self) -> None:
        try:
            self["settings"] = load_config(self["config"], os.environ)
        except ConfigError as e:
            fail(f"configuration error: {e}")


def make_service(config: Config, reactor: object) -> IService:
    """The service for ``config``, with its ports bound; raises `ConfigError`."""
    service: IService
    if worker_count(config.server.workers) > 1:
        # only in worker mode (a process imports only what its configuration uses)
        from replayserver.workers.supervisor import WorkersService

        service = WorkersService(config, reactor)
    else:
        assign_spool(config.storage.spool, 1)  # games an earlier run with workers left
        service = ReplayService(config, reactor)
    service.bind()
    return service


def makeService(options: Options) -> IService:
    from twisted.internet import reactor  # twistd has installed the reactor by now

    raise_file_limit()
    try:
        return make_service(options["settings"], reactor)
    except ConfigError as e:
        fail(f"cannot start: {e}")
