"""Hand-off throughput: connections per second from the listener to worker processes.

``python -m benchmarks.workers [connections] [workers]`` starts a `WorkerPool` of echo workers
(the test workers of tests/test_workers_handoff.py), opens ``connections`` TCP connections that
each send a ``P/`` header with some bytes, and measures how long until every worker has
greeted every connection (accept, header, fd hand-off, adoption), then how long a round trip
through the worker takes on all of them at once.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from twisted.internet import defer, protocol, reactor, task

from replayserver.metrics import Metrics
from replayserver.workers.handoff import Dispatcher, HandoffFactory
from replayserver.workers.supervisor import WorkerPool

REPO_ROOT = Path(__file__).resolve().parents[1]


class Client(protocol.Protocol):
    def __init__(self, game_id: int) -> None:
        self.game_id = game_id
        self.received = b""
        self.greeted = defer.Deferred()
        self.echoed: defer.Deferred | None = None

    def connectionMade(self) -> None:
        self.transport.write(f"P/{self.game_id}/bench\0".encode() + b"x" * 100)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.greeted.called and self.received.count(b"\n") and \
                len(self.received.split(b"\n", 1)[1]) >= 100:
            self.received = b""
            self.greeted.callback(None)
        elif self.echoed is not None and len(self.received) >= 100:
            self.echoed, echoed = None, self.echoed
            echoed.callback(None)

    def ping(self) -> defer.Deferred:
        self.received = b""
        self.echoed = defer.Deferred()
        self.transport.write(b"y" * 100)
        return self.echoed


@defer.inlineCallbacks
def run(connections: int, workers: int):
    dispatcher = Dispatcher(workers)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    pool = WorkerPool(reactor, dispatcher, {}, environment=environment,
                      build="tests.test_workers_handoff:build_echo")
    pool.start()
    factory = HandoffFactory(dispatcher, clock=reactor, header_timeout=60, metrics=Metrics())
    port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    try:
        yield task.deferLater(reactor, 2, lambda: None)  # the workers start
        clients = []
        started = time.perf_counter()
        for game_id in range(connections):
            client = Client(game_id)
            clients.append(client)
            protocol.ClientCreator(reactor, lambda c=client: c).connectTCP(
                "127.0.0.1", port.getHost().port)
            if game_id % 200 == 199:
                yield task.deferLater(reactor, 0, lambda: None)
        yield defer.gatherResults([c.greeted for c in clients])
        handed = time.perf_counter() - started
        print(f"{connections} connections handed to {workers} workers in {handed:.2f} s "
              f"({connections / handed:.0f}/s)")
        started = time.perf_counter()
        yield defer.gatherResults([c.ping() for c in clients])
        echoed = time.perf_counter() - started
        print(f"one echo on each of them in {echoed:.2f} s")
        for client in clients:
            client.transport.loseConnection()
    finally:
        yield port.stopListening()
        yield pool.stop(timeout=10)


def main() -> None:
    connections = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else (os.cpu_count() or 1)
    task.react(lambda _: run(connections, workers))


if __name__ == "__main__":
    main()
