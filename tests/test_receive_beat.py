"""Writers are read on a beat: paused after a read, resumed together; a full read is not paused."""
from __future__ import annotations

import socket

from twisted.internet.interfaces import ISystemHandle
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from replayserver.receive.beat import ASK_FROM, FULL_READ, ReadBeat
from tests.support import samples
from tests.support.harness import Server, send


class ReadBeatTests(SynchronousTestCase):
    def test_paused_after_a_small_read_and_resumed_on_the_beat(self) -> None:
        clock = Clock()
        beat = ReadBeat(clock, 0.5)
        writers = [StringTransport() for _ in range(3)]
        for writer in writers:
            beat.after_read(writer, 7)
        self.assertEqual([w.producerState for w in writers], ["paused"] * 3)
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # one timer for all of them
        clock.advance(0.5)
        self.assertEqual([w.producerState for w in writers], ["producing"] * 3)
        clock.advance(0.5)  # nobody paused since: the timer stops until the next pause
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_read_that_may_have_left_more_is_not_paused(self) -> None:
        """A writer that sends faster than the beat is read continuously: the game never
        waits on a full socket buffer."""
        beat = ReadBeat(Clock(), 0.5)
        writer = StringTransport()
        beat.after_read(writer, FULL_READ)
        self.assertEqual(writer.producerState, "producing")
        beat.after_read(writer, FULL_READ - 1)
        self.assertEqual(writer.producerState, "paused")

    def test_no_beat_reads_every_packet(self) -> None:
        beat = ReadBeat(Clock(), 0)
        writer = StringTransport()
        beat.after_read(writer, 7)
        self.assertEqual(writer.producerState, "producing")

    def test_the_writer_protocol_pauses_on_small_reads_only(self) -> None:
        server = Server(self, read_interval=0.5)
        data = samples.read("8604509.scfareplay")
        writer, transport = server.writer(1, data=data[:1000])
        self.assertEqual(transport.producerState, "paused")
        server.clock.advance(0.5)
        self.assertEqual(transport.producerState, "producing")
        send(writer, data[1000:1000 + 4 * FULL_READ], FULL_READ)  # a burst: full reads
        self.assertEqual(transport.producerState, "producing")
        writer.dataReceived(data[1000 + 4 * FULL_READ:][:100])
        self.assertEqual(transport.producerState, "paused")
        [stream] = server.registry.get(1).live.streams
        self.assertEqual(stream.received, 1000 + 4 * FULL_READ + 100)


@implementer(ISystemHandle)
class SocketTransport(StringTransport):
    """A test transport whose socket is a real one (one end of a socket pair)."""

    def __init__(self, handle: socket.socket) -> None:
        super().__init__()
        self.handle = handle

    def getHandle(self) -> socket.socket:
        return self.handle


class MoreWaitingTests(SynchronousTestCase):
    def test_a_short_read_that_left_bytes_in_the_socket_is_not_paused(self) -> None:
        """A read may return less than the kernel holds (loopback hands data over in
        pieces): the writer is read again at once while anything waits."""
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        beat = ReadBeat(Clock(), 0.5)
        writer = SocketTransport(ours)
        theirs.sendall(b"x" * 1000)
        beat.after_read(writer, ASK_FROM)
        self.assertEqual(writer.producerState, "producing")
        ours.recv(1000)  # drained
        beat.after_read(writer, ASK_FROM)
        self.assertEqual(writer.producerState, "paused")
        beat.stop()

    def test_a_small_read_pauses_without_asking_the_kernel(self) -> None:
        """A game's usual few bytes: what arrived after them waits for the beat."""
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        clock = Clock()
        beat = ReadBeat(clock, 0.5)
        writer = SocketTransport(ours)
        theirs.sendall(b"x" * 1000)
        beat.after_read(writer, ASK_FROM - 1)
        self.assertEqual(writer.producerState, "paused")
        clock.advance(0.5)
        self.assertEqual(writer.producerState, "producing")
        beat.stop()
