"""The sample streams and what faf-replay-parser 0.6.0 (``fafreplay``) computes on them.

``fafreplay`` is an independent parser (Rust), used here as the oracle the format tests compare
with (REFERENCE §10); nothing it computes is written down in the tests.
"""
import collections
import functools
import gc
import os

import fafreplay

from replayserver.replay.container import read_fafreplay
from tests.support import samples

#: Every sample that holds a valid SCFA stream (containers are decoded first).
STREAMS = samples.VALID_SCFA + samples.FAFREPLAYS + samples.DIVERGING
#: Small streams, for tests that parse many variations of a stream.
SMALL_STREAMS = (
    "8805603.scfareplay",
    "22338092.scfareplay",
    "zstd_reference.fafreplay",
    "diverging_1/0",
    "diverging_1/2",
)


@functools.lru_cache(maxsize=None)
def stream(name: str) -> bytes:
    """The SCFA bytes of a sample (decoded when it is a .fafreplay)."""
    data = samples.read(name)
    return read_fafreplay(data).scfa if name.endswith(".fafreplay") else data


@functools.lru_cache(maxsize=None)
def reference(name: str) -> dict:
    """What fafreplay says about a sample stream: header_size, ticks, header (parse_header's
    dict), sim (the body's "sim" dict, desync included) and command_counts (24, by type)."""
    data = stream(name)
    header_size = fafreplay.body_offset(data)
    parser = fafreplay.Parser(
        commands=list(range(len(fafreplay.commands.NAMES))),
        save_commands=True,
        stop_on_desync=False,
    )
    gc.disable()  # hundreds of thousands of command dicts: the collector would triple the time
    try:
        body = parser.parse(bytes(data))["body"]
        by_name = collections.Counter(command["name"] for command in body["commands"])
        del body["commands"]
    finally:
        gc.enable()
    return {
        "header_size": header_size,
        "ticks": fafreplay.body_ticks(data[header_size:]),
        "header": fafreplay.Parser().parse_header(data),
        "sim": body["sim"],
        "command_counts": [by_name[name] for name in fafreplay.commands.NAMES],
    }


def test_every_sample_file_is_covered() -> None:
    files = {
        os.path.relpath(os.path.join(folder, name), samples.SAMPLES)
        for folder, _, names in os.walk(samples.SAMPLES)
        for name in names
        if name != "README.md"
    }
    assert files == set(STREAMS) | {samples.CORRUPT_SCFA}
