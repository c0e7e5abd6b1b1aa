"""Limits of one game: bytes per writer stream and per game, writers and readers per game."""
from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from replayserver.game.game import GameState
from tests.support import samples
from tests.test_game_lifecycle import SAMPLE
from tests.support.harness import GRACE, send
from tests.test_limits_accept import connect_from, limited, limited_server, refused


class StreamBytesTests(SynchronousTestCase):
    def test_writer_beyond_its_stream_limit_is_dropped_as_bad_data(self) -> None:
        data = samples.read(SAMPLE)
        server = limited_server(self, stream_bytes=len(data) - 1)
        _, one_byte_over = server.writer(1, name="over", data=data)
        self.assertFalse(one_byte_over.connected)
        server = limited_server(self, stream_bytes=len(data))
        _, fits = server.writer(1, name="fits", data=data)
        _, greedy = server.writer(1, name="greedy")
        with capturedLogs() as events:
            send(greedy.protocol, data + b"\0" * 5000, 4096)
        self.assertFalse(greedy.connected)
        self.assertTrue(fits.connected)
        self.assertEqual(server.served("Bad data"), 1)
        self.assertEqual(limited(server, "stream_bytes"), 1)
        self.assertEqual(refused(server, "writer"), 0)  # dropped, not refused
        [event] = [e for e in events if "limit" in e]
        self.assertEqual(event["limit"], "stream_bytes")
        game = server.registry.get(1)
        greedy_stream = game.live.streams[1]
        self.assertTrue(greedy_stream.ended)
        self.assertIs(greedy_stream.clean_end, False)
        self.assertLessEqual(greedy_stream.received, len(data))
        fits.loseConnection()
        server.tick(GRACE)
        canonical = server.saver.calls[0][1]
        self.assertEqual(canonical.header_raw + canonical.body(), data)


class GameBytesTests(SynchronousTestCase):
    def test_game_limit_counts_every_writer_and_reconnection(self) -> None:
        data = samples.read(SAMPLE)
        server = limited_server(self, game_bytes=2 * len(data) + 100)
        _, first = server.writer(1, name="a", data=data)
        first.loseConnection()
        _, second = server.writer(1, name="b", data=data)
        game = server.registry.get(1)
        self.assertEqual(game.received_bytes, 2 * len(data))
        _, third = server.writer(1, name="c", data=data[:100])
        self.assertTrue(third.connected)
        third.protocol.dataReceived(data[100:101])
        self.assertFalse(third.connected)
        self.assertEqual(game.received_bytes, 2 * len(data) + 100)
        self.assertEqual(limited(server, "game_bytes"), 1)
        self.assertTrue(second.connected)
        self.assertIs(game.state, GameState.RUNNING)

    def test_memory_of_a_game_stays_bounded_whatever_its_writers_send(self) -> None:
        """Writers that reconnect and send endlessly: what the game holds stays below its limits
        (bytes received, streams kept)."""
        data = samples.read(SAMPLE)
        server = limited_server(self, game_bytes=200_000, writer_streams_per_game=20,
                                writers_per_game=4)
        for round_ in range(60):
            _, transport = server.writer(1, name=f"w{round_}")
            if transport.connected:
                send(transport.protocol, data, 8192)
                transport.loseConnection()
            server.tick(1)
        game = server.registry.get(1)
        self.assertLessEqual(game.received_bytes, 200_000)
        self.assertLessEqual(len(game.live.streams), 20)
        held = sum(stream.body.retained for stream in game.live.streams)
        self.assertLessEqual(held + game.live.canonical.length, 2 * 200_000)


class WritersPerGameTests(SynchronousTestCase):
    def test_writers_at_once(self) -> None:
        server = limited_server(self, writers_per_game=2)
        _, first = server.writer(1, name="a")
        server.writer(1, name="b")
        with capturedLogs() as events:
            _, third = server.writer(1, name="c")
        self.assertFalse(third.connected)
        [event] = events  # one line for the outcome, saying why
        self.assertIn("writers_per_game", event["why"])
        self.assertEqual(server.served("Refused"), 1)
        self.assertEqual(refused(server, "writer"), 1)
        self.assertEqual(limited(server, "writers_per_game"), 1)
        self.assertEqual(len(server.registry.get(1).live.streams), 2)
        first.loseConnection()
        self.assertTrue(server.writer(1, name="c")[1].connected)
        self.assertTrue(server.writer(2, name="other game")[1].connected)

    def test_writer_streams_over_the_life_of_a_game(self) -> None:
        server = limited_server(self, writer_streams_per_game=3)
        for name in "abc":
            server.writer(1, name=name)[1].loseConnection()
        _, fourth = server.writer(1, name="d")
        self.assertFalse(fourth.connected)
        self.assertEqual(limited(server, "writer_streams_per_game"), 1)
        server.tick(GRACE)  # the refused writer did not stop the grace period
        self.assertIs(server.saver.calls[0][0], 1)


class ReadersPerGameTests(SynchronousTestCase):
    def test_readers_at_once(self) -> None:
        server = limited_server(self, readers_per_game=2)
        server.writer(1, data=samples.read(SAMPLE))
        _, first = server.reader(1)
        server.reader(1)
        _, third = server.reader(1)
        self.assertFalse(third.connected)
        self.assertEqual(third.value(), b"")
        self.assertEqual(server.served("Refused"), 1)
        self.assertEqual(refused(server, "reader"), 1)
        self.assertEqual(limited(server, "readers_per_game"), 1)
        self.assertEqual(server.registry.get(1).readers, 2)
        self.assertEqual(server.active("reader"), 2)
        first.loseConnection()
        self.assertTrue(server.reader(1)[1].connected)

    def test_refusal_does_not_disturb_other_connections(self) -> None:
        data = samples.read(SAMPLE)
        server = limited_server(self, readers_per_game=1, connections_per_peer=3)
        _, writer = connect_from(server, "10.0.0.1", b"P/1/w\0" + data)
        _, reader = connect_from(server, "10.0.0.2", b"G/1/r\0")
        _, refused_reader = connect_from(server, "10.0.0.2", b"G/1/r2\0")
        self.assertFalse(refused_reader.connected)
        self.assertEqual(server.factory.connections.total, 2)  # the refused one is released
        writer.loseConnection()
        server.tick(GRACE)
        server.saver.finish(1)
        self.assertEqual(reader.value(), data)
