"""Crash recovery: spooled streams of a dead run are read a chunk at a time, merged and saved,
and only then removed; their ids are held meanwhile; an unreadable game fails alone and is
tried again; a game already in the vault gets its index update before its spool goes."""
import os
import shutil
from pathlib import Path

import fafreplay
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from tests.test_merge_helpers import merge_streams
from replayserver.metrics import Metrics
from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from replayserver.save.interfaces import NullIndex
from replayserver.save.metadata import HeaderMetadata
from replayserver.save.recovery import Recovery
from replayserver.save.saver import ReplaySaver
from replayserver.save.spool import Spool, SpoolThread
from replayserver.save.vault import Vault
from tests.support import samples
from tests.support.server import temporary_directory


def body_ticks(data: bytes) -> int:
    return fafreplay.body_ticks(data[fafreplay.body_offset(data):])


class Registry:
    """Records what recovery holds and releases (and whether the game was in the vault)."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.held: set[int] = set()
        self.released: list[tuple[int, bool]] = []

    def hold(self, game_ids):
        self.held |= game_ids

    def release(self, game_id):
        self.held.discard(game_id)
        self.released.append((game_id, self.vault.contains(game_id)))


class RecordingIndex:
    """A database index in memory; notes whether the game's spool was still there."""

    def __init__(self, spool_directory: str, failures: int = 0) -> None:
        self.spool_directory = spool_directory
        self.failures = failures
        self.marked = []

    def mark_saved(self, game_id, ticks):
        if self.failures:
            self.failures -= 1
            return defer.fail(ConnectionError("database down"))
        spooled = any(Path(self.spool_directory).glob(f"run-*/{game_id}/*.stream"))
        self.marked.append((game_id, ticks, spooled))
        return defer.succeed(None)

    def is_saved(self, game_id):
        return defer.succeed(False)


class FailingMetadata:
    def metadata(self, game_id, header, started_at, ended_at):
        return defer.fail(ConnectionError("database down"))


class RecoveryTests(TestCase):
    def setUp(self):
        root = temporary_directory(self)
        self.spool_directory = os.path.join(root, "spool")
        pool = ThreadPool(minthreads=0, maxthreads=2, name="test-recovery")
        pool.start()
        self.addCleanup(pool.stop)
        self.vault = Vault(os.path.join(root, "vault"), pool, 3, reactor=reactor)
        self.registry = Registry(self.vault)
        self.clock = Clock()  # the saver's and recovery's retries
        self.logged_events = []
        globalLogPublisher.addObserver(self.logged_events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged_events.append)

    def logged(self, game_id: int, text: str) -> list[dict]:
        return [event for event in self.logged_events
                if event.get("game_id") == game_id and text in event.get("log_format", "")]

    async def crash_with(self, games: dict[int, list[bytes]]) -> dict[int, list[str]]:
        """A run that spooled these streams and died; the paths of its stream files."""
        spool = Spool(self.spool_directory, Clock(), work=SpoolThread(reactor))
        spool.start()
        paths = {}
        for game_id, streams in games.items():
            game = spool.open_game(game_id)
            paths[game_id] = []
            for index, data in enumerate(streams):
                stream = game.open_stream(index, f"writer{index}")
                stream.write(data)
                paths[game_id].append(stream.path)
        await spool.stop()
        return paths

    def recover(self, index=None, metadata=None, **options):
        spool = Spool(self.spool_directory, Clock(), work=SpoolThread(reactor))
        spool.start()
        self.addCleanup(spool.stop)
        self.saver = ReplaySaver(clock=self.clock, vault=self.vault,
                                 metadata=metadata or HeaderMetadata(),
                                 index=index or NullIndex(), metrics=Metrics())
        recovery = Recovery(spool, self.saver, self.registry, **options)
        self.addCleanup(recovery.stop)
        return spool, recovery

    def saved_scfa(self, game_id: int) -> bytes:
        return read_fafreplay(Path(self.vault.path(game_id)).read_bytes()).scfa

    async def test_spooled_games_are_merged_and_saved(self):
        diverging = [samples.read(name) for name in samples.DIVERGING]
        single = samples.read("8805603.scfareplay")
        await self.crash_with({6001: diverging, 6002: [single[:2000]], 6003: [b""]})
        spool, recovery = self.recover(chunk_size=1000)  # many rounds per game
        (crashed,) = [game for game in await spool.pending() if game.game_id == 6002]
        last_write = (await crashed.scan()).last_modified
        self.assertEqual(sorted(await recovery.start()), [6001, 6002])
        whole = merge_streams(diverging)  # the merge of the whole streams at once
        self.assertEqual(self.saved_scfa(6001), whole.header_raw + whole.body())
        stream5 = diverging[5]
        size = parse_header(stream5).size
        self.assertTrue(self.saved_scfa(6001)[len(whole.header_raw):] == stream5[size:])
        recovered = read_fafreplay(Path(self.vault.path(6002)).read_bytes())
        self.assertEqual(recovered.scfa, single[:2000])
        self.assertEqual(recovered.metadata["game_end"], int(last_write))
        self.assertFalse(self.vault.contains(6003))  # nothing was ever sent
        self.assertEqual(await spool.pending(), [])

    async def test_large_streams_are_read_in_rounds(self):
        streams = [samples.read("8604509.scfareplay"), samples.read("8604509-EcoNoob.scfareplay")]
        await self.crash_with({6010: streams})
        spool, recovery = self.recover()
        self.assertEqual(await recovery.start(), [6010])
        whole = merge_streams(streams)
        self.assertTrue(self.saved_scfa(6010) == whole.header_raw + whole.body())
        self.assertGreater(len(whole.body()), 2_000_000)

    async def test_ids_are_held_from_the_start_until_each_game_is_saved(self):
        data = samples.read("8805603.scfareplay")
        await self.crash_with({6020: [data], 6021: [data], 6022: [b""]})
        spool, recovery = self.recover()
        done = recovery.start()
        self.assertEqual(self.registry.held, {6020, 6021, 6022})  # at once, before any save
        self.assertEqual(sorted(await done), [6020, 6021])
        self.assertEqual(self.registry.held, set())
        # each id was released once its replay was in the vault; 6022 had nothing to save
        self.assertEqual(sorted(self.registry.released), [(6020, True), (6021, True),
                                                          (6022, False)])

    async def test_game_already_in_the_vault_is_not_saved_again(self):
        data = samples.read("8805603.scfareplay")
        self.vault.write_now(6004, {"uid": 6004, "note": "first"}, [data])
        await self.crash_with({6004: [data]})
        spool, recovery = self.recover()
        self.assertEqual(await recovery.start(), [])
        replay = read_fafreplay(Path(self.vault.path(6004)).read_bytes())
        self.assertEqual(replay.metadata["note"], "first")
        self.assertEqual(await spool.pending(), [])
        self.assertEqual(self.registry.released, [(6004, True)])

    async def test_game_in_the_vault_gets_its_index_update_before_its_spool_goes(self):
        """The crash came between the vault write and the database update."""
        data = samples.read("8945286.scfareplay")
        self.vault.write_now(6005, {"uid": 6005}, [data])
        await self.crash_with({6005: [data[:5000]]})
        index = RecordingIndex(self.spool_directory, failures=1)
        spool, recovery = self.recover(index=index)
        done = recovery.start()
        # the first update fails, and is retried after a second
        await self.until(lambda: index.marked, advance=1)
        self.assertEqual(await done, [])
        # ticks counted from the file in the vault (not from the spooled 5000 bytes)
        self.assertEqual(index.marked, [(6005, body_ticks(data), True)])
        self.assertEqual(await spool.pending(), [])
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)

    async def until(self, condition, advance: float = 0.0) -> None:
        """Let the threads (vault, spool) and the reactor work until ``condition()`` holds
        (advancing the retry clock by ``advance`` each time); fail rather than hang."""
        for _ in range(1000):
            if condition():
                return
            await self.vault.run(lambda: None)
            await deferLater(reactor, 0.01)
            self.clock.advance(advance)
        self.fail("the condition never held")

    async def test_an_unreadable_game_fails_alone_and_is_tried_again(self):
        data = samples.read("8805603.scfareplay")
        paths = await self.crash_with({6030: [data], 6031: [data, data], 6032: [data]})
        broken = paths[6031][1]
        os.unlink(broken)
        os.mkdir(broken)  # root reads any file: a directory cannot be read
        spool, recovery = self.recover()
        done = recovery.start()
        await self.until(lambda: self.vault.contains(6030) and self.vault.contains(6032)
                         and self.logged(6031, "cannot read"))
        self.assertFalse(self.vault.contains(6031))
        self.assertIn(6031, self.registry.held)
        failures = self.logged(6031, "cannot read")
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["path"], broken)
        self.clock.advance(1)  # the second attempt fails too
        await self.until(lambda: len(self.logged(6031, "cannot read")) == 2)
        os.rmdir(broken)
        shutil.copyfile(paths[6031][0], broken)
        self.clock.advance(2)  # the backoff doubled
        self.assertEqual(sorted(await done), [6030, 6031, 6032])
        self.assertEqual(self.saved_scfa(6031), data)
        self.assertEqual(self.registry.held, set())

    async def test_stop_interrupts_the_retries_and_keeps_the_spool(self):
        data = samples.read("8805603.scfareplay")
        paths = await self.crash_with({6040: [data]})
        os.unlink(paths[6040][0])
        os.mkdir(paths[6040][0])
        spool, recovery = self.recover(first_retry=60)
        done = recovery.start()
        await self.until(lambda: self.logged(6040, "cannot read"))
        await recovery.stop()  # without waiting for the retry a minute later
        self.assertEqual(await done, [])
        self.assertEqual([game.game_id for game in await spool.pending()], [6040])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def test_a_save_given_up_at_shutdown_keeps_the_spool(self):
        data = samples.read("8805603.scfareplay")
        await self.crash_with({6050: [data]})
        spool, recovery = self.recover(metadata=FailingMetadata())
        done = recovery.start()
        await self.until(lambda: self.saver.pending)
        stopped = recovery.stop()
        self.assertNoResult(stopped)  # the save is under way
        self.saver.abandon()
        await stopped
        self.assertEqual(await done, [])
        self.assertFalse(self.vault.contains(6050))
        self.assertEqual([game.game_id for game in await spool.pending()], [6050])
        self.assertIn(6050, self.registry.held)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
        [kept] = [event for event in self.logged_events
                  if "interrupted by shutdown" in event.get("log_format", "")]
        self.assertEqual(kept["ids"], [6050])
