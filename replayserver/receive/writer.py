"""WriterProtocol: the bytes of one writer connection, after its `P/` header, into its game.

A writer goes through three phases (`WriterPhase`). JOINING: the registry checks the game id
(once per id: saved already? admission?) while what the writer sends is kept, up to
ADMISSION_BUFFER bytes, beyond which reading pauses; a writer that closes meanwhile still
joins its game with what it sent once the check accepts it (a short game is not lost). STREAMING: each read goes to the writer's
spool file and to its merge stream and nothing else happens per read; the transport is then
paused until the next read beat (`ReadBeat`). ENDED: the connection is closing or closed, and
its outcome (`ConnectionResult`) is decided.

A writer whose SCFA header is bad is dropped; its game goes on. Limits: a writer beyond
``limits.stream_bytes``, or whose game is beyond ``limits.game_bytes``, is dropped as bad
data (its stream ends uncleanly, the game goes on); a game at its writer limits refuses new
writers (`replayserver.game.game.LimitReached`).
"""
from __future__ import annotations

import enum

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from replayserver.config import LimitsSection
from replayserver.game.game import Game, GameClosed, LimitReached
from replayserver.game.interfaces import IStreamSpool, IWriterConnection
from replayserver.game.registry import GameRegistry, WriterRefused
from replayserver.limits import Slot, count_limited
from replayserver.merge.stream import WriterStream
from replayserver.metrics import Metrics
from replayserver.outcomes import ConnectionCategory, ConnectionResult, ended_by
from replayserver.receive.beat import ReadBeat
from replayserver.replay.errors import HeaderError
from replayserver.transport import transport_of

#: Bytes a writer may send while its game id is checked before its reading is paused.
ADMISSION_BUFFER = 256 * 1024

_WRITER = ConnectionCategory.WRITER.value


class WriterPhase(enum.Enum):
    JOINING = "joining"
    STREAMING = "streaming"
    ENDED = "ended"


@implementer(IWriterConnection)
class WriterProtocol(Protocol):
    """One writer of one game; attached to its game from joining it to its end."""

    # A few hundred bytes a writer instead of an attribute dictionary.
    __slots__ = ("transport", "connected", "_registry", "game_id", "name", "_metrics", "_beat",
                 "_stream_limit", "_slot", "phase", "_joining", "_early", "_early_size",
                 "_game", "_stream", "_spooled", "_result", "_received", "_lost", "_why",
                 "_details")

    _log = Logger()

    def __init__(
        self, registry: GameRegistry, game_id: int, name: str, *, metrics: Metrics,
        limits: LimitsSection, beat: ReadBeat, slot: Slot,
    ) -> None:
        """``slot``: this connection's place in the server's connection count, held until the
        connection closes."""
        self._registry = registry
        self.game_id = game_id
        self.name = name
        self._metrics = metrics
        self._beat = beat
        self._stream_limit = limits.stream_bytes
        self._slot = slot
        self.phase = WriterPhase.JOINING
        self._joining: Deferred[Game] | None = None
        self._early: list[bytes] | None = None  # what arrived while joining
        self._early_size = 0
        self._game: Game | None = None
        self._stream: WriterStream | None = None
        self._spooled: IStreamSpool | None = None
        self._result: ConnectionResult | None = None  # how the connection is counted
        self._received = 0  # bytes taken into the stream
        self._lost: Failure | None = None  # why it closed, if that happened while JOINING
        self._why = ""  # what the log line says of an outcome the server decided
        self._details: dict[str, object] = {}  # and the fields it adds to the event

    def connectionMade(self) -> None:
        self._metrics.active_connections.labels(category=_WRITER).inc()
        self._joining = self._registry.join_writer(self.game_id)
        self._joining.addCallbacks(self._joined, self._not_joined)

    def _not_joined(self, failure: Failure) -> None:
        self._joining = None
        if self.phase is WriterPhase.ENDED:  # it left while waiting
            return
        if self._lost is not None and failure.check(CancelledError):  # the server stops
            self._result = ConnectionResult.REFUSED
            self._closed(self._lost)
            return
        if failure.check(WriterRefused):
            refusal = failure.value
            assert isinstance(refusal, WriterRefused)
            self._refuse(refusal, refusal.reason)
        elif failure.check(CancelledError):
            self._refuse("the server is shutting down", "shutting down")
        else:
            self._log.failure("Writer {name!r} of game {game_id}: joining failed", failure,
                              name=self.name, game_id=self.game_id)
            self._refuse("internal error", "error")

    def _joined(self, game: Game) -> None:
        self._joining = None
        if self.phase is WriterPhase.ENDED:
            return
        early, self._early = self._early or [], None
        try:
            self._stream, self._spooled = game.add_writer(self, self.name)
        except GameClosed as refusal:
            self._refuse(refusal, "game ended")
            return
        except LimitReached as refusal:
            count_limited(self._metrics, "writer", refusal.limit, refused=False)
            self._refuse(refusal, "limit")
            return
        self._game = game
        self.phase = WriterPhase.STREAMING
        if self._lost is None and self._early_size > ADMISSION_BUFFER:
            transport_of(self).resumeProducing()
        for data in early:
            if self.phase is WriterPhase.STREAMING:
                self._take(data)
        if self._lost is not None:  # it closed while joining: its stream is complete
            self._closed(self._lost)

    def _refuse(self, refusal: object, reason: str) -> None:
        self._metrics.refused_connections.labels(kind="writer", reason=reason).inc()
        self._end(ConnectionResult.REFUSED, f"refused: {refusal}")
        if self._lost is not None:
            self._closed(self._lost)

    def dataReceived(self, data: bytes) -> None:
        if self.phase is WriterPhase.STREAMING:
            self._take(data)
            if self.phase is WriterPhase.STREAMING:
                self._beat.after_read(transport_of(self), len(data))
        elif self.phase is WriterPhase.JOINING:
            if self._early is None:
                self._early = []
            self._early.append(data)
            self._early_size += len(data)
            if self._early_size - len(data) <= ADMISSION_BUFFER < self._early_size:
                transport_of(self).pauseProducing()

    def _take(self, data: bytes) -> None:
        """Bytes of the stream: into the spool and the merge stream (the per-read path)."""
        size = len(data)
        game = self._game
        assert game is not None and self._spooled is not None and self._stream is not None
        if self._received + size > self._stream_limit:
            self._over_limit("stream_bytes", self._stream_limit)
            return
        if not game.take_bytes(size):
            self._over_limit("game_bytes", game.byte_limit)
            return
        self._received += size
        self._spooled.write(data)
        try:
            self._stream.feed(data)
        except HeaderError as error:
            self._end(ConnectionResult.BAD_DATA,
                      f"bad replay header ({error.field} at byte {error.offset}): {error}",
                      field=error.field, offset=error.offset)

    def _over_limit(self, limit: str, size: int) -> None:
        """Drop this writer as bad data: its stream ends uncleanly, the game goes on."""
        count_limited(self._metrics, "writer", limit, refused=False)
        self._end(ConnectionResult.BAD_DATA, f"dropped: limit {limit} of {size} bytes reached",
                  limit=limit)

    def stop(self) -> None:
        """The game is ending: stop reading, close the spool file and the connection."""
        if self._spooled is not None:
            self._spooled.close()
        self._stream = self._spooled = self._game = None
        self.phase = WriterPhase.ENDED
        transport_of(self).loseConnection()

    def _end(self, result: ConnectionResult, why: str, **details: object) -> None:
        """Decide the outcome (and why, with ``details`` for the log line), leave the game,
        close the connection."""
        self._result = result
        self._why = why
        self._details = details
        self._leave(clean=False)
        self.phase = WriterPhase.ENDED
        if self._lost is None:
            transport_of(self).loseConnection()

    def _leave(self, clean: bool) -> None:
        """End the stream, close the spool file, tell the game (once)."""
        game, stream, spooled = self._game, self._stream, self._spooled
        self._stream = self._spooled = self._game = None
        if stream is not None:
            stream.end(clean)
        if spooled is not None:
            spooled.close()
        if game is not None:
            game.writer_left(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._slot.release()
        if self._joining is not None and self._early_size:
            self._lost = reason  # joins (or not) when the check is done: see _joined
            return
        self._closed(reason)

    def _closed(self, reason: Failure) -> None:
        """The connection is closed and whatever it sent has been taken (or refused)."""
        self.phase = WriterPhase.ENDED
        if self._joining is not None:
            joining, self._joining = self._joining, None
            joining.cancel()
        clean = reason.check(ConnectionDone) is not None
        self._leave(clean)
        if self._result is None:
            self._result = ended_by(reason)
            if self._result is ConnectionResult.BAD_DATA:  # the transport says why
                self._why = reason.getErrorMessage()
        self._metrics.served_connections.labels(result=self._result.value).inc()
        self._metrics.active_connections.labels(category=_WRITER).dec()
        self._log.info(
            "Writer {name!r} of game {game_id} from {peer} closed ({result}{why}): {received}"
            " bytes received", name=self.name, game_id=self.game_id,
            peer=transport_of(self).getPeer(), result=self._result.value,
            why=f"; {self._why}" if self._why else "", received=self._received, **self._details,
        )
