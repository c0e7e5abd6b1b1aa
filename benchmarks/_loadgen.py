"""Build and drive the C load generator (benchmarks/loadgen.c; its comment tells what it does).

`build` compiles it with the system compiler into benchmarks/build/ (git-ignored) when the
source is newer than the binary. `Generators` runs one generator process per plan: a load is
split by game over processes (at most ``PER_PROCESS`` connections each: one process may
hold at most RLIMIT_NOFILE files), each with its own share of the local port range to bind
its sockets to, all processes connect, then start streaming at one common instant, and their
results are merged into one dict.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from replayserver.replay.header import parse_header
from tests.support import samples

SOURCE = Path(__file__).with_name("loadgen.c")
BINARY = Path(__file__).with_name("build") / "loadgen"
#: Connections per generator process.
PER_PROCESS = 10_000
#: Counts of the generators' results that are not summed when merging.
_MAXIMA = ("max_slot_late", "connect_seconds")
_PERCENTILES = ("lag_min", "lag_p50", "lag_p99", "lag_max")


def build() -> Path:
    """The generator's binary, compiled first if it is missing or older than its source."""
    if not BINARY.exists() or BINARY.stat().st_mtime < SOURCE.stat().st_mtime:
        BINARY.parent.mkdir(exist_ok=True)
        compiled = BINARY.with_suffix(".new")
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-Wall", "-o", str(compiled),
                        str(SOURCE), "-lm"], check=True)
        compiled.replace(BINARY)
    return BINARY


@dataclass(frozen=True)
class Load:
    """The traffic of one scenario (the same for every server it is run against)."""

    games: int
    writers: int  # per game
    readers: int = 0  # in all: reader i watches game i % games
    idle: int = 0  # connections that send nothing
    seconds: float = 30.0  # writers stream this long after the start; 0: header only
    rate: float = 70.0  # body bytes/s per writer
    tick: float = 0.1  # one write per tick
    reader_after: float = 1.0  # readers connect this long after the start
    replay: str = "8468507.scfareplay"
    first_game: int = 1_000_000

    @property
    def connections(self) -> int:
        return self.games * self.writers + self.readers + self.idle

    @property
    def game_ids(self) -> list[int]:
        return list(range(self.first_game, self.first_game + self.games))

    def replay_parts(self) -> tuple[bytes, bytes]:
        """The replay's SCFA header and body."""
        data = samples.read(self.replay)
        size = parse_header(data).size
        return data[:size], data[size:]


class Generators:
    """Generator processes running one load against one port."""

    def __init__(self, load: Load, port: int, *, delay: float, end_after: float,
                 processes: int | None = None) -> None:
        self.load = load
        self.directory = tempfile.TemporaryDirectory(prefix="replayserver-loadgen-")
        header, body = load.replay_parts()
        folder = Path(self.directory.name)
        (folder / "header").write_bytes(header)
        (folder / "body").write_bytes(body)
        processes = processes or max(1, math.ceil(load.connections / PER_PROCESS))
        watchers = Counter(load.game_ids[i % load.games] for i in range(load.readers))
        binary = build()
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        share = (high - low + 1) // processes
        self.processes = []
        for part in range(processes):
            lines = [f"port {port}", f"header {folder / 'header'}", f"body {folder / 'body'}",
                     f"rate {load.rate}", f"tick {load.tick}", f"seconds {load.seconds}",
                     f"reader_after {load.reader_after}", f"delay {delay}",
                     f"end_after {end_after}",
                     f"ports {low + part * share} {low + (part + 1) * share - 1}",
                     f"idle {load.idle // processes + (part < load.idle % processes)}"]
            lines += [f"game {game} {load.writers} {watchers[game]}"
                      for game in load.game_ids[part::processes]]
            plan = folder / f"plan{part}"
            plan.write_text("\n".join(lines) + "\n")
            self.processes.append(subprocess.Popen(
                [str(binary), str(plan)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True))

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def connected(self) -> list[dict]:
        """Wait until every process has connected its writers and idle connections."""
        events = []
        for process in self.processes:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"a load generator exited ({process.wait()})")
            events.append(json.loads(line))
        return events

    def start(self, at: float) -> None:
        """Start streaming at ``at`` (time.monotonic())."""
        for process in self.processes:
            process.stdin.write(f"start {at}\n")
            process.stdin.flush()

    def results(self) -> dict:
        """Wait for the end; the processes' results merged (lag percentiles of them all)."""
        merged: dict = {"lag_ms": Counter(), "games": []}
        try:
            for process in self.processes:
                line = process.stdout.readline()
                if process.wait() or not line:
                    raise RuntimeError(f"a load generator failed ({process.returncode})")
                result = json.loads(line)
                merged["lag_ms"].update({int(ms): n for ms, n in result.pop("lag_ms").items()})
                merged["games"] += result.pop("games")
                for key, value in result.items():
                    if key in _PERCENTILES:
                        continue
                    if key in _MAXIMA:
                        merged[key] = max(merged.get(key, 0), value or 0)
                    else:
                        merged[key] = merged.get(key, 0) + value
        finally:
            self.stop()
        merged.update(lag_percentiles(merged["lag_ms"]))
        return merged

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.directory.cleanup()


def lag_percentiles(lags_ms: Counter) -> dict[str, float | None]:
    """min / p50 / p99 / max of lag samples (milliseconds -> count), in seconds."""
    total = sum(lags_ms.values())
    result: dict[str, float | None] = dict.fromkeys(_PERCENTILES)
    seen, wanted = 0, [("lag_min", 0.0), ("lag_p50", 0.50), ("lag_p99", 0.99), ("lag_max", 1.0)]
    for lag in sorted(lags_ms):
        seen += lags_ms[lag]
        while wanted and seen >= max(1, math.ceil(total * wanted[0][1])):
            result[wanted.pop(0)[0]] = lag / 1000
    return result
