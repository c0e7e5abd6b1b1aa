"""The spool: file work in its own thread and in order, one flush timer, streams on disk within
a second, errors logged once per stream, crash leftovers found again."""
import os
import threading
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replayserver.config import ConfigError
from replayserver.save.spool import Spool, SpooledStream, SpoolLock, SpoolThread
from replayserver.save.spooled import UnreadableSpool
from tests.support.server import temporary_directory


def spooled_bytes(stream: SpooledStream) -> bytes:
    return Path(stream.path).read_bytes()


class SpoolTests(TestCase):
    def setUp(self):
        self.directory = os.path.join(temporary_directory(self), "d")
        self.clock = Clock()
        self.spool = self.make_spool()

    def make_spool(self) -> Spool:
        spool = Spool(self.directory, self.clock, flush_interval=1.0, work=SpoolThread(reactor))
        spool.start()
        self.addCleanup(spool.stop)
        return spool

    def open_stream(self, spool: Spool, game_id: int, index: int, name: str) -> SpooledStream:
        return spool.open_game(game_id).open_stream(index, name)

    async def crash(self, spool: Spool, *streams: SpooledStream) -> None:
        """The process dies: what the flush timer has not written out is lost (the files
        are closed only so that the test leaves no thread behind)."""
        for stream in streams:
            stream.take()
        await spool.stop()

    def block(self, spool: Spool) -> threading.Event:
        """Hold the spool's thread until the returned event is set."""
        release = threading.Event()
        self.addCleanup(release.set)
        spool.run(release.wait)
        return release

    async def test_flush_timer_writes_within_the_interval(self):
        stream = self.open_stream(self.spool, 7, 0, "alice.SCFAreplay")
        stream.write(b"abc")
        stream.write(b"def")
        await self.spool.written()
        self.assertEqual(spooled_bytes(stream), b"")
        self.clock.advance(0.5)
        await self.spool.written()
        self.assertEqual(spooled_bytes(stream), b"")
        self.clock.advance(0.5)
        await self.spool.written()
        self.assertEqual(spooled_bytes(stream), b"abcdef")
        stream.write(b"g")
        self.clock.advance(1.0)
        await self.spool.written()
        self.assertEqual(spooled_bytes(stream), b"abcdefg")

    async def test_one_timer_for_all_streams(self):
        streams = [self.open_stream(self.spool, game, index, f"p{index}")
                   for game in (1, 2) for index in range(5)]
        for stream in streams:
            stream.write(stream.path.encode())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.0)
        await self.spool.written()
        for stream in streams:
            self.assertEqual(spooled_bytes(stream), stream.path.encode())

    async def test_file_work_is_queued_to_the_spool_thread_in_order(self):
        """Nothing touches the disk on the calling thread: while the spool's thread is busy,
        a stream's opening, writes, close and its game's removal only wait in line, and they
        are done in that order once it is free."""
        release = self.block(self.spool)
        game = self.spool.open_game(8)
        stream = game.open_stream(0, "a")
        stream.write(b"written")
        self.clock.advance(1.0)
        stream.write(b" and closed")
        stream.close()
        self.assertFalse(os.path.exists(game.directory))
        kept = self.open_stream(self.spool, 9, 0, "b")
        kept.write(b"kept")
        kept.close()
        contents = self.spool.run(Path(stream.path).read_bytes)
        removed = game.remove()
        self.assertFalse(os.path.exists(game.directory))
        release.set()
        self.assertEqual(await contents, b"written and closed")
        await removed
        self.assertFalse(os.path.exists(game.directory))
        self.assertEqual(spooled_bytes(kept), b"kept")

    async def test_a_flush_waits_for_the_last_one(self):
        """While a flush is still being written out, the next tick leaves the bytes buffered
        (the thread's queue does not grow when the disk is slow)."""
        stream = self.open_stream(self.spool, 3, 0, "a")
        await self.spool.written()
        release = self.block(self.spool)
        stream.write(b"first")
        self.clock.advance(1.0)
        stream.write(b"second")
        self.clock.advance(1.0)
        self.assertEqual(stream.take(), b"second")
        release.set()
        await self.spool.written()
        self.assertEqual(spooled_bytes(stream), b"first")

    async def test_close_flushes_and_stop_closes_everything(self):
        first = self.open_stream(self.spool, 3, 0, "a")
        second = self.open_stream(self.spool, 3, 1, "b")
        first.write(b"one")
        first.close()
        await self.spool.written()
        self.assertEqual(spooled_bytes(first), b"one")
        first.write(b"ignored after close")
        second.write(b"two")
        await self.spool.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(spooled_bytes(second), b"two")
        self.assertEqual(spooled_bytes(first), b"one")
        self.assertTrue(os.path.isdir(self.spool.run_directory))  # game 3 is still in it

    async def test_stop_removes_the_run_directory_once_empty(self):
        game = self.spool.open_game(4)
        game.open_stream(0, "a").write(b"x")
        await game.remove()
        await self.spool.stop()
        self.assertEqual(os.listdir(self.directory), [])

    async def test_a_file_that_cannot_be_opened_is_logged_once_and_the_rest_goes_on(self):
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        broken = self.spool.open_game(5)
        Path(self.spool.run_directory, "5").write_text("a file where the game's directory goes")
        stream = broken.open_stream(0, "a")
        other = broken.open_stream(1, "b")
        fine = self.open_stream(self.spool, 6, 0, "c")
        for data in (b"x", b"y"):
            stream.write(data)
            other.write(data)
            fine.write(data)
            self.clock.advance(1.0)
            await self.spool.written()
        stream.close()
        other.close()
        fine.close()
        await self.spool.written()
        self.assertEqual(spooled_bytes(fine), b"xy")
        self.assertTrue(stream.failed and other.failed)
        errors = [event for event in logged
                  if event.get("doing") == "opened" and event["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 2)  # once per stream, not per write
        self.assertEqual({event["game_id"] for event in errors}, {5})

    async def test_crash_leftovers_are_pending(self):
        crashed = self.spool
        a = self.open_stream(crashed, 42, 0, "alice/with/slash")
        b = self.open_stream(crashed, 42, 1, "bob")
        idle = self.open_stream(crashed, 42, 2, "never sent anything")
        other = self.open_stream(crashed, 43, 0, "carol")
        a.write(b"A" * 10)
        b.write(b"B" * 5)
        other.write(b"C")
        self.clock.advance(1.0)
        await crashed.written()
        a.write(b"lost: never flushed")
        await self.crash(crashed, a, b, idle, other)

        restarted = self.make_spool()
        live = self.open_stream(restarted, 44, 0, "dave")
        live.write(b"D")
        restarted.flush()
        await restarted.written()
        self.assertEqual(restarted.spooled_ids(), {42, 43})  # the current run's 44 is not
        games = {game.game_id: game for game in await restarted.pending()}
        self.assertEqual(set(games), {42, 43})
        streams = await games[42].scan()
        self.assertEqual([Path(path).read_bytes() for path in streams.paths],
                         [b"A" * 10, b"B" * 5])
        self.assertEqual(streams.names, ["alice/with/slash", "bob"])
        self.assertEqual(streams.last_modified, max(
            os.stat(stream.path).st_mtime for stream in (a, b, idle)))
        self.assertEqual(games[42].last_modified, streams.last_modified)
        self.assertLessEqual(streams.started_at, streams.last_modified)
        reader = games[42].reader(streams)
        self.assertEqual(await reader.read([0, 1], 4), [b"AAAA", b"BBBB"])
        self.assertEqual(await reader.read([0, 1], 4), [b"AAAA", b"B"])
        self.assertEqual(await reader.read([0, 1], 4), [b"AA", b""])
        await reader.close()

    async def test_pending_joins_the_streams_of_several_crashed_runs(self):
        first = self.open_stream(self.spool, 5, 0, "a")
        first.write(b"first run")
        await self.spool.stop()
        second_run = self.make_spool()
        again = self.open_stream(second_run, 5, 0, "a")
        again.write(b"second run")
        await second_run.stop()
        third_run = self.make_spool()
        (game,) = await third_run.pending()
        streams = await game.scan()
        self.assertEqual([Path(path).read_bytes() for path in streams.paths],
                         [b"first run", b"second run"])

    async def test_a_game_removes_only_its_own_files(self):
        """A new run's game with the id of a spooled one (a stray writer, say) never removes
        the spool that recovery has not saved yet; a recovered game removes only its own."""
        old = self.open_stream(self.spool, 9, 0, "a")
        old.write(b"x")
        kept = self.open_stream(self.spool, 10, 0, "b")
        kept.write(b"y")
        await self.spool.stop()
        restarted = self.make_spool()
        stray = restarted.open_game(9)
        stray.open_stream(0, "c").write(b"z")
        await stray.remove()
        self.assertTrue(os.path.exists(old.path))
        (nine, ten) = sorted(await restarted.pending(), key=lambda game: game.game_id)
        self.assertEqual([Path(path).read_bytes() for path in (await nine.scan()).paths], [b"x"])
        await nine.remove()
        self.assertFalse(os.path.exists(old.path))
        self.assertTrue(os.path.exists(kept.path))
        await ten.remove()
        self.assertEqual(await restarted.pending(), [])
        # the crashed run's directory is gone; only the current run's remains
        self.assertEqual(os.listdir(self.directory), [restarted.run_name])

    async def test_games_of_one_id_in_one_run_have_their_own_directories(self):
        first, second = self.spool.open_game(4), self.spool.open_game(4)
        self.assertNotEqual(first.directory, second.directory)
        first.open_stream(0, "a").write(b"first")
        second.open_stream(0, "b").write(b"second")
        self.spool.flush()
        await first.remove()
        self.assertEqual(sorted(os.listdir(second.directory)), ["0.json", "0.stream"])
        third = self.spool.open_game(4)  # the first one's name is free again, not the second's
        self.assertEqual(third.directory, first.directory)
        self.assertNotEqual(self.spool.open_game(4).directory, second.directory)

    async def test_game_without_stream_data_is_pending_with_no_streams(self):
        self.open_stream(self.spool, 11, 0, "silent")
        await self.spool.stop()
        (game,) = await self.make_spool().pending()
        streams = await game.scan()
        self.assertEqual((game.game_id, streams.paths), (11, []))

    async def test_a_game_directory_without_stream_files_is_dropped(self):
        Path(self.spool.run_directory, "12").mkdir()
        Path(self.spool.run_directory, "12", "0.json").write_text("{}")
        await self.spool.stop()
        restarted = self.make_spool()
        self.assertEqual(restarted.spooled_ids(), {12})
        self.assertEqual(await restarted.pending(), [])
        self.assertEqual(os.listdir(self.directory), [restarted.run_name])

    async def test_a_vanished_stream_file_is_named(self):
        stream = self.open_stream(self.spool, 13, 0, "a")
        stream.write(b"data")
        await self.spool.stop()
        (game,) = await self.make_spool().pending()
        streams = await game.scan()
        os.unlink(stream.path)  # between the listing and the reading
        reader = game.reader(streams)
        error = await self.assertFailure(reader.read([0], 10), UnreadableSpool)
        self.assertEqual(error.path, stream.path)
        await reader.close()
        self.assertEqual((await game.scan()).paths, [])  # a new scan no longer lists it


class InlineSpoolTests(SynchronousTestCase):
    """A spool driven by a Clock (tests without a running reactor) does its file work at once
    (`InlineFileWork`): the same steps, in the same order."""

    def test_file_work_is_done_at_once(self):
        directory = os.path.join(temporary_directory(self), "d")
        clock = Clock()
        spool = Spool(directory, clock)
        spool.start()
        game = spool.open_game(1)
        stream = game.open_stream(0, "a")
        stream.write(b"abc")
        self.assertEqual(spooled_bytes(stream), b"")
        clock.advance(1.0)
        self.assertEqual(spooled_bytes(stream), b"abc")
        stream.write(b"d")
        stream.close()
        self.assertEqual(spooled_bytes(stream), b"abcd")
        self.successResultOf(game.remove())
        self.assertFalse(os.path.exists(game.directory))
        self.successResultOf(spool.stop())
        self.assertEqual(os.listdir(directory), [])


class SpoolLockTests(SynchronousTestCase):
    def test_one_holder_at_a_time_and_free_again_once_released(self):
        directory = temporary_directory(self)
        lock = SpoolLock.take(directory)
        error = self.assertRaises(ConfigError, SpoolLock.take, directory)
        self.assertEqual(error.key, "storage.spool")
        self.assertIn(f"pid {os.getpid()}", str(error))
        lock.release()
        SpoolLock.take(directory).release()


class SpoolThreadTests(TestCase):
    async def test_work_leaves_no_garbage_cycles(self) -> None:
        """Each piece of work is freed by reference counting as soon as it is done: none waits
        for a collection (the server collects rarely, and a flush holds a second of every
        writer's bytes)."""
        import gc

        work = SpoolThread(reactor)
        work.start()
        self.addCleanup(work.stop)
        await work.run(lambda: None)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        for number in range(50):
            self.assertEqual(await work.run(lambda value: value + 1, number), number + 1)
        self.assertLess(gc.collect(), 50)

    async def test_a_failure_comes_back_as_one(self) -> None:
        work = SpoolThread(reactor)
        work.start()
        self.addCleanup(work.stop)
        with self.assertRaises(OSError):
            await work.run(os.stat, "/nonexistent/replayserver/file")
