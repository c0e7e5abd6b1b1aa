"""WriterProtocol: the bytes of one writer connection, after its `P/` header, into its game.

Each chunk goes to the writer's spool file and to its merge stream, and nothing else happens
per chunk.  A writer whose SCFA header is bad is dropped; its game goes on.  A writer joins its
game only once admission accepts it; what it sends meanwhile is kept (reading is paused beyond
ADMISSION_BUFFER bytes). Limits: a writer beyond ``limits.stream_bytes``, or whose game is
beyond ``limits.game_bytes``, is dropped as bad data (its stream ends uncleanly, the game goes
on); a game at its writer limits refuses new writers (`replayserver.game.game.LimitReached`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from replayserver.game.game import GameClosed, LimitReached
from replayserver.game.registry import WriterRefused
from replayserver.limits import ConnectionCounter, PeerSlot, count_limited, default_limits
from replayserver.replay.errors import HeaderError
from replayserver.save.admission import AdmissionResult, NoAdmission

if TYPE_CHECKING:
    from replayserver.config import Values
    from replayserver.game.game import Game
    from replayserver.game.registry import GameRegistry
    from replayserver.metrics import Metrics
    from replayserver.receive.stream import WriterStream
    from replayserver.save.admission import Admission
    from replayserver.save.spool import SpooledStream


#: Bytes a writer may send while its admission is checked before its reading is paused.
ADMISSION_BUFFER = 256 * 1024


class WriterProtocol(Protocol):
    """One writer of one game; attached to its game from connectionMade to its end."""

    _log = Logger()

    def __init__(
        self, registry: GameRegistry, game_id: int, name: str, metrics: Metrics,
        admission: Admission | NoAdmission | None = None,
        *,
        limits: Values | None = None,
        connections: ConnectionCounter | None = None,
    ) -> None:
        """``connections``: count this connection there (in a worker process; see limits.py)."""
        self._registry = registry
        self.game_id = game_id
        self.name = name
        self._metrics = metrics
        self._admission = admission if admission is not None else NoAdmission()
        self._checking: Deferred | None = None  # the admission check, while it runs
        self._early: list[bytes] | None = None  # what arrived while it runs
        self._early_size = 0
        self._game: Game | None = None
        self._stream: WriterStream | None = None
        self._spooled: SpooledStream | None = None
        self._result: str | None = None  # how the connection is counted, once decided
        limits = limits if limits is not None else default_limits()
        self._stream_limit = limits.stream_bytes
        self._received = 0  # bytes taken into the stream
        self._slot = PeerSlot(connections)

    def connectionMade(self) -> None:
        self._metrics.active_connections.labels(category="writer").inc()
        limit = self._slot.take(self.transport.getPeer())
        if limit is not None:
            count_limited(self._metrics, "writer", limit, refused=False)
            self._refuse(f"limit {limit} reached", "limit")
            return
        self._early = []
        self._checking = self._admission.check(self.game_id)
        self._checking.addCallbacks(self._admitted, lambda failure: failure.trap(CancelledError))

    def _admitted(self, admission: AdmissionResult) -> None:
        self._checking = None
        early, self._early = self._early, None
        if not admission.accepted:
            self._refuse(f"game {self.game_id}: {admission.reason}", "admission")
            return
        try:
            game = self._registry.game_for_writer(self.game_id)
            self._stream, self._spooled = game.add_writer(self, self.name)
        except (WriterRefused, GameClosed) as refusal:
            self._refuse(refusal, type(refusal).__name__)
            return
        except LimitReached as refusal:
            self._metrics.limited_connections.labels(limit=refusal.limit).inc()
            self._refuse(refusal, "limit")
            return
        self._game = game
        if self._early_size > ADMISSION_BUFFER:
            self.transport.resumeProducing()
        for data in early:
            self.dataReceived(data)

    def _refuse(self, refusal: object, reason: str) -> None:
        self._log.info(
            "Writer {name!r} from {peer} refused: {refusal}",
            name=self.name, peer=self.transport.getPeer(), refusal=refusal,
        )
        self._result = "Refused"
        self._metrics.refused_connections.labels(kind="writer", reason=reason).inc()
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._early is not None:
            self._early.append(data)
            self._early_size += len(data)
            if self._early_size - len(data) <= ADMISSION_BUFFER < self._early_size:
                self.transport.pauseProducing()
            return
        if self._stream is None:
            return
        size = len(data)
        if self._received + size > self._stream_limit:
            self._over_limit("stream_bytes", self._stream_limit)
            return
        if not self._game.take_bytes(size):
            self._over_limit("game_bytes", self._game.byte_limit)
            return
        self._received += size
        self._spooled.write(data)
        try:
            self._stream.feed(data)
        except HeaderError as error:
            self._log.info(
                "Writer {name!r} of game {game_id} from {peer} dropped: bad replay header"
                " ({field} at byte {offset}): {error}",
                name=self.name, game_id=self.game_id, peer=self.transport.getPeer(),
                field=error.field, offset=error.offset, error=error,
            )
            self._result = "Bad data"
            self._detach()
            self.transport.loseConnection()

    def _over_limit(self, limit: str, size: int) -> None:
        """Drop this writer as bad data: its stream ends uncleanly, the game goes on."""
        self._log.info(
            "Writer {name!r} of game {game_id} from {peer} dropped: limit {limit} of {size}"
            " bytes reached",
            name=self.name, game_id=self.game_id, peer=self.transport.getPeer(), limit=limit,
            size=size,
        )
        count_limited(self._metrics, "writer", limit, refused=False)
        self._result = "Bad data"
        self._stream.end(clean=False)
        self._detach()
        self.transport.loseConnection()

    def stop(self) -> None:
        """The game is ending: stop reading, close the spool file and the connection."""
        self._spooled.close()
        self._stream = self._spooled = self._game = None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._slot.release()
        if self._checking is not None:
            self._checking.cancel()
        clean = reason.check(ConnectionDone) is not None
        if self._stream is not None:
            self._stream.end(clean)
            self._detach()
        if self._result is None:
            self._result = "Success" if clean else "I/O error"
        self._metrics.served_connections.labels(result=self._result).inc()
        self._metrics.active_connections.labels(category="writer").dec()
        self._log.info(
            "Writer {name!r} of game {game_id} from {peer} closed ({result}): {received} bytes"
            " received", name=self.name, game_id=self.game_id, peer=self.transport.getPeer(),
            result=self._result, received=self._received,
        )

    def _detach(self) -> None:
        """Leave the game: close the spool file, tell the game."""
        game = self._game
        self._spooled.close()
        self._stream = self._spooled = self._game = None
        game.writer_left(self)
