"""What earlier runs left in the spool: listing the games, scanning their streams, reading them.

Crash recovery (`replayserver.save.recovery`) works on these; see docs/saving.md. Every
function here touches the disk, so it runs in the spool's own thread (its `FileWork`), never
on the reactor thread; a `SpooledGame` hands its work to that thread itself. The only
exception is `spooled_ids`, which lists directory names: a service calls it once at start,
before it serves any connection, so that a stray connection cannot create a game that races
the recovery of the same id.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from replayserver.game.interfaces import IGameSpool, IStreamSpool

T = TypeVar("T")

STREAM_SUFFIX = ".stream"
SIDECAR_SUFFIX = ".json"
#: Directories of a spool that are not runs: the spools of worker processes.
WORKER_PREFIX = "worker-"


class FileWork(Protocol):
    """Runs file work off the reactor thread, after all the work queued before it."""

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        ...


class UnreadableSpool(Exception):
    """A spooled stream file cannot be read (or vanished): its game cannot be recovered now."""

    def __init__(self, path: str, error: OSError) -> None:
        self.path = path
        self.reason = error.strerror or str(error)
        super().__init__(f"{path}: {self.reason}")


@attrs.frozen
class SpooledStreams:
    """The writer streams of a spooled game, as its files say now."""

    paths: list[str]  # non-empty stream files, in order of arrival
    names: list[str]  # the writers' names, same order
    started_at: float  # when its first stream was opened (unix time)
    last_modified: float  # the last write to any of its streams (unix time)


@implementer(IGameSpool)
class SpooledGame:
    """A game left in the spool by an earlier run (a crash); its files are read when asked."""

    def __init__(self, work: FileWork, game_id: int, directories: list[str],
                 last_modified: float) -> None:
        self._work = work
        self.game_id = game_id
        #: The game's directories, one per run that spooled it.
        self.directories = directories
        #: The last write to any of its streams when it was listed (orders the recovery).
        self.last_modified = last_modified

    def open_stream(self, index: int, name: str) -> IStreamSpool:
        raise RuntimeError("a recovered game takes no new writer")

    def remove(self) -> Deferred[None]:
        """Delete this game's directories (and nothing else), and its runs' if now empty."""
        return self._work.run(_remove_directories, self.directories)

    def scan(self) -> Deferred[SpooledStreams]:
        """Its streams as they are on disk now; fails with `UnreadableSpool`."""
        return self._work.run(_scan, self.directories)

    def reader(self, streams: SpooledStreams) -> SpoolReader:
        return SpoolReader(self._work, streams.paths)


class SpoolReader:
    """Reads a spooled game's stream files a chunk at a time, in the spool's thread."""

    def __init__(self, work: FileWork, paths: list[str]) -> None:
        self._work = work
        self._paths = paths
        self._files: dict[int, BinaryIO] = {}  # touched only in the spool's thread

    def read(self, indexes: Sequence[int], size: int) -> Deferred[list[bytes]]:
        """The next at most ``size`` bytes of each stream of ``indexes`` (b"" at its end);
        fails with `UnreadableSpool`."""
        return self._work.run(self._read_now, indexes, size)

    def close(self) -> Deferred[None]:
        """Close the files (never fails)."""
        return self._work.run(self._close_now)

    def _read_now(self, indexes: Sequence[int], size: int) -> list[bytes]:
        chunks = []
        for index in indexes:
            path = self._paths[index]
            try:
                file = self._files.get(index)
                if file is None:
                    file = self._files[index] = open(path, "rb")
                chunks.append(file.read(size))
            except OSError as error:
                raise UnreadableSpool(path, error) from None
        return chunks

    def _close_now(self) -> None:
        files, self._files = self._files, {}
        for file in files.values():
            with contextlib.suppress(OSError):
                file.close()


def spooled_game_id(entry: str) -> int | None:
    """The game id of a game directory's name (``<id>`` or ``<id>-<n>``), else None."""
    game, _, attempt = entry.partition("-")
    if game.isdigit() and (not attempt or attempt.isdigit()):
        return int(game)
    return None


def earlier_runs(directory: str, current: str) -> list[str]:
    """The run directories of ``directory`` but ``current``, oldest first (by name)."""
    return sorted(
        name for name in os.listdir(directory)
        if name != current and not name.startswith(WORKER_PREFIX)
        and os.path.isdir(os.path.join(directory, name))
    )


def spooled_ids(directory: str, current: str) -> set[int]:
    """The ids of the games that runs other than ``current`` left (directory names only)."""
    return {
        game_id
        for run in earlier_runs(directory, current)
        for entry in os.listdir(os.path.join(directory, run))
        if (game_id := spooled_game_id(entry)) is not None
    }


def list_pending(work: FileWork, directory: str, current: str) -> list[SpooledGame]:
    """The games that runs other than ``current`` left, oldest first (by their last write).

    Runs in the spool's thread. A game directory without any stream file (its writers never
    got one) is deleted, and so is a run directory left empty.
    """
    directories: dict[int, list[str]] = {}
    modified: dict[int, float] = {}
    for run in earlier_runs(directory, current):
        run_directory = os.path.join(directory, run)
        for entry in sorted(os.listdir(run_directory)):
            game_id = spooled_game_id(entry)
            if game_id is None:
                continue
            game_directory = os.path.join(run_directory, entry)
            indexes = _stream_indexes(game_directory)
            if not indexes:
                shutil.rmtree(game_directory, ignore_errors=True)
                continue
            directories.setdefault(game_id, []).append(game_directory)
            times = [_modified(stream_path(game_directory, index)) for index in indexes]
            modified[game_id] = max([modified.get(game_id, 0.0), *times])
        remove_if_empty(run_directory)
    games = [SpooledGame(work, game_id, found, modified[game_id])
             for game_id, found in directories.items()]
    return sorted(games, key=lambda game: game.last_modified)


def remove_if_empty(directory: str) -> None:
    """Remove ``directory`` if it is empty (and leave it as it is otherwise)."""
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def _remove_directories(directories: list[str]) -> None:
    for directory in directories:
        try:
            shutil.rmtree(directory)
        except FileNotFoundError:
            pass
        remove_if_empty(os.path.dirname(directory))


def stream_path(game_directory: str, index: int) -> str:
    return os.path.join(game_directory, f"{index}{STREAM_SUFFIX}")


def _stream_indexes(game_directory: str) -> list[int]:
    try:
        names = os.listdir(game_directory)
    except OSError:
        return []
    return sorted(
        int(name[: -len(STREAM_SUFFIX)]) for name in names
        if name.endswith(STREAM_SUFFIX) and name[: -len(STREAM_SUFFIX)].isdigit()
    )


def _modified(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _scan(directories: list[str]) -> SpooledStreams:
    paths, names, opened, modified = [], [], [], []
    for game_directory in directories:
        for index in _stream_indexes(game_directory):
            path = stream_path(game_directory, index)
            try:
                stat = os.stat(path)
            except OSError as error:
                raise UnreadableSpool(path, error) from None
            modified.append(stat.st_mtime)
            sidecar = _read_sidecar(os.path.join(game_directory, f"{index}{SIDECAR_SUFFIX}"))
            opened_at = sidecar.get("opened_at", stat.st_mtime)
            opened.append(opened_at if isinstance(opened_at, (int, float)) else stat.st_mtime)
            if stat.st_size:
                paths.append(path)
                names.append(str(sidecar.get("name", "")))
    if not modified:
        return SpooledStreams([], [], 0.0, 0.0)
    return SpooledStreams(paths, names, min(opened), max(modified))


def _read_sidecar(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}
