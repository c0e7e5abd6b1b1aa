"""ReaderProtocol: header at once, body behind the delay, everything then close, flow control."""
from __future__ import annotations

import fafreplay
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from replayserver.config import LimitsSection
from replayserver.game.game import GameState
from replayserver.send.reader import CHUNK_SIZE
from tests.support import samples
from tests.test_game_lifecycle import SAMPLE
from tests.support.harness import DELAY, GRACE, Server, send

BIG = "8468507.scfareplay"  # 1.5 MB


class PausingTransport(StringTransportWithDisconnection):
    """Pauses its producer once more than `limit` bytes wait, like a TCP transport whose
    peer does not read; `drain` empties it and resumes the producer."""

    limit = 65536

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > self.limit and self.producerState == "producing":
            self.producer.pauseProducing()
            self.producerState = "paused"

    def drain(self) -> bytes:
        data = self.value()
        self.clear()
        if self.producer is not None:
            self.producerState = "producing"
            self.producer.resumeProducing()
        return data


class ReaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = Server(self)
        self.data = samples.read(SAMPLE)
        self.header_size = fafreplay.body_offset(self.data)

    def test_header_at_once_then_delayed_body_then_all_and_close(self) -> None:
        server, data, size = self.server, self.data, self.header_size
        writer, writer_transport = server.writer(1)
        _, reader = server.reader(1)
        self.assertEqual(reader.value(), b"")  # no header yet
        send(writer, data[:size - 1])
        self.assertEqual(reader.value(), b"")
        writer.dataReceived(data[size - 1:size + 5000])
        self.assertEqual(reader.value(), data[:size])  # the header, at once
        server.tick(DELAY)
        self.assertEqual(reader.value(), data[:size])  # nothing before the delay
        writer.dataReceived(data[size + 5000:size + 20000])
        server.tick(1)
        self.assertEqual(reader.value(), data[:size + 5000])  # what was there DELAY ago
        server.tick(DELAY - 1)
        self.assertEqual(reader.value(), data[:size + 5000])
        server.tick(1)
        self.assertEqual(reader.value(), data[:size + 20000])
        writer.dataReceived(data[size + 20000:])
        writer_transport.loseConnection()  # an ended stream keeps its delay...
        server.tick(1)
        self.assertEqual(reader.value(), data[:size + 20000])
        self.assertTrue(reader.connected)
        with capturedLogs() as events:
            server.tick(GRACE)  # ... until the writing phase is over
        self.assertFalse(reader.connected)
        self.assertEqual(reader.value(), data)
        self.assertIsNone(reader.producer)
        self.assertEqual(server.served("Success"), 2)
        [closed] = [e for e in events if "Reader" in e["log_format"]]  # one line per outcome
        self.assertEqual((closed["game_id"], closed["result"], closed["sent"]),
                         (1, "Success", len(data)))

    def test_late_joiner_catches_up_from_byte_zero(self) -> None:
        server, data = self.server, self.data
        writer, _ = server.writer(1, data=data)
        server.tick(DELAY + 1)
        _, reader = server.reader(1)
        self.assertEqual(reader.value(), data)

    def test_readers_share_one_replay(self) -> None:
        server, data = self.server, self.data
        writer, transport = server.writer(1, data=data[:20000])
        readers = [server.reader(1)[1] for _ in range(3)]
        server.tick(DELAY + 1)
        send(writer, data[20000:])
        transport.loseConnection()
        server.tick(GRACE + 1)
        for reader in readers:
            self.assertEqual(reader.value(), data)
            self.assertFalse(reader.connected)

    def test_reader_refused_once_the_writing_phase_is_over(self) -> None:
        server = self.server
        _, transport = server.writer(1, data=self.data)
        _, early = server.reader(1)
        transport.loseConnection()
        server.tick(GRACE)
        _, late = server.reader(1)
        self.assertEqual(late.value(), b"")
        self.assertFalse(late.connected)
        self.assertEqual(early.value(), self.data)
        self.assertEqual(server.served("No replay matched"), 1)

    def test_game_without_header_closes_reader_without_data(self) -> None:
        server = self.server
        _, transport = server.writer(1, data=self.data[:100])
        _, reader = server.reader(1)
        transport.loseConnection()
        server.tick(GRACE)
        self.assertFalse(reader.connected)
        self.assertEqual(reader.value(), b"")
        self.assertEqual(server.served("No replay matched"), 1)

    def test_reader_leaving_while_waiting(self) -> None:
        server, data = self.server, self.data
        writer, transport = server.writer(1, data=data[:20000])
        protocol, reader = server.reader(1)
        game = server.registry.get(1)
        self.assertEqual(game.readers, 1)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(game.readers, 0)
        self.assertEqual(server.served("I/O error"), 1)
        server.tick(DELAY + 1)  # the edge moves: nothing is written to the gone reader
        self.assertEqual(reader.value(), data[:self.header_size])
        transport.loseConnection()
        server.tick(GRACE)
        server.saver.finish(1)
        self.assertIsNone(server.registry.get(1))

    def test_reader_leaving_before_the_header(self) -> None:
        server = self.server
        server.writer(1)
        _, reader = server.reader(1)
        reader.loseConnection()
        self.assertEqual(server.registry.get(1).readers, 0)
        self.assertEqual(server.served("Success"), 1)


class FlowControlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = Server(self)
        self.data = samples.read(BIG)

    def connect_reader(self, game_id: int) -> PausingTransport:
        protocol = self.server.factory.buildProtocol(None)
        transport = PausingTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(b"G/%d/slow\0" % game_id)
        return transport

    def test_reader_that_does_not_read_buffers_about_one_chunk(self) -> None:
        server, data = self.server, self.data
        writer, _ = server.writer(1, data=data)
        reader = self.connect_reader(1)
        server.tick(DELAY + 1)  # 1.5 MB become visible at once
        self.assertLessEqual(len(reader.value()), PausingTransport.limit + CHUNK_SIZE)
        received = reader.drain()
        while True:
            self.assertLessEqual(len(reader.value()), PausingTransport.limit + CHUNK_SIZE)
            more = reader.drain()
            if not more:
                break
            received += more
        self.assertEqual(received, data)

    def test_paused_reader_writes_nothing_and_keeps_its_game(self) -> None:
        # paused longer than the default limits.reader_stall_timeout (see test_limits_reader)
        server = Server(self, limits=LimitsSection(reader_stall_timeout=1000))
        data = self.data
        writer, writer_transport = server.writer(1, data=data[:10000])
        protocol, reader = server.reader(1)
        reader.producer.pauseProducing()
        server.tick(DELAY + 1)
        self.assertEqual(len(reader.value()), fafreplay.body_offset(data))  # the header only
        send(writer, data[10000:], 65536)
        writer_transport.loseConnection()
        server.tick(GRACE)
        server.saver.finish(1)
        game = server.registry.get(1)
        self.assertIs(game.state, GameState.SAVED)  # saved, but a reader still reads
        self.assertTrue(reader.connected)
        reader.producer.resumeProducing()
        self.assertEqual(reader.value(), data)
        self.assertFalse(reader.connected)
        self.assertIsNone(server.registry.get(1))
        self.assertEqual(server.gauge("replayserver_running_replays_count"), 0)
