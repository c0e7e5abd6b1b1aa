"""The .fafreplay container: reading v1 and v2 samples, rejecting bad files, caps, writing v2."""
import base64
import binascii
import hashlib
import io
import json
import random
import re
import struct
import tracemalloc
import zlib

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from replayserver.replay.container import (
    MAX_METADATA_SIZE,
    MAX_SCFA_SIZE,
    FafReplay,
    open_fafreplay,
    read_fafreplay,
    write_fafreplay,
)
from replayserver.replay.errors import ContainerError, ReplayFormatError
from tests.support import samples

PROPERTY = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# From the samples' README.md: md5 of the SCFA replay each container decodes to, and its format.
DECODED = {
    "8653680.fafreplay": ("8b9c94e6528c9412312546b8a2d93e8e", "fafreplay-v2"),
    "TestCommands01.fafreplay": ("556b5ff20cf1ec8603e208479bf6e790", "fafreplay-v2"),
    "22338092.fafreplay": ("e4683ffe59a08c758147a0259b801cb9", "fafreplay-v2"),
    "test.fafreplay": ("362976459c4ac0b28618ddeb84409e77", "fafreplay-v1"),
    "zstd_reference.fafreplay": ("ab6935b11567a6b5cf2987477411a3b5", "fafreplay-v2"),
}
METADATA = {"uid": 2000, "title": "line\nbreak \u00e9\u2028", "teams": {"1": ["user1"]}}


def legacy(scfa: bytes, metadata: bytes = b'{"uid":1}', length: int | None = None) -> bytes:
    packed = struct.pack(">I", len(scfa) if length is None else length) + zlib.compress(scfa)
    return metadata + b"\n" + base64.b64encode(packed)


def written(metadata: dict, chunks: list[bytes], level: int = 10) -> bytes:
    out = io.BytesIO()
    write_fafreplay(out, metadata, chunks, level)
    return out.getvalue()


def test_samples_are_the_listed_ones() -> None:
    assert set(DECODED) == set(samples.FAFREPLAYS)


@pytest.mark.parametrize("name", samples.FAFREPLAYS)
def test_samples_decode_to_the_listed_scfa(name: str) -> None:
    replay = read_fafreplay(samples.read(name))
    assert (hashlib.md5(replay.scfa).hexdigest(), replay.format) == DECODED[name]
    assert isinstance(replay.metadata, dict) and replay.metadata["uid"]


def test_server_file_decodes_to_its_raw_replay() -> None:
    replay = read_fafreplay(samples.read("22338092.fafreplay"))
    assert replay.scfa == samples.read("22338092.scfareplay")


def test_zstd_frames_with_and_without_content_size() -> None:
    one_shot = samples.read("8653680.fafreplay")
    streamed = samples.read("TestCommands01.fafreplay")
    one_shot_size = zstandard.frame_content_size(one_shot[one_shot.index(b"\n") + 1 :])
    assert one_shot_size == len(read_fafreplay(one_shot).scfa)
    assert zstandard.frame_content_size(streamed[streamed.index(b"\n") + 1 :]) == -1
    assert read_fafreplay(streamed).scfa.startswith(b"Supreme Commander")


def test_legacy_round_trip_and_null_compression() -> None:
    scfa = b"scfa bytes" * 100
    assert read_fafreplay(legacy(scfa)) == FafReplay({"uid": 1}, scfa, "fafreplay-v1")
    replay = read_fafreplay(legacy(scfa, b'{"uid":1,"compression":null}'))
    assert (replay.scfa, replay.format) == (scfa, "fafreplay-v1")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"uid": 1}', "no newline"),
        (b'{"uid": 1\n', "bad JSON"),
        (b"\xff\xfe\n", "bad JSON"),
        (b"[1, 2]\n", "list, not an object"),
        (b"[" * 100_000 + b"\n", "bad JSON"),
        (b'{"compression": [1,2,345]}\n', "unknown compression [1, 2, 345]"),
        (b'{"compression": "magic"}\n', "unknown compression 'magic'"),
        (b'{"compression": "zstd"}\nnot zstd', "corrupt zstd"),
        (b'{"compression": "zstd"}\n', "truncated zstd"),
        (b"{}\nAAAA!AAA", "bad base64"),
        (b"{}\nQUJD", "shorter than its 4-byte length"),
        (b"{}\n" + base64.b64encode(b"\0\0\0\x05not zlib"), "corrupt zlib"),
    ],
)
def test_bad_containers(data: bytes, message: str) -> None:
    with pytest.raises(ContainerError) as caught:
        read_fafreplay(data)
    assert message in str(caught.value)


def test_bad_legacy_payloads() -> None:
    scfa = b"0123456789" * 50
    good = legacy(scfa)
    with pytest.raises(ContainerError, match="length says 501 bytes, zlib gave 500"):
        read_fafreplay(legacy(scfa, length=501))
    with pytest.raises(ContainerError, match="truncated zlib"):
        packed = base64.b64decode(good[good.index(b"\n") + 1 :])
        read_fafreplay(b"{}\n" + base64.b64encode(packed[:-6]))
    with pytest.raises(ContainerError, match="bytes after the zlib"):
        read_fafreplay(b"{}\n" + base64.b64encode(packed + b"junk"))
    # the same base64 with a character outside the alphabet: lenient decoders accept it
    text = good[good.index(b"\n") + 1 :]
    with pytest.raises(ContainerError, match="bad base64"):
        read_fafreplay(b"{}\n" + text[:8] + b"!" + text[8:])


def test_trailing_garbage_after_zstd_frame() -> None:
    data = written({"uid": 1}, [b"abc"])
    assert read_fafreplay(data + b"\n").scfa == b"abc"
    with pytest.raises(ContainerError, match="bytes after the zstd frame") as caught:
        read_fafreplay(data + b"junk")
    assert caught.value.offset == len(data)


def test_written_file_reads_back() -> None:
    scfa = samples.read("8805603.scfareplay")
    data = written(METADATA, [scfa[:100], b"", scfa[100:]], level=3)
    line, payload = data.split(b"\n", 1)
    assert line.count(b"\n") == 0 and b"\\n" in line
    assert json.loads(line) == {**METADATA, "compression": "zstd", "version": 2}
    assert line == json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False).encode()
    assert read_fafreplay(data) == FafReplay(
        {**METADATA, "compression": "zstd", "version": 2}, scfa, "fafreplay-v2"
    )
    assert zstandard.frame_content_size(payload) == -1  # streamed: no size in the frame
    assert zstandard.ZstdDecompressor().decompressobj().decompress(payload) == scfa


def test_rewriting_a_server_file_keeps_its_content() -> None:
    original = read_fafreplay(samples.read("22338092.fafreplay"))
    again = read_fafreplay(written(original.metadata, [original.scfa]))
    assert again == original


def test_level_is_used() -> None:
    scfa = samples.read("8945286.scfareplay")
    assert len(written({}, [scfa], level=1)) > len(written({}, [scfa], level=19))


def test_metadata_must_be_json() -> None:
    with pytest.raises(ValueError):
        written({"x": float("nan")}, [b""])


@PROPERTY
@given(name=st.sampled_from(["22338092.fafreplay", "zstd_reference.fafreplay"]), data=st.data())
def test_damaged_containers_raise_only_container_errors(name: str, data: st.DataObject) -> None:
    damaged = bytearray(samples.read(name))
    if data.draw(st.booleans()):
        del damaged[data.draw(st.integers(0, len(damaged))) :]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    try:
        read_fafreplay(bytes(damaged))
    except ReplayFormatError as error:
        assert isinstance(error, ContainerError)


@settings(max_examples=30, deadline=None, database=None)
@given(data=st.data())
def test_damaged_legacy_container_raises_only_container_errors(data: st.DataObject) -> None:
    damaged = bytearray(samples.read("test.fafreplay"))
    position = data.draw(st.integers(0, len(damaged) - 1))
    damaged[position] = data.draw(st.integers(0, 255))
    try:
        read_fafreplay(bytes(damaged))
    except ReplayFormatError as error:
        assert isinstance(error, ContainerError)


def test_known_size_goes_into_the_frame() -> None:
    scfa = samples.read("8945286.scfareplay")
    chunks = [scfa[:1000], scfa[1000:]]
    out = io.BytesIO()
    write_fafreplay(out, {"uid": 1}, chunks, 10, size=len(scfa))
    payload = out.getvalue().split(b"\n", 1)[1]
    assert zstandard.get_frame_parameters(payload).content_size == len(scfa)
    assert zstandard.ZstdDecompressor().decompress(payload) == scfa  # one-shot works too
    assert read_fafreplay(out.getvalue()).scfa == scfa


class ShortReads(io.RawIOBase):
    """A file whose reads return at most the next of ``sizes`` bytes (as a pipe may)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = memoryview(data)
        self._sizes = sizes or [len(data)]
        self._reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        size = min(len(buffer), self._sizes[self._reads % len(self._sizes)], len(self._data))
        self._reads += 1
        buffer[:size] = self._data[:size]
        self._data = self._data[size:]
        return size


STRICT_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def whole_reading(data: bytes) -> bytes:
    """Reading a version 1 file in one go: strict base64 of the whole payload without its
    trailing whitespace, then one zlib stream with nothing after it, its length checked.
    Strict as binascii documents it: its strict mode on Python 3.11 still lets "=" follow a
    quantum that needs no padding (CPython gh-118314), so the shape of the text is checked
    first. (zlib.decompress would ignore bytes after the stream: a decompressobj tells.)"""
    text = data.split(b"\n", 1)[1].rstrip()
    if not STRICT_BASE64.fullmatch(text):
        raise binascii.Error("not strict base64")
    packed = binascii.a2b_base64(text, strict_mode=True)
    inflater = zlib.decompressobj()
    scfa = inflater.decompress(packed[4:])
    assert inflater.eof and not inflater.unused_data
    assert len(scfa) == int.from_bytes(packed[:4], "big")
    return scfa


def zstd_of_zeros(total: int, size: int | None = None) -> bytes:
    """A zstd frame of ``total`` zero bytes, compressed as a stream (``size`` in the frame)."""
    out = io.BytesIO()
    zeros = bytes(min(total, 1 << 24))
    compressor = zstandard.ZstdCompressor(level=3)
    with compressor.stream_writer(out, size=-1 if size is None else size, closefd=False) as w:
        for _ in range(total // len(zeros)):
            w.write(zeros)
    return out.getvalue()


@pytest.mark.parametrize("name", samples.FAFREPLAYS)
def test_samples_stream_within_the_caps(name: str) -> None:
    with open(samples.path(name), "rb") as file:
        replay = open_fafreplay(file)
        chunks = list(replay.chunks)
    scfa = b"".join(chunks)
    assert (hashlib.md5(scfa).hexdigest(), replay.format) == DECODED[name]
    assert max(map(len, chunks)) <= 4 << 20
    # the cap is far above a real replay: the biggest sample, a 48-minute 8-player game,
    # decodes to 5.6 MB
    assert len(scfa) * 40 < MAX_SCFA_SIZE


@pytest.mark.parametrize("name", samples.FAFREPLAYS)
def test_a_replay_exactly_at_the_cap_is_read(name: str) -> None:
    data = samples.read(name)
    size = len(read_fafreplay(data).scfa)
    assert len(read_fafreplay(data, max_size=size).scfa) == size
    with pytest.raises(ContainerError, match=f"more than the cap of {size - 1} bytes"):
        read_fafreplay(data, max_size=size - 1)


def test_zstd_bomb_stops_at_the_cap_in_bounded_steps() -> None:
    for size in (None, 1 << 30):  # without, then with, a content size in the frame
        payload = zstd_of_zeros(1 << 30, size)
        assert len(payload) < 64 << 10
        replay = open_fafreplay(io.BytesIO(b'{"compression":"zstd"}\n' + payload))
        tracemalloc.start()
        try:
            decoded = 0
            with pytest.raises(ContainerError) as caught:
                for chunk in replay.chunks:
                    decoded += len(chunk)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert f"more than the cap of {MAX_SCFA_SIZE} bytes (256 MiB)" in str(caught.value)
        assert MAX_SCFA_SIZE - (4 << 20) <= decoded <= MAX_SCFA_SIZE
        assert 23 < caught.value.offset < len(payload) + 23
        assert peak < 12 << 20, peak  # one step's output (at most 4 MiB) and little else


def test_legacy_length_above_the_cap_is_refused_before_inflating() -> None:
    data = b"{}\n" + base64.b64encode(struct.pack(">I", 2**31) + b"not zlib at all")
    with pytest.raises(ContainerError) as caught:
        read_fafreplay(data)
    assert str(caught.value) == (
        f"qCompress length says {2**31} bytes, more than the cap of {MAX_SCFA_SIZE} bytes"
        " (256 MiB) (at byte 3)"
    )
    scfa = b"x" * 1000
    with pytest.raises(ContainerError, match="more than the cap of 999 bytes"):
        read_fafreplay(legacy(scfa), max_size=999)
    assert read_fafreplay(legacy(scfa), max_size=1000).scfa == scfa


def test_legacy_zlib_stream_may_not_outgrow_its_length() -> None:
    zeros = zlib.compress(bytes(64 << 20), 9)
    replay = open_fafreplay(io.BytesIO(b"{}\n" + base64.b64encode(b"\0\0\x03\xe8" + zeros)))
    sizes = []
    with pytest.raises(ContainerError, match="more than the 1000 bytes its qCompress length"):
        for chunk in replay.chunks:
            sizes.append(len(chunk))
    assert sizes == []  # the first step already passes the length


@pytest.mark.parametrize("size", [(1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20])
def test_legacy_sizes_around_the_zlib_step(size: int) -> None:
    for scfa in (bytes(size), hashlib.sha256(b"seed").digest() * (size // 32) + bytes(size % 32)):
        data = legacy(scfa)
        assert read_fafreplay(data).scfa == scfa
        replay = open_fafreplay(ShortReads(data, [1, 4097, 3, 65536]))
        assert b"".join(replay.chunks) == scfa


@PROPERTY
@example(scfa=b"\0\0\0", text_edits=[(2624, b"=")], trailing=b"", sizes=[])
@example(scfa=b"\0\0\0", text_edits=[(2624, b"=")], trailing=b"\n", sizes=[])
@given(
    scfa=st.binary(max_size=3000),
    text_edits=st.lists(  # insertions, often at a quantum boundary
        st.tuples(
            st.integers(0, 2500).map(lambda i: 4 * i) | st.integers(0, 10_000),
            st.sampled_from([b"\n", b" ", b"=", b"==", b"QQ==", b"A", b"!"]),
        ),
        max_size=3,
    ),
    trailing=st.sampled_from([b"", b"\n", b"\r\n", b" \n\t "]),
    sizes=st.lists(st.integers(1, 9) | st.integers(1, 700), max_size=6),
)
def test_streamed_base64_reads_like_the_whole(
    scfa: bytes, text_edits: list[tuple[int, bytes]], trailing: bytes, sizes: list[int]
) -> None:
    data = bytearray(legacy(scfa))
    start = data.index(b"\n") + 1
    for position, text in text_edits:
        position = start + position % (len(data) - start + 1)
        data[position:position] = text
    data = bytes(data) + trailing
    try:
        expected = whole_reading(data)
    except (binascii.Error, zlib.error, AssertionError):
        expected = None
    try:
        got = b"".join(open_fafreplay(ShortReads(data, sizes)).chunks)
    except ContainerError:
        got = None
    assert got == expected


@pytest.mark.parametrize("inserted", [b"\n", b" \r\n", b"QQ==", b"QUI="])
def test_whitespace_or_padding_inside_base64_fails_wherever_reads_end(inserted: bytes) -> None:
    data = legacy(random.Random(11).randbytes(3000))
    at = data.index(b"\n") + 1 + 400
    assert len(data) > at + 3000
    damaged = data[:at] + inserted + data[at:]
    for size in range(1, 10):
        with pytest.raises(ContainerError, match="bad base64"):
            b"".join(open_fafreplay(ShortReads(damaged, [size])).chunks)
        assert b"".join(open_fafreplay(ShortReads(data + inserted.strip(b"QUI="), [size])).chunks)


@pytest.mark.parametrize("padding", [b"=", b"==", b"===", b"====", b"A==="])
@pytest.mark.parametrize("trailing", [b"", b"\n"])
def test_excess_padding_fails_wherever_reads_end(padding: bytes, trailing: bytes) -> None:
    data = legacy(b"\0\0\0")  # 15 bytes packed: 20 base64 characters, no padding
    assert len(data.split(b"\n", 1)[1]) == 20
    for size in range(1, 30):
        with pytest.raises(ContainerError, match="bad base64"):
            b"".join(open_fafreplay(ShortReads(data + padding + trailing, [size])).chunks)
        assert b"".join(open_fafreplay(ShortReads(data + trailing, [size])).chunks) == b"\0\0\0"


def test_whitespace_after_a_zstd_frame_is_read_piece_by_piece() -> None:
    data = written({"uid": 1}, [b"abc"])
    assert read_fafreplay(data + b"\n" * 300_000).scfa == b"abc"
    with pytest.raises(ContainerError, match="bytes after the zstd frame") as caught:
        read_fafreplay(data + b"\n" * 300_000 + b"x")
    assert caught.value.offset == len(data)
    with pytest.raises(ContainerError, match="bytes after the zstd frame"):
        read_fafreplay(data + zstd_of_zeros(1 << 20))  # a second frame


def test_metadata_line_cap() -> None:
    payload = b"\n" + written({}, [b"abc"]).split(b"\n", 1)[1]
    line = b'{"compression":"zstd"}'
    exact = line + b" " * (MAX_METADATA_SIZE - len(line))
    assert read_fafreplay(exact + payload).scfa == b"abc"
    with pytest.raises(ContainerError) as caught:
        read_fafreplay(exact + b" " + payload)
    assert str(caught.value) == (
        f"JSON metadata line longer than the cap of {MAX_METADATA_SIZE} bytes (at byte 0)"
    )
    with pytest.raises(ContainerError, match="longer than the cap"):
        open_fafreplay(ShortReads(b"{" + b" " * (8 << 20), [1 << 16]))
