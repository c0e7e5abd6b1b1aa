"""What the save pipeline needs from a metadata source and a replay index (e.g. a database)."""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from zope.interface import Interface, implementer

from replayserver.replay.header import ReplayHeader


class IMetadataSource(Interface):
    """Gives the JSON metadata written at the top of a ``.fafreplay`` file."""

    def metadata(game_id: int, header: ReplayHeader | None, started_at: float,
                 ended_at: float) -> defer.Deferred[dict[str, Any]]:
        """
        A Deferred firing with a JSON-able dict (docs/replay-format.md keys) for the game.

        ``header`` is the game's ``ReplayHeader`` (or None), ``started_at`` and ``ended_at``
        are unix times. A failure is treated as transient: the saver retries.
        """


class IReplayIndex(Interface):
    """Records which replays are in the vault (FAF's ``game_stats`` table, or nothing)."""

    def mark_saved(game_id: int, ticks: int) -> defer.Deferred[None]:
        """A Deferred firing once the game is recorded as saved with ``ticks`` ticks."""

    def is_saved(game_id: int) -> defer.Deferred[bool]:
        """A Deferred firing with True if the index records the game as saved."""


@implementer(IReplayIndex)
class NullIndex:
    """The index when there is no database: records nothing, knows nothing."""

    def mark_saved(self, game_id: int, ticks: int) -> defer.Deferred[None]:
        return defer.succeed(None)

    def is_saved(self, game_id: int) -> defer.Deferred[bool]:
        return defer.succeed(False)
