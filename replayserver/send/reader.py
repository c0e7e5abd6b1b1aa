"""ReaderProtocol: sends one game's canonical replay to one reader, behind the delay.

The replay header goes out as soon as there is one, then the merged body from byte 0 up to
the delayed edge, then more as the edge moves, then the rest and a close once the writing
phase is over (docs/protocol.md).  The protocol is a push producer for its transport: it writes
bounded chunks and stops while the transport is paused, so a reader that does not read costs
about one chunk of buffer.  Every reader reads from the game's one shared `CanonicalReplay`.
A reader that accepts nothing for ``limits.reader_stall_timeout`` while data waits for it
(the transport stays paused, or the last bytes are not flushed) is dropped; that timeout is
kept with every other connection's on one shared timer (`Deadlines`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from replayserver.config import LimitsSection
from replayserver.deadlines import Deadline, Deadlines
from replayserver.game.game import Game, GameClosed, LimitReached
from replayserver.game.registry import GameRegistry
from replayserver.limits import Slot, count_limited
from replayserver.merge.canonical import CanonicalReplay
from replayserver.metrics import Metrics
from replayserver.transport import transport_of
from replayserver.outcomes import ConnectionCategory, ConnectionResult, ended_by

#: Most body bytes written in one transport.write.
CHUNK_SIZE = 1 << 16

_READER = ConnectionCategory.READER.value


@implementer(IPushProducer)
class ReaderProtocol(Protocol):
    """One reader of one running game."""

    # A few hundred bytes a reader instead of an attribute dictionary.
    __slots__ = ("transport", "connected", "_registry", "game_id", "name", "_metrics", "_game",
                 "_canonical", "_sent", "_position", "_waiting", "_paused", "_result",
                 "_deadlines", "_stall_timeout", "_stall", "_slot", "_why")

    _log = Logger()

    def __init__(
        self, registry: GameRegistry, game_id: int, name: str, *, metrics: Metrics,
        limits: LimitsSection, deadlines: Deadlines, slot: Slot,
    ) -> None:
        """``slot``: this connection's place in the server's connection count, held until the
        connection closes."""
        self._registry = registry
        self.game_id = game_id
        self.name = name
        self._metrics = metrics
        self._game: Game | None = None
        self._canonical: CanonicalReplay | None = None
        self._sent = 0  # bytes written to this reader (header and body)
        self._position: int | None = None  # body bytes written; None until the header is
        self._waiting: defer.Deferred[Any] | None = None  # the game, header or delayed edge
        self._paused = False
        self._result: ConnectionResult | None = None  # how the connection is counted
        self._deadlines = deadlines
        self._stall_timeout = limits.reader_stall_timeout
        self._stall: Deadline | None = None  # pending while data waits for the reader
        self._slot = slot
        self._why = ""  # what the log line says of an outcome the server decided

    # --- Protocol ---------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._metrics.active_connections.labels(category=_READER).inc()
        finding = self._waiting = self._registry.find(self.game_id)
        finding.addCallback(self._found).addErrback(self._wait_failed)

    def _found(self, game: Game | None) -> None:
        self._waiting = None
        try:
            if game is None:
                raise GameClosed(f"no game {self.game_id}")
            self._canonical = game.add_reader(self)
        except LimitReached as refusal:
            self._refuse(refusal.limit, refusal)
            return
        except GameClosed as refusal:
            self._metrics.refused_connections.labels(
                kind="reader", reason="no game" if game is None else "game ended").inc()
            self._close(ConnectionResult.NO_REPLAY, f"no replay: {refusal}")
            return
        self._game = game
        transport_of(self).registerProducer(self, True)
        self._wait_for(self._canonical.when_header(), self._header_ready)

    @property
    def lag(self) -> int:
        """Body bytes readers may see that this one has not been sent yet."""
        if self._position is None or self._canonical is None:
            return 0
        return self._canonical.delayed_length - self._position

    def dataReceived(self, data: bytes) -> None:
        """Readers have nothing to say; whatever they send is ignored."""

    def _refuse(self, limit: str, refusal: object) -> None:
        count_limited(self._metrics, "reader", limit)
        self._close(ConnectionResult.REFUSED, f"refused: {refusal}")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_stall_timer()
        self._slot.release()
        if self._result is None:
            self._result = ended_by(reason)
            if self._result is ConnectionResult.BAD_DATA:  # the transport says why
                self._why = reason.getErrorMessage()
            self._leave()
        self._metrics.served_connections.labels(result=self._result.value).inc()
        self._metrics.active_connections.labels(category=_READER).dec()
        self._log.info(
            "Reader {name!r} of game {game_id} from {peer} closed ({result}{why}): {sent} bytes"
            " sent", name=self.name, game_id=self.game_id, peer=transport_of(self).getPeer(),
            result=self._result.value, why=f"; {self._why}" if self._why else "",
            sent=self._sent,
        )

    # --- IPushProducer ----------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        self._start_stall_timer()

    def resumeProducing(self) -> None:
        self._paused = False
        self._stop_stall_timer()
        if self._position is not None and self._waiting is None and self._result is None:
            self._send()

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost follows and cleans up."""
        self._paused = True
        self._stop_stall_timer()

    # --- stalled readers --------------------------------------------------------------------

    def _start_stall_timer(self) -> None:
        if self._stall is None:
            self._stall = self._deadlines.add(self._stall_timeout, self._stalled)

    def _stop_stall_timer(self) -> None:
        stall, self._stall = self._stall, None
        self._deadlines.cancel(stall)

    def _stalled(self) -> None:
        """Nothing accepted for the stall timeout while data waits: drop the reader."""
        self._stall = None
        count_limited(self._metrics, "reader", "reader_stall_timeout", refused=False)
        self._result = ConnectionResult.TIMEOUT
        self._why = f"dropped: it accepted nothing for {self._stall_timeout:g} s"
        self._leave()
        transport_of(self).abortConnection()

    # --- sending ----------------------------------------------------------------------------

    def _header_ready(self) -> None:
        assert self._canonical is not None
        header = self._canonical.header_raw
        if header is None:  # the game ended without any complete header
            self._close(ConnectionResult.NO_REPLAY)
            return
        transport_of(self).write(header)
        self._sent += len(header)
        self._metrics.sent_bytes.inc(len(header))
        self._position = 0
        self._send()

    def _send(self) -> None:
        """Write body chunks up to the delayed edge while the transport accepts them."""
        canonical, position = self._canonical, self._position
        assert canonical is not None and position is not None
        transport = transport_of(self)
        while not self._paused and self._result is None:
            if position < canonical.delayed_length:
                data = canonical.read(position, CHUNK_SIZE)
                position = self._position = position + len(data)
                transport.write(data)
                self._sent += len(data)
                self._metrics.sent_bytes.inc(len(data))
            elif canonical.finished:
                self._close(ConnectionResult.SUCCESS)
                return
            else:
                self._wait_for(canonical.wait(position), self._send)
                return

    def _wait_for(self, waiting: defer.Deferred[None], then: Callable[[], None]) -> None:
        """Run ``then`` once ``waiting`` fires (unless the reader left: it is cancelled)."""
        self._waiting = waiting
        waiting.addCallback(self._waited, then).addErrback(self._wait_failed)

    def _waited(self, _: object, then: Callable[[], None]) -> None:
        self._waiting = None
        then()

    def _wait_failed(self, failure: Failure) -> None:
        if failure.check(defer.CancelledError):
            return
        self._log.failure("Reader {name!r} of game {game_id}: sending failed", failure,
                          name=self.name, game_id=self.game_id)
        if self._result is None:
            transport_of(self).abortConnection()

    def _close(self, result: ConnectionResult, why: str = "") -> None:
        """Everything there is to send was written: unregister, then close (after the flush)."""
        self._result = result
        self._why = why
        if self._canonical is not None:
            transport_of(self).unregisterProducer()
            self._start_stall_timer()  # until connectionLost: the last bytes must be taken
        self._leave()
        transport_of(self).loseConnection()

    def _leave(self) -> None:
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        if self._game is not None:
            game, self._game = self._game, None
            game.reader_left(self)
