"""End to end: the vault cannot be written at save time; the replay waits in the spool.

Tests run as root, for whom permissions do not stop a write: a plain file is put where the
vault's first-level directory must be (``<vault>/0``, the parent of every id below 10^8), so
creating the replay's directory fails (NotADirectoryError) whoever runs the server.
"""
from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.container import read_fafreplay
from replayserver.save.spooled import STREAM_SUFFIX
from tests.support import samples
from tests.support.server import ServerProcess, send_stream, temporary_directory

REPLAY = samples.read("8945286.scfareplay")
OTHER = samples.read("8805603.scfareplay")
BLOCKED, FREE = 2000, 1234567890  # <vault>/0/0/0/20/... and <vault>/12/34/56/78/...


class UnwritableVaultTests(SynchronousTestCase):
    def wait_for_log(self, server: ServerProcess, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in server.log():
            self.assertLess(time.monotonic(), deadline, f"no {text!r} in the log")
            time.sleep(0.05)

    def test_save_waits_in_the_spool_and_completes_once_the_vault_is_fixed(self):
        server = ServerProcess(temporary_directory(self),
                               {"replay": {"delay": 0.5, "grace_period": 0.5}},
                               environment={"REPLAYSERVER_SERVER_WORKERS": "1"}).start()
        self.addCleanup(server.kill)
        blocker = server.vault / "0"
        blocker.write_text("a file where a directory must be")

        send_stream(server.connect("P", BLOCKED, "player"), REPLAY)
        self.wait_for_log(server, f"Saving game {BLOCKED} failed at its vault write")
        time.sleep(1)  # a retry or two fail as well
        self.assertFalse(server.replay_path(BLOCKED).exists())
        spooled = list(server.spool.rglob(f"{BLOCKED}/*{STREAM_SUFFIX}"))
        self.assertTrue(spooled, "the stream is no longer in the spool")
        self.assertEqual(b"".join(path.read_bytes() for path in spooled), REPLAY)

        # the server keeps serving other games meanwhile
        send_stream(server.connect("P", FREE, "player"), OTHER)
        self.assertEqual(read_fafreplay(server.wait_for_file(FREE)).scfa, OTHER)

        blocker.unlink()
        saved = read_fafreplay(server.wait_for_file(BLOCKED, timeout=30)).scfa
        self.assertTrue(saved == REPLAY, f"{len(saved)} bytes saved instead of {len(REPLAY)}")
        deadline = time.monotonic() + 10
        while any(path.exists() for path in spooled):
            self.assertLess(time.monotonic(), deadline, "the spool was not removed")
            time.sleep(0.05)
        server.terminate()
        self.assertIn("All games saved; stopped", server.log())
