"""The spool: every writer's raw stream, appended to a file until its game is in the vault.

Layout: ``<spool>/<run>/<game>/<index>.stream`` (the SCFA bytes the writer sent after its
connection header) with ``<index>.json`` beside it (writer name, time opened). ``<run>`` is one
directory per service start, so the streams of a crashed run are never mixed with new ones;
``<game>`` is the game id, with ``-<n>`` appended if that id had a game before in this run:
each game has its own directory, and removes only that (`GameSpool`). See docs/saving.md.
Writes are buffered in memory and written out by ONE timer every ``flush_interval`` seconds
(a process crash loses at most that much); a stream is synced to disk when it closes.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from typing import BinaryIO

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from replayserver.config import ConfigError
from replayserver.game.interfaces import IGameSpool, ISpool, IStreamSpool

STREAM_SUFFIX = ".stream"
SIDECAR_SUFFIX = ".json"
#: The spool's lock file: one server process at a time may use a spool directory.
LOCK_FILE = ".lock"


class SpoolLock:
    """An exclusive lock on a spool directory, held for the life of the server process.

    Two servers pointed at one spool (a rolling restart gone wrong) would recover, and then
    remove, each other's running games; the second one refuses to start instead. The lock is
    an ``flock`` on ``<spool>/.lock``, which the kernel drops when the process dies, so a crash
    leaves no stale lock behind. The file says which process holds it.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def take(cls, directory: str) -> SpoolLock:
        """Lock ``directory``; raises `ConfigError` naming ``storage.spool`` if another process
        holds it."""
        path = os.path.join(directory, LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ConfigError("storage.spool", f"cannot create {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError("storage.spool", f"{directory} is in use by another replay server"
                                               f" (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        return cls(fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@implementer(IGameSpool)
@attrs.frozen
class SpooledGame:
    """A game left in the spool by an earlier run (a crash).

    ``streams`` reads the writers' files when asked, so that listing many games stays cheap.
    """

    game_id: int
    directories: list[str]  # the game's directories (one per run that spooled it)
    paths: list[str]  # non-empty stream files, in order of arrival
    names: list[str]  # the writers' names, same order
    started_at: float  # when its first stream was opened (unix time)
    last_modified: float  # the last write to any of its streams (unix time)

    def open_stream(self, index: int, name: str) -> IStreamSpool:
        raise RuntimeError("a recovered game takes no new writer")

    def remove(self) -> defer.Deferred[None]:
        """Delete this game's directories (and nothing else)."""
        for directory in self.directories:
            shutil.rmtree(directory, ignore_errors=True)
            _remove_if_empty(os.path.dirname(directory))
        return defer.succeed(None)

    @property
    def streams(self) -> list[bytes]:
        """The writers' whole raw streams, in order of arrival."""
        streams = []
        for path in self.paths:
            with open(path, "rb") as f:
                streams.append(f.read())
        return streams


@implementer(IStreamSpool)
class SpooledStream:
    """One writer's spool file. ``write`` is cheap: it only buffers."""

    log = Logger()

    def __init__(self, spool: Spool, file: BinaryIO | None, path: str) -> None:
        self._spool = spool
        self._file = file
        self.path = path
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self._file is None:
            return
        if not self._pending:
            self._spool.mark_dirty(self)
        self._pending.append(data)

    def flush(self) -> None:
        """Hand the buffered bytes to the operating system."""
        if not self._pending or self._file is None:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            self._file.write(data)
        except OSError as e:
            self.log.error("Spool file {path} cannot be written ({e}); its stream is no longer "
                           "spooled", path=self.path, e=e)
            self._drop()

    def close(self) -> None:
        """Flush, sync to disk and close (idempotent)."""
        self.flush()
        self._spool.forget(self)
        if self._file is None:
            return
        try:
            os.fsync(self._file.fileno())
        except OSError as e:
            self.log.error("Spool file {path} cannot be synced: {e}", path=self.path, e=e)
        self._drop()

    def _drop(self) -> None:
        file, self._file = self._file, None
        self._pending.clear()
        self._spool.forget(self)
        if file is not None:
            file.close()


@implementer(IGameSpool)
class GameSpool:
    """The spool directory of one running game."""

    def __init__(self, spool: Spool, directory: str) -> None:
        self._spool = spool
        self.directory = directory

    def open_stream(self, index: int, name: str) -> SpooledStream:
        return self._spool.open_stream_in(self.directory, index, name)

    def remove(self) -> defer.Deferred[None]:
        shutil.rmtree(self.directory, ignore_errors=True)
        return defer.succeed(None)


@implementer(ISpool)
class Spool:
    """Owns the spool directory, the open spool files and their flush timer."""

    log = Logger()

    def __init__(self, directory: str, clock: IReactorTime, flush_interval: float = 1.0) -> None:
        self.directory = os.path.abspath(directory)
        self.flush_interval = flush_interval
        os.makedirs(self.directory, exist_ok=True)
        self.run = self._new_run()
        self._run_directory = os.path.join(self.directory, self.run)
        self._open: set[SpooledStream] = set()
        self._dirty: set[SpooledStream] = set()
        self._timer = LoopingCall(self.flush)
        self._timer.clock = clock

    def _new_run(self) -> str:
        """Create this run's directory under a name no other run has used."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        attempt = 0
        while True:
            run = f"run-{stamp}-{os.getpid()}-{attempt}"
            try:
                os.mkdir(os.path.join(self.directory, run))
                return run
            except FileExistsError:
                attempt += 1

    def start(self) -> None:
        self._timer.start(self.flush_interval, now=False)

    def stop(self) -> None:
        """Stop the timer; flush, sync and close every open stream."""
        if self._timer.running:
            self._timer.stop()
        for stream in list(self._open):
            stream.close()
        with contextlib.suppress(OSError):  # kept if a game is still spooled in it
            os.rmdir(self._run_directory)

    def flush(self) -> None:
        """Write out every stream that has buffered bytes."""
        dirty, self._dirty = self._dirty, set()
        for stream in dirty:
            stream.flush()

    def mark_dirty(self, stream: SpooledStream) -> None:
        """``stream`` has buffered bytes for the next flush."""
        self._dirty.add(stream)

    def forget(self, stream: SpooledStream) -> None:
        """``stream`` is closed."""
        self._dirty.discard(stream)
        self._open.discard(stream)

    def open_game(self, game_id: int) -> GameSpool:
        """The spool of a new game: a directory of this run that no other game uses."""
        attempt = 0
        while True:
            name = str(game_id) if attempt == 0 else f"{game_id}-{attempt}"
            directory = os.path.join(self._run_directory, name)
            try:
                os.mkdir(directory)
            except FileExistsError:
                attempt += 1
                continue
            return GameSpool(self, directory)

    def open_stream(self, game_id: int, index: int, name: str) -> SpooledStream:
        """A new spool file for the ``index``-th writer of ``game_id`` in its first directory."""
        return self.open_stream_in(os.path.join(self._run_directory, str(game_id)), index, name)

    def open_stream_in(self, directory: str, index: int, name: str) -> SpooledStream:
        """A new spool file for the ``index``-th writer of the game spooled in ``directory``."""
        path = os.path.join(directory, f"{index}{STREAM_SUFFIX}")
        try:
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, f"{index}{SIDECAR_SUFFIX}"), "w") as sidecar:
                json.dump({"name": name, "opened_at": time.time()}, sidecar)
            file = open(path, "xb", buffering=0)
        except OSError as e:
            self.log.error("Cannot open spool file {path}: {e}; this stream is not spooled",
                           path=path, e=e)
            file = None
        stream = SpooledStream(self, file, path)
        if file is not None:
            self._open.add(stream)
        return stream

    def pending(self) -> list[SpooledGame]:
        """Games left by earlier runs (a crash), oldest first; the current run's excluded."""
        found: dict[int, list[tuple[str, int]]] = {}
        directories: dict[int, list[str]] = {}
        for run in sorted(self._runs()):
            if run == self.run:
                continue
            run_directory = os.path.join(self.directory, run)
            for entry in sorted(os.listdir(run_directory)):
                game_id = spooled_game_id(entry)
                if game_id is None:
                    continue
                game_directory = os.path.join(run_directory, entry)
                indexes = _stream_indexes(game_directory)
                if not indexes:  # the writers never got a stream file: nothing to keep
                    shutil.rmtree(game_directory, ignore_errors=True)
                    continue
                directories.setdefault(game_id, []).append(game_directory)
                for index in indexes:
                    found.setdefault(game_id, []).append((game_directory, index))
            _remove_if_empty(run_directory)
        games = [_read_game(game_id, directories[game_id], streams)
                 for game_id, streams in found.items()]
        return sorted(games, key=lambda game: game.last_modified)

    def _runs(self) -> list[str]:
        return [
            name for name in os.listdir(self.directory)
            if os.path.isdir(os.path.join(self.directory, name))
        ]


def spooled_game_id(entry: str) -> int | None:
    """The game id of a game directory's name (``<id>`` or ``<id>-<n>``), else None."""
    game, _, attempt = entry.partition("-")
    if game.isdigit() and (not attempt or attempt.isdigit()):
        return int(game)
    return None


def _remove_if_empty(directory: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def _stream_indexes(game_directory: str) -> list[int]:
    names = os.listdir(game_directory)
    return sorted(
        int(name[: -len(STREAM_SUFFIX)]) for name in names
        if name.endswith(STREAM_SUFFIX) and name[: -len(STREAM_SUFFIX)].isdigit()
    )


def _read_game(game_id: int, directories: list[str],
               streams: list[tuple[str, int]]) -> SpooledGame:
    paths, names, opened, modified = [], [], [], []
    for game_directory, index in streams:
        path = os.path.join(game_directory, f"{index}{STREAM_SUFFIX}")
        stat = os.stat(path)
        modified.append(stat.st_mtime)
        sidecar = _read_sidecar(os.path.join(game_directory, f"{index}{SIDECAR_SUFFIX}"))
        opened.append(sidecar.get("opened_at", stat.st_mtime))
        if stat.st_size:
            paths.append(path)
            names.append(str(sidecar.get("name", "")))
    return SpooledGame(game_id, directories, paths, names, min(opened), max(modified))


def _read_sidecar(path: str) -> dict:
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}
