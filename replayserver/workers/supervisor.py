"""The main process with workers: listeners, the worker processes, and their supervision.

`WorkerPool` starts ``count`` worker processes (``python -m replayserver.workers.worker``),
each with a fresh socketpair as its channel, and restarts one that exits with a growing delay
(a restarted worker recovers its games from its spool as after a crash). `WorkersService` is
what ``twistd replayserver`` runs when ``server.workers`` > 1: it puts the spool's games
where their workers look for them, starts the pool, and listens (TCP, WebSocket, HTTP) with
the hand-off factory. On stop: the listeners close, connections still being handed over are
settled, every worker gets SIGTERM and saves its games, and the service is stopped once all
of them have exited.
"""
from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from replayserver.config import Config
from replayserver.metrics import Metrics
from replayserver.service import listen_now
from replayserver.save.spool import STREAM_SUFFIX
from replayserver.workers import worker_count, worker_for
from replayserver.workers.handoff import (
    Dispatcher,
    HandoffFactory,
    RecordingWebSocketFactory,
    WorkerChannelFactory,
)
from replayserver.workers.status import MetricsPage, WorkerStatus
from replayserver.workers.worker import (
    CHANNEL_FD,
    DEFAULT_BUILD,
    config_as_dict,
    worker_spool,
)

#: Restart delays: the first, the longest; a worker that ran this long restarts at once.
FIRST_RESTART_DELAY = 0.5
LONGEST_RESTART_DELAY = 30.0
STABLE_RUN = 60.0
#: Seconds workers get to save their games after SIGTERM before they are killed (their
#: spool keeps what they had; the next start recovers it).
STOP_TIMEOUT = 600.0
#: Seconds the listeners' last connections get to reach their workers when stopping.
SETTLE_TIMEOUT = 5.0


def assign_spool(directory: str, count: int) -> list[int]:
    """Move spooled games of earlier runs to their owner's spool; returns every spooled game.

    The owner of game ``g`` is ``<directory>/worker-<g % count>`` with ``count`` > 1 and
    ``<directory>`` itself otherwise. Call it only while no spool is open there.
    """
    if not os.path.isdir(directory):
        return []
    places = [directory] + [
        os.path.join(directory, name) for name in os.listdir(directory)
        if name.startswith("worker-") and os.path.isdir(os.path.join(directory, name))
    ]
    found = [
        (place, run, game)
        for place in places for run in os.listdir(place)
        if not run.startswith("worker-") and os.path.isdir(os.path.join(place, run))
        for game in os.listdir(os.path.join(place, run)) if game.isdigit()
    ]
    games = []
    for place, run, game in found:
        source = os.path.join(place, run, game)
        if any(name.endswith(STREAM_SUFFIX) for name in os.listdir(source)):
            games.append(int(game))
        owner = worker_spool(directory, worker_for(int(game), count)) if count > 1 else directory
        if owner != place:
            os.makedirs(os.path.join(owner, run), exist_ok=True)
            os.rename(source, os.path.join(owner, run, game))
    for place in places:
        for run in os.listdir(place):
            run_directory = os.path.join(place, run)
            if (not run.startswith("worker-") and os.path.isdir(run_directory)
                    and not os.listdir(run_directory)):
                os.rmdir(run_directory)
        if place != directory and not os.listdir(place):
            os.rmdir(place)
    return sorted(set(games))


class WorkerProcess(ProcessProtocol):
    """Tells the pool when its worker exits."""

    def __init__(self, pool: WorkerPool, index: int, started_at: float) -> None:
        self.pool = pool
        self.index = index
        self.started_at = started_at
        self.ended = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool._ended(self, reason)


class WorkerPool:
    """Runs and supervises the worker processes."""

    _log = Logger()

    def __init__(
        self,
        reactor,
        dispatcher: Dispatcher,
        config: Mapping,
        *,
        build: str = DEFAULT_BUILD,
        environment: Mapping[str, str] | None = None,
        first_delay: float = FIRST_RESTART_DELAY,
        longest_delay: float = LONGEST_RESTART_DELAY,
    ) -> None:
        self._reactor = reactor
        self.dispatcher = dispatcher
        self.count = dispatcher.count
        self._config = dict(config)
        self._build = build
        self._environment = dict(os.environ if environment is None else environment)
        self._first_delay = first_delay
        self._longest_delay = longest_delay
        self.processes: list[WorkerProcess | None] = [None] * self.count
        self.restarts = [0] * self.count  # restarts since the worker last ran stably
        self._restarting: dict[int, object] = {}
        self._stopping = False

    def start(self) -> None:
        for index in range(self.count):
            self._spawn(index)

    def pid(self, index: int) -> int | None:
        process = self.processes[index]
        return None if process is None or process.transport is None else process.transport.pid

    def _spawn(self, index: int) -> None:
        self._restarting.pop(index, None)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ours.setblocking(False)
            process = WorkerProcess(self, index, self._reactor.seconds())
            self._reactor.spawnProcess(
                process, sys.executable,
                [sys.executable, "-m", "replayserver.workers.worker", "--index", str(index),
                 "--count", str(self.count), "--build", self._build],
                env=self._environment, path=os.getcwd(),
                childFDs={1: 1, 2: 2, CHANNEL_FD: theirs.fileno()},
            )
            channel = self._reactor.adoptStreamConnection(
                ours.fileno(), socket.AF_UNIX, WorkerChannelFactory(index)
            ).protocol
        finally:
            ours.close()
            theirs.close()
        self.processes[index] = process
        channel.send_config(self._config)
        self.dispatcher.attach(channel)
        self._log.info("Worker {index} started (pid {pid})", index=index,
                       pid=process.transport.pid)

    def _ended(self, process: WorkerProcess, reason: Failure) -> None:
        index = process.index
        if self.processes[index] is process:
            self.processes[index] = None
        if self._stopping:
            self._log.info("Worker {index} stopped ({reason})", index=index,
                           reason=reason.getErrorMessage())
            return
        if self._reactor.seconds() - process.started_at >= STABLE_RUN:
            self.restarts[index] = 0
        delay = min(self._longest_delay, self._first_delay * 2 ** self.restarts[index])
        self.restarts[index] += 1
        if reason.check(ProcessDone):
            self._log.warn("Worker {index} exited; restarting it in {delay} s",
                           index=index, delay=delay)
        else:
            self._log.error("Worker {index} died ({reason}); restarting it in {delay} s",
                            index=index, reason=reason.getErrorMessage(), delay=delay)
        self._restarting[index] = self._reactor.callLater(delay, self._spawn, index)

    def stop(self, timeout: float = STOP_TIMEOUT) -> defer.Deferred:
        """SIGTERM every worker; fires once all have exited (SIGKILL after ``timeout``)."""
        self._stopping = True
        for call in self._restarting.values():
            call.cancel()
        self._restarting.clear()
        running = [process for process in self.processes if process is not None]
        for process in running:
            process.transport.signalProcess("TERM")
        ended = defer.DeferredList([process.ended for process in running])
        killer = self._reactor.callLater(timeout, self._kill, running)
        ended.addCallback(lambda _: killer.cancel() if killer.active() else None)
        return ended

    def _kill(self, processes: list[WorkerProcess]) -> None:
        for process in processes:
            if not process.ended.called:
                self._log.error("Worker {index} did not stop in time; killing it",
                                index=process.index)
                process.transport.signalProcess("KILL")


class WorkersService(MultiService):
    """``twistd replayserver`` with ``server.workers`` > 1: listeners here, games in workers."""

    log = Logger()

    def __init__(self, config: Config, reactor, *, build: str = DEFAULT_BUILD) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.count = worker_count(config.server.workers)
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(self.count)
        self.pool = WorkerPool(reactor, self.dispatcher, config_as_dict(config), build=build)
        self.factory = HandoffFactory(self.dispatcher, clock=reactor,
                                      header_timeout=config.server.header_timeout,
                                      metrics=self.metrics, limits=config.limits)
        self.status = WorkerStatus(self.dispatcher, self.metrics.registry)
        self._listeners: list[IListeningPort] = []
        self._http: IListeningPort | None = None

    def startService(self) -> None:
        storage = self.config.storage
        spooled = assign_spool(storage.spool, self.count)
        if spooled:
            self.log.info("Recovering {count} games left in the spool, each by its worker: "
                          "{ids}", count=len(spooled), ids=spooled)
        _remove_vault_leftovers(storage.vault, self.reactor)
        self.pool.start()
        super().startService()
        server = self.config.server
        announcements = [("Replay server listening on {address} with {count} workers; vault "
                          "{vault}, spool {spool}", listen_now(self.reactor, server.listen, self.factory))]
        self._listeners.append(announcements[0][1])
        if server.websocket_listen is not None:
            port = listen_now(self.reactor, server.websocket_listen, RecordingWebSocketFactory(self.factory))
            self._listeners.append(port)
            announcements.insert(0, ("WebSocket listener on {address}", port))
        if server.http_listen is not None:
            self._http = listen_now(self.reactor, server.http_listen, self._site())
            announcements.insert(0, ("HTTP listener on {address}", self._http))
        # Connections are taken at once (they wait for their worker); the listeners are
        # announced once every worker runs its service.
        ready = defer.DeferredList([channel.query({"what": "ready"})
                                    for channel in self.dispatcher.channels()])
        ready.addCallback(lambda _: [
            self.log.info(text, address=port.getHost(), count=self.count,
                          vault=storage.vault, spool=storage.spool)
            for text, port in announcements
        ])

    def _site(self):
        from replayserver.http import make_site, vault_writable

        checks = {"vault": vault_writable(self.config.storage.vault),
                  "listeners": self._check_listeners, "workers": self._check_workers}
        return make_site(metrics=MetricsPage(self.status), live=self.status, checks=checks,
                         clock=self.reactor)

    def _check_listeners(self) -> None:
        if not self._listeners or not all(port.connected for port in self._listeners):
            raise RuntimeError("not listening")

    def _check_workers(self) -> None:
        missing = [i for i, channel in enumerate(self.dispatcher.channels_by_index())
                   if channel is None]
        if missing:
            raise RuntimeError(f"workers {missing} are not running")

    def stopService(self) -> defer.Deferred:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        for port in self._listeners:
            await defer.maybeDeferred(port.stopListening)
        deadline = self.reactor.seconds() + SETTLE_TIMEOUT
        while self.dispatcher.in_flight() and self.reactor.seconds() < deadline:
            await task.deferLater(self.reactor, 0.05, lambda: None)
        self.dispatcher.close_waiting()
        self.log.info("Shutting down: every worker saves its games")
        await self.pool.stop()
        await MultiService.stopService(self)
        if self._http is not None:
            await defer.maybeDeferred(self._http.stopListening)
        self.log.info("All workers stopped")


def _remove_vault_leftovers(vault: str, reactor) -> None:
    """The vault's temporary files left by a crash: removed once, before any worker writes."""
    from replayserver.save.vault import Vault

    Vault(vault, threadpool=None, reactor=reactor).remove_leftovers()
