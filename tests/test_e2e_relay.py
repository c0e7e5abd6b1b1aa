"""End to end, against a real ``twistd -n replayserver`` process: writers in, readers out, saved.

Timing: delay 2 s, sampling every 0.1 s, grace period 0.5 s (tests/support/server.py).
"""
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from tests.support import samples
from tests.support.server import ServerProcess, temporary_directory, joined, receive_all, send_stream

DELAY = 2.0
SAMPLE = 0.1
SETTINGS = {"replay": {"delay": DELAY, "sample_interval": SAMPLE, "grace_period": 0.5}}


def split(data: bytes) -> tuple[bytes, bytes]:
    size = parse_header(data).size
    return data[:size], data[size:]


class RelayTests(SynchronousTestCase):
    def setUp(self):
        self.server = ServerProcess(temporary_directory(self), SETTINGS).start()
        self.addCleanup(self.server.kill)
        self.threads = ThreadPoolExecutor(max_workers=32)
        self.addCleanup(self.threads.shutdown)

    def assertSame(self, data: bytes, expected: bytes) -> None:
        """Byte equality with a short message (where they differ), not a dump."""
        if data != expected:
            differ = next((i for i, (a, b) in enumerate(zip(data, expected)) if a != b),
                          min(len(data), len(expected)))
            self.fail(f"{len(data)} bytes instead of {len(expected)}, differing at {differ}")

    def saved(self, game_id: int) -> tuple[dict, bytes]:
        replay = read_fafreplay(self.server.wait_for_file(game_id))
        return replay.metadata, replay.scfa

    def test_six_diverging_writers_and_three_readers(self):
        streams = [samples.read(name) for name in samples.DIVERGING]
        headers = {split(stream)[0] for stream in streams}
        expected_body = split(streams[5])[1]
        first_sent = time.monotonic()
        writers = [
            self.threads.submit(
                send_stream, self.server.connect("P", 1001, f"player{i}"), stream, 512, 0.06
            )
            for i, stream in enumerate(streams)
        ]
        time.sleep(0.2)  # the game exists: readers from (nearly) the start
        readers = [self.threads.submit(receive_all, self.server.connect("G", 1001, f"early{i}"))
                   for i in range(2)]
        time.sleep(DELAY + 0.5)
        readers.append(self.threads.submit(receive_all, self.server.connect("G", 1001, "late")))
        for writer in writers:
            writer.result(timeout=30)
        received = [reader.result(timeout=30) for reader in readers]
        for pieces in received:
            data = joined(pieces)
            header, body = split(data)
            self.assertTrue(header in headers, f"a reader received {len(data)} bytes")
            self.assertSame(body, expected_body)
        for pieces in received[:2]:
            # the header arrives at once, the body not before the delay
            header_size = len(joined(pieces)) - len(expected_body)
            got = 0
            for arrival, data in pieces:
                if got < header_size:
                    self.assertLess(arrival - first_sent, 1.0)
                got += len(data)
                if got > header_size:
                    self.assertGreater(arrival - first_sent, DELAY - SAMPLE - 0.05)
                    break
        metadata, scfa = self.saved(1001)
        self.assertSame(scfa, joined(received[0]))
        for key in ("uid", "complete", "state", "featured_mod", "featured_mod_versions",
                    "game_type", "host", "recorder", "launched_at", "game_end", "title",
                    "mapname", "num_players", "teams", "compression", "version"):
            self.assertIn(key, metadata)
        self.assertEqual((metadata["uid"], metadata["mapname"]), (1001, "paradisebay.v0007"))
        self.assertLessEqual(metadata["launched_at"], metadata["game_end"])

    def test_body_is_delayed(self):
        """At every moment a reader has at most what the writer had sent `delay` ago."""
        data = samples.read("8945286.scfareplay")
        header, body = split(data)
        writer = self.server.connect("P", 1002, "player")
        writer.sendall(header)
        sent = [(time.monotonic(), 0)]
        time.sleep(0.1)
        reader = self.threads.submit(receive_all, self.server.connect("G", 1002, "watcher"))
        chunk = len(body) // 40
        for start in range(0, chunk * 40, chunk):  # 40 chunks over 4 s, connection kept open
            writer.sendall(body[start:start + chunk])
            sent.append((time.monotonic(), start + chunk))
            time.sleep(0.1)
        writer.sendall(body[chunk * 40:])
        writer.close()
        pieces = reader.result(timeout=30)
        self.assertSame(joined(pieces), data)
        received = 0
        for arrival, piece in pieces:
            received += len(piece)
            if arrival >= sent[-1][0]:
                break  # the writer has ended: everything becomes visible
            allowed = max((n for t, n in sent if t <= arrival - DELAY + SAMPLE + 0.1), default=0)
            self.assertLessEqual(received - len(header), allowed)
        self.assertGreater(len(pieces), 3)  # the body did trickle out, not all at the end
        self.assertSame(self.saved(1002)[1], data)

    def test_one_writer_per_sample(self):
        games = {2000 + i: samples.read(name) for i, name in enumerate(samples.VALID_SCFA)}

        def play(game_id: int, data: bytes) -> bytes:
            writer = self.server.connect("P", game_id)
            size = parse_header(data).size
            writer.sendall(data[: size + 100])
            time.sleep(0.3)  # the game exists now
            reader = self.threads.submit(receive_all, self.server.connect("G", game_id))
            send_stream(writer, data[size + 100:], 65536)
            return joined(reader.result(timeout=30))

        played = {game_id: self.threads.submit(play, game_id, data)
                  for game_id, data in games.items()}
        for game_id, data in games.items():
            self.assertSame(played[game_id].result(timeout=30), data)
            self.assertSame(self.saved(game_id)[1], data)

    def test_reader_of_unknown_game_is_closed_without_data(self):
        start = time.monotonic()
        self.assertEqual(joined(receive_all(self.server.connect("G", 424242, "nobody"))), b"")
        self.assertLess(time.monotonic() - start, 5)

    def test_writer_disconnecting_early(self):
        data = samples.read("diverging_1/5")
        full = self.server.connect("P", 1003, "stays")
        leaver = self.server.connect("P", 1003, "leaves")
        time.sleep(0.1)
        reader = self.threads.submit(receive_all, self.server.connect("G", 1003, "watcher"))
        leaving = self.threads.submit(send_stream, leaver, data[: len(data) // 2], 512, 0.01)
        staying = self.threads.submit(send_stream, full, data, 512, 0.02)
        leaving.result(timeout=30)
        staying.result(timeout=30)
        self.assertSame(joined(reader.result(timeout=30)), data)
        self.assertSame(self.saved(1003)[1], data)

    def test_lone_writer_disconnecting_early_keeps_what_it_sent(self):
        data = samples.read("8805603.scfareplay")
        part = data[: parse_header(data).size + 1000]
        send_stream(self.server.connect("P", 1004, "leaves"), part, 256)
        saved = self.saved(1004)[1]
        self.assertSame(saved, part)

    def test_writer_reconnecting(self):
        data = samples.read("diverging_1/5")
        send_stream(self.server.connect("P", 1005, "flaky"), data[: len(data) // 3], 1024)
        reader = self.threads.submit(receive_all, self.server.connect("G", 1005, "watcher"))
        send_stream(self.server.connect("P", 1005, "flaky"), data, 1024, 0.01)
        self.assertSame(joined(reader.result(timeout=30)), data)
        self.assertSame(self.saved(1005)[1], data)


class BurstTests(SynchronousTestCase):
    """Writers are read on a beat (server.read_interval), but a writer that sends faster than
    the beat is read continuously: it never waits on a full socket buffer."""

    def setUp(self):
        self.server = ServerProcess(temporary_directory(self), {
            **SETTINGS, "server": {"read_interval": 2.0}}).start()
        self.addCleanup(self.server.kill)

    def test_a_burst_is_taken_at_once_whatever_the_beat(self):
        header, body = split(samples.read("8604509.scfareplay"))
        data = header + body * 10  # 29 MB: far more than the sockets' buffers hold
        connection = self.server.connect("P", 1201, "burst")
        started = time.monotonic()
        connection.sendall(data)  # blocks while the server does not read
        sent_in = time.monotonic() - started
        connection.close()
        # Paused for a 2 s beat after every 64 KiB read, it would take 15 minutes.
        self.assertLess(sent_in, 30.0)
        self.assertTrue(read_fafreplay(self.server.wait_for_file(1201)).scfa == data)
