"""End to end: fuzzed connections against a real server while an honest game runs beside them.

Hypothesis makes connection attempts (random bytes, mutated ``P/``/``G/`` headers, mutated
SCFA headers: wrong sizes, deep Lua nesting, huge counts; mutated bodies) and closes them
orderly or abruptly. The honest game's replay must come out byte-exact, the server must log no
unhandled error, and its memory must come back near its baseline once the fuzz is over.
A forged writer in a game whose honest writers reach the quorum cannot change its replay.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from tests.support import samples
from tests.support.server import (
    ServerProcess,
    joined,
    receive_all,
    send_stream,
    temporary_directory,
)

REPLAY = samples.read("8945286.scfareplay")
HEADER_SIZE = parse_header(REPLAY).size
HONEST = 7100
FUZZ_GAMES = [7000, 7001, 7002]
#: Most growth of the server's resident memory after the fuzz (allocator slack, caches).
RSS_TOLERANCE = 10 << 20

_PREAMBLE = b"Supreme Commander v1.50.3701\r\n\0Replay v1.9\r\n/maps/x/x.scmap\r\n\x1a\0"


def resident_memory(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def mutate(data: bytes, draw) -> bytes:
    """A few random byte replacements, insertions, deletions or a truncation of ``data``."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        if action == "replace":
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[position]
        else:
            del data[position:]
    return bytes(data)


def lua_blob(value: bytes, size: int | None = None) -> bytes:
    return struct.pack("<I", len(value) if size is None else size) + value


@st.composite
def scfa_headers(draw) -> bytes:
    """Hostile or damaged SCFA headers (with a little body after them)."""
    kind = draw(st.sampled_from(["mutated", "nesting", "size", "counts"]))
    if kind == "mutated":
        return mutate(REPLAY[:HEADER_SIZE], draw) + REPLAY[HEADER_SIZE:HEADER_SIZE + 500]
    if kind == "nesting":
        depth = draw(st.integers(1, 20000))
        return _PREAMBLE + lua_blob(b"\x04" * depth + b"\x05" * draw(st.integers(0, depth)))
    if kind == "size":
        size = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 20, (1 << 20) + 1]))
        return _PREAMBLE + lua_blob(b"\x04\x05", size) + draw(st.binary(max_size=2000))
    # huge counts: 255 sources / armies with nothing (or garbage) behind them
    tables = lua_blob(b"\x04\x05") + lua_blob(b"\x04\x05")
    return _PREAMBLE + tables + bytes([255]) + draw(st.binary(max_size=2000))


@st.composite
def attempts(draw) -> tuple[bytes, str]:
    """What one fuzz connection sends, and how it ends ("orderly", "abort" or "half")."""
    game_id = draw(st.sampled_from(FUZZ_GAMES))
    kind = draw(st.sampled_from(["random", "connection header", "scfa header", "body"]))
    if kind == "random":
        data = draw(st.binary(max_size=3000))
    elif kind == "connection header":
        prefix = draw(st.sampled_from([b"P", b"G"]))
        data = mutate(prefix + b"/%d/fuzz\0" % game_id, draw)
    elif kind == "scfa header":
        data = b"P/%d/fuzz\0" % game_id + draw(scfa_headers())
    else:
        body = REPLAY[HEADER_SIZE:HEADER_SIZE + draw(st.integers(0, 20000))]
        data = b"P/%d/fuzz\0" % game_id + REPLAY[:HEADER_SIZE] + mutate(body, draw)
    return data, draw(st.sampled_from(["orderly", "abort", "half"]))


def fuzz_connection(port: int, data: bytes, ending: str) -> None:
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if ending == "half":
            data = data[:len(data) // 2]
        try:
            connection.sendall(data)
        except OSError:
            return  # the server closed first: a valid answer
        if ending == "abort":  # RST instead of FIN
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        connection.close()


class FuzzEndToEnd(SynchronousTestCase):
    def test_fuzzed_connections_beside_an_honest_game(self):
        server = ServerProcess(
            temporary_directory(self),
            {"replay": {"delay": 0.5, "grace_period": 0.5},
             "limits": {"partial_header_timeout": 1}},
            environment={"REPLAYSERVER_SERVER_WORKERS": "1"},  # one process to measure
        ).start()
        self.addCleanup(server.kill)
        threads = ThreadPoolExecutor(max_workers=4)
        self.addCleanup(threads.shutdown)

        def fuzz(examples: int) -> None:
            @settings(max_examples=examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(attempts())
            def one(attempt: tuple[bytes, str]) -> None:
                fuzz_connection(server.port, *attempt)

            one()

        def settled() -> int:
            time.sleep(2.5)  # partial headers time out (1 s), fuzz games end and are saved
            return resident_memory(server.process.pid)

        # Warm up: every code path, the vault's compression threads and the allocator's arenas
        # have been used once (the first round grows VmRSS by tens of MiB, later ones do not),
        # including a whole game saved.
        fuzz(200)
        warm_up = server.connect("P", HONEST - 1, "warm-up")
        send_stream(warm_up, REPLAY, 4096)
        server.wait_for_file(HONEST - 1)
        baseline = settled()

        writer = server.connect("P", HONEST, "honest")
        writer.sendall(REPLAY[:HEADER_SIZE + 1000])
        time.sleep(0.2)
        reader = threads.submit(receive_all, server.connect("G", HONEST, "watcher"))
        honest_done = threading.Event()
        rest = threads.submit(lambda: (send_stream(writer, REPLAY[HEADER_SIZE + 1000:], 512,
                                                   0.02), honest_done.set()))
        started = time.monotonic()
        fuzz(200)
        fuzz_seconds = time.monotonic() - started

        rest.result(timeout=60)
        self.assertTrue(joined(reader.result(timeout=30)) == REPLAY, "reader's replay differs")
        saved = read_fafreplay(server.wait_for_file(HONEST)).scfa
        self.assertTrue(saved == REPLAY, f"saved {len(saved)} bytes instead of {len(REPLAY)}")
        after = settled()
        self.assertLess(after - baseline, RSS_TOLERANCE,
                        f"VmRSS {baseline >> 10} KiB -> {after >> 10} KiB")
        self.assertLess(fuzz_seconds, 40)
        log = server.log()
        for marker in ("Unhandled", "Traceback"):
            self.assertNotIn(marker, log)
        self.assertTrue(server.process.poll() is None)

    def test_forged_writer_cannot_change_the_replay(self):
        """Two honest writers (the quorum) and two forgers that send faster and further: one
        with flipped bytes from the start, one with the honest prefix then its own bytes."""
        server = ServerProcess(temporary_directory(self),
                               {"replay": {"delay": 0.5, "grace_period": 0.5}}).start()
        self.addCleanup(server.kill)
        threads = ThreadPoolExecutor(max_workers=8)
        self.addCleanup(threads.shutdown)
        body = bytearray(REPLAY[HEADER_SIZE:])
        flipped = bytearray(body)
        for position in range(100, len(flipped), 997):
            flipped[position] ^= 0x55
        forged = [REPLAY[:HEADER_SIZE] + bytes(flipped) + b"\x00" * 20000,
                  REPLAY[:HEADER_SIZE + 15000] + bytes(range(256)) * 200]
        game = 7200
        honest = [threads.submit(send_stream, server.connect("P", game, f"honest{i}"), REPLAY,
                                 1024, 0.01) for i in range(2)]
        forgers = [threads.submit(send_stream, server.connect("P", game, f"forger{i}"), data,
                                  4096) for i, data in enumerate(forged)]
        time.sleep(0.3)
        reader = threads.submit(receive_all, server.connect("G", game, "watcher"))
        for sending in honest + forgers:
            sending.result(timeout=60)
        self.assertTrue(joined(reader.result(timeout=30)) == REPLAY, "reader's replay differs")
        self.assertTrue(read_fafreplay(server.wait_for_file(game)).scfa == REPLAY)
