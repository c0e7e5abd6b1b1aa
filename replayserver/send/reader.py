"""ReaderProtocol: sends one game's canonical replay to one reader, behind the delay.

The replay header goes out as soon as there is one, then the merged body from byte 0 up to
the delayed edge, then more as the edge moves, then the rest and a close once the writing
phase is over (REFERENCE §4).  The protocol is a push producer for its transport: it writes
bounded chunks and stops while the transport is paused, so a reader that does not read costs
about one chunk of buffer.  Every reader reads from the game's one shared `CanonicalReplay`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from replayserver.game.game import GameClosed

if TYPE_CHECKING:
    from replayserver.game.game import Game
    from replayserver.game.registry import GameRegistry
    from replayserver.metrics import Metrics
    from replayserver.receive.canonical import CanonicalReplay

#: Most body bytes written in one transport.write.
CHUNK_SIZE = 1 << 16


@implementer(IPushProducer)
class ReaderProtocol(Protocol):
    """One reader of one running game."""

    _log = Logger()

    def __init__(self, registry: GameRegistry, game_id: int, name: str, metrics: Metrics) -> None:
        self._registry = registry
        self.game_id = game_id
        self.name = name
        self._metrics = metrics
        self._game: Game | None = None
        self._canonical: CanonicalReplay | None = None
        self._position: int | None = None  # body bytes written; None until the header is
        self._waiting: defer.Deferred | None = None  # for the header or the delayed edge
        self._paused = False
        self._result: str | None = None  # how the connection is counted, once decided

    # --- Protocol ---------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._metrics.active_connections.labels(category="reader").inc()
        game = self._registry.get(self.game_id)
        try:
            if game is None:
                raise GameClosed(f"no game {self.game_id}")
            self._canonical = game.add_reader(self)
        except GameClosed as refusal:
            self._log.info(
                "Reader {name!r} from {peer}: no replay: {refusal}",
                name=self.name, peer=self.transport.getPeer(), refusal=refusal,
            )
            self._metrics.refused_connections.labels(
                kind="reader", reason="no game" if game is None else "game ended").inc()
            self._close("No replay matched")
            return
        self._game = game
        self.transport.registerProducer(self, True)
        self._wait_for(self._canonical.when_header(), self._header_ready)

    @property
    def lag(self) -> int:
        """Body bytes readers may see that this one has not been sent yet."""
        if self._position is None:
            return 0
        return self._canonical.delayed_length - self._position

    def dataReceived(self, data: bytes) -> None:
        """Readers have nothing to say; whatever they send is ignored."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._result is None:
            self._result = "Success" if reason.check(ConnectionDone) else "I/O error"
            self._leave()
        self._metrics.served_connections.labels(result=self._result).inc()
        self._metrics.active_connections.labels(category="reader").dec()

    # --- IPushProducer ----------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._position is not None and self._waiting is None and self._result is None:
            self._send()

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost follows and cleans up."""
        self._paused = True

    # --- sending ----------------------------------------------------------------------------

    def _header_ready(self) -> None:
        header = self._canonical.header_raw
        if header is None:  # the game ended without any complete header
            self._close("No replay matched")
            return
        self.transport.write(header)
        self._metrics.sent_bytes.inc(len(header))
        self._position = 0
        self._send()

    def _send(self) -> None:
        """Write body chunks up to the delayed edge while the transport accepts them."""
        canonical = self._canonical
        while not self._paused and self._result is None:
            if self._position < canonical.delayed_length:
                data = canonical.read(self._position, CHUNK_SIZE)
                self._position += len(data)
                self.transport.write(data)
                self._metrics.sent_bytes.inc(len(data))
            elif canonical.finished:
                self._close("Success")
                return
            else:
                self._wait_for(canonical.wait(self._position), self._send)
                return

    def _wait_for(self, waiting: defer.Deferred, then: Callable[[], None]) -> None:
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
            self.transport.abortConnection()

    def _close(self, result: str) -> None:
        """Everything there is to send was written: unregister, then close (after the flush)."""
        self._result = result
        if self._canonical is not None:
            self.transport.unregisterProducer()
        self._leave()
        self.transport.loseConnection()

    def _leave(self) -> None:
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            waiting.cancel()
        if self._game is not None:
            game, self._game = self._game, None
            game.reader_left(self)
