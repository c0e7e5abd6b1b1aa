"""The spool: one flush timer, streams on disk within a second, crash leftovers found again."""
import os
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from replayserver.config import ConfigError
from replayserver.save.spool import Spool, SpoolLock
from tests.support.server import temporary_directory


def spooled_bytes(stream) -> bytes:
    return Path(stream.path).read_bytes()


class SpoolTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.join(temporary_directory(self), "d")
        self.clock = Clock()
        self.spool = self.make_spool()

    def make_spool(self) -> Spool:
        spool = Spool(self.directory, self.clock, flush_interval=1.0)
        spool.start()
        self.addCleanup(spool.stop)
        return spool

    def test_flush_timer_writes_within_the_interval(self):
        stream = self.spool.open_stream(7, 0, "alice.SCFAreplay")
        stream.write(b"abc")
        stream.write(b"def")
        self.assertEqual(spooled_bytes(stream), b"")
        self.clock.advance(0.5)
        self.assertEqual(spooled_bytes(stream), b"")
        self.clock.advance(0.5)
        self.assertEqual(spooled_bytes(stream), b"abcdef")
        stream.write(b"g")
        self.clock.advance(1.0)
        self.assertEqual(spooled_bytes(stream), b"abcdefg")

    def test_one_timer_for_all_streams(self):
        streams = [self.spool.open_stream(game, index, f"p{index}")
                   for game in (1, 2) for index in range(5)]
        for stream in streams:
            stream.write(stream.path.encode())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.0)
        for stream in streams:
            self.assertEqual(spooled_bytes(stream), stream.path.encode())

    def test_close_flushes_and_stop_closes_everything(self):
        first = self.spool.open_stream(3, 0, "a")
        second = self.spool.open_stream(3, 1, "b")
        first.write(b"one")
        first.close()
        self.assertEqual(spooled_bytes(first), b"one")
        first.write(b"ignored after close")
        second.write(b"two")
        self.spool.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(spooled_bytes(second), b"two")
        self.assertEqual(spooled_bytes(first), b"one")

    def test_crash_leftovers_are_pending(self):
        crashed = self.spool  # its process "dies": nothing is closed, only flushed by the timer
        a = crashed.open_stream(42, 0, "alice/with/slash")
        b = crashed.open_stream(42, 1, "bob")
        idle = crashed.open_stream(42, 2, "never sent anything")
        other = crashed.open_stream(43, 0, "carol")
        a.write(b"A" * 10)
        b.write(b"B" * 5)
        other.write(b"C")
        self.clock.advance(1.0)
        a.write(b"lost: never flushed")

        restarted = self.make_spool()
        live = restarted.open_stream(44, 0, "dave")
        live.write(b"D")
        restarted.flush()
        games = {game.game_id: game for game in restarted.pending()}
        self.assertEqual(set(games), {42, 43})  # the current run's game 44 is not pending
        self.assertEqual(games[42].streams, [b"A" * 10, b"B" * 5])
        self.assertEqual(games[42].names, ["alice/with/slash", "bob"])
        self.assertEqual(games[43].streams, [b"C"])
        self.assertEqual(games[42].last_modified, max(
            os.stat(stream.path).st_mtime for stream in (a, b, idle)))
        self.assertLessEqual(games[42].started_at, games[42].last_modified)

    def test_pending_joins_the_streams_of_several_crashed_runs(self):
        first = self.spool.open_stream(5, 0, "a")
        first.write(b"first run")
        self.spool.flush()
        second_run = self.make_spool()
        again = second_run.open_stream(5, 0, "a")
        again.write(b"second run")
        second_run.flush()
        third_run = self.make_spool()
        (game,) = third_run.pending()
        self.assertEqual(game.streams, [b"first run", b"second run"])

    def test_a_game_removes_only_its_own_files(self):
        """A new run's game with the id of a spooled one (a stray writer, say) never removes
        the spool that recovery has not saved yet; a recovered game removes only its own."""
        old = self.spool.open_stream(9, 0, "a")
        old.write(b"x")
        kept = self.spool.open_stream(10, 0, "b")
        kept.write(b"y")
        self.spool.stop()
        restarted = self.make_spool()
        stray = restarted.open_game(9)
        stray.open_stream(0, "c").write(b"z")
        self.successResultOf(stray.remove())
        self.assertTrue(os.path.exists(old.path))
        (nine, ten) = sorted(restarted.pending(), key=lambda game: game.game_id)
        self.assertEqual((nine.game_id, nine.streams), (9, [b"x"]))
        self.successResultOf(nine.remove())
        self.assertFalse(os.path.exists(old.path))
        self.assertTrue(os.path.exists(kept.path))
        self.successResultOf(ten.remove())
        self.assertEqual(restarted.pending(), [])
        # the crashed run's directory is gone; only the current run's remains
        self.assertEqual(os.listdir(self.directory), [restarted.run])

    def test_games_of_one_id_in_one_run_have_their_own_directories(self):
        first, second = self.spool.open_game(4), self.spool.open_game(4)
        self.assertNotEqual(first.directory, second.directory)
        first.open_stream(0, "a").write(b"first")
        second.open_stream(0, "b").write(b"second")
        self.spool.flush()
        self.successResultOf(first.remove())
        self.assertEqual(sorted(os.listdir(second.directory)), ["0.json", "0.stream"])

    def test_game_without_stream_data_is_pending_with_no_streams(self):
        self.spool.open_stream(11, 0, "silent")
        self.spool.stop()
        (game,) = self.make_spool().pending()
        self.assertEqual((game.game_id, game.streams), (11, []))


class SpoolLockTests(SynchronousTestCase):
    def test_one_holder_at_a_time_and_free_again_once_released(self):
        directory = temporary_directory(self)
        lock = SpoolLock.take(directory)
        error = self.assertRaises(ConfigError, SpoolLock.take, directory)
        self.assertEqual(error.key, "storage.spool")
        self.assertIn(f"pid {os.getpid()}", str(error))
        lock.release()
        SpoolLock.take(directory).release()
