"""``replayserver-inspect``: one JSON line per file, errors as objects, exit status."""
import json
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replayserver.inspect import describe, main
from replayserver.replay.body import COMMAND_NAMES
from replayserver.replay.container import read_fafreplay
from replayserver.replay.errors import ReplayFormatError
from tests.support import samples
from tests.test_replay_reference import STREAMS, reference, stream

FORMATS = {"fafreplay-v1", "fafreplay-v2"}


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
        facts = describe(bytes(damaged))
    except ReplayFormatError:
        return
    assert json.loads(json.dumps(facts))["header_size"] == facts["header_size"] > 0
