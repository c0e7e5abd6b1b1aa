"""Load benchmark (issue 4): the real server under G games x W writers x R readers, next to a floor.

``python -m benchmarks.load [--games G --writers W --readers R --rate B --speed N
--interval S --seconds S --idle C --workers K --profile FILE]`` starts ``twistd -n
replayserver`` (tests/support/server.py) with short delays, and load generators
(benchmarks/_client.py) in their own processes. Every writer streams a real replay's body at
``rate`` x ``speed`` bytes/s (FAF's average is about 70 B/s: 7 bytes per 0.1 s tick) in one
chunk per ``interval``; readers measure their lag behind the delayed edge. Every saved replay
is then checked byte for byte against what its writers sent. The same writer traffic then
goes to a bare Twisted server that only receives the bytes: the floor. First, C idle
connections (connected, nothing sent, as FA before its game launches) measure the memory
each one costs. The generators run on the same machine and compete with the server for its
cores: their CPU is printed too. CPU is given for the steady streaming phase (from 3 s after
the writers start until they stop) and for the whole run. ``--profile FILE`` profiles the
server's processes over the steady phase (cProfile, through benchmarks/_profile_hook) and
prints the functions with the most own time.

The driver functions here (server start, generator fan-out, CPU / memory sampling, checking
the vault) are shared by benchmarks.peak and benchmarks.scale.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from benchmarks._client import raise_fd_limit
from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from tests.support import samples
from tests.support.server import ServerProcess

REPLAY = "8468507.scfareplay"
#: FAF's average stream rate per writer (REFERENCE §1) and FA's chunk interval (one tick).
FAF_RATE = 70.0
TICK = 0.1
#: Benchmark server settings: short delays so that a run takes minutes.
DELAY = 5.0
SAMPLE_INTERVAL = 1.0
GRACE = 2.0
#: Connections per generator process (each may hold at most RLIMIT_NOFILE open files).
PER_GENERATOR = 8000
#: Goals of issue 4.
CPU_GOAL = 1.5
IDLE_GOAL = 64 * 1024
FIRST_GAME = 1_000_000


# --- processes ---------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in bytes (0 once it is gone)."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in values:
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (the server's worker processes)."""
    pids, index = [pid], 0
    while index < len(pids):
        try:
            with open(f"/proc/{pids[index]}/task/{pids[index]}/children") as f:
                pids.extend(int(child) for child in f.read().split())
        except OSError:
            pass
        index += 1
    return pids


def core_times() -> list[tuple[int, int]]:
    """(busy, total) clock ticks of every core since boot (/proc/stat)."""
    cores = []
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(v) for v in values]
                idle = ticks[3] + ticks[4]
                cores.append((sum(ticks) - idle, sum(ticks)))
    return cores


def core_usage(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[float]:
    """Busy fraction of every core between two core_times()."""
    return [(b2 - b1) / max(1, t2 - t1) for (b1, t1), (b2, t2) in zip(before, after)]


# --- the server ---------------------------------------------------------------------------

class BenchServer(ServerProcess):
    """The replay server with the benchmark's settings, optionally under cProfile."""

    def __init__(self, directory: str, workers: int, profile: str | None = None,
                 delay: float = DELAY) -> None:
        environment = {}
        if profile:
            environment = {"PYTHONPATH": str(Path(__file__).parent / "_profile_hook"),
                           "REPLAYSERVER_BENCH_PROFILE": profile}
        super().__init__(directory, {
            "server": {"workers": workers},
            "replay": {"delay": delay, "sample_interval": SAMPLE_INTERVAL,
                       "grace_period": GRACE},
            # Every benchmark connection comes from 127.0.0.1; the fd limit bounds the rest.
            "limits": {"connections_per_peer": None, "connections": None},
        }, environment=environment)
        self.delay = delay
        self.profile = profile

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def profiling(self, phase: str) -> None:
        """Start (phase "start") or stop and write ("stop") the profiles of every process."""
        if self.profile:
            for pid in self.pids():
                os.kill(pid, signal.SIGUSR1 if phase == "start" else signal.SIGUSR2)

    def print_profile(self, top: int = 35) -> None:
        """The steady phase's functions with the most own time, all processes together."""
        time.sleep(1)
        paths = glob.glob(f"{self.profile}.*")
        if paths:
            pstats.Stats(*paths).sort_stats("tottime").print_stats(top)


# --- plans and generators ------------------------------------------------------------------

def make_plans(game_ids: list[int], writers: int, readers: int, *, rate: float,
               interval: float, seconds: float, delay: float, processes: int | None = None,
               reader_after: float = 1.0, linger: float | None = None) -> list[dict]:
    """One generator plan per process: games split evenly, with their writers and readers.

    ``readers`` is the total; reader i watches game i % len(game_ids).
    """
    watched = Counter(game_ids[i % len(game_ids)] for i in range(readers)) if game_ids else {}
    connections = len(game_ids) * writers + readers
    processes = processes or max(1, math.ceil(connections / PER_GENERATOR))
    linger = linger if linger is not None else GRACE + 30
    plans = []
    for part in range(processes):
        games = game_ids[part::processes]
        plans.append({
            "replay": REPLAY, "games": games, "writers": writers,
            "readers": [g for g in games for _ in range(watched.get(g, 0))],
            "rate": rate, "interval": interval, "seconds": seconds, "delay": delay,
            "reader_after": reader_after, "linger": linger,
        })
    return plans


def run_generators(port: int, plans: list[dict], watch: list[int], warmup: float = 3.0,
                   on_phase: Callable[[str], None] | None = None) -> dict:
    """Run one generator per plan against ``port``; meanwhile sample the ``watch`` processes.

    Returns the generators' merged results with ``server_cpu`` (per watched pid, whole run),
    ``steady_cpu`` (per watched pid, in cores: from ``warmup`` seconds after every generator
    started streaming until the first one stopped), ``peak_rss`` (highest sum of the watched
    processes' RSS), ``generator_cpu``, ``cores`` (busy fraction of each core over the steady
    phase) and ``wall``. ``on_phase`` is called with "start" and "stop" of the steady phase.
    """
    on_phase = on_phase or (lambda phase: None)
    cpu_before = {pid: cpu_seconds(pid) for pid in watch}
    started = time.monotonic()
    generators = [
        subprocess.Popen([sys.executable, "-m", "benchmarks._client", str(port), json.dumps(plan)],
                         stdout=subprocess.PIPE, text=True)
        for plan in plans
    ]
    lines: list[list[str]] = [[] for _ in generators]
    readers = [threading.Thread(target=lambda g=g, out=out: out.extend(g.stdout), daemon=True)
               for g, out in zip(generators, lines)]
    for reader in readers:
        reader.start()

    def seen(event: str) -> int:
        return sum(any(f'"event": "{event}"' in line for line in out) for out in lines)

    peak_rss = 0
    steady_at: float | None = None  # when the steady phase starts (after the warm-up)
    base: tuple | None = None  # (time, CPU per pid, core times) at its start
    steady: dict | None = None
    while any(generator.poll() is None for generator in generators):
        peak_rss = max(peak_rss, sum(proc_status(pid)["VmRSS"] for pid in watch))
        now = time.monotonic()
        if steady_at is None and seen("start") == len(generators):
            steady_at = now + warmup
        elif base is None and steady_at is not None and now >= steady_at:
            base = (now, {pid: cpu_seconds(pid) for pid in watch}, core_times())
            on_phase("start")
        elif steady is None and base is not None and seen("stop"):
            steady = steady_phase(base, watch)
            on_phase("stop")
        time.sleep(0.1)
    if steady is None and base is not None:  # the generators stopped and exited at once
        steady = steady_phase(base, watch)
        on_phase("stop")
    wall = time.monotonic() - started
    merged: dict = {"sent": {}, "lags_ms": Counter()}
    for generator, reader, out in zip(generators, readers, lines):
        reader.join()
        if generator.returncode:
            raise RuntimeError(f"a load generator failed ({generator.returncode})")
        result = json.loads(out[-1])
        merged["sent"].update({int(k): v for k, v in result.pop("sent").items()})
        merged["lags_ms"].update({int(k): v for k, v in result.pop("lags_ms").items()})
        for key, value in result.items():
            merged[key] = merged.get(key, 0) + value
    merged["generator_cpu"] = merged.pop("cpu")
    merged["server_cpu"] = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in watch}
    merged["steady"] = steady or {"cpu": {pid: 0.0 for pid in watch}, "cores": [], "span": 0,
                                 "rss": 0}
    merged["peak_rss"] = peak_rss
    merged["wall"] = wall
    return merged


def steady_phase(base: tuple, watch: list[int]) -> dict:
    """CPU (in cores) of each watched process and busy fraction of each core since ``base``;
    the watched processes' RSS now (at the end of the streaming phase)."""
    span = time.monotonic() - base[0]
    return {"cpu": {pid: (cpu_seconds(pid) - base[1][pid]) / span for pid in watch},
            "cores": core_usage(base[2], core_times()), "span": span,
            "rss": sum(proc_status(pid)["VmRSS"] for pid in watch)}


def lag_percentiles(lags_ms: Counter) -> dict[str, float | None]:
    """p50 / p99 / max of the lag samples, in seconds."""
    total = sum(lags_ms.values())
    if not total:
        return {"p50": None, "p99": None, "max": None, "samples": 0}
    result, seen = {"samples": total}, 0
    wanted = [("p50", total * 0.50), ("p99", total * 0.99)]
    for lag in sorted(lags_ms):
        seen += lags_ms[lag]
        while wanted and seen >= wanted[0][1]:
            result[wanted.pop(0)[0]] = lag / 1000
    result["max"] = max(lags_ms) / 1000
    return result


def check_vault(server: ServerProcess, sent: dict[int, int], timeout: float = 120.0) -> Counter:
    """Each game's saved replay against the header + the body bytes its writers sent."""
    data = samples.read(REPLAY)
    header_size = parse_header(data).size
    outcome: Counter = Counter()
    deadline = time.monotonic() + timeout
    for game_id, size in sorted(sent.items()):
        path = server.replay_path(game_id)
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not path.exists():
            outcome["missing"] += 1
        elif read_fafreplay(path.read_bytes()).scfa == data[:header_size + size]:
            outcome["correct"] += 1
        else:
            outcome["wrong"] += 1
    return outcome


def served_load(workers: int, games: int, writers: int, readers: int, *, rate: float = FAF_RATE,
                interval: float = TICK, seconds: float, processes: int | None = None) -> dict:
    """One fresh server with ``workers`` under games x writers + readers (total); its figures.

    The returned dict has the generators' results (run_generators) plus ``vault`` (check_vault),
    ``connections``, ``chunks_per_s`` (asked), ``baseline_rss`` (before the load).
    """
    game_ids = list(range(FIRST_GAME, FIRST_GAME + games))
    plans = make_plans(game_ids, writers, readers, rate=rate, interval=interval,
                       seconds=seconds, delay=DELAY, processes=processes)
    with tempfile.TemporaryDirectory() as directory:
        server = BenchServer(directory, workers).start(timeout=60)
        try:
            time.sleep(2)
            baseline = sum(proc_status(pid)["VmRSS"] for pid in server.pids())
            result = run_generators(server.port, plans, server.pids())
            result["vault"] = check_vault(server, result["sent"])
        finally:
            server.kill()
    result.update(connections=games * writers + readers, chunks_per_s=games * writers / interval,
                  baseline_rss=baseline, generators=len(plans))
    return result


def print_rows(rows: list[tuple[str, dict]]) -> None:
    """One line per run: load, CPU, lag, memory, saved replays.

    RSS: the server's processes at the end of the streaming phase (KiB/conn: its growth over
    the idle server, per connection); peak: the highest RSS of the run (saving included)."""
    print(f"{'run':<18}{'conns':>7}{'chunks/s':>10}{'server cores':>16}{'cores busy':>12}"
          f"{'gen cpu':>8}{'late':>6}{'lag p50':>8}{'p99':>7}{'max':>7}{'RSS MiB':>8}"
          f"{'peak':>6}{'KiB/conn':>9}{'readers ok':>11}{'saved ok':>9}")
    for label, r in rows:
        lag = lag_percentiles(r["lags_ms"])
        per_process = "+".join(f"{c:.2f}" for c in r["steady"]["cpu"].values())
        busy = "/".join(f"{c:.0%}" for c in r["steady"]["cores"])
        streaming_rss = r["steady"]["rss"]
        per_connection = (streaming_rss - r["baseline_rss"]) / max(1, r["connections"]) / 1024
        fmt = (lambda v: "-" if v is None else f"{v:.2f}")
        print(f"{label:<18}{r['connections']:>7}{r['chunks_per_s']:>10.0f}{per_process:>16}"
              f"{busy:>12}{r['generator_cpu'] / max(r['wall'], 1e-9):>8.2f}"
              f"{r.get('late_slots', 0):>6}{fmt(lag['p50']):>8}{fmt(lag['p99']):>7}"
              f"{fmt(lag['max']):>7}{streaming_rss / 2**20:>8.0f}{r['peak_rss'] / 2**20:>6.0f}"
              f"{per_connection:>9.1f}"
              f"{r.get('readers_complete', 0):>6}/{r.get('readers_connected', 0):<5}"
              f"{r['vault']['correct']:>5}/{len(r['sent']):<5}")
        problems = {k: r[k] for k in ("writers_failed", "readers_failed", "readers_short",
                                       "readers_refused", "readers_open_at_end", "send_blocked",
                                       "send_failed")
                    if r.get(k)}
        problems.update({k: v for k, v in r["vault"].items() if k != "correct" and v})
        if problems:
            print(f"{'':18}problems: {problems}")


# --- issue 4: the server against the floor ------------------------------------------------

def floor_server() -> None:
    """A bare Twisted server that only receives bytes (prints its port)."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    class Sink(Protocol):
        def dataReceived(self, data: bytes) -> None:
            pass

    port = reactor.listenTCP(0, Factory.forProtocol(Sink), backlog=1024, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


def idle_cost(server: BenchServer, count: int) -> tuple[int, float]:
    """Connections held and server memory per idle connection (nothing sent on them)."""
    before = sum(proc_status(pid)["VmRSS"] for pid in server.pids())
    plan = {**make_plans([], 0, 0, rate=0, interval=1, seconds=4, delay=0)[0],
            "idle": count, "hold": 4, "linger": 0}
    held = run_generators(server.port, [plan], server.pids())
    return held["idle_connected"], (held["peak_rss"] - before) / max(1, held["idle_connected"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--writers", type=int, default=6, help="per game")
    parser.add_argument("--readers", type=int, default=4, help="per game")
    parser.add_argument("--rate", type=float, default=FAF_RATE, help="body B/s per writer")
    parser.add_argument("--speed", type=float, default=1.0, help="times --rate")
    parser.add_argument("--interval", type=float, default=TICK, help="s between chunks")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--profile", help="cProfile the server (steady phase) into FILE.<pid>")
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.floor:
        floor_server()
        return

    rate = args.rate * args.speed
    game_ids = list(range(FIRST_GAME, FIRST_GAME + args.games))
    plans = make_plans(game_ids, args.writers, args.readers * args.games, rate=rate,
                       interval=args.interval, seconds=args.seconds, delay=DELAY)
    chunks = args.games * args.writers / args.interval
    print(f"{args.games} games x {args.writers} writers x {args.readers} readers, {REPLAY} at "
          f"{rate:.0f} B/s per writer in one chunk per {args.interval} s ({chunks:.0f} chunks/s), "
          f"{args.seconds:.0f} s; server workers: {args.workers}, delay {DELAY:.0f} s; "
          f"{len(plans)} generator process(es) on the same {os.cpu_count()} cores")

    with tempfile.TemporaryDirectory() as directory:
        profile = args.profile and str(Path(args.profile).resolve())
        server = BenchServer(directory, args.workers, profile=profile).start()
        try:
            time.sleep(1)
            held, per_idle = idle_cost(server, args.idle)
            time.sleep(1)
            served = run_generators(server.port, plans, server.pids(), on_phase=server.profiling)
            vault = check_vault(server, served["sent"])
            if args.profile:
                server.print_profile()
        finally:
            server.kill()

    floor_process = subprocess.Popen([sys.executable, "-m", "benchmarks.load", "--floor"],
                                     stdout=subprocess.PIPE, text=True)
    try:
        floor_port = int(floor_process.stdout.readline())
        floor_plans = make_plans(game_ids, args.writers, 0, rate=rate, interval=args.interval,
                                 seconds=args.seconds, delay=DELAY, linger=0)
        floor = run_generators(floor_port, floor_plans, [floor_process.pid])
    finally:
        floor_process.kill()
        floor_process.wait()

    server_cpu, floor_cpu = sum(served["server_cpu"].values()), sum(floor["server_cpu"].values())
    server_steady = sum(served["steady"]["cpu"].values())
    floor_steady = sum(floor["steady"]["cpu"].values())
    lag = lag_percentiles(served["lags_ms"])
    print(f"{'':34}{'replay server':>14}{'floor':>10}")
    print(f"{'CPU while streaming (cores)':34}{server_steady:14.3f}{floor_steady:10.3f}")
    print(f"{'CPU, whole run incl. connect/save (s)':34}{server_cpu:14.2f}{floor_cpu:10.2f}")
    print(f"{'peak memory (MiB)':34}{served['peak_rss'] / 2**20:14.1f}"
          f"{floor['peak_rss'] / 2**20:10.1f}")
    print(f"{'generator CPU, whole run (s)':34}{served['generator_cpu']:14.2f}"
          f"{floor['generator_cpu']:10.2f}")
    print(f"{'both cores busy while streaming':34}"
          f"{' '.join(f'{c:.0%}' for c in served['steady']['cores']):>14}"
          f"{' '.join(f'{c:.0%}' for c in floor['steady']['cores']):>10}")
    print(f"{'sends blocked / slots late':34}{served.get('send_blocked', 0):>8} / "
          f"{served.get('late_slots', 0):<3}{floor.get('send_blocked', 0):>6} / "
          f"{floor.get('late_slots', 0):<3}")
    print(f"CPU ratio while streaming: {server_steady / max(floor_steady, 1e-9):.2f} x the floor "
          f"(goal: <= {CPU_GOAL}); whole run: {server_cpu / max(floor_cpu, 1e-9):.2f} x")
    print(f"writers connected {served['writers_connected']}, readers connected "
          f"{served.get('readers_connected', 0)} (complete {served.get('readers_complete', 0)}, "
          f"short {served.get('readers_short', 0)}, refused {served.get('readers_refused', 0)})")
    if lag["samples"]:
        print(f"reader lag behind the delayed edge ({DELAY:.0f} s, sampled every "
              f"{SAMPLE_INTERVAL:.0f} s): p50 {lag['p50']:.2f} s, p99 {lag['p99']:.2f} s, "
              f"max {lag['max']:.2f} s ({lag['samples']} samples)")
    print(f"saved replays: {vault['correct']} correct, {vault['wrong']} wrong, "
          f"{vault['missing']} missing of {len(served['sent'])}")
    print(f"idle connections held: {held} of {args.idle}; {per_idle / 1024:.1f} KiB each "
          f"(goal: < {IDLE_GOAL // 1024} KiB)")


if __name__ == "__main__":
    main()
