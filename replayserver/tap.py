"""twistd entry point: ``twistd -n replayserver [--config PATH]``.

Import-light on purpose: twistd imports every plugin's options for every command, so the
service itself is imported only in :func:`makeService`.
"""
from __future__ import annotations

import os
import resource

from twisted.logger import Logger
from twisted.python import usage

log = Logger()


class Options(usage.Options):
    """Command-line options; the configuration is loaded and checked here."""

    optParameters = [
        ["config", "c", None,
         "YAML configuration file (default: built-in defaults; see etc/replayserver.yaml)"],
    ]

    def postOptions(self) -> None:
        from replayserver.config import ConfigError, load_config

        try:
            self["settings"] = load_config(self["config"], os.environ)
        except ConfigError as e:
            raise usage.UsageError(f"configuration error: {e}") from None


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


def makeService(options: Options):
    from replayserver.service import make_service

    raise_file_limit()
    return make_service(options["settings"])
