"""Readers that stop reading: bounded memory, dropped after limits.reader_stall_timeout."""
from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from replayserver.send.reader import CHUNK_SIZE
from tests.support import samples
from tests.support.harness import DELAY, GRACE, Server
from tests.test_limits_accept import limited, limited_server
from tests.test_send_reader import BIG, PausingTransport

STALL = 120


class UnflushedTransport(PausingTransport):
    """Like TCP with a peer that stopped reading: loseConnection waits for a flush that never
    comes; only abortConnection closes."""

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        super().loseConnection()


def paused_reader(server: Server, game_id: int,
                  transport: PausingTransport | None = None) -> PausingTransport:
    """A reader whose transport pauses it once 64 KiB wait, like TCP with a peer not reading."""
    protocol = server.factory.buildProtocol(None)
    transport = transport if transport is not None else PausingTransport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    protocol.dataReceived(b"G/%d/slow\0" % game_id)
    return transport


class ReaderStallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = limited_server(self, reader_stall_timeout=STALL)
        self.data = samples.read(BIG)
        self.server.writer(1, data=self.data)

    def test_reader_that_stops_reading_is_dropped(self) -> None:
        server = self.server
        reader = paused_reader(server, 1)
        server.tick(DELAY + 1)  # 1.5 MB visible: the transport pauses the reader
        self.assertEqual(reader.producerState, "paused")
        server.tick(STALL - 1)
        self.assertTrue(reader.connected)
        server.tick(1)
        self.assertFalse(reader.connected)
        self.assertEqual(server.served("Timeout"), 1)
        self.assertEqual(limited(server, "reader_stall_timeout"), 1)
        self.assertEqual(server.registry.get(1).readers, 0)
        self.assertEqual(server.active("reader"), 0)

    def test_slow_reader_that_makes_progress_stays(self) -> None:
        """A slow reader that takes 64 KiB every 100 s is not stalled (each drain is progress)."""
        server = self.server
        reader = paused_reader(server, 1)
        server.tick(DELAY + 1)
        received = b""
        for _ in range(5):
            server.tick(STALL - 20)
            received += reader.drain()
            self.assertTrue(reader.connected)
        self.assertEqual(server.served("Timeout"), 0)
        self.assertEqual(received, self.data[:len(received)])

    def test_byte_a_minute_reader_is_dropped(self) -> None:
        """Reading a little never lets the transport resume its producer: no progress."""
        server = self.server
        reader = paused_reader(server, 1)
        server.tick(DELAY + 1)
        for _ in range(3):
            server.tick(60)
            if reader.connected:  # take one byte: the buffer is not drained, no resume
                left = reader.value()[1:]
                reader.clear()
                reader.io.write(left)
        self.assertFalse(reader.connected)
        self.assertEqual(server.served("Timeout"), 1)

    def test_reader_that_does_not_take_the_last_bytes_is_dropped(self) -> None:
        """After the last write the producer is unregistered; the reader must still take it."""
        server = self.server
        reader = paused_reader(server, 1, UnflushedTransport())
        server.tick(DELAY + 1)
        game = server.registry.get(1)
        for writer in list(game._writers):
            writer.transport.loseConnection()
        server.tick(GRACE)
        server.saver.finish(1)
        while not reader.disconnecting:  # take everything but the last write
            reader.drain()
        self.assertTrue(reader.connected)
        server.tick(STALL - 1)
        self.assertTrue(reader.connected)
        server.tick(1)
        self.assertFalse(reader.connected)
        self.assertEqual(server.served("Timeout"), 1)
        self.assertEqual(server.clock.getDelayedCalls(), [])

    def test_timer_gone_once_the_reader_leaves(self) -> None:
        server = self.server
        reader = paused_reader(server, 1)
        server.tick(DELAY + 1)
        reader.loseConnection()
        self.assertIsNone(reader.protocol._handler._stall)
        self.assertEqual(server.served("I/O error") + server.served("Success"), 1)


class SharedCopyTests(SynchronousTestCase):
    def test_a_thousand_stalled_readers_hold_one_copy_and_bounded_buffers(self) -> None:
        server = limited_server(self, reader_stall_timeout=STALL, connections_per_peer=None)
        data = samples.read(BIG)
        server.writer(1, data=data)
        readers = [paused_reader(server, 1) for _ in range(1000)]
        server.tick(DELAY + 1)
        game = server.registry.get(1)
        self.assertEqual({id(reader.protocol._handler._canonical) for reader in readers},
                         {id(game.live.canonical)})
        buffered = max(len(reader.value()) for reader in readers)
        self.assertLessEqual(buffered, PausingTransport.limit + CHUNK_SIZE)
        server.tick(STALL)
        self.assertFalse(any(reader.connected for reader in readers))
        self.assertEqual(game.readers, 0)
