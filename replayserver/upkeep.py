"""What every serving process runs beside its work: `add_upkeep`.

The error reporter (only with a Bugsnag key), the stall watch (`replayserver.stall`), the
heap trim and the garbage collector's tuning (`replayserver.memory`), as child services of
the process's top service: the one process, or the listening process and each worker in
worker mode.
"""
from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService

from replayserver.config import Config
from replayserver.memory import CollectorTuning, HeapTrim, find_malloc_trim
from replayserver.metrics import Metrics
from replayserver.stall import StallWatch


def add_upkeep(parent: MultiService, config: Config, reactor: Any, metrics: Metrics) -> None:
    """Add the upkeep services to ``parent``."""
    if config.bugsnag.api_key is not None:
        from replayserver.bugsnag_reporter import reporter_from_config  # only with a key

        MultiService.addService(parent, reporter_from_config(config.bugsnag, reactor))
    MultiService.addService(parent, StallWatch(reactor, metrics.reactor_stall))
    MultiService.addService(parent, HeapTrim(reactor, find_malloc_trim()))
    MultiService.addService(parent, CollectorTuning())
