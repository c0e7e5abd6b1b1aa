"""End to end: how `twistd -n replayserver` starts (or refuses to) with its configuration."""
import os
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.container import read_fafreplay
from tests.support import samples
from tests.support.server import REPO_ROOT, ServerProcess, send_stream, temporary_directory

LOCAL = "tcp:0:interface=127.0.0.1"


class StartTests(SynchronousTestCase):
    def run_until_exit(self, server: ServerProcess) -> subprocess.CompletedProcess:
        environment = {**os.environ, **server.environment, "PYTHONPATH": str(REPO_ROOT)}
        return subprocess.run(server.command(), cwd=server.directory, env=environment,
                              capture_output=True, text=True, timeout=30)

    def test_bad_values_stop_the_start_with_a_message_naming_the_key(self):
        cases = [
            ({"replay": {"delay": -5}}, {}, "replay.delay"),
            ({"storage": {"compression_level": 30}}, {}, "storage.compression_level"),
            ({"replay": {"quorum": 0}}, {}, "replay.quorum"),
            ({"server": {"listen": "tcp:not-a-port"}}, {}, "server.listen"),
            ({"replay": {"unknown_key": 1}}, {}, "replay.unknown_key"),
            ({}, {"REPLAYSERVER_REPLAY_GRACE_PERIOD": "soon"}, "replay.grace_period"),
        ]
        for settings, environment, key in cases:
            with self.subTest(key=key):
                server = ServerProcess(temporary_directory(self), settings, environment)
                result = self.run_until_exit(server)
                self.assertNotEqual(result.returncode, 0)
                output = result.stdout + result.stderr
                self.assertIn(f"configuration error: {key}", output)
                self.assertNotIn("Traceback", output)

    def test_runs_on_defaults_without_config(self):
        server = ServerProcess(temporary_directory(self), environment={
            "REPLAYSERVER_SERVER_LISTEN": LOCAL, "REPLAYSERVER_REPLAY_GRACE_PERIOD": "0.2",
        }, use_config=False).start()
        self.addCleanup(server.kill)
        data = samples.read("8805603.scfareplay")
        send_stream(server.connect("P", 5001, "player"), data)
        # the default vault is "replays" in the working directory
        self.assertTrue(read_fafreplay(server.wait_for_file(5001)).scfa == data)

    def test_example_config_runs(self):
        """`make run`'s file, with the listener moved by an environment override."""
        server = ServerProcess(temporary_directory(self), environment={
            "REPLAYSERVER_SERVER_LISTEN": LOCAL,
        }, use_config=False)
        server.config_path = REPO_ROOT / "etc" / "replayserver.yaml"
        server.use_config = True
        server.start()
        self.addCleanup(server.kill)
        self.assertTrue(server.spool.is_dir())
        self.assertTrue(server.vault.is_dir())


class StartFailureTests(SynchronousTestCase):
    """A start that cannot work ends with one line naming the cause and the key, status 1."""

    def run_until_exit(self, server: ServerProcess) -> subprocess.CompletedProcess:
        environment = {**os.environ, **server.environment, "PYTHONPATH": str(REPO_ROOT)}
        return subprocess.run(server.command(), cwd=server.directory, env=environment,
                              capture_output=True, text=True, timeout=30)

    def assertOneLine(self, result: subprocess.CompletedProcess, *expected: str) -> None:
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        lines = (result.stdout + result.stderr).strip().splitlines()
        self.assertEqual(len(lines), 1, lines)
        for text in expected:
            self.assertIn(text, lines[0])

    def test_port_in_use(self) -> None:
        for workers in ("1", "2"):
            with self.subTest(workers=workers):
                running = ServerProcess(temporary_directory(self),
                                        {"server": {"workers": int(workers)}}).start()
                self.addCleanup(running.kill)
                second = ServerProcess(temporary_directory(self), {"server": {
                    "listen": f"tcp:{running.port}:interface=127.0.0.1",
                    "workers": int(workers)}})
                self.assertOneLine(self.run_until_exit(second), "cannot start",
                                   "server.listen", f"tcp:{running.port}")

    def test_unwritable_vault_or_spool(self) -> None:
        for key in ("vault", "spool"):
            with self.subTest(key=key):
                directory = temporary_directory(self)
                blocker = os.path.join(directory, "not-a-directory")
                with open(blocker, "w") as file:
                    file.write("a file where a directory should be")
                server = ServerProcess(directory, {"storage": {key: blocker}})
                self.assertOneLine(self.run_until_exit(server), "cannot start",
                                   f"storage.{key}")

    def test_bad_configuration_value(self) -> None:
        server = ServerProcess(temporary_directory(self), {"replay": {"delay": -5}})
        self.assertOneLine(self.run_until_exit(server), "configuration error: replay.delay")
