"""SCFA body scanning: real samples against fafreplay, any chunking, invalid frames, desyncs."""
import struct

import fafreplay
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replayserver.replay.body import COMMAND_NAMES, MAX_DESYNC_TICKS, BodyScanner, scan_body
from replayserver.replay.errors import BodyError
from replayserver.replay.header import parse_header
from tests.test_replay_reference import SMALL_STREAMS, STREAMS, reference, stream

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DESYNCED = "8748707-dragonite.scfareplay"


def body_of(name: str) -> bytes:
    data = stream(name)
    return data[parse_header(data).size :]


def state(scanner: BodyScanner) -> tuple:
    return (
        scanner.ticks,
        scanner.offset,
        scanner.command_counts,
        scanner.left_sources,
        scanner.desync_tick,
        scanner.desync_checksum_tick,
        scanner.desynced_checksum_ticks,
        scanner.desync_ticks,
        scanner.desyncs,
    )


def scan_chunks(body: bytes, cuts: list[int]) -> BodyScanner:
    scanner = BodyScanner()
    bounds = [0, *sorted(cuts), len(body)]
    for start, end in zip(bounds, bounds[1:]):
        scanner.feed(body[start:end])
    return scanner


def frame(kind: int, payload: bytes = b"") -> bytes:
    return bytes([kind]) + struct.pack("<H", 3 + len(payload)) + payload


def advance(ticks: int = 1) -> bytes:
    return frame(0, struct.pack("<I", ticks))


def source(index: int) -> bytes:
    return frame(1, bytes([index]))


def checksum(digest: int, tick: int) -> bytes:
    return frame(3, bytes([digest]) * 16 + struct.pack("<I", tick))


@pytest.mark.parametrize("name", STREAMS)
def test_body_matches_fafreplay(name: str) -> None:
    expected = reference(name)
    sim = expected["sim"]
    scanner = scan_body(body_of(name))
    assert scanner.ticks == expected["ticks"] == sim["tick"]
    assert scanner.command_counts == expected["command_counts"]
    assert scanner.desync_tick == sim["desync_tick"]
    assert scanner.desync_ticks == (sim["desync_ticks"] or [])
    assert len(scanner.desynced_checksum_ticks) == len(sim["desync_ticks"] or [])
    assert scanner.desyncs == len(scanner.desync_ticks)
    assert set(scanner.left_sources) == set(sim["players_last_tick"])
    assert len(scanner.left_sources) == len(set(scanner.left_sources))


def test_command_names_are_the_frame_types() -> None:
    assert list(COMMAND_NAMES) == fafreplay.commands.NAMES


def test_desync_sample() -> None:
    scanner = scan_body(body_of(DESYNCED))
    assert scanner.desync_tick == reference(DESYNCED)["sim"]["desync_tick"]
    # The samples' README.md: two sources send different checksums for checksum tick 9100.
    assert scanner.desync_checksum_tick == 9100
    assert scanner.desynced_checksum_ticks[0] == 9100
    assert all(
        checksum_tick <= tick
        for checksum_tick, tick in zip(scanner.desynced_checksum_ticks, scanner.desync_ticks)
    )


@pytest.mark.parametrize("name", [*SMALL_STREAMS, "8945286.scfareplay"])
def test_one_byte_chunks(name: str) -> None:
    body = body_of(name)
    scanner = BodyScanner()
    for i in range(len(body)):
        scanner.feed(body[i : i + 1])
    assert state(scanner) == state(scan_body(body))


@PROPERTY
@given(name=st.sampled_from([*SMALL_STREAMS, "8945286.scfareplay"]), data=st.data())
def test_any_chunking_scans_like_the_whole(name: str, data: st.DataObject) -> None:
    body = body_of(name)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=60))
    assert state(scan_chunks(body, cuts)) == state(scan_body(body))


@settings(max_examples=8, deadline=None, database=None)
@given(data=st.data())
def test_any_chunking_of_the_desynced_sample(data: st.DataObject) -> None:
    body = body_of(DESYNCED)
    cuts = data.draw(st.lists(st.integers(0, len(body)), min_size=1, max_size=400))
    assert state(scan_chunks(body, cuts)) == state(scan_body(body))


@PROPERTY
@given(name=st.sampled_from(SMALL_STREAMS), data=st.data())
def test_truncated_body_counts_whole_frames(name: str, data: st.DataObject) -> None:
    body = body_of(name)
    cut = data.draw(st.integers(0, len(body)))
    scanner = scan_body(body[:cut])
    assert scanner.offset <= cut
    assert scanner.ticks == fafreplay.body_ticks(body[:cut])
    assert state(scan_body(body[: scanner.offset])) == state(scanner)


@PROPERTY
@given(name=st.sampled_from(SMALL_STREAMS), data=st.data())
def test_corrupt_body_raises_only_body_error(name: str, data: st.DataObject) -> None:
    corrupt = bytearray(body_of(name))
    for _ in range(data.draw(st.integers(1, 4))):
        corrupt[data.draw(st.integers(0, len(corrupt) - 1))] = data.draw(st.integers(0, 255))
    try:
        scanner = scan_body(bytes(corrupt))
    except BodyError as error:
        assert 0 <= error.offset < len(corrupt)
    else:
        assert scanner.offset <= len(corrupt)


frames = st.one_of(
    st.builds(advance, st.integers(0, 2**20)),  # fafreplay's tick is a wrapping u32; ours is not
    st.builds(advance, st.just(1)),
    st.builds(source, st.integers(0, 5)),
    st.builds(frame, st.just(2)),
    st.builds(checksum, st.integers(0, 2), st.integers(0, 3)),
    st.builds(frame, st.integers(4, 23), st.binary(max_size=20)),
    st.builds(lambda index: frame(1, bytes([index, 7])), st.integers(0, 5)),  # longer payload
)


@settings(PROPERTY, max_examples=150)
@given(body=st.lists(frames, max_size=200).map(b"".join), data=st.data())
def test_synthetic_bodies_match_fafreplay(body: bytes, data: st.DataObject) -> None:
    sim = fafreplay.Parser(stop_on_desync=False).parse_body(body)["sim"]
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=10))
    scanner = scan_chunks(body, cuts)
    assert scanner.ticks == sim["tick"] == fafreplay.body_ticks(body)
    assert scanner.desync_tick == sim["desync_tick"]
    assert scanner.desync_ticks == (sim["desync_ticks"] or [])
    assert set(scanner.left_sources) == set(sim["players_last_tick"])
    assert scanner.offset == len(body)


def test_leaver_is_the_current_source() -> None:
    body = source(3) + advance() + source(1) + advance() + frame(2) + source(3) + frame(2)
    scanner = BodyScanner()
    scanner.feed(bytearray(body[:13]))
    scanner.feed(memoryview(body)[13:])
    assert scanner.left_sources == [1, 3]
    assert scanner.command_counts[:3] == [2, 3, 2]


def test_desync_bookkeeping() -> None:
    body = (
        advance(50) + checksum(1, 50) + checksum(1, 50) + checksum(2, 50) + advance(3)
        + checksum(3, 50) + checksum(1, 100) + checksum(1, 50)
    )
    scanner = scan_body(body)
    assert scanner.desync_tick == 50 and scanner.desync_checksum_tick == 50
    assert scanner.desynced_checksum_ticks == [50, 50]
    assert scanner.desync_ticks == [50, 53]
    assert scanner.desyncs == 2


def test_only_the_first_desyncs_are_kept() -> None:
    extra = 5
    body = advance(10_000) + checksum(1, 70_000) + checksum(2, 70_000) * (MAX_DESYNC_TICKS + extra)
    scanner = scan_body(body)
    assert scanner.desyncs == MAX_DESYNC_TICKS + extra
    assert scanner.desync_ticks == [10_000] * MAX_DESYNC_TICKS
    assert scanner.desynced_checksum_ticks == [70_000] * MAX_DESYNC_TICKS
    assert scanner.offset == len(body)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (frame(24), "unknown frame type 24"),
        (b"\x05\x02\x00", "frame length 2 below 3"),
        (b"\x05\x00\x00", "frame length 0 below 3"),
        (b"\x00\x06\x00abc", "Advance frame too short"),
        (b"\x01\x03\x00", "SetCommandSource frame too short"),
        (frame(3, b"x" * 19), "VerifyChecksum frame too short"),
    ],
)
def test_invalid_frame(bad: bytes, message: str) -> None:
    good = advance() + source(1) + frame(12, b"order")
    scanner = BodyScanner()
    scanner.feed(good[:5])
    with pytest.raises(BodyError) as caught:
        scanner.feed(good[5:] + bad + advance())
    assert caught.value.offset == len(good)
    assert message in str(caught.value)
    assert scanner.ticks == 1 and scanner.offset == len(good)
    with pytest.raises(BodyError):
        scanner.feed(advance())


def test_huge_frame_in_one_byte_chunks() -> None:
    body = advance() + frame(22, b"x" * 65_000) + advance(2)
    scanner = BodyScanner()
    for i in range(len(body)):
        scanner.feed(body[i : i + 1])
        if i == len(body) - 8:
            assert scanner.offset == len(body) - 7
    assert (scanner.ticks, scanner.offset, scanner.command_counts[22]) == (3, len(body), 1)
