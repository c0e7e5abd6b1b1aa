"""``replayserver-inspect``: one JSON line per file, errors as objects, exit status, and
decompression bombs stopped at the caps with little memory."""
import base64
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replayserver.inspect import describe, main
from replayserver.replay.body import COMMAND_NAMES
from replayserver.replay.container import (
    MAX_METADATA_SIZE,
    MAX_SCFA_SIZE,
    read_fafreplay,
    write_fafreplay,
)
from replayserver.replay.errors import ContainerError, HeaderError, ReplayFormatError
from replayserver.replay.header import parse_header
from tests.support import samples
from tests.test_replay_reference import STREAMS, reference, stream

FORMATS = {"fafreplay-v1", "fafreplay-v2"}
INSPECT = os.path.join(os.path.dirname(sys.executable), "replayserver-inspect")
ADDRESS_SPACE = 1 << 30  # the console script runs with this address-space limit
BOMB = 2 << 30  # what the bombs inflate to
CAP = f"more than the cap of {MAX_SCFA_SIZE} bytes (256 MiB)"
ADVANCE = b"\x00\x07\x00\x01\x00\x00\x00"  # an Advance frame of one tick


def describe_bytes(data: bytes) -> dict:
    return describe(io.BufferedReader(io.BytesIO(data)))


def working_tree_env() -> dict:
    """The environment for the console script: the working tree first on its path (the
    virtualenv may hold an installed copy of an older tree)."""
    paths = [str(samples.REPO_ROOT), os.environ.get("PYTHONPATH")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}


# Runs the console script under the limits and reports its exit status and peak resident size.
# It is a small process of its own because a child's peak counts what its parent had resident
# when it forked (the test process holds hundreds of MB of samples and bombs).
LAUNCHER = """
import os, resource, sys
address_space, seconds, command = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))  # a guard against a hang
_, status, usage = os.wait4(os.posix_spawn(command[0], command, os.environ), 0)
sys.stderr.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss * 1024}\\n")
"""


def run_limited(*files: Path) -> tuple[int, list[dict], bytes, int]:
    """Run the ``replayserver-inspect`` console script on ``files`` with an ADDRESS_SPACE
    limit; return its exit status, JSON lines, stderr and peak resident size in bytes."""
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(ADDRESS_SPACE), "240", INSPECT, *map(str, files)],
        capture_output=True,
        env=working_tree_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    err, _, usage = done.stderr.rpartition(b"\n")[0].rpartition(b"\n")
    status, peak = map(int, usage.split())
    return status, [json.loads(line) for line in done.stdout.splitlines()], err, peak


def zstd_bomb(head: bytes, repeated: bytes, size: int | None = None) -> bytes:
    """A v2 payload: ``head`` then ``repeated`` up to BOMB bytes, through a streaming zstd
    compressor (``size`` in the frame when given)."""
    out = io.BytesIO()
    compressor = zstandard.ZstdCompressor(level=3)
    with compressor.stream_writer(out, size=-1 if size is None else size, closefd=False) as w:
        w.write(head)
        for _ in range((BOMB - len(head)) // len(repeated)):
            w.write(repeated)
        w.write(repeated[: (BOMB - len(head)) % len(repeated)])
    return out.getvalue()


def zlib_of_zeros(total: int) -> bytes:
    """A zlib stream of ``total`` zero bytes (a multiple of 16 MiB). Each 16 MiB run of zeros
    is compressed after a full flush, which forgets the history, so every run compresses to the
    same bytes: the stream is the first run (with the zlib header), that block repeated, an
    empty final block and the Adler-32 of the zeros (1, and the count modulo 65521 above it)."""
    compressor = zlib.compressobj(9)
    first = compressor.compress(bytes(16 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler = (total % 65521) << 16 | 1
    return first + first[2:] * (total // (16 << 20) - 1) + b"\x03\x00" + struct.pack(">I", adler)


def legacy_bomb(length: int, stream: bytes) -> bytes:
    return b'{"uid":1}\n' + base64.b64encode(struct.pack(">I", length) + stream)


def run_main(capsys: pytest.CaptureFixture, *paths: str) -> tuple[int, list[dict]]:
    status = main([str(path) for path in paths])
    out, err = capsys.readouterr()
    assert err == ""
    return status, [json.loads(line) for line in out.splitlines()]


def test_every_valid_sample(capsys: pytest.CaptureFixture) -> None:
    status, lines = run_main(capsys, *(samples.path(name) for name in STREAMS))
    assert status == 0
    assert [line["file"] for line in lines] == [str(samples.path(name)) for name in STREAMS]
    for name, line in zip(STREAMS, lines):
        expected = reference(name)
        data = stream(name)
        assert line["header_size"] == expected["header_size"]
        assert line["body_size"] == len(data) - expected["header_size"]
        assert line["ticks"] == expected["ticks"]
        assert line["desync_tick"] == expected["sim"]["desync_tick"]
        assert line["desyncs"] == len(expected["sim"]["desync_ticks"] or [])
        assert line["game_version"] == expected["header"]["scfa_version"]
        assert line["map"] == expected["header"]["map_file"]
        assert set(line["sources"]) == set(expected["header"]["players"])
        assert line["command_counts"] == {
            command: count
            for command, count in zip(COMMAND_NAMES, expected["command_counts"])
            if count
        }
        if name.endswith(".fafreplay"):
            assert line["format"] in FORMATS
            assert line["metadata"] == read_fafreplay(samples.read(name)).metadata
        else:
            assert line["format"] == "scfa" and "metadata" not in line


def test_bad_files_give_error_objects(capsys: pytest.CaptureFixture, tmp_path) -> None:
    magic = tmp_path / "magic.fafreplay"
    magic.write_bytes(b'{"compression":"magic"}\nxx')
    status, lines = run_main(
        capsys,
        samples.path("8805603.scfareplay"),
        tmp_path / "missing.scfareplay",
        samples.path(samples.CORRUPT_SCFA),
        magic,
        tmp_path,
    )
    assert status == 1
    assert [("error" in line) for line in lines] == [False, True, True, True, True]
    assert "No such file" in lines[1]["error"]
    assert lines[2]["field"] == "scenario" and lines[2]["offset"] == 4062
    assert "4062" in lines[2]["error"] and lines[2]["error_type"] == "HeaderError"
    assert "unknown compression 'magic'" in lines[3]["error"]
    assert set(lines[4]) == {"file", "error"}


def test_format_is_told_by_content(capsys: pytest.CaptureFixture, tmp_path) -> None:
    container = tmp_path / "container.scfareplay"
    raw = tmp_path / "raw.fafreplay"
    shutil.copy(samples.path("test.fafreplay"), container)
    shutil.copy(samples.path("8805603.scfareplay"), raw)
    status, lines = run_main(capsys, container, raw)
    assert status == 0
    assert [line["format"] for line in lines] == ["fafreplay-v1", "scfa"]


def test_console_script_as_a_module() -> None:
    good = samples.path("22338092.fafreplay")
    bad = samples.path(samples.CORRUPT_SCFA)
    done = subprocess.run(
        [sys.executable, "-m", "replayserver.inspect", str(good), str(bad)],
        capture_output=True,
        cwd=samples.REPO_ROOT,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (1, b"")
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first["format"] == "fafreplay-v2" and first["ticks"] == reference(
        "22338092.fafreplay"
    )["ticks"]
    assert second["file"] == str(bad) and "error" in second


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    name=st.sampled_from(
        ["8805603.scfareplay", "22338092.fafreplay", "test.fafreplay", "diverging_1/3"]
    ),
    data=st.data(),
)
def test_damaged_files_raise_only_format_errors(name: str, data: st.DataObject) -> None:
    damaged = bytearray(samples.read(name))
    if data.draw(st.booleans()):
        del damaged[data.draw(st.integers(1, len(damaged))) :]
    for _ in range(data.draw(st.integers(0, 4))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    try:
        facts = describe_bytes(bytes(damaged))
    except ReplayFormatError:
        return
    assert json.loads(json.dumps(facts))["header_size"] == facts["header_size"] > 0


def test_help_states_the_caps() -> None:
    done = subprocess.run(
        [INSPECT, "--help"], capture_output=True, env=working_tree_env(), timeout=60
    )
    assert done.returncode == 0
    text = b" ".join(done.stdout.split()).decode()
    assert f"more than 256 MiB ({MAX_SCFA_SIZE} bytes)" in text
    assert f"longer than {MAX_METADATA_SIZE >> 20} MiB" in text


def test_big_replays_are_described_as_a_stream() -> None:
    data = samples.read("8604509.scfareplay")
    size = parse_header(data).size
    big = data[:size] + data[size:] * 3  # 8.7 MB, three times the body
    out = io.BytesIO()
    write_fafreplay(out, {"uid": 1}, [big], level=1)
    v2 = out.getvalue()
    v1 = b'{"uid":1}\n' + base64.b64encode(struct.pack(">I", len(big)) + zlib.compress(big, 1))
    expected = describe_bytes(data)
    for blob in (big, v2, v1):
        file = io.BufferedReader(io.BytesIO(blob))
        tracemalloc.start()
        try:
            facts = describe(file)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert facts["ticks"] == 3 * expected["ticks"]
        assert facts["body_size"] == len(big) - size
        assert peak < 8 << 20, peak  # a few 1 MiB chunks, never the replay (or its body) whole


def test_a_bad_container_is_reported_before_what_it_decoded_to() -> None:
    truncated = b'{"compression":"zstd"}\n' + zstandard.ZstdCompressor().compress(bytes(1 << 20))
    with pytest.raises(ContainerError, match="truncated zstd"):
        describe_bytes(truncated[:-10])  # and its header is zeros
    with pytest.raises(HeaderError):
        describe_bytes(truncated)
    raw = samples.read(samples.CORRUPT_SCFA) + bytes(10 << 20)
    file = io.BufferedReader(io.BytesIO(raw))
    with pytest.raises(HeaderError):
        describe(file)
    assert file.tell() < 2 << 20  # a raw file is not read past its error


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Files that inflate to gigabytes, each with the error it must stop with."""
    folder = tmp_path_factory.mktemp("bombs")
    zeros = bytes(16 << 20)
    header = stream("8805603.scfareplay")[: parse_header(stream("8805603.scfareplay")).size]
    deflated = zlib_of_zeros(BOMB)
    v2 = b'{"uid":1,"compression":"zstd","version":2}\n'
    files = {
        "v2-zeros": (v2 + zstd_bomb(b"", zeros), CAP),
        "v2-zeros-sized": (v2 + zstd_bomb(b"", zeros, size=BOMB), CAP),  # the frame says 2 GiB
        # a real header and a body of one-tick Advance frames: only the cap can stop it
        "v2-advancing": (v2 + zstd_bomb(header, ADVANCE * (1 << 17)), CAP),
        "v1-lying-length": (
            legacy_bomb(197_007, deflated),
            "more than the 197007 bytes its qCompress length says",
        ),
        "v1-length-at-cap": (
            legacy_bomb(MAX_SCFA_SIZE, deflated),
            f"more than the {MAX_SCFA_SIZE} bytes its qCompress length says",
        ),
        "v1-honest-length": (
            legacy_bomb(BOMB, deflated),
            f"qCompress length says {BOMB} bytes, {CAP}",
        ),
        "endless-json-line": (
            b'{"uid":1,"title":"' + b"x" * (64 << 20),
            f"longer than the cap of {MAX_METADATA_SIZE} bytes",
        ),
    }
    written = {}
    for name, (data, error) in files.items():
        path = folder / f"{name}.fafreplay"
        path.write_bytes(data)
        written[name] = (path, error)
    return written


def test_bombs_stop_at_the_caps_with_little_memory(bombs: dict[str, tuple[Path, str]]) -> None:
    good = [samples.path("test.fafreplay"), samples.path("22338092.fafreplay")]
    paths = [path for path, _ in bombs.values()]
    status, lines, err, peak = run_limited(*paths, *good)
    assert (status, err) == (1, b"")
    assert [line["file"] for line in lines] == [str(path) for path in [*paths, *good]]
    for (name, (path, error)), line in zip(bombs.items(), lines):
        assert path.stat().st_size < 70 << 20
        assert line["error_type"] == "ContainerError", (name, line)
        assert error in line["error"], (name, line)
    for line in lines[len(paths) :]:
        assert "error" not in line and line["format"] in FORMATS
    assert peak < 100 << 20, peak  # no step holds more than a few MB; the cap is 256 MiB


@pytest.mark.parametrize("name", ["v2-zeros", "v1-honest-length"])
def test_one_bomb_alone(bombs: dict[str, tuple[Path, str]], name: str) -> None:
    path, error = bombs[name]
    status, lines, err, peak = run_limited(path)
    assert (status, err, len(lines)) == (1, b"", 1)
    assert set(lines[0]) == {"file", "error", "error_type", "offset"}
    assert error in lines[0]["error"]
    assert peak < 100 << 20, peak
