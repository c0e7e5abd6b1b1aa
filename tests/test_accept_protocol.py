"""ConnectionProtocol: header timeout, bad data, empty connections, hand-over, metrics."""
from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from replayserver.accept.handshake import MAX_HEADER_TEXT
from replayserver.metrics import RESULTS
from replayserver.receive.writer import WriterProtocol
from replayserver.send.reader import ReaderProtocol
from tests.support import samples
from tests.test_game_lifecycle import SAMPLE
from tests.support.harness import Server


class ConnectionProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = Server(self)

    def served(self) -> dict[str, float]:
        counts = {result: self.server.served(result) for result in RESULTS}
        return {result: count for result, count in counts.items() if count}

    def test_empty_connection_is_silent(self) -> None:
        for data in (b"", b"P", b"X"):
            with self.subTest(data=data), capturedLogs() as events:
                _, transport = self.server.connect(data)
                self.assertEqual(self.server.active("initial"), 1)
                transport.loseConnection()
                self.assertEqual(events, [])
                self.assertEqual(self.served(), {})
                self.assertEqual(self.server.active("initial"), 0)

    def test_bad_data_closes_logs_once_and_counts(self) -> None:
        for data in (b"XX", b"GET / HTTP/1.1\r\n", b"P/bar/x\0", b"G/1\0"):
            with self.subTest(data=data), capturedLogs() as events:
                before = self.server.served("Bad data")
                _, transport = self.server.connect(data)
                self.assertFalse(transport.connected)
                self.assertEqual(transport.value(), b"")
                self.assertEqual(self.server.served("Bad data"), before + 1)
                [event] = events
                self.assertEqual(event["log_level"], LogLevel.info)
                self.assertEqual(event["result"], "Bad data")
                self.assertIn("127.0.0.1", str(event["peer"]))  # the harness's peer
        self.assertEqual(self.server.active("initial"), 0)

    def test_header_without_nul_is_rejected_at_the_limit(self) -> None:
        protocol, transport = self.server.connect(b"P/1/" + b"n" * (MAX_HEADER_TEXT - 3))
        self.assertTrue(transport.connected)
        protocol.dataReceived(b"n")
        self.assertFalse(transport.connected)
        self.assertEqual(self.served(), {"Bad data": 1})

    def test_end_in_the_middle_of_the_header_is_bad_data(self) -> None:
        _, transport = self.server.connect(b"P/12/na")
        transport.loseConnection()
        self.assertEqual(self.served(), {"Bad data": 1})

    def test_header_timeout(self) -> None:
        server = self.server
        _, transport = server.connect()  # silent: the long timeout (limits.partial_header_timeout
        server.clock.advance(21599)       # applies once the header has begun: test_limits_accept)
        self.assertTrue(transport.connected)
        server.clock.advance(1)
        self.assertFalse(transport.connected)
        self.assertEqual(self.served(), {"Timeout": 1})
        self.assertEqual(server.active("initial"), 0)
        self.assertEqual(server.clock.getDelayedCalls(), [])

    def test_no_timeout_once_the_header_is_complete(self) -> None:
        server = Server(self, forced_end=30000)
        protocol, transport = server.writer(1)  # FA sends nothing until the game launches
        server.clock.advance(21600)
        self.assertTrue(transport.connected)
        self.assertEqual(server.served("Timeout"), 0)

    def test_timer_cancelled_on_early_close(self) -> None:
        _, transport = self.server.connect(b"G/")
        transport.loseConnection()
        self.assertEqual(self.server.clock.getDelayedCalls(), [])

    def test_writer_hand_over_keeps_the_bytes_after_the_nul(self) -> None:
        server = self.server
        data = samples.read(SAMPLE)
        protocol, transport = server.connect(b"P/1/w\0" + data[:100])
        self.assertIsInstance(protocol._handler, WriterProtocol)
        protocol.dataReceived(data[100:])
        [stream] = server.registry.get(1).live.streams
        self.assertEqual(stream.received, len(data))
        self.assertEqual((server.active("initial"), server.active("writer")), (0, 1))
        transport.loseConnection()
        self.assertEqual((server.active("initial"), server.active("writer")), (0, 0))
        self.assertEqual(self.served(), {"Success": 1})

    def test_reader_hand_over(self) -> None:
        server = self.server
        server.writer(1)
        protocol, transport = server.reader(1)
        self.assertIsInstance(protocol._handler, ReaderProtocol)
        self.assertEqual((server.active("initial"), server.active("reader")), (0, 1))
        self.assertIs(transport.producer, protocol._handler)
        transport.loseConnection()
        self.assertEqual(server.active("reader"), 0)

    def test_reader_of_unknown_game_gets_nothing(self) -> None:
        _, transport = self.server.reader(404)
        self.assertFalse(transport.connected)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.served(), {"No replay matched": 1})
        self.assertIsNone(self.server.registry.get(404))  # readers never create games

    def test_every_connection_counted_once(self) -> None:
        server = self.server
        data = samples.read(SAMPLE)
        server.connect(b"")[1].loseConnection()
        transports = [
            server.connect(b"Zz")[1],
            server.writer(1, data=data)[1],
            server.reader(1)[1],
            server.reader(2)[1],
            server.connect(b"G/")[1],
        ]
        server.clock.advance(21600)  # the last one times out
        for transport in transports:
            if transport.connected:
                transport.loseConnection()
        self.assertEqual(
            self.served(),
            {"Bad data": 1, "Success": 2, "No replay matched": 1, "Timeout": 1},
        )
        for category in ("initial", "writer", "reader"):
            self.assertEqual(server.active(category), 0)

    def test_unexpected_close_is_an_io_error(self) -> None:
        protocol, _ = self.server.writer(1, data=samples.read(SAMPLE)[:500])
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.served(), {"I/O error": 1})
        [stream] = self.server.registry.get(1).live.streams
        self.assertIs(stream.clean_end, False)

    def test_plain_string_transport(self) -> None:
        """Only ITransport methods are used: a transport without disconnection hooks works."""
        protocol = self.server.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"\x00\x01")
        self.assertTrue(transport.disconnecting)
