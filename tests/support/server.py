"""Run ``twistd -n replayserver`` as a real process and talk to it over TCP on 127.0.0.1.

The server listens on a port the system picks (``tcp:0``); the port is read from its log.
The repository root goes first on PYTHONPATH, so the working tree's code and twistd plugin
are the ones that run. Clients are plain blocking sockets (use them from threads).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from replayserver.replay.vault_path import vault_relpath

REPO_ROOT = Path(__file__).resolve().parents[2]
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
UNHANDLED = "Unhandled error in Deferred"
LISTENING = re.compile(r"Replay server listening on IPv4Address\(.*port=(\d+)\)")

#: Settings that keep the end-to-end tests short; each test overrides what it needs.
FAST = {
    "replay": {"delay": 1, "sample_interval": 0.1, "grace_period": 0.5},
}


class ServerProcess:
    """One replay server process with its own directory, config, vault and spool."""

    def __init__(
        self,
        directory: str | Path,
        settings: Mapping | None = None,
        environment: Mapping[str, str] | None = None,
        use_config: bool = True,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        config = {"server": {"listen": "tcp:0:interface=127.0.0.1:backlog=1024"}}
        for given in (FAST, settings or {}):
            for section, values in given.items():
                config.setdefault(section, {}).update(values)
        self.config_path = self.directory / "replayserver.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.environment = dict(environment or {})
        self.use_config = use_config
        self.log_path = self.directory / "server.log"
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._log_offset = 0

    @property
    def vault(self) -> Path:
        return self.directory / "replays"

    @property
    def spool(self) -> Path:
        return self.directory / "spool"

    def replay_path(self, game_id: int) -> Path:
        return self.vault.joinpath(*vault_relpath(game_id).parts)

    def start(self, timeout: float = 15.0) -> ServerProcess:
        """Start the process and wait until it accepts connections."""
        environment = {**os.environ, **self.environment}
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + [p for p in [environment.get("PYTHONPATH")] if p]
        )
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.directory, env=environment, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while self.port is None or not self._accepts():
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n"
                                   f"{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the server did not start in {timeout} s:\n{self.log()}")
            match = LISTENING.search(self.log())
            if match:
                self.port = int(match.group(1))
            time.sleep(0.05)
        return self

    def command(self) -> list[str]:
        config = ["--config", str(self.config_path)] if self.use_config else []
        return [TWISTD, "-n", "--pidfile=", "replayserver", *config]

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        """What this run of the process logged so far."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode("utf-8", "replace")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL (if still running) and reap; safe to call at any time.

        Fails (AssertionError) if this run logged an "Unhandled error in Deferred": no test
        tolerates one."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.port = None
        log = self.log()
        if UNHANDLED in log:
            at = log.index(UNHANDLED)
            excerpt = log[max(0, at - 2000):at + 3000]
            raise AssertionError(f"the server logged an unhandled error:\n{excerpt}")

    def connect(self, kind: str, game_id: int | str, name: str = "test") -> socket.socket:
        """A connection that has sent its ``P/`` (writer) or ``G/`` (reader) header."""
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        connection.sendall(f"{kind}/{game_id}/{name}".encode() + b"\0")
        return connection

    def raw_connection(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def wait_for_file(self, game_id: int, timeout: float = 15.0) -> bytes:
        """The saved replay file's bytes, once it is in the vault."""
        path = self.replay_path(game_id)
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"game {game_id} was not saved in {timeout} s:\n{self.log()}")
            time.sleep(0.05)
        return path.read_bytes()


def temporary_directory(test) -> str:
    """A new directory removed after ``test`` (trial's mktemp would write into the checkout)."""
    directory = tempfile.mkdtemp(prefix="replayserver-test-")
    test.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return directory


def send_stream(
    connection: socket.socket, data: bytes, chunk: int = 1024, pause: float = 0.0,
    close: bool = True,
) -> None:
    """Send ``data`` in chunks with a pause between them; then close (the stream ends)."""
    for start in range(0, len(data), chunk):
        connection.sendall(data[start:start + chunk])
        if pause:
            time.sleep(pause)
    if close:
        connection.close()


def receive_all(connection: socket.socket) -> list[tuple[float, bytes]]:
    """Everything a reader receives until EOF, each piece with its arrival (monotonic) time."""
    pieces = []
    with connection:
        while True:
            data = connection.recv(65536)
            if not data:
                return pieces
            pieces.append((time.monotonic(), data))


def joined(pieces: list[tuple[float, bytes]]) -> bytes:
    return b"".join(data for _, data in pieces)
