"""WriterProtocol: real replays streamed in chunks into the merge and the spool."""
from __future__ import annotations

import glob
import os

import fafreplay
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from replayserver.game.game import GameState
from tests.support import samples
from tests.test_game_lifecycle import SAMPLE, body_of
from tests.support.harness import GRACE, Server, send


class WriterProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = Server(self)

    def spooled(self, game_id: int, index: int) -> bytes:
        [path] = glob.glob(os.path.join(self.server.spool.directory, "*", str(game_id),
                                        f"{index}.stream"))
        with open(path, "rb") as f:
            return f.read()

    def test_stream_reaches_merge_and_spool(self) -> None:
        server = self.server
        data = samples.read("8604509.scfareplay")
        writer, transport = server.writer(5, name="EcoNoob.SCFAreplay")
        send(writer, data, 4096)
        [stream] = server.registry.get(5).live.streams
        self.assertEqual((stream.name, stream.index), ("EcoNoob.SCFAreplay", 0))
        self.assertEqual(stream.header_size, fafreplay.body_offset(data))
        header = server.registry.get(5).live.canonical.header_raw
        self.assertEqual(header, data[:fafreplay.body_offset(data)])
        self.assertEqual(len(stream.body), len(body_of("8604509.scfareplay")))
        with capturedLogs() as events:
            transport.loseConnection()
        self.assertIs(stream.clean_end, True)
        self.assertEqual(self.spooled(5, 0), data)
        [closed] = [e for e in events if "closed" in e["log_format"]]  # one line per outcome
        self.assertEqual((closed["game_id"], closed["result"], closed["received"]),
                         (5, "Success", len(data)))

    def test_bad_header_drops_only_that_writer(self) -> None:
        server = self.server
        good, good_transport = server.writer(1, name="good", data=samples.read(SAMPLE)[:3000])
        bad, bad_transport = server.writer(1, name="bad")
        with capturedLogs() as events:
            send(bad, samples.read(samples.CORRUPT_SCFA), 512)
        self.assertFalse(bad_transport.connected)
        self.assertTrue(good_transport.connected)
        self.assertEqual(server.served("Bad data"), 1)
        [event] = events  # one line for the outcome, saying why
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual((event["name"], event["result"]), ("bad", "Bad data"))
        self.assertIn("bad replay header", event["why"])
        self.assertIsNotNone(event["field"])
        self.assertIsNotNone(event["offset"])
        game = server.registry.get(1)
        self.assertEqual(game.writers, 1)
        server.tick(GRACE * 2)
        self.assertIs(game.state, GameState.RUNNING)
        send(good, samples.read(SAMPLE)[3000:])
        good_transport.loseConnection()
        server.tick(GRACE)
        canonical = server.saver.calls[0][1]
        self.assertEqual(canonical.header_raw + canonical.body(), samples.read(SAMPLE))
        provenance = {p.name: p for p in game.live.provenance()}
        self.assertFalse(provenance["bad"].header_ok)
        self.assertTrue(provenance["good"].matched)

    def test_bad_header_of_the_only_writer_starts_the_grace_period(self) -> None:
        server = self.server
        writer, _ = server.writer(1)
        send(writer, samples.read(samples.CORRUPT_SCFA))
        game = server.registry.get(1)
        server.tick(GRACE)
        self.assertIs(game.state, GameState.SAVING)

    def test_reconnect_is_a_new_stream(self) -> None:
        server = self.server
        data = samples.read(SAMPLE)
        first, transport = server.writer(1, name="same", data=data[:10000])
        transport.loseConnection()
        second, transport = server.writer(1, name="same", data=data)
        streams = server.registry.get(1).live.streams
        self.assertEqual([(s.name, s.index) for s in streams], [("same", 0), ("same", 1)])
        self.assertEqual([s.received for s in streams], [10000, len(data)])
        transport.loseConnection()
        self.assertEqual(self.spooled(1, 0), data[:10000])
        self.assertEqual(self.spooled(1, 1), data)

    def test_six_writers_merge_into_the_expected_replay(self) -> None:
        """The golden case of REFERENCE §5, through the protocols, interleaved chunk by chunk."""
        server = self.server
        streams = [samples.read(name) for name in samples.DIVERGING]
        writers = [server.writer(9, name=f"w{i}")[0] for i in range(len(streams))]
        for start in range(0, max(map(len, streams)), 700):
            for writer, data in zip(writers, streams):
                if start < len(data):
                    writer.dataReceived(data[start:start + 700])
            server.tick(1)
        for writer in writers:
            writer.transport.loseConnection()
        server.tick(GRACE)
        [(game_id, canonical, *_)] = server.saver.calls
        self.assertEqual(canonical.body(), body_of(samples.DIVERGING[5]))
        self.assertEqual(canonical.header_raw, streams[0][:len(canonical.header_raw)])
        self.assertEqual(server.served("Success"), len(streams))

    def test_data_after_the_end_is_ignored(self) -> None:
        server = self.server
        data = samples.read(SAMPLE)
        writer, transport = server.writer(1, data=data[:1000])
        transport.loseConnection()
        writer.dataReceived(data[1000:])
        [stream] = server.registry.get(1).live.streams
        self.assertEqual(stream.received, 1000)
