"""End to end: ``kill -9`` at random moments while games run, then restart, several times.

Each cycle starts the server (two worker processes, as in production) on the same
directories, starts new games whose writers stream at a steady pace, and kills the main
process with SIGKILL at a random moment (its workers die with it). A last start recovers what
the last kill left. Then every game must be in the vault exactly once, as a decodable replay
whose SCFA bytes are a prefix of what its writer sent, holding at least what was sent up to
about a second before the kill (the spool is written out every second).
"""
from __future__ import annotations

import collections
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.body import BodyScanner
from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from tests.support import samples
from tests.support.server import ServerProcess, temporary_directory

REPLAYS = [samples.read("8945286.scfareplay"), samples.read("8805603.scfareplay")]
CYCLES = 3
GAMES_PER_CYCLE = 3
#: What may be missing at the end of a saved replay: bytes sent in this many seconds before
#: the kill (the spool's flush interval is 1 s, plus scheduling slack).
LOSS_WINDOW = 1.5
SETTINGS = {"replay": {"delay": 0.5, "grace_period": 0.5}}


class Writer:
    """Streams a replay at a steady pace and records how much it had sent when."""

    def __init__(self, server: ServerProcess, game_id: int, data: bytes) -> None:
        self.data = data
        self.progress: list[tuple[float, int]] = []
        self.connection = server.connect("P", game_id, "player")

    def run(self, stop: threading.Event) -> None:
        header = parse_header(self.data).size
        sent = 0
        try:
            for end in [header, *range(header + 256, len(self.data), 256), len(self.data)]:
                if stop.is_set():
                    return
                self.connection.sendall(self.data[sent:end])
                sent = end
                self.progress.append((time.monotonic(), sent))
                time.sleep(0.02)
            self.connection.close()
        except OSError:
            pass  # the server was killed

    def sent_before(self, moment: float) -> int:
        return max((sent for at, sent in self.progress if at <= moment), default=0)


class CrashLoopTests(SynchronousTestCase):
    def test_kill_9_and_restart_loses_at_most_the_last_second(self):
        directory = temporary_directory(self)
        generator = random.Random(9)
        threads = ThreadPoolExecutor(max_workers=GAMES_PER_CYCLE)
        self.addCleanup(threads.shutdown)
        environment = {"REPLAYSERVER_SERVER_WORKERS": "2"}
        games: dict[int, tuple[Writer, float]] = {}
        for cycle in range(CYCLES):
            server = ServerProcess(directory, SETTINGS, environment=environment).start()
            self.addCleanup(server.kill)
            stop = threading.Event()
            writers = {}
            for index in range(GAMES_PER_CYCLE):
                game_id = 9000 + 10 * cycle + index
                writers[game_id] = Writer(server, game_id, generator.choice(REPLAYS))
            running = [threads.submit(writer.run, stop) for writer in writers.values()]
            time.sleep(generator.uniform(1.2, 2.5))  # the header is spooled
            killed_at = time.monotonic()
            server.kill()
            stop.set()
            for done in running:
                done.result(timeout=30)
            for game_id, writer in writers.items():
                writer.connection.close()
                games[game_id] = (writer, killed_at)

        server = ServerProcess(directory, SETTINGS, environment=environment).start()
        self.addCleanup(server.kill)
        for game_id in games:
            server.wait_for_file(game_id, timeout=30)
        server.terminate()

        files = collections.Counter(path.name for path in server.vault.rglob("*.fafreplay"))
        self.assertEqual(files, collections.Counter(f"{game_id}.fafreplay" for game_id in games))
        for game_id, (writer, killed_at) in games.items():
            scfa = read_fafreplay(server.replay_path(game_id).read_bytes()).scfa
            self.assertTrue(scfa == writer.data[:len(scfa)],
                            f"game {game_id}: not a prefix of what was sent")
            header = parse_header(scfa)
            BodyScanner().feed(scfa[header.size:])  # decodable (a cut last frame is fine)
            expected = writer.sent_before(killed_at - LOSS_WINDOW)
            self.assertGreaterEqual(len(scfa), expected,
                                    f"game {game_id}: {len(scfa)} bytes saved, {expected} sent"
                                    f" more than {LOSS_WINDOW} s before the kill")
        self.assertNotIn("Traceback", server.log())
