"""Crash recovery: spooled streams of a dead run are merged, saved, and only then removed."""
import os

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from replayserver.metrics import Metrics
from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from replayserver.save.interfaces import NullIndex
from replayserver.save.metadata import HeaderMetadata
from replayserver.save.recovery import Recovery
from replayserver.save.saver import ReplaySaver
from replayserver.save.spool import Spool
from replayserver.save.vault import Vault
from tests.support import samples
from tests.support.server import temporary_directory


class RecoveryTests(TestCase):
    def setUp(self):
        root = temporary_directory(self)
        self.spool_directory = os.path.join(root, "spool")
        pool = ThreadPool(minthreads=0, maxthreads=2, name="test-recovery")
        pool.start()
        self.addCleanup(pool.stop)
        self.vault = Vault(os.path.join(root, "vault"), pool, 3)

    def crash_with(self, games: dict[int, list[bytes]]) -> None:
        """A run that spooled these streams and died (flushed, never stopped)."""
        spool = Spool(self.spool_directory, Clock())
        for game_id, streams in games.items():
            for index, data in enumerate(streams):
                spool.open_stream(game_id, index, f"writer{index}").write(data)
        spool.flush()

    def recover(self):
        spool = Spool(self.spool_directory, reactor)
        self.addCleanup(spool.stop)
        saver = ReplaySaver(clock=reactor, vault=self.vault, metadata=HeaderMetadata(),
                            index=NullIndex(), metrics=Metrics())
        return spool, Recovery(spool, saver)

    async def test_spooled_games_are_merged_and_saved(self):
        diverging = [samples.read(name) for name in samples.DIVERGING]
        single = samples.read("8805603.scfareplay")
        self.crash_with({6001: diverging, 6002: [single[:2000]], 6003: [b""]})
        spool, recovery = self.recover()
        (crashed,) = [game for game in spool.pending() if game.game_id == 6002]
        last_write = max(os.stat(path).st_mtime for path in crashed.paths)
        self.assertEqual(sorted(await recovery.start()), [6001, 6002])
        stream5 = diverging[5]
        saved = read_fafreplay(open(self.vault.path(6001), "rb").read())
        size = parse_header(saved.scfa).size
        self.assertIn(saved.scfa[:size], {d[: parse_header(d).size] for d in diverging})
        self.assertTrue(saved.scfa[size:] == stream5[parse_header(stream5).size:])
        self.assertEqual(saved.metadata["uid"], 6001)
        recovered = read_fafreplay(open(self.vault.path(6002), "rb").read())
        self.assertEqual(recovered.scfa, single[:2000])
        self.assertEqual(recovered.metadata["game_end"], int(last_write))
        self.assertFalse(self.vault.contains(6003))  # nothing was ever sent
        self.assertEqual(spool.pending(), [])

    async def test_game_already_in_the_vault_is_not_saved_again(self):
        data = samples.read("8805603.scfareplay")
        self.vault.write_now(6004, {"uid": 6004, "note": "first"}, [data])
        self.crash_with({6004: [data]})
        spool, recovery = self.recover()
        self.assertEqual(await recovery.start(), [])
        replay = read_fafreplay(open(self.vault.path(6004), "rb").read())
        self.assertEqual(replay.metadata["note"], "first")
        self.assertEqual(spool.pending(), [])
