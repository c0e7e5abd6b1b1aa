"""The vault: FAF's path scheme, temporary file then link, never overwrite, readable files."""
import os
from pathlib import Path

from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from replayserver.save import vault as vault_module
from replayserver.save.vault import INCOMING, AlreadyInVault, Vault
from tests.support import samples
from tests.support.server import temporary_directory


class VaultTests(TestCase):
    def setUp(self):
        self.directory = os.path.join(temporary_directory(self), "d")
        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="test-vault")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.vault = Vault(self.directory, self.pool, 3, reactor=reactor)

    def incoming(self) -> list[str]:
        return os.listdir(os.path.join(self.directory, INCOMING))

    def test_path_scheme(self):
        for game_id, relative in [
            (1, "0/0/0/0/1.fafreplay"),
            (2000, "0/0/0/20/2000.fafreplay"),
            (1234567, "0/1/23/45/1234567.fafreplay"),
            (1123456789, "11/23/45/67/1123456789.fafreplay"),
        ]:
            self.assertEqual(self.vault.path(game_id),
                             os.path.join(os.path.abspath(self.directory), relative))

    async def test_write_reads_back(self):
        scfa = samples.read("8805603.scfareplay")
        size = parse_header(scfa).size
        path = await self.vault.write(2000, {"uid": 2000, "title": "t"},
                                      [scfa[:size], scfa[size:]])
        self.assertEqual(path, self.vault.path(2000))
        self.assertTrue(self.vault.contains(2000))
        replay = read_fafreplay(Path(path).read_bytes())
        self.assertEqual(replay.scfa, scfa)
        self.assertEqual(replay.format, "fafreplay-v2")
        self.assertEqual(replay.metadata["uid"], 2000)
        self.assertEqual((replay.metadata["compression"], replay.metadata["version"]), ("zstd", 2))
        self.assertEqual(self.incoming(), [])

    async def test_never_overwrites(self):
        first = await self.vault.write(77, {"uid": 77}, [b"first"])
        before = Path(first).read_bytes()
        with self.assertRaises(AlreadyInVault):
            await self.vault.write(77, {"uid": 77}, [b"second"])
        self.assertEqual(Path(first).read_bytes(), before)
        self.assertEqual(self.incoming(), [])

    async def test_replay_appearing_during_the_write_is_kept(self):
        """The final link fails if another file took the path meanwhile (exclusive create)."""
        real_write = vault_module.write_fafreplay
        final = self.vault.path(5)

        def racing_write(out, metadata, chunks, level, size):
            Path(final).write_bytes(b"the other replay")
            real_write(out, metadata, chunks, level=level)

        self.patch(vault_module, "write_fafreplay", racing_write)
        with self.assertRaises(AlreadyInVault):
            await self.vault.write(5, {"uid": 5}, [b"mine"])
        self.assertEqual(Path(final).read_bytes(), b"the other replay")
        self.assertEqual(self.incoming(), [])

    async def test_failed_write_leaves_nothing(self):
        def broken_write(out, metadata, chunks, level, size):
            out.write(b"half a replay")
            raise OSError(28, "No space left on device")

        self.patch(vault_module, "write_fafreplay", broken_write)
        with self.assertRaises(OSError):
            await self.vault.write(6, {"uid": 6}, [b"data"])
        self.assertFalse(self.vault.contains(6))
        self.assertEqual(self.incoming(), [])

    def test_temporary_files_are_hidden_in_the_vault(self):
        """Temporary files live in a hidden folder of the vault (same filesystem)."""
        seen = []
        real_write = vault_module.write_fafreplay

        def spying_write(out, metadata, chunks, level, size):
            seen.extend(self.incoming())
            self.assertFalse(self.vault.contains(8))
            real_write(out, metadata, chunks, level=level)

        self.patch(vault_module, "write_fafreplay", spying_write)
        self.vault.write_now(8, {"uid": 8}, [b"x"])
        self.assertEqual(len(seen), 1)
        self.assertTrue(INCOMING.startswith("."))
        self.assertEqual(self.incoming(), [])
        self.assertTrue(self.vault.contains(8))

    def test_remove_leftovers(self):
        leftover = os.path.join(self.directory, INCOMING, "12.abc.tmp")
        Path(leftover).write_bytes(b"crashed mid-write")
        self.vault.remove_leftovers()
        self.assertEqual(self.incoming(), [])


class VaultCheckTests(TestCase):
    """The health check writes nothing: it checks access and remembers the last write."""

    def setUp(self):
        self.directory = os.path.join(temporary_directory(self), "d")
        self.pool = ThreadPool(minthreads=0, maxthreads=2, name="test-vault-check")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.vault = Vault(self.directory, self.pool, 3, reactor=reactor)

    async def test_passes_and_writes_nothing(self):
        await self.vault.check()
        self.assertEqual(os.listdir(os.path.join(self.directory, INCOMING)), [])

    async def test_a_failed_write_fails_it_until_a_write_succeeds(self):
        data = samples.read("8805603.scfareplay")
        os.chmod(os.path.join(self.directory, INCOMING), 0o500)
        try:
            if os.access(os.path.join(self.directory, INCOMING), os.W_OK):
                # root writes anyway: make the final directory impossible instead
                Path(self.directory, "0").write_text("not a directory")
            with self.assertRaises(OSError):
                await self.vault.write(7, {"uid": 7}, [data])
        finally:
            os.chmod(os.path.join(self.directory, INCOMING), 0o700)
        with self.assertRaises(OSError) as caught:
            await self.vault.check()
        self.assertIn("could not be written", str(caught.exception))
        Path(self.directory, "0").unlink(missing_ok=True)
        await self.vault.write(8, {"uid": 8}, [data])
        await self.vault.check()
