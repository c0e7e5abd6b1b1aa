"""The baseline of benchmarks.load: a bare Twisted TCP server that only reads.

``python -m benchmarks.bare [--beat S]`` listens on 127.0.0.1 (a port the system picks, with
the replay server's backlog), prints the port on one line, and counts the bytes of every
connection; it never writes. Without ``--beat`` every packet is read when it arrives (the
naive floor: one reactor wake per packet). With ``--beat S`` each connection is paused after
a read and one LoopingCall resumes every paused connection each S seconds, so one wake reads
all that arrived meanwhile (the measurement of /work/shared/STACK.md).
"""
from __future__ import annotations

import argparse
import resource

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall

#: The replay server's listen backlog (etc/replayserver.yaml).
BACKLOG = 1024


class Sink(Protocol):
    """Counts what it receives."""

    received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)


class BeatSink(Sink):
    """Counts what it receives; pauses after each read until the beat resumes it."""

    def __init__(self, paused: set[BeatSink]) -> None:
        self.paused = paused

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.transport.pauseProducing()
        self.paused.add(self)

    def connectionLost(self, reason: object = None) -> None:
        self.paused.discard(self)


def resume_all(paused: set[BeatSink]) -> None:
    """Resume every paused connection (the beat)."""
    for sink in paused:
        sink.transport.resumeProducing()
    paused.clear()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beat", type=float, help="read each connection at most every S s")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.beat:
        paused: set[BeatSink] = set()
        factory = Factory.forProtocol(lambda: BeatSink(paused))
        LoopingCall(resume_all, paused).start(args.beat, now=False)
    else:
        factory = Factory.forProtocol(Sink)
    port = reactor.listenTCP(0, factory, backlog=BACKLOG, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
