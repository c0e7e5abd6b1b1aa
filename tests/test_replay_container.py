"""The .fafreplay container: reading v1 and v2 samples, rejecting bad files, writing v2."""
import base64
import hashlib
import io
import json
import struct
import zlib

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replayserver.replay.container import FafReplay, read_fafreplay, write_fafreplay
from replayserver.replay.errors import ContainerError, ReplayFormatError
from tests.support import samples

PROPERTY = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# From SOURCES.md: md5 of the SCFA replay each sample container decodes to, and its format.
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
