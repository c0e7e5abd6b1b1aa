"""The spool: every writer's raw stream, appended to a file until its game is in the vault.

Layout: ``<spool>/<run>/<game_id>/<index>.stream`` (the SCFA bytes the writer sent after its
connection header) with ``<index>.json`` beside it (writer name, time opened). ``<run>`` is one
directory per service start, so the streams of a crashed run are never mixed with new ones.
Writes are buffered in memory and written out by ONE timer every ``flush_interval`` seconds
(a process crash loses at most that much); a stream is synced to disk when it closes.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from typing import BinaryIO

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

STREAM_SUFFIX = ".stream"
SIDECAR_SUFFIX = ".json"


@attrs.frozen
class SpooledGame:
    """A game left in the spool by an earlier run (a crash).

    ``streams`` reads the writers' files when asked, so that listing many games stays cheap.
    """

    game_id: int
    paths: list[str]  # non-empty stream files, in order of arrival
    names: list[str]  # the writers' names, same order
    started_at: float  # when its first stream was opened (unix time)
    last_modified: float  # the last write to any of its streams (unix time)

    @property
    def streams(self) -> list[bytes]:
        """The writers' whole raw streams, in order of arrival."""
        streams = []
        for path in self.paths:
            with open(path, "rb") as f:
                streams.append(f.read())
        return streams


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
            self._spool._dirty.add(self)
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
        self._spool._dirty.discard(self)
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
        self._spool._open.discard(self)
        if file is not None:
            file.close()


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

    def open_stream(self, game_id: int, index: int, name: str) -> SpooledStream:
        """A new spool file for the ``index``-th writer of ``game_id``."""
        directory = os.path.join(self._run_directory, str(game_id))
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
        for run in sorted(self._runs()):
            if run == self.run:
                continue
            run_directory = os.path.join(self.directory, run)
            for entry in sorted(os.listdir(run_directory)):
                if entry.isdigit():
                    game_directory = os.path.join(run_directory, entry)
                    indexes = _stream_indexes(game_directory)
                    if not indexes:  # the writers never got a stream file: nothing to keep
                        shutil.rmtree(game_directory, ignore_errors=True)
                    for index in indexes:
                        found.setdefault(int(entry), []).append((game_directory, index))
            if not os.listdir(run_directory):
                os.rmdir(run_directory)
        games = [_read_game(game_id, streams) for game_id, streams in found.items()]
        return sorted(games, key=lambda game: game.last_modified)

    def remove(self, game_id: int) -> None:
        """Delete every spooled stream of the game (call only once it is in the vault)."""
        for run in self._runs():
            run_directory = os.path.join(self.directory, run)
            shutil.rmtree(os.path.join(run_directory, str(game_id)), ignore_errors=True)
            if run != self.run and not os.listdir(run_directory):
                os.rmdir(run_directory)

    def _runs(self) -> list[str]:
        return [
            name for name in os.listdir(self.directory)
            if os.path.isdir(os.path.join(self.directory, name))
        ]


def _stream_indexes(game_directory: str) -> list[int]:
    names = os.listdir(game_directory)
    return sorted(
        int(name[: -len(STREAM_SUFFIX)]) for name in names
        if name.endswith(STREAM_SUFFIX) and name[: -len(STREAM_SUFFIX)].isdigit()
    )


def _read_game(game_id: int, streams: list[tuple[str, int]]) -> SpooledGame:
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
    return SpooledGame(game_id, paths, names, min(opened), max(modified))


def _read_sidecar(path: str) -> dict:
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}
