"""Replay metadata derived from the SCFA header, for a service running without a database.

The header does not say everything FAF's database knows, so some keys are inferred (each
choice is documented in README.rst):

* ``featured_mod``: ``"coop"`` for a coop scenario (scenario type ``campaign_coop``), else
  ``"faf"``; ``featured_mod_versions``: ``{}`` (the header names no file versions).
* ``game_type``: the ``Victory`` lobby option upper-cased (``"DEMORALIZATION"``), or None.
* ``host`` and ``recorder``: None (the header names no host).
* ``title``: the scenario's ``name`` (the map's display name), or None.
* ``mapname``: the map's folder name (``"scmp_020"``), or ``"None"`` without a header.
* ``num_players``: human armies plus AI armies (civilian and scripted armies excluded).
* ``teams``: ``{"<team>": [player names]}`` of the human armies.
* ``launched_at`` / ``game_end``: the times the save pipeline gives (game start, end of the
  writing phase), as integer unix seconds.
"""
from __future__ import annotations

from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from replayserver.replay.header import Army, ReplayHeader
from replayserver.save.interfaces import IMetadataSource

DEFAULT_FEATURED_MOD = "faf"
COOP_SCENARIO_TYPE = "campaign_coop"


@implementer(IMetadataSource)
class HeaderMetadata:
    """Builds the ``.fafreplay`` JSON metadata from the replay header alone."""

    def metadata(
        self, game_id: int, header: ReplayHeader | None, started_at: float, ended_at: float
    ) -> defer.Deferred[dict[str, Any]]:
        return defer.succeed(header_metadata(game_id, header, started_at, ended_at))


def header_metadata(
    game_id: int, header: ReplayHeader | None, started_at: float, ended_at: float
) -> dict[str, Any]:
    """The .fafreplay JSON keys (docs/replay-format.md), but compression and version (the
    container writer adds them)."""
    armies = header.armies if header is not None else ()
    return {
        "uid": game_id,
        "complete": True,
        "state": "PLAYING",
        "featured_mod": featured_mod(header),
        "featured_mod_versions": {},
        "game_type": game_type(header),
        "host": None,
        "recorder": None,
        "launched_at": int(started_at),
        "game_end": int(ended_at),
        "title": _text(header.scenario.get("name")) if header is not None else None,
        "mapname": header.map_name if header is not None else "None",
        "num_players": sum(1 for army in armies if is_player(army)),
        "teams": teams(armies),
    }


def featured_mod(header: ReplayHeader | None) -> str:
    if header is not None and _text(header.scenario.get("type")) == COOP_SCENARIO_TYPE:
        return "coop"
    return DEFAULT_FEATURED_MOD


def game_type(header: ReplayHeader | None) -> str | None:
    victory = header.victory_condition if header is not None else None
    return victory.upper() if victory else None


def is_human(army: Army) -> bool:
    return army.options.get("Human") is True


def is_player(army: Army) -> bool:
    """A human, or an AI that plays (has a personality); civilians and scripted armies not."""
    return is_human(army) or bool(_text(army.options.get("AIPersonality")))


def teams(armies: tuple[Army, ...]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for army in armies:
        if not is_human(army):
            continue
        team = army.options.get("Team")
        if isinstance(team, (int, float)) and float(team).is_integer():
            key = str(int(team))
        else:
            key = str(team)
        result.setdefault(key, []).append(_text(army.options.get("PlayerName")) or "")
    return result


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
