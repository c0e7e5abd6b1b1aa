"""The main process with workers: listeners, the worker processes, and their supervision.

`WorkerPool` starts ``count`` worker processes (``python -m replayserver.workers.worker``),
each with a fresh socketpair as its channel and a pipe for its log events (relayed into this
process's log, `replayserver.workers.logs`), and restarts one that exits with a growing delay
(a restarted worker recovers its games from its spool as after a crash). `WorkersService` is
what ``twistd replayserver`` runs when ``server.workers`` > 1: it puts the spool's games
where their workers look for them, starts the pool, and listens (TCP, WebSocket, HTTP) with
the hand-off factory; its ``/healthz`` runs its own checks (listeners, workers) and the
workers' (vault, database). On stop: the listeners close, connections still being handed
over are settled, every worker gets SIGTERM and saves its games (killed if it takes longer
than ``server.shutdown_timeout`` and a margin), and the service is stopped once all of them
have exited. See docs/operations.md, "Worker processes".
"""
from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from replayserver.accept.protocol import ConnectionFactory
from replayserver.config import Config, check_directory, config_to_mapping
from replayserver.deadlines import Deadlines
from replayserver.limits import ConnectionCounter
from replayserver.listeners import HealthCheck, Listeners
from replayserver.metrics import Metrics
from replayserver.save.spool import SpoolLock
from replayserver.save.vault import Vault
from replayserver.upkeep import add_upkeep
from replayserver.workers.handoff import Dispatcher, WorkerChannel, WorkerChannelFactory
from replayserver.workers.logs import LogRelay
from replayserver.workers.status import WorkerStatus
from replayserver.workers.placement import assign_spool, worker_count
from replayserver.workers.wire import CHANNEL_FD, LOG_FD

#: The service a worker runs (``python -m replayserver.workers.worker --build ...``).
DEFAULT_BUILD = "replayserver.workers.worker:build_replay_worker"

#: Restart delays: the first, the longest; a worker that ran this long restarts at once.
FIRST_RESTART_DELAY = 0.5
LONGEST_RESTART_DELAY = 30.0
STABLE_RUN = 60.0
#: A worker that has taken none of the connections sent to it for this long is hung: killed
#: (and restarted). Checked every `HUNG_CHECK_INTERVAL` seconds.
HUNG_WORKER = 30.0
HUNG_CHECK_INTERVAL = 5.0
#: Seconds workers get beyond ``server.shutdown_timeout`` to stop after SIGTERM before they
#: are killed (their spool keeps what they had; the next start recovers it).
STOP_MARGIN = 15.0
#: Seconds the listeners' last connections get to reach their workers when stopping.
SETTLE_TIMEOUT = 5.0


class WorkerProcess(ProcessProtocol):
    """One worker process: relays its log events and tells the pool when it exits."""

    def __init__(self, pool: WorkerPool, index: int, started_at: float) -> None:
        self.pool = pool
        self.index = index
        self.started_at = started_at
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._logs = LogRelay(index, globalLogPublisher)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == LOG_FD:
            self._logs.feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == LOG_FD:
            self._logs.end()

    def signal(self, name: str) -> None:
        """Send the signal ``name`` ("TERM", "KILL") to the worker, unless it has exited."""
        if self.transport is not None:
            try:
                self.transport.signalProcess(name)
            except ProcessExitedAlready:
                pass  # its end is being reported

    @property
    def pid(self) -> int | None:
        return None if self.transport is None else self.transport.pid

    def processEnded(self, reason: Failure) -> None:
        self.pool.process_ended(self, reason)
        self.ended.callback(None)


class WorkerPool:
    """Runs and supervises the worker processes."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        dispatcher: Dispatcher,
        config: Mapping[str, Any],
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
        self._restarting: dict[int, IDelayedCall] = {}
        self._stopping = False
        self._watch = LoopingCall(self._check_hung)
        self._watch.clock = reactor

    def start(self) -> None:
        for index in range(self.count):
            self._spawn(index)
        self._watch.start(HUNG_CHECK_INTERVAL, now=False)

    def _check_hung(self) -> None:
        """Kill a worker that has taken none of the connections sent to it for `HUNG_WORKER` s
        (a stopped or deadlocked process; a busy one takes them late, but takes them): its
        connections and their places are given back, and it restarts with its spool."""
        for index, process in enumerate(self.processes):
            channel = self.dispatcher.channel(index)
            if process is not None and channel is not None and channel.waited() > HUNG_WORKER:
                self._log.error("Worker {index} took no connection for {seconds} s; killing it",
                                index=index, seconds=HUNG_WORKER)
                process.signal("KILL")

    def pid(self, index: int) -> int | None:
        process = self.processes[index]
        return None if process is None else process.pid

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
                childFDs={1: 1, 2: 2, CHANNEL_FD: theirs.fileno(), LOG_FD: "r"},
            )
            channel: WorkerChannel = self._reactor.adoptStreamConnection(
                ours.fileno(), socket.AF_UNIX, WorkerChannelFactory(index, self._reactor)
            ).protocol
        finally:
            ours.close()
            theirs.close()
        self.processes[index] = process
        channel.send_config(self._config)
        self.dispatcher.attach(channel)
        self._log.info("Worker {index} started (pid {pid})", index=index, pid=process.pid)

    def process_ended(self, process: WorkerProcess, reason: Failure) -> None:
        """A worker process exited: restart it (with a growing delay) unless stopping."""
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

    def stop(self, timeout: float) -> defer.Deferred[None]:
        """SIGTERM every worker; fires once all have exited (SIGKILL after ``timeout``)."""
        self._stopping = True
        if self._watch.running:
            self._watch.stop()
        for call in self._restarting.values():
            call.cancel()
        self._restarting.clear()
        running = [process for process in self.processes if process is not None]
        for process in running:
            process.signal("TERM")
        ended = defer.gatherResults([process.ended for process in running])
        killer = self._reactor.callLater(timeout, self._kill, running)
        return ended.addCallback(lambda _: killer.cancel() if killer.active() else None)

    def _kill(self, processes: list[WorkerProcess]) -> None:
        for process in processes:
            if not process.ended.called:
                self._log.error("Worker {index} did not stop in time; killing it",
                                index=process.index)
                process.signal("KILL")


class WorkersService(MultiService):
    """``twistd replayserver`` with ``server.workers`` > 1: listeners here, games in workers."""

    log = Logger()

    def __init__(self, config: Config, reactor: Any, *, build: str = DEFAULT_BUILD) -> None:
        MultiService.__init__(self)
        self.config = config
        self.reactor = reactor
        self.count = worker_count(config.server.workers)
        storage, limits = config.storage, config.limits
        check_directory("storage.vault", storage.vault)
        check_directory("storage.spool", storage.spool)
        #: One server per spool; the workers' spools are inside it.
        self.spool_lock = SpoolLock.take(storage.spool)
        registry = CollectorRegistry()  # this process's own metrics, merged with the workers'
        self.metrics = Metrics(registry)
        self.dispatcher = Dispatcher(self.count, reactor, metrics=self.metrics, limits=limits)
        self.pool = WorkerPool(reactor, self.dispatcher, config_to_mapping(config), build=build)
        self.factory = ConnectionFactory(
            self.dispatcher.route, deadlines=Deadlines(reactor),
            header_timeout=config.server.header_timeout,
            partial_header_timeout=limits.partial_header_timeout, metrics=self.metrics,
            connections=ConnectionCounter(limits.connections_per_peer, limits.connections),
        )
        self.status = WorkerStatus(self.dispatcher, registry)
        self.listeners = Listeners(reactor)
        add_upkeep(self, config, reactor, self.metrics)

    def bind(self) -> None:
        """Listen (before the reactor runs); raises `ConfigError` naming the listener's key."""
        server = self.config.server
        self.listeners.bind("server.listen", server.listen, self.factory,
                            "Replay server listening on {address} with {count} workers; vault"
                            " {vault}, spool {spool}")
        if server.websocket_listen is not None:
            from replayserver.workers.recording import RecordingWebSocketFactory  # if configured

            self.listeners.bind("server.websocket_listen", server.websocket_listen,
                                RecordingWebSocketFactory(self.factory),
                                "WebSocket listener on {address}")
        if server.http_listen is not None:
            self.listeners.bind_http(server.http_listen, self._site())

    def startService(self) -> None:
        storage = self.config.storage
        spooled = assign_spool(storage.spool, self.count)
        if spooled:
            self.log.info("Recovering {count} games left in the spool, each by its worker: "
                          "{ids}", count=len(spooled), ids=spooled)
        _remove_vault_leftovers(storage.vault, self.reactor)
        self.pool.start()
        MultiService.startService(self)
        # Connections are taken at once (they wait for their worker); the listeners are
        # announced once every worker runs its service.
        ready = defer.DeferredList([channel.query({"what": "ready"})
                                    for channel in self.dispatcher.channels()])
        ready.addCallback(lambda _: self.listeners.announce(
            count=self.count, vault=storage.vault, spool=storage.spool))

    def health_checks(self) -> dict[str, HealthCheck]:
        """What ``/healthz`` checks: the listeners and the workers here, and in every worker
        its own checks (the vault; the database, if configured)."""
        checks: dict[str, HealthCheck] = {
            "listeners": self.listeners.check, "workers": self._check_workers,
            "vault": lambda: self.status.health("vault"),
        }
        if self.config.database is not None:
            checks["database"] = lambda: self.status.health("database")
        return checks

    def _site(self) -> Any:
        from replayserver import http  # only when configured

        return http.OperatorSite(metrics=self.status.metrics, live=self.status,
                                 checks=self.health_checks(), clock=self.reactor)

    def _check_workers(self) -> None:
        missing = [i for i, channel in enumerate(self.dispatcher.channels_by_index())
                   if channel is None]
        if missing:
            raise RuntimeError(f"workers {missing} are not running")

    def stopService(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await self.listeners.stop_replay()
        deadline = self.reactor.seconds() + SETTLE_TIMEOUT
        while self.dispatcher.in_flight() and self.reactor.seconds() < deadline:
            await task.deferLater(self.reactor, 0.05, lambda: None)
        self.dispatcher.close_waiting()
        self.log.info("Shutting down: every worker saves its games")
        await self.pool.stop(self.config.server.shutdown_timeout + STOP_MARGIN)
        await MultiService.stopService(self)
        await self.listeners.stop_http()
        self.spool_lock.release()
        self.log.info("All workers stopped")


def _remove_vault_leftovers(vault: str, reactor: Any) -> None:
    """The vault's temporary files left by a crash: removed once, before any worker writes."""
    idle = ThreadPool(minthreads=0, maxthreads=1)  # never started: nothing runs in it
    Vault(vault, idle, reactor=reactor).remove_leftovers()
