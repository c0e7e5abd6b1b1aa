"""What the save pipeline needs from a metadata source and a replay index (e.g. a database)."""
from __future__ import annotations

from twisted.internet import defer
from zope.interface import Interface, implementer


class IMetadataSource(Interface):
    """Gives the JSON metadata written at the top of a ``.fafreplay`` file."""

    def metadata(game_id, header, started_at, ended_at):
        """
        Return a Deferred firing with a JSON-able dict (docs/replay-format.md keys) for the game.

        ``header`` is the game's ``ReplayHeader`` (or None), ``started_at`` and ``ended_at``
        are unix times. A failure is treated as transient: the saver retries.
        """


class IReplayIndex(Interface):
    """Records which replays are in the vault (FAF's ``game_stats`` table, or nothing)."""

    def mark_saved(game_id, ticks):
        """Return a Deferred firing once the game is recorded as saved with ``ticks`` ticks."""

    def is_saved(game_id):
        """Return a Deferred firing with True if the index records the game as saved."""


@implementer(IReplayIndex)
class NullIndex:
    """The index when there is no database: records nothing, knows nothing."""

    def mark_saved(self, game_id: int, ticks: int) -> defer.Deferred:
        return defer.succeed(None)

    def is_saved(self, game_id: int) -> defer.Deferred:
        return defer.succeed(False)
