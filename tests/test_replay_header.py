"""SCFA header parsing: samples against fafreplay, chunking, truncation, corruption, caps."""
import struct
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replayserver.replay.container import read_fafreplay
from replayserver.replay.errors import HeaderError
from replayserver.replay.header import MAX_HEADER_SIZE, HeaderParser, parse_header
from replayserver.replay.lua import MAX_DEPTH, MAX_LUA_VALUES, LuaBudget, decode_lua
from tests.support import samples
from tests.test_replay_reference import SMALL_STREAMS, STREAMS, reference, stream

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def as_text(value):
    """fafreplay's Lua values with its bytes strings decoded like ours."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {as_text(key): as_text(item) for key, item in value.items()}
    return value


def chunks_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:])]


def feed_all(chunks: list[bytes]) -> HeaderParser:
    parser = HeaderParser()
    for chunk in chunks:
        if parser.feed(chunk) is not None:
            return parser
    parser.end()
    raise AssertionError("end() accepted an incomplete header")


def minimal_header(map_path: bytes = b"/maps/x/x.scmap", mods: bytes = b"\x04\x05") -> bytes:
    """A syntactically valid header: no sources, no armies."""
    return (
        b"Supreme Commander v1.50.3701\0\r\n\0Replay v1.9\r\n"
        + map_path
        + b"\0\r\n\x1a\0"
        + struct.pack("<I", len(mods))
        + mods
        + struct.pack("<I", 2)
        + b"\x04\x05"
        + b"\0\0\0"
        + struct.pack("<I", 1234)
    )


@pytest.mark.parametrize("name", STREAMS)
def test_header_matches_fafreplay(name: str) -> None:
    data = stream(name)
    expected = reference(name)
    theirs = expected["header"]
    header = parse_header(data)
    assert header.size == expected["header_size"]
    assert header.game_version == theirs["scfa_version"]
    assert header.replay_version == theirs["replay_version"]
    assert header.map_path == theirs["map_file"]
    assert header.seed == theirs["seed"]
    assert header.cheats == theirs["cheats_enabled"]
    assert header.scenario == as_text(theirs["scenario"])
    assert {source.name: source.timeouts for source in header.sources} == theirs["players"]
    assert len(header.armies) == theirs["army_count"]
    # fafreplay keys armies by source index (AI and civilian armies overwrite each other at 255)
    for army in header.armies:
        if army.source is not None:
            assert army.options == as_text(theirs["armies"][army.source])
    mods = as_text(theirs["mods"])
    assert [(mod.name, mod.uid) for mod in header.mods] == [
        (mods[key]["name"], mods[key]["uid"]) for key in sorted(mods)
    ]


# TestCommands01 is on a generated map, which has no map row: its server wrote "None".
@pytest.mark.parametrize("name", [n for n in samples.FAFREPLAYS if "TestCommands" not in n])
def test_map_name_is_the_faf_mapname(name: str) -> None:
    metadata = read_fafreplay(samples.read(name)).metadata
    assert parse_header(stream(name)).map_name == metadata["mapname"]


def test_header_properties() -> None:
    name = "8468507.scfareplay"
    header = parse_header(stream(name))
    options = as_text(reference(name)["header"]["scenario"]["Options"])
    assert header.options == options
    assert header.victory_condition == options["Victory"]
    assert [army.options["PlayerName"] for army in header.players] == [
        army.options["PlayerName"] for army in header.armies if army.options["Human"]
    ]
    assert all(army.source is not None for army in header.players)
    assert len(header.mods) == len(reference(name)["header"]["mods"])
    assert all(isinstance(mod.version, int) for mod in header.mods)


def test_minimal_header_defaults() -> None:
    header = parse_header(minimal_header())
    assert (header.options, header.victory_condition, header.players) == ({}, None, ())
    assert header.map_name == "x"
    assert header.seed == 1234


@pytest.mark.parametrize("name", SMALL_STREAMS)
def test_one_byte_chunks(name: str) -> None:
    data = stream(name)
    parser = feed_all([data[i : i + 1] for i in range(len(data))])
    assert parser.header == parse_header(data)
    assert parser.raw == data[: parser.header.size]
    assert parser.excess == b""


@PROPERTY
@given(name=st.sampled_from(SMALL_STREAMS), data=st.data())
def test_any_chunking_parses_like_the_whole(name: str, data: st.DataObject) -> None:
    stream_bytes = stream(name)
    size = parse_header(stream_bytes).size
    cuts = data.draw(st.lists(st.integers(0, min(len(stream_bytes), size + 300)), max_size=40))
    parser = feed_all(chunks_at(stream_bytes, cuts))
    assert parser.header == parse_header(stream_bytes)
    assert parser.raw == stream_bytes[:size]
    completed_at = min(end for end in [*cuts, len(stream_bytes)] if end >= size)
    assert parser.excess == stream_bytes[size:completed_at]


def test_excess_is_the_start_of_the_body() -> None:
    data = stream("8805603.scfareplay")
    size = parse_header(data).size
    parser = HeaderParser()
    assert parser.feed(data[:100]) is None
    assert parser.feed(data[100 : size + 50]) is not None
    assert parser.excess == data[size : size + 50]
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


@PROPERTY
@given(name=st.sampled_from(SMALL_STREAMS), data=st.data())
def test_truncated_header_is_an_error_only_at_end(name: str, data: st.DataObject) -> None:
    stream_bytes = stream(name)
    size = parse_header(stream_bytes).size
    cut = data.draw(st.integers(0, size - 1))
    parser = HeaderParser()
    assert parser.feed(stream_bytes[:cut]) is None
    with pytest.raises(HeaderError) as caught:
        parser.end()
    assert caught.value.offset == cut
    assert caught.value.field
    with pytest.raises(HeaderError):
        parse_header(stream_bytes[:cut])


@PROPERTY
@given(name=st.sampled_from(SMALL_STREAMS), data=st.data())
def test_corrupt_header_raises_only_header_error(name: str, data: st.DataObject) -> None:
    original = stream(name)
    corrupt = bytearray(original[: parse_header(original).size + 10])
    for _ in range(data.draw(st.integers(1, 4))):
        corrupt[data.draw(st.integers(0, len(corrupt) - 1))] = data.draw(st.integers(0, 255))
    try:
        header = parse_header(bytes(corrupt))
    except HeaderError as error:
        assert error.offset is not None and 0 <= error.offset <= MAX_HEADER_SIZE
    else:
        assert header.size <= len(corrupt)


def test_corrupt_sample_names_field_and_offset() -> None:
    data = samples.read(samples.CORRUPT_SCFA)
    with pytest.raises(HeaderError) as caught:
        parse_header(data)
    # Analysis: the mods blob starts at 83 with a size prefix of 3999 (so it would end at 4082),
    # but its Lua value ends at 4058. Read as the game and fafreplay read it, the scenario's
    # size prefix follows at 4058 and the scenario's value at 4062, where the bytes stop making
    # sense (its type tag is 110, "n", and its size prefix is absurd).
    mods_size = int.from_bytes(data[79:83], "little")
    value, end = decode_lua(data, 83, 83 + mods_size, "mods")
    assert isinstance(value, dict) and end == 4058 < 83 + mods_size
    assert (caught.value.field, caught.value.offset) == ("scenario", end + 4)
    assert "4062" in str(caught.value)
    with pytest.raises(HeaderError) as tag:
        decode_lua(data, end + 4, len(data), "scenario")
    assert tag.value.offset == 4062 and "tag 110" in str(tag.value)


def test_end_after_complete_header_is_fine() -> None:
    parser = HeaderParser()
    parser.feed(minimal_header())
    parser.end()
    assert parser.header is not None


def test_error_is_sticky() -> None:
    parser = HeaderParser()
    with pytest.raises(HeaderError) as first:
        parser.feed(b"Supreme Commander\0XX\0")
    assert first.value.field == "game version terminator" and first.value.offset == 18
    with pytest.raises(HeaderError) as again:
        parser.feed(b"more")
    assert again.value is first.value


def test_missing_crlf_between_replay_version_and_map() -> None:
    data = minimal_header().replace(b"Replay v1.9\r\n", b"Replay v1.9 ")
    with pytest.raises(HeaderError) as caught:
        parse_header(data)
    assert caught.value.field == "map path" and caught.value.offset == 32


def test_blob_beyond_the_cap_fails_at_once() -> None:
    start = minimal_header().index(b"\x1a\0") + 2
    parser = HeaderParser()
    with pytest.raises(HeaderError) as caught:
        parser.feed(minimal_header()[:start] + struct.pack("<I", MAX_HEADER_SIZE))
    assert caught.value.field == "mods" and caught.value.offset == start + 4


def test_header_exactly_at_the_cap_is_accepted() -> None:
    short = minimal_header(map_path=b"")
    data = minimal_header(map_path=b"m" * (MAX_HEADER_SIZE - len(short)))
    assert len(data) == MAX_HEADER_SIZE
    assert parse_header(data + b"body").size == MAX_HEADER_SIZE


def test_one_mib_string_in_one_byte_chunks_is_linear() -> None:
    data = b"Supreme Commander v1.50" + b"x" * MAX_HEADER_SIZE
    parser = HeaderParser()
    began = time.process_time()
    with pytest.raises(HeaderError) as caught:
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
    elapsed = time.process_time() - began
    assert caught.value.field == "game version" and caught.value.offset == MAX_HEADER_SIZE
    assert i == MAX_HEADER_SIZE  # the error came as soon as the buffer passed the cap
    assert elapsed < 15, elapsed  # quadratic rescanning would take hours


def test_big_lua_blob_in_one_byte_chunks() -> None:
    entries = (b"\x00" + struct.pack("<f", i) + b"\x01" + b"m" * 200 + b"\0" for i in range(1000))
    mods = b"\x04" + b"".join(entries) + b"\x05"
    data = minimal_header(mods=mods)
    parser = HeaderParser()
    for i in range(len(data)):
        header = parser.feed(data[i : i + 1])
    assert header == parse_header(data)
    assert header.mods == ()  # entries are strings, not mod tables


def test_deep_nesting_is_a_header_error() -> None:
    depth = 100_000
    data = minimal_header(mods=b"\x04" * depth + b"\x05" * depth)
    with pytest.raises(HeaderError) as caught:
        parse_header(data)
    assert caught.value.field == "mods" and "nested" in str(caught.value)
    opening = b"\x04\x00" + struct.pack("<f", 1.0)  # a table whose key 1 holds the next one
    nested = opening * (MAX_DEPTH - 1) + b"\x04\x05" + b"\x05" * (MAX_DEPTH - 1)
    value, _ = decode_lua(nested, 0, len(nested), "mods")
    for _ in range(MAX_DEPTH - 1):
        value = value[1]
    assert value == {}


def test_lua_values() -> None:
    table = (
        b"\x04"
        + b"\x01Human\0\x03\x01"
        + b"\x01AI\0\x03\x00"
        + b"\x01Name\0\x01J\xc3\xa9r\xc3\xb4me\0"
        + b"\x01Bad\0\x01a\xffb\0"
        + b"\x01Nothing\0\x02"
        + b"\x00" + struct.pack("<f", 1.0) + b"\x00" + struct.pack("<f", 0.5)
        + b"\x05"
    )
    value, end = decode_lua(table, 0, len(table), "army")
    assert end == len(table)
    assert value == {
        "Human": True,
        "AI": False,
        "Name": "Jérôme",
        "Bad": "a\ufffdb",
        "Nothing": None,
        1.0: 0.5,
    }
    assert value[1] == 0.5  # numeric keys are floats, equal to ints


@pytest.mark.parametrize(
    ("blob", "message", "offset"),
    [
        (b"\x04\x02\x01x\0\x05", "key is nil", 2),
        (b"\x04\x04\x05\x01x\0\x05", "key is nil or a table", 3),
        (b"\x04\x01x\0\x05", "unexpected Lua table end", 4),
        (b"\x05", "unexpected Lua table end", 0),
        (b"\x04\x07", "bad Lua type tag 7", 1),
        (b"\x01abc", "unterminated Lua string", 0),
        (b"\x00\x00\x00", "number runs past", 0),
        (b"\x03", "bool runs past", 0),
        (b"\x04\x01x\0", "runs past the end", 4),
    ],
)
def test_bad_lua(blob: bytes, message: str, offset: int) -> None:
    with pytest.raises(HeaderError) as caught:
        decode_lua(blob, 0, len(blob), "scenario")
    assert message in str(caught.value)
    assert (caught.value.field, caught.value.offset) == ("scenario", offset)


def empty_tables(count: int, first_key: int = 0) -> bytes:
    """A Lua table of ``count`` empty tables under distinct number keys (7 bytes each)."""
    entries = (b"\x00" + struct.pack("<f", first_key + i) + b"\x04\x05" for i in range(count))
    return b"\x04" + b"".join(entries) + b"\x05"


def with_armies(armies: list[bytes], scenario: bytes = b"\x04\x05") -> bytes:
    """minimal_header with the given scenario and army blobs (AI armies, no sources)."""
    data = minimal_header()
    scenario_at = data.rindex(struct.pack("<I", 2) + b"\x04\x05")
    blobs = b"".join(struct.pack("<I", len(army)) + army + b"\xff" for army in armies)
    return (
        data[:scenario_at]
        + struct.pack("<I", len(scenario)) + scenario
        + b"\0\0" + bytes([len(armies)]) + blobs
        + struct.pack("<I", 1234)
    )


def test_real_headers_use_a_small_part_of_the_lua_budget() -> None:
    counts = {}
    for name in STREAMS:
        parser = HeaderParser()
        assert parser.feed(stream(name)) is not None
        counts[name] = parser.lua_budget.used
    # the largest is 800 (TestCommands01, 14 armies); the cap is at least ten times that
    assert max(counts.values()) == 800
    assert 10 * max(counts.values()) <= MAX_LUA_VALUES
    assert min(counts.values()) > 100  # all the blobs count


def test_one_mib_of_empty_tables_is_refused_with_little_memory() -> None:
    room = MAX_HEADER_SIZE - len(minimal_header())
    data = minimal_header(mods=empty_tables((room - 2) // 7))
    assert MAX_HEADER_SIZE - 7 < len(data) <= MAX_HEADER_SIZE
    tracemalloc.start()
    try:
        with pytest.raises(HeaderError) as caught:
            parse_header(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.field == "mods"
    assert f"more than {MAX_LUA_VALUES} Lua values" in str(caught.value)
    mods_at = data.index(b"\x1a\0") + 6
    # the table, then a key and a value per entry: value number MAX_LUA_VALUES + 1 is the
    # empty table of entry MAX_LUA_VALUES / 2 - 1
    assert caught.value.offset == mods_at + 1 + 7 * (MAX_LUA_VALUES // 2 - 1) + 5
    assert peak < 8 << 20, peak  # the 1 MiB buffer and about 5,000 dicts: without the budget,
    # the same header decodes to 150,000 dicts, over 30 MB


def test_the_budget_is_shared_by_all_the_blobs() -> None:
    count = MAX_LUA_VALUES // 8
    blob = empty_tables(count)  # 2 * count + 1 values: a quarter of the budget
    data = with_armies([blob, blob, blob], scenario=blob)
    with pytest.raises(HeaderError) as caught:
        parse_header(data)
    assert caught.value.field == "army 2"
    assert "Lua values" in str(caught.value)
    parser = HeaderParser()
    header = parser.feed(with_armies([blob, blob], scenario=blob))
    assert len(header.armies) == 2 and len(header.armies[1].options) == count
    assert parser.lua_budget.used == 1 + 3 * (2 * count + 1)  # the mods, an empty table, too


def test_nested_empty_tables_count_too() -> None:
    # a tree 60 deep, each level holding 3 empty tables beside the next level
    level = b"\x04\x05"
    for depth in range(60):
        level = b"\x04" + b"".join(
            b"\x00" + struct.pack("<f", key) + table
            for key, table in enumerate([b"\x04\x05", b"\x04\x05", b"\x04\x05", level])
        ) + b"\x05"
    used = 1 + 60 * 8  # each level: 4 keys and 4 tables, one of which is the next level
    budget = LuaBudget(used)
    value, end = decode_lua(level, 0, len(level), "scenario", budget)
    assert end == len(level) and budget.left == 0 and len(value) == 4
    with pytest.raises(HeaderError, match=f"more than {used - 1} Lua values") as caught:
        decode_lua(level, 0, len(level), "scenario", LuaBudget(used - 1))
    assert caught.value.offset == 60 * (1 + 3 * 7 + 5)  # the innermost empty table
