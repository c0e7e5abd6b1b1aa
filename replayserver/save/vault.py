"""The replay vault: ``.fafreplay`` files at FAF's path scheme, written atomically, never replaced.

A replay is compressed into a hidden temporary file inside the vault (``<vault>/.incoming``,
so on the same filesystem), synced to disk, then hard-linked to its final path: the link fails
if a file is already there, so a saved replay is never overwritten and FAF's content server
never sees a half-written file. Compression runs in the vault's own thread pool.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from replayserver.replay.container import write_fafreplay
from replayserver.replay.vault_path import vault_relpath

INCOMING = ".incoming"

T = TypeVar("T")


class AlreadyInVault(Exception):
    """The vault already holds a replay for this game id."""

    def __init__(self, game_id: int, path: str) -> None:
        super().__init__(f"game {game_id} is already in the vault at {path}")
        self.game_id = game_id
        self.path = path


class Vault:
    """Writes replays below ``directory``; the CPU-heavy work runs in ``threadpool``."""

    log = Logger()

    def __init__(
        self,
        directory: str,
        threadpool: ThreadPool,
        compression_level: int = 10,
        *,
        reactor: IReactorFromThreads,
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.threadpool = threadpool
        self.compression_level = compression_level
        self._reactor = reactor
        self._incoming = os.path.join(self.directory, INCOMING)
        os.makedirs(self._incoming, exist_ok=True)
        #: Why the last write failed (None once one succeeds): the health check reports it.
        self.last_failure: str | None = None

    def path(self, game_id: int) -> str:
        """Where the replay of ``game_id`` is (or will be) stored."""
        return os.path.join(self.directory, *vault_relpath(game_id).parts)

    def contains(self, game_id: int) -> bool:
        return os.path.exists(self.path(game_id))

    def run(self, function: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run ``function(*args)`` in the vault's thread pool."""
        return deferToThreadPool(self._reactor, self.threadpool, function, *args)

    def write(self, game_id: int, metadata: dict[str, Any], scfa: Sequence[bytes]
              ) -> defer.Deferred[str]:
        """Store the replay (``scfa`` = header and body chunks); fires with its path.

        Fails with AlreadyInVault if the game is already stored, OSError on I/O trouble.
        """
        return self.run(self.write_now, game_id, metadata, scfa)

    def check(self) -> defer.Deferred[None]:
        """Health check, writing nothing: the vault can be written to and its last write did
        not fail (fails with the reason otherwise)."""
        return self.run(self._check_now)

    def _check_now(self) -> None:
        if self.last_failure is not None:
            raise OSError(f"the last replay could not be written: {self.last_failure}")
        if not os.access(self._incoming, os.W_OK | os.X_OK):
            raise PermissionError(f"{self._incoming} is not writable")

    def write_now(self, game_id: int, metadata: dict[str, Any], scfa: Sequence[bytes]) -> str:
        """The blocking part of :meth:`write` (runs in a worker thread)."""
        try:
            path = self._write_now(game_id, metadata, scfa)
        except OSError as error:
            self.last_failure = f"{type(error).__name__}: {error}"
            raise
        self.last_failure = None
        return path

    def _write_now(self, game_id: int, metadata: dict[str, Any], scfa: Sequence[bytes]) -> str:
        final = self.path(game_id)
        if os.path.exists(final):
            raise AlreadyInVault(game_id, final)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f"{game_id}.", suffix=".tmp", dir=self._incoming)
        try:
            with os.fdopen(fd, "wb") as out:
                write_fafreplay(out, metadata, scfa, level=self.compression_level,
                                size=sum(len(chunk) for chunk in scfa))
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temporary, final)
            except FileExistsError:
                raise AlreadyInVault(game_id, final) from None
            _fsync_directory(os.path.dirname(final))
        finally:
            os.unlink(temporary)
        return final

    def remove_leftovers(self) -> None:
        """Delete temporary files left by a crash (call before any write starts)."""
        for name in os.listdir(self._incoming):
            self.log.info("Removing leftover temporary file {name}", name=name)
            os.unlink(os.path.join(self._incoming, name))


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
