"""``replayserver-inspect FILE...``: one JSON line per replay file (.scfareplay or .fafreplay).

The format is told by content: a .fafreplay starts with ``{`` (its JSON line). A file that
cannot be read gives ``{"file": ..., "error": ...}`` and makes the command exit with 1.
"""
import argparse
import json
import sys
from collections.abc import Sequence

from replayserver.replay.body import COMMAND_NAMES, scan_body
from replayserver.replay.container import read_fafreplay
from replayserver.replay.errors import ReplayFormatError
from replayserver.replay.header import Army, CommandSource, parse_header

_ARMY_OPTIONS = {
    "name": "PlayerName",
    "team": "Team",
    "faction": "Faction",
    "start_spot": "StartSpot",
    "human": "Human",
    "civilian": "Civilian",
    "ai": "AIPersonality",
}


def describe(data: bytes) -> dict:
    """What a replay file holds, as a JSON-able dict. Raises ReplayFormatError."""
    container = read_fafreplay(data) if data[:1] == b"{" else None
    scfa = data if container is None else container.scfa
    header = parse_header(scfa)
    body = scan_body(scfa[header.size :])
    facts = dict(
        format="scfa" if container is None else container.format,
        header_size=header.size,
        body_size=len(scfa) - header.size,
        trailing_partial_frame=len(scfa) - header.size - body.offset,
        ticks=body.ticks,
        desync_tick=body.desync_tick,
        desync_checksum_tick=body.desync_checksum_tick,
        desyncs=len(body.desync_ticks),
        game_version=header.game_version,
        replay_version=header.replay_version,
        map=header.map_path,
        map_name=header.map_name,
        victory_condition=header.victory_condition,
        cheats=header.cheats,
        seed=header.seed,
        sources=[source.name for source in header.sources],
        left_sources=[_source_name(header.sources, index) for index in body.left_sources],
        mods=[{"name": mod.name, "uid": mod.uid, "version": mod.version} for mod in header.mods],
        players=[army.options.get("PlayerName") for army in header.players],
        armies=[_army(army) for army in header.armies],
        command_counts={
            name: count for name, count in zip(COMMAND_NAMES, body.command_counts) if count
        },
    )
    if container is not None:
        facts["metadata"] = container.metadata
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON object per file; return 1 if any file could not be read."""
    parser = argparse.ArgumentParser(
        prog="replayserver-inspect", description="Describe FAF replay files as JSON lines."
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    failed = False
    for name in parser.parse_args(argv).files:
        try:
            with open(name, "rb") as file:
                facts = {"file": name, **describe(file.read())}
        except OSError as error:
            facts = {"file": name, "error": f"cannot read: {error.strerror or error}"}
        except ReplayFormatError as error:
            facts = {"file": name, "error": str(error), "error_type": type(error).__name__}
            if error.offset is not None:
                facts["offset"] = error.offset
            if getattr(error, "field", None) is not None:
                facts["field"] = error.field
        failed = failed or "error" in facts
        print(json.dumps(facts, ensure_ascii=False, default=repr))
    return 1 if failed else 0


def _source_name(sources: tuple[CommandSource, ...], index: int) -> str | int:
    return sources[index].name if index < len(sources) else index


def _army(army: Army) -> dict:
    facts: dict = {"index": army.index, "source": army.source}
    for key, option in _ARMY_OPTIONS.items():
        value = army.options.get(option)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        facts[key] = value
    return facts


if __name__ == "__main__":
    sys.exit(main())
