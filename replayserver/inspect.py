"""``replayserver-inspect FILE...``: one JSON line per replay file (.scfareplay or .fafreplay).

The format is told by content: a .fafreplay starts with ``{`` (its JSON line). A file that
cannot be read gives ``{"file": ..., "error": ...}`` and makes the command exit with 1.

Files are read and decompressed as a stream through the incremental header parser and body
scanner, so memory stays small whatever the file's size. A .fafreplay is bounded by the caps of
replayserver.replay.container: its JSON line at 1 MiB, its decompressed replay at 256 MiB
(a decompression bomb stops there, with an error stating the cap).
"""
import argparse
import functools
import io
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from replayserver.replay.body import COMMAND_NAMES, BodyScanner
from replayserver.replay.container import MAX_METADATA_SIZE, MAX_SCFA_SIZE, open_fafreplay
from replayserver.replay.errors import HeaderError, ReplayFormatError
from replayserver.replay.header import Army, CommandSource, HeaderParser, ReplayHeader

_READ_SIZE = 1 << 20
_ARMY_OPTIONS = {
    "name": "PlayerName",
    "team": "Team",
    "faction": "Faction",
    "start_spot": "StartSpot",
    "human": "Human",
    "civilian": "Civilian",
    "ai": "AIPersonality",
}


def describe(file: io.BufferedReader) -> dict[str, Any]:
    """What the replay file open as ``file`` holds, as a JSON-able dict. Raises
    ReplayFormatError (and OSError when reading fails)."""
    container = open_fafreplay(file) if file.peek(1)[:1] == b"{" else None
    if container is None:
        chunks: Iterator[bytes] = iter(functools.partial(file.read, _READ_SIZE), b"")
    else:
        chunks = container.chunks
    try:
        header, body, size = _scan(chunks)
    except ReplayFormatError:
        if container is not None:
            # A bad container says more than the bytes it decoded to: report it if there is
            # one (reading on stops at the container's cap too).
            for _ in chunks:
                pass
        raise
    facts = dict(
        format="scfa" if container is None else container.format,
        header_size=header.size,
        body_size=size - header.size,
        trailing_partial_frame=size - header.size - body.offset,
        ticks=body.ticks,
        desync_tick=body.desync_tick,
        desync_checksum_tick=body.desync_checksum_tick,
        desyncs=body.desyncs,
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
        prog="replayserver-inspect",
        description="Describe FAF replay files (.scfareplay or .fafreplay) as JSON lines.",
        epilog=(
            f"A .fafreplay whose replay decompresses to more than {MAX_SCFA_SIZE >> 20} MiB "
            f"({MAX_SCFA_SIZE} bytes), or whose JSON line is longer than "
            f"{MAX_METADATA_SIZE >> 20} MiB, is refused with an error; files are read as a "
            "stream. The exit status is 1 when any file could not be read."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE")
    failed = False
    for name in parser.parse_args(argv).files:
        try:
            with open(name, "rb") as file:
                facts = {"file": name, **describe(file)}
        except OSError as error:
            facts = {"file": name, "error": f"cannot read: {error.strerror or error}"}
        except ReplayFormatError as error:
            facts = {"file": name, "error": str(error), "error_type": type(error).__name__}
            if error.offset is not None:
                facts["offset"] = error.offset
            if isinstance(error, HeaderError) and error.field is not None:
                facts["field"] = error.field
        failed = failed or "error" in facts
        print(json.dumps(facts, ensure_ascii=False, default=repr))
    return 1 if failed else 0


def _scan(chunks: Iterator[bytes]) -> tuple[ReplayHeader, BodyScanner, int]:
    """Parse the header and scan the body of an SCFA stream given in chunks; return the header,
    the scanner and the stream's size."""
    parser = HeaderParser()
    body = BodyScanner()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if parser.header is not None:
            body.feed(chunk)
        elif parser.feed(chunk) is not None and parser.excess:
            body.feed(parser.excess)  # the start of the body, fed with the header's end
    return parser.end(), body, size


def _source_name(sources: tuple[CommandSource, ...], index: int) -> str | int:
    return sources[index].name if index < len(sources) else index


def _army(army: Army) -> dict[str, Any]:
    facts: dict[str, Any] = {"index": army.index, "source": army.source}
    for key, option in _ARMY_OPTIONS.items():
        value = army.options.get(option)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        facts[key] = value
    return facts


if __name__ == "__main__":
    sys.exit(main())
