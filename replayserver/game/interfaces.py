"""What a game needs from the layers above it, and the values they hand back.

The game layer runs games; it does not know how a replay is stored. It asks an `ISaver` to
save a finished game and an `ISpool` to keep each writer's raw stream until then; `save/`
implements both (the vault and database pipeline, the spool files), and tests implement them
in memory. The game layer also tells its writer connections to stop (`IWriterConnection`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Interface

if TYPE_CHECKING:
    from replayserver.merge.canonical import CanonicalReplay


class NothingToSave(Exception):
    """The game never had a complete replay header, so there is no replay."""

    def __init__(self, game_id: int) -> None:
        super().__init__(f"game {game_id} has no complete replay header: nothing to save")
        self.game_id = game_id


class SaveAbandoned(Exception):
    """The stopping service gave up this save (``server.shutdown_timeout``); the game's spool
    is kept, and the next start recovers it."""

    def __init__(self, game_id: int) -> None:
        super().__init__(f"game {game_id} was not saved before shutdown; kept in the spool")
        self.game_id = game_id


@attrs.frozen
class SavedReplay:
    """What a successful save produced."""

    path: str  # the file in the vault
    ticks: int  # Advance ticks of the merged body (also written to the database)
    size: int  # uncompressed SCFA bytes (header + body)


class IStreamSpool(Interface):
    """One writer's raw stream on its way to disk."""

    def write(data: bytes) -> None:
        """Keep ``data`` (cheap: it is written out later, off the reactor thread)."""

    def close() -> None:
        """The stream is complete: write out what is left, sync, close (idempotent)."""


class IGameSpool(Interface):
    """The spool files of one game (one per writer connection)."""

    def open_stream(index: int, name: str) -> IStreamSpool:
        """A new file for the ``index``-th writer of the game (``name`` as it introduced itself)."""

    def remove() -> Deferred[None]:
        """Delete this game's files, and only those (once its replay is in the vault)."""


class ISpool(Interface):
    """Where running games keep their writers' raw streams until they are saved."""

    def open_game(game_id: int) -> IGameSpool:
        """The spool of a new game (its own files, whatever else is spooled for this id)."""


class ISaver(Interface):
    """Saves finished games."""

    def is_saved(game_id: int) -> Deferred[bool]:
        """Whether a replay of ``game_id`` is already saved (a new writer for it is refused)."""

    def save(
        game_id: int, replay: CanonicalReplay, launched_at: float, ended_at: float,
        spool: IGameSpool,
    ) -> Deferred[SavedReplay]:
        """Save a finished game's replay; its ``spool`` is removed once the replay is safe.

        Fails with `NothingToSave` for a replay without a header; the caller logs the outcome.
        """


class IWriterConnection(Interface):
    """What a game needs from a writer's connection."""

    def stop() -> None:
        """The game is ending: stop reading, close the spooled stream and the connection."""
