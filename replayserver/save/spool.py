"""The spool: every writer's raw stream, appended to a file until its game is in the vault.

Layout: ``<spool>/<run>/<game>/<index>.stream`` (the SCFA bytes the writer sent after its
connection header) with ``<index>.json`` beside it (writer name, time opened). ``<run>`` is one
directory per service start, so the streams of a crashed run are never mixed with new ones;
``<game>`` is the game id, with ``-<n>`` appended while another game of that id still has its
files in this run: each game has its own directory, and removes only that (`GameSpool`). See
docs/saving.md.

File work never runs on the reactor thread: the spool has one thread of its own
(`SpoolThread`), which does every opening (directory, sidecar, file), write, sync and removal
in the order they were asked, so a stream is opened before it is written and closed before its
game's directory is removed. The reactor thread only buffers bytes and queues work. (A spool
driven by a `Clock` in tests, where no reactor runs, does it at once: `InlineFileWork`.)
The buffers are written out by ONE timer every ``flush_interval`` seconds (a process crash
loses at most that much); a stream is synced to disk when it closes. A stream whose file
cannot be opened or written is logged once, with its game id, and no longer spooled; its game
goes on (the merge does not depend on the spool).
"""
from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from replayserver.config import ConfigError
from replayserver.game.interfaces import IGameSpool, ISpool, IStreamSpool
from replayserver.save.spooled import SIDECAR_SUFFIX
from replayserver.save.spooled import FileWork, SpooledGame, list_pending, remove_if_empty
from replayserver.save.spooled import spooled_ids, stream_path
from replayserver.save.spooled import spooled_game_id as spooled_game_id  # for workers/

T = TypeVar("T")
#: A piece of file work: the Deferred of its result, the function and its arguments.
_Work = tuple["defer.Deferred[Any]", Callable[..., Any], tuple[Any, ...]]

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


class FileWorker(FileWork, Protocol):
    """Where a spool's file work runs, started and stopped with the spool."""

    def start(self) -> None:
        ...

    def stop(self) -> None:
        """Called once the last work is done."""


class SpoolThread:
    """File work in one thread of its own, one piece after another in the order queued.

    A plain thread and queue rather than a Twisted thread pool, which leaves a reference cycle
    behind each piece of work for the garbage collector (run rarely here: `replayserver.memory`);
    a piece here is one queue entry and one result call, and nothing of it outlives the work."""

    def __init__(self, reactor: IReactorFromThreads) -> None:
        """``reactor`` gets the results."""
        self._reactor = reactor
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="spool", daemon=True)
        self._thread.start()

    def run(self, function: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        done: defer.Deferred[T] = defer.Deferred()
        self._queue.put((done, function, args))
        return done

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _work(self) -> None:
        """The thread: each piece in turn (holding nothing of it while it waits for the next)."""
        while True:
            work = self._queue.get()
            if work is None:
                return
            self._do(*work)
            del work

    def _do(self, done: defer.Deferred[Any], function: Callable[..., Any],
            args: tuple[Any, ...]) -> None:
        try:
            result = function(*args)
        except BaseException:
            self._reactor.callFromThread(done.errback, Failure())
        else:
            self._reactor.callFromThread(done.callback, result)


class InlineFileWork:
    """File work done at once, on the calling thread: for tests that drive a spool with a
    `Clock` (no reactor runs to take a thread's results)."""

    def start(self) -> None:
        pass

    def run(self, function: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return defer.maybeDeferred(function, *args)

    def stop(self) -> None:
        pass


class _StreamFile:
    """The spool thread's side of one stream: its file, touched only in that thread.

    Kept lean (one per writer): the game's directory string is shared, the file is a bare
    descriptor, its path is made only when needed."""

    __slots__ = ("game", "index", "name", "fd")

    def __init__(self, game: GameSpool, index: int, name: str) -> None:
        self.game = game
        self.index = index
        self.name = name
        self.fd: int | None = None

    @property
    def path(self) -> str:
        return stream_path(self.game.directory, self.index)

    def open(self, opened_at: float) -> None:
        directory = self.game.directory
        os.makedirs(directory, exist_ok=True)
        sidecar = os.path.join(directory, f"{self.index}{SIDECAR_SUFFIX}")
        with open(sidecar, "w") as f:
            f.write(json.dumps({"name": self.name, "opened_at": opened_at}))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)

    def write(self, pending: bytearray) -> None:
        """Append ``pending``; on OSError the file is closed (nothing more is written)."""
        if self.fd is None or not pending:
            return
        try:
            written = 0
            with memoryview(pending) as view:
                while written < len(view):
                    written += os.write(self.fd, view[written:])
        except OSError:
            self.drop()
            raise

    def close(self, pending: bytearray) -> None:
        """Append the last ``pending`` bytes, sync and close."""
        self.write(pending)
        if self.fd is None:
            return
        try:
            os.fsync(self.fd)
        finally:
            self.drop()

    def drop(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def _write_batch(batch: list[tuple[_StreamFile, bytearray]]) -> list[tuple[int, OSError]]:
    """Write out a flush's bytes (spool thread); the errors by position in ``batch``."""
    errors = []
    for position, (stream, pending) in enumerate(batch):
        try:
            stream.write(pending)
        except OSError as error:
            errors.append((position, error))
    return errors


def _remove_tree(directory: str) -> None:
    try:
        shutil.rmtree(directory)
    except FileNotFoundError:
        pass  # its writers never got a file


@implementer(IStreamSpool)
class SpooledStream:
    """One writer's spool file, seen from the reactor thread: ``write`` only buffers."""

    __slots__ = ("_spool", "file", "_pending", "closed", "failed")

    log = Logger()

    def __init__(self, spool: Spool, file: _StreamFile) -> None:
        self._spool = spool
        self.file = file
        self._pending = bytearray()
        self.closed = False
        self.failed = False

    @property
    def game_id(self) -> int:
        return self.file.game.game_id

    @property
    def path(self) -> str:
        return self.file.path

    def write(self, data: bytes) -> None:
        if self.closed or self.failed:
            return
        if not self._pending:
            self._spool.mark_dirty(self)
        self._pending += data

    def take(self) -> bytearray:
        """The buffered bytes, handed over to be written."""
        pending, self._pending = self._pending, bytearray()
        return pending

    def close(self) -> None:
        """Write out what is left, sync to disk and close (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._spool.close_stream(self)

    def fail(self, failure: Failure, doing: str) -> None:
        """Opening, writing or syncing the file failed: say so once, spool no more."""
        if self.failed:
            return
        self.failed = True
        self._pending.clear()
        self._spool.forget(self)
        if isinstance(failure.value, OSError):
            self.log.error("Game {game_id}: spool file {path} cannot be {doing} ({error}); this"
                           " writer's stream is no longer spooled", game_id=self.game_id,
                           path=self.path, doing=doing, error=failure.value)
        else:
            self.log.failure("Game {game_id}: spool file {path} cannot be {doing}", failure,
                             game_id=self.game_id, path=self.path, doing=doing)


@implementer(IGameSpool)
class GameSpool:
    """The spool directory of one running game (created with its first stream)."""

    def __init__(self, spool: Spool, game_id: int, name: str) -> None:
        self._spool = spool
        self.game_id = game_id
        self.name = name
        self.directory = os.path.join(spool.run_directory, name)

    def open_stream(self, index: int, name: str) -> SpooledStream:
        return self._spool.open_stream(self, index, name)

    def remove(self) -> defer.Deferred[None]:
        """Delete the game's directory once its queued file work is done."""
        removed = self._spool.run(_remove_tree, self.directory)
        return removed.addCallback(lambda _: self._spool.release_name(self.name))


@implementer(ISpool)
class Spool:
    """Owns the spool directory, its thread, the open spool files and their flush timer."""

    log = Logger()

    def __init__(
        self, directory: str, clock: IReactorTime, flush_interval: float = 1.0, *,
        work: FileWorker | None = None,
    ) -> None:
        """``clock`` runs the flush timer; ``work`` does the file work: by default a
        `SpoolThread` whose results go to ``clock`` if it is the reactor, else (a `Clock`)
        `InlineFileWork`."""
        if work is None:
            reactor = IReactorFromThreads(clock, None)
            work = InlineFileWork() if reactor is None else SpoolThread(reactor)
        self._work = work
        self.directory = os.path.abspath(directory)
        self.flush_interval = flush_interval
        os.makedirs(self.directory, exist_ok=True)
        self.run_name = self._new_run()
        self.run_directory = os.path.join(self.directory, self.run_name)
        self._names: set[str] = set()  # game directories of this run that are in use
        self._open: set[SpooledStream] = set()
        self._dirty: dict[SpooledStream, None] = {}  # streams with buffered bytes, in order
        self._flushing = False  # a flush is in the thread: the next one waits for the timer
        self._started = self._stopped = False
        self._timer = LoopingCall(self.flush)
        self._timer.clock = clock

    def _new_run(self) -> str:
        """Create this run's directory under a name no other run has used (at start, before
        the reactor runs)."""
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
        self._started = True
        self._work.start()
        self._timer.start(self.flush_interval, now=False)

    def run(self, function: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run ``function(*args)`` in the spool's thread once the work queued before is done."""
        if self._stopped:
            return defer.fail(RuntimeError("the spool is stopped"))
        return self._work.run(function, *args)

    def written(self) -> defer.Deferred[None]:
        """Fires once all the file work queued so far is done."""
        return self.run(lambda: None)

    def stop(self) -> defer.Deferred[None]:
        """Stop the timer, close every open stream; fires once all of it is on disk (and the
        thread is gone)."""
        if self._stopped:
            return defer.succeed(None)
        if self._timer.running:
            self._timer.stop()
        for stream in list(self._open):
            stream.close()
        if not self._started:
            self._started = True
            self._work.start()  # what was queued before a start is done all the same
        done = self.run(remove_if_empty, self.run_directory)  # kept if a game is still in it
        self._stopped = True

        def stopped(result: object) -> None:
            self._work.stop()
            if isinstance(result, Failure):
                self.log.failure("Stopping the spool failed", result)

        return done.addBoth(stopped)

    # --- live streams ---------------------------------------------------------------------

    def open_game(self, game_id: int) -> GameSpool:
        """The spool of a new game: a directory of this run that no other game uses (named
        here, created with the game's first stream)."""
        attempt = 0
        while True:
            name = str(game_id) if attempt == 0 else f"{game_id}-{attempt}"
            if name not in self._names:
                self._names.add(name)
                return GameSpool(self, game_id, name)
            attempt += 1

    def release_name(self, name: str) -> None:
        """The game directory ``name`` is gone: a later game of its id may take the name."""
        self._names.discard(name)

    def open_stream(self, game: GameSpool, index: int, name: str) -> SpooledStream:
        """A new spool file for the ``index``-th writer of ``game``."""
        stream = SpooledStream(self, _StreamFile(game, index, name))
        if self._stopped:
            stream.closed = True
            return stream
        self._open.add(stream)
        opened = self.run(stream.file.open, time.time())
        opened.addErrback(stream.fail, "opened")
        return stream

    def flush(self) -> None:
        """Hand every stream's buffered bytes to the thread, unless the last flush is still
        there (the bytes then wait for the next one)."""
        if self._flushing or not self._dirty:
            return
        streams = list(self._dirty)
        self._dirty.clear()
        batch = [(stream.file, stream.take()) for stream in streams]
        self._flushing = True
        written = self.run(_write_batch, batch)
        written.addCallbacks(self._flushed, self._flush_failed, callbackArgs=(streams,))

    def _flushed(self, errors: list[tuple[int, OSError]], streams: list[SpooledStream]) -> None:
        self._flushing = False
        for position, error in errors:
            streams[position].fail(Failure(error), "written")

    def _flush_failed(self, failure: Failure) -> None:
        self._flushing = False
        self.log.failure("Writing out the spool failed", failure)

    def mark_dirty(self, stream: SpooledStream) -> None:
        """``stream`` has buffered bytes for the next flush."""
        self._dirty[stream] = None

    def forget(self, stream: SpooledStream) -> None:
        """``stream`` is closed, or failed."""
        self._dirty.pop(stream, None)
        self._open.discard(stream)

    def close_stream(self, stream: SpooledStream) -> None:
        """Queue the last bytes, the sync and the close of ``stream``'s file."""
        self.forget(stream)
        if stream.failed:
            return
        closed = self.run(stream.file.close, stream.take())
        closed.addErrback(stream.fail, "synced")

    # --- what earlier runs left -------------------------------------------------------------

    def spooled_ids(self) -> set[int]:
        """The ids of the games earlier runs left: directory names only, cheap enough to hold
        them before the service serves any connection."""
        return spooled_ids(self.directory, self.run_name)

    def pending(self) -> defer.Deferred[list[SpooledGame]]:
        """The games earlier runs left (a crash), oldest first; the current run's excluded."""
        return self.run(list_pending, self, self.directory, self.run_name)
