"""One game on the server: its writers, its merged replay, its readers and its lifecycle.

A game is created by its first writer and runs until it has had no writer for the grace
period, or until the forced end, or until the server shuts down.  Then its writing phase is
over: late writers and readers are refused, the merge is finished, the replay is saved, and
the game is forgotten once its readers have received everything (docs/lifecycle.md).

Its limits (configuration section ``limits``) bound what one game may cost whatever its
writers send: the bytes all its writers send together (``game_bytes``; each writer's own
``stream_bytes`` is checked by the writer), the writers connected at once and over its life,
and the readers connected at once (`LimitReached`).
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from replayserver.config import LimitsSection, ReplaySection
from replayserver.game.interfaces import (
    IGameSpool,
    ISaver,
    IStreamSpool,
    IWriterConnection,
    NothingToSave,
    SaveAbandoned,
    SavedReplay,
)
from replayserver.game.ticks import TickCounter
from replayserver.merge.canonical import CanonicalReplay
from replayserver.merge.delay import Ticker
from replayserver.merge.live import LiveReplay
from replayserver.merge.stream import WriterStream
from replayserver.metrics import Metrics


#: The live API shows at most this many characters of a string from a header or a client...
MAX_TEXT = 128
#: ... and at most this many players (a game has at most 16 armies).
MAX_LISTED_PLAYERS = 32


class GameState(enum.Enum):
    RUNNING = "running"  # writers and readers welcome
    SAVING = "saving"  # writing phase over, the saver is at work; readers get the rest
    SAVED = "saved"
    FAILED = "failed"


class GameClosed(Exception):
    """The game's writing phase is over: no new writer or reader."""


class LimitReached(Exception):
    """The game is at one of its limits; ``limit`` is the configuration key."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class ReaderConnection(Protocol):
    """What a game needs from a reader's connection."""

    @property
    def lag(self) -> int:
        """Body bytes readers may see that this reader has not been sent yet."""


class Game:
    """A running game; everything about it (writers, merge, readers, save) lives here."""

    _log = Logger()

    def __init__(
        self,
        game_id: int,
        *,
        clock: IReactorTime,
        replay: ReplaySection,
        limits: LimitsSection,
        saver: ISaver,
        spool: IGameSpool,
        metrics: Metrics,
        on_done: Callable[[Game], None],
        ticker: Ticker,
    ) -> None:
        """``spool``: this game's own spool files; ``ticker``: the delay's beat, shared by the
        server's games."""
        self.game_id = game_id
        self._limits = limits
        #: Most bytes all writers may send together; `received_bytes` so far.
        self.byte_limit: int = self._limits.game_bytes
        self.received_bytes = 0
        self._reported_bytes = 0  # of received_bytes, added to the metrics so far
        self._clock = clock
        self._grace_period = replay.grace_period
        self._saver = saver
        self._spool = spool
        self._metrics = metrics
        self._on_done = on_done
        self.live = LiveReplay(
            ticker,
            delay=replay.delay,
            quorum=replay.quorum,
            comparison_window=replay.comparison_window,
            stall_timeout=replay.stall_timeout,
            game_id=game_id,
        )
        self.state = GameState.RUNNING
        self.started_at: float = clock.seconds()  # the first writer connected (lobby time)
        #: The first complete replay header arrived: the game launched (``launched_at``).
        self.launched_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason: str | None = None
        self.watchable_at: float | None = None
        self.saved_path: str | None = None
        self._writers: set[IWriterConnection] = set()
        self._readers: set[ReaderConnection] = set()
        self._grace: IDelayedCall | None = None
        self._forced: IDelayedCall | None = clock.callLater(
            replay.forced_end, self._end, "forced end"
        )
        self._save_result: str | Failure | None = None
        self._save_waiters: list[defer.Deferred[str]] = []
        self._visible_ticks = TickCounter()
        self._merged_ticks = TickCounter()
        self._stream_ticks: dict[int, TickCounter] = {}
        self.live.canonical.wait(0).addCallback(self._became_watchable)
        self.live.canonical.when_header().addCallback(self._launched)
        metrics.running_replays.inc()

    @property
    def writers(self) -> int:
        return len(self._writers)

    @property
    def readers(self) -> int:
        return len(self._readers)

    @property
    def running(self) -> bool:
        return self.state is GameState.RUNNING

    @property
    def saved(self) -> defer.Deferred[str]:
        """A new Deferred that fires with the vault path, or fails if the save failed.

        The game logs a failed save itself; an unobserved failure is not an error.
        """
        if isinstance(self._save_result, str):
            return defer.succeed(self._save_result)
        if isinstance(self._save_result, Failure):
            return defer.fail(self._save_result)
        waiter: defer.Deferred[str] = defer.Deferred()
        self._save_waiters.append(waiter)
        return waiter

    # --- writers and readers -------------------------------------------------------------

    def add_writer(self, writer: IWriterConnection, name: str
                   ) -> tuple[WriterStream, IStreamSpool]:
        """A new writer connection: its merge stream and its spool file."""
        if not self.running:
            raise GameClosed(f"game {self.game_id} is {self.state.value}")
        self._check_limit("writers_per_game", len(self._writers), "writers connected")
        self._check_limit("writer_streams_per_game", len(self.live.streams), "writer streams")
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        stream = self.live.add_writer(name)
        spooled = self._spool.open_stream(stream.index, name)
        self._writers.add(writer)
        return stream, spooled

    def take_bytes(self, size: int) -> bool:
        """Count ``size`` more bytes from a writer; False (not counted) beyond `byte_limit`."""
        received = self.received_bytes + size
        if received > self.byte_limit:
            return False
        self.received_bytes = received
        return True

    def report_received(self) -> None:
        """Add the bytes received since the last report to the metrics (called every few
        seconds and once at the end, so that counting costs nothing per chunk)."""
        self._metrics.received_bytes.inc(self.received_bytes - self._reported_bytes)
        self._reported_bytes = self.received_bytes

    def _check_limit(self, limit: str, count: int, what: str) -> None:
        allowed: int | None = getattr(self._limits, limit)
        if allowed is not None and count >= allowed:
            raise LimitReached(f"game {self.game_id} has {count} {what} (limit {limit})", limit)

    def writer_left(self, writer: IWriterConnection) -> None:
        """A writer's stream ended (its connection closed or it sent bad data)."""
        self._writers.discard(writer)
        if self.running and not self._writers and self._grace is None:
            self._grace = self._clock.callLater(self._grace_period, self._end, "no writers left")

    def add_reader(self, reader: ReaderConnection) -> CanonicalReplay:
        """A new reader: the replay it is to be sent."""
        if not self.running:
            raise GameClosed(f"game {self.game_id} is {self.state.value}")
        self._check_limit("readers_per_game", len(self._readers), "readers connected")
        self._readers.add(reader)
        return self.live.canonical

    def reader_lag(self) -> int:
        """Most body bytes any reader of this game is behind the delayed edge."""
        return max((reader.lag for reader in self._readers), default=0)

    def reader_left(self, reader: ReaderConnection) -> None:
        """A reader got everything, or went away."""
        if reader in self._readers:
            self._readers.remove(reader)
            self._forget_if_done()

    # --- the end ---------------------------------------------------------------------------

    def end_now(self) -> None:
        """End the writing phase now (server shutdown); see `saved`."""
        self._end("server shutdown")

    def _end(self, reason: str) -> None:
        if not self.running:
            return
        self.state = GameState.SAVING
        self.end_reason = reason
        for timer in (self._grace, self._forced):
            if timer is not None and timer.active():
                timer.cancel()
        self._grace = self._forced = None
        writers, self._writers = self._writers, set()
        for writer in writers:
            writer.stop()
        self.live.finish()
        self.ended_at = self._clock.seconds()
        self._metrics.finished_replays.inc()
        self._metrics.diverged_streams.inc(
            sum(1 for writer in self.live.provenance() if not writer.agrees))
        saving = defer.maybeDeferred(
            self._saver.save,
            self.game_id,
            self.live.canonical,
            self.launched_at if self.launched_at is not None else self.started_at,
            self.ended_at,
            self._spool,
        )
        saving.addCallbacks(self._save_succeeded, self._save_failed)

    def _save_succeeded(self, saved: SavedReplay) -> None:
        self.state = GameState.SAVED
        self.saved_path = saved.path
        assert self.ended_at is not None
        self._metrics.save_duration.observe(self._clock.seconds() - self.ended_at)
        self._log.info(
            "Game {game_id} ended ({reason}): {summary}, saved to {path}",
            game_id=self.game_id, reason=self.end_reason, summary=self._summary(saved.ticks),
            path=saved.path,
        )
        self._settle(saved.path)

    def _save_failed(self, failure: Failure) -> None:
        self.state = GameState.FAILED
        if failure.check(NothingToSave):  # anyone can open P/<id>/x and close: not an error
            self._log.info("Game {game_id} ended ({reason}) without a replay header: {summary},"
                           " nothing to save", game_id=self.game_id, reason=self.end_reason,
                           summary=self._summary(0))
        elif failure.check(SaveAbandoned):  # not lost: the next start saves it
            self._log.warn("Game {game_id} ended ({reason}): {summary}, not saved before the"
                           " shutdown; its spool is kept and the next start saves it",
                           game_id=self.game_id, reason=self.end_reason,
                           summary=self._summary(self.ticks()))
        else:
            self._metrics.failed_saves.labels(reason=type(failure.value).__name__).inc()
            self._log.failure(
                "Game {game_id} ended ({reason}): {summary}, NOT SAVED",
                failure, game_id=self.game_id, reason=self.end_reason,
                summary=self._summary(self.ticks()),
            )
        self._settle(failure)

    def _settle(self, result: str | Failure) -> None:
        self._save_result = result
        waiters, self._save_waiters = self._save_waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        self._forget_if_done()

    def _forget_if_done(self) -> None:
        if self.state in (GameState.SAVED, GameState.FAILED) and not self._readers:
            self.report_received()
            self._metrics.running_replays.dec()
            self._on_done(self)

    def _summary(self, ticks: int) -> str:
        provenance = self.live.provenance()
        diverged = sum(1 for writer in provenance if not writer.agrees)
        return (
            f"{len(provenance)} writers ({diverged} diverged), "
            f"{ticks} ticks, {self.live.canonical.length} body bytes"
        )

    # --- what the live API shows -----------------------------------------------------------

    def _launched(self, _: object) -> None:
        if self.live.canonical.has_header:
            self.launched_at = self._clock.seconds()

    def _became_watchable(self, _: object) -> None:
        if self.live.canonical.delayed_length > 0:
            self.watchable_at = self._clock.seconds()

    def ticks(self) -> int:
        """Advance ticks of the merged body visible to readers (all of it once finished)."""
        canonical = self.live.canonical
        return self._visible_ticks.count_canonical(canonical, canonical.delayed_length)

    def _ticks(self) -> tuple[int, int]:
        """(ticks received, ticks visible to readers).

        Received: the most of any writer's body or of the merged body (which lags behind the
        writers until the first delayed position is reached).
        """
        canonical = self.live.canonical
        visible = self.ticks()
        received = self._merged_ticks.count_canonical(canonical, canonical.length)
        for stream in self.live.streams:
            counter = self._stream_ticks.setdefault(stream.index, TickCounter())
            received = max(received, counter.count_stream(stream, canonical))
        return received, visible

    def snapshot(self, detail: bool = False) -> dict[str, Any]:
        """The game as JSON-able data (live API)."""
        header = self.live.canonical.summary
        ticks_received, ticks_visible = self._ticks()
        snapshot: dict[str, Any] = {
            "id": self.game_id,
            "state": self.state.value,
            "started_at": self.started_at,
            "launched_at": self.launched_at,
            "ended_at": self.ended_at,
            "writers": self.writers,
            "readers": self.readers,
            "map": _short(header.map_name) if header is not None else None,
            "players": [_short(name) for name in header.players[:MAX_LISTED_PLAYERS]]
            if header is not None
            else [],
            "ticks_received": ticks_received,
            "ticks_visible": ticks_visible,
            "watchable_at": self.watchable_at,
        }
        if detail:
            snapshot["provenance"] = [
                {**p.as_dict(), "name": _short(p.name)} for p in self.live.provenance()]
            snapshot["saved_path"] = self.saved_path
        return snapshot


def _short(text: object) -> str | None:
    """A header or client string as the live API shows it: at most MAX_TEXT characters (the
    header is whatever a writer sent; an answer must stay small)."""
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."
