"""Worker process: ``python -m replayserver.workers.worker --index I --count N [--build F]``.

Started by the supervisor with its UNIX socket to the main process as file descriptor 3 and a
pipe for its log events as file descriptor 4 (`replayserver.workers.logs`). The first message
brings the configuration; the worker then builds its service (by default the replay service in
worker mode: no listener, its own spool subdirectory) and runs the sockets the main process
hands it. It answers the main process's queries: its metrics, its games, and its health checks
(the vault, the database: ``/healthz`` of the listening process includes them). SIGTERM, or the
main process going away, stops the service (every game is ended and saved) and then the
process. SIGINT is ignored: a terminal's Ctrl-C reaches the whole process group, and the main
process decides when workers stop.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import signal
import socket
from collections.abc import Callable, Mapping
from typing import Any, Protocol as TypingProtocol

import attrs
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, globalLogBeginner

from replayserver.accept.protocol import ConnectionFactory
from replayserver.config import Config, config_from_mapping
from replayserver.listeners import raise_file_limit
from replayserver.service import ReplayService
from replayserver.workers.logs import LogPipe
from replayserver.workers.receiver import Adopting, HandoffReceiver
from replayserver.workers.status import metric_families
from replayserver.workers.placement import worker_spool
from replayserver.workers.wire import CHANNEL_FD, LOG_FD

PR_SET_PDEATHSIG = 1
#: The service a worker runs unless ``--build`` names another one.
DEFAULT_BUILD = "replayserver.workers.worker:build_replay_worker"
#: Seconds a health check may take in a worker (the listening process's check waits 5 s).
HEALTH_TIMEOUT = 4.0


class GameView(TypingProtocol):
    def snapshot(self, detail: bool = False) -> dict[str, Any]: ...


class Games(TypingProtocol):
    def games(self) -> list[Any]: ...

    def get(self, game_id: int) -> GameView | None: ...


class Metered(TypingProtocol):
    @property
    def registry(self) -> CollectorRegistry: ...


class WorkerService(TypingProtocol):
    """What a worker runs: `ReplayService` in production (``worker=True``)."""

    @property
    def factory(self) -> ConnectionFactory: ...

    @property
    def metrics(self) -> Metered: ...

    @property
    def registry(self) -> Games: ...

    def health_checks(self) -> Mapping[str, Callable[[], object]]: ...

    def startService(self) -> None: ...

    def stopService(self) -> defer.Deferred[None]: ...


Build = Callable[[Config, Any, int, int], WorkerService]


def build_replay_worker(config: Config, reactor: Any, index: int, count: int) -> ReplayService:
    """The replay service of worker ``index``: the single-process service without listeners,
    on its own spool directory."""
    storage = attrs.evolve(config.storage, spool=worker_spool(config.storage.spool, index))
    return ReplayService(attrs.evolve(config, storage=storage), reactor, worker=True)


def load_build(name: str) -> Build:
    module, _, attribute = name.partition(":")
    build: Build = getattr(importlib.import_module(module), attribute)
    return build


class Worker:
    """One worker process: builds its service from the configuration and answers queries."""

    _log = Logger()

    def __init__(self, reactor: Any, index: int, count: int, build: Build) -> None:
        self._reactor = reactor
        self.index = index
        self.count = count
        self._build = build
        self._service: WorkerService | None = None
        self._stopping = False

    @property
    def service(self) -> WorkerService:
        assert self._service is not None, "configured first"
        return self._service

    def configure(self, settings: dict[str, Any]) -> None:
        self._service = self._build(config_from_mapping(settings), self._reactor,
                                    self.index, self.count)
        self._service.startService()
        self._log.info("Worker {index} of {count} running (pid {pid})",
                       index=self.index, count=self.count, pid=os.getpid())

    def connection_factory(self) -> ConnectionFactory:
        return self.service.factory

    def answer(self, query: dict[str, Any]) -> Any:
        what = query["what"]
        if what == "ready":  # answered once the configuration (sent first) is applied
            return True
        if what == "metrics":
            return metric_families(self.service.metrics.registry)
        if what == "games":
            return [game.snapshot() for game in self.service.registry.games()]
        if what == "game":
            game = self.service.registry.get(query["game_id"])
            return None if game is None else game.snapshot(detail=True)
        if what == "health":
            return self.health(query["check"])
        raise ValueError(f"unknown query {what!r}")

    def health(self, name: str) -> defer.Deferred[str | None]:
        """Run this worker's health check ``name``: fires with None when it passes, else with
        the reason it fails."""
        check = self.service.health_checks().get(name)
        if check is None:
            return defer.succeed(f"no {name} check in this worker")
        result: defer.Deferred[Any] = defer.maybeDeferred(check)
        result.addTimeout(HEALTH_TIMEOUT, self._reactor)

        def failed(failure: Any) -> str:
            return f"{failure.type.__name__}: {failure.getErrorMessage()}"

        return result.addCallbacks(lambda _: None, failed)

    def main_lost(self) -> None:
        if not self._stopping:
            self._log.info("Worker {index}: the main process is gone; stopping", index=self.index)
        self.stop()

    def stop(self) -> None:
        """Stop the service (its games are saved), then the process."""
        if self._stopping:
            return
        self._stopping = True
        stopped: defer.Deferred[None] = (
            defer.succeed(None) if self._service is None
            else defer.maybeDeferred(self._service.stopService))
        stopped.addErrback(lambda failure: self._log.failure("Stopping failed", failure))
        stopped.addBoth(lambda _: self._reactor.stop())


def _log_to_main() -> None:
    """Every log event goes to the main process as JSON (`replayserver.workers.logs`); what is
    written to sys.stdout or sys.stderr becomes log events too."""
    globalLogBeginner.beginLoggingTo([LogPipe(LOG_FD)], redirectStandardIO=True)


def _die_with_parent() -> None:
    """Be killed with the main process (Linux): a killed server is killed whole, and its spool
    is recovered by the next start, as after a single process's crash."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # elsewhere the worker stops when its channel closes
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--build", default=DEFAULT_BUILD, help="module:callable of the service")
    args = parser.parse_args(argv)

    from twisted.internet import reactor  # installed by this import: after the arguments

    running: Any = reactor  # the installed reactor provides far more than its stub says
    _die_with_parent()
    _log_to_main()
    raise_file_limit()
    worker = Worker(running, args.index, args.count, load_build(args.build))
    receiver = HandoffReceiver(worker, running)
    running.adoptStreamConnection(CHANNEL_FD, socket.AF_UNIX, Adopting(receiver))
    os.close(CHANNEL_FD)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: running.callFromThread(worker.stop))
    running.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()
