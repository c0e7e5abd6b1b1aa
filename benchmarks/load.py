"""Load benchmark (issue 12): this server beside a bare Twisted server, on the same traffic.

``python -m benchmarks.load [SCENARIO ...] [--workers N --read-interval S --bare-beat S
--seconds S --games G --writers W --readers R --idle N --tick S --replay NAME --generators N
--only bare|this --http --logs DIR --profile FILE]`` (``--help`` says what each does)

For each scenario, one after the other on the same machine: the bare Twisted server that only
reads every packet (benchmarks/bare.py; with ``--bare-beat S`` also its variant that reads
each connection once per S s), then this server (``twistd -n --pidfile= replayserver
--config FILE``: etc/replayserver.yaml with only these changes: the listener on a free port
of 127.0.0.1, vault and spool in a temporary directory, ``replay.delay`` and ``replay.grace_period`` shortened so that readers finish
within the run, ``limits.connections_per_peer`` off since every connection comes from
127.0.0.1; ``server.workers`` and ``server.read_interval`` overridden only when given; for
``peak3`` and ``peak10``, or with ``--http``, also ``http_listen`` on 127.0.0.1, so that the
stall gauge of /metrics can be read). The default configuration has no HTTP listener, and
without one the server keeps no metrics: the writers running in it are counted from the spool
files its processes hold open. The same load runs against each, from the C load generator (benchmarks/loadgen.c, built on first
use).

Scenarios (default: the first three, about three minutes; ``peak3`` and ``peak10`` on demand):

- ``writers900``: 900 writers (150 games x 6) at FAF pacing, no readers. Goals: server CPU
  <= 0.5x the bare server's, PSS <= 1.5x.
- ``mixed2000``: 1,600 writers (200 games x 8) + 400 readers. Goal: PSS <= 60 MB; reader lag.
- ``idle2000``: 2,000 writers (250 games x 8) that send their header and then nothing. Goal:
  <= 16 KiB PSS per connection above the idle server.
- ``peak3``: FAF's peak x3: 750 games x 8 writers + 900 readers. Goals: every connection
  held, every replay saved byte-exact, every reader complete, reader lag p99 < 1 s.
- ``peak10``: FAF's peak x10 in 20,000 connections (the default ``limits.connections``):
  2,250 games x 8 writers (180,000 writes/s) + 2,000 readers. Goals: every connection held,
  every replay saved byte-exact, every reader complete, reader lag p99 < 2 s, server CPU
  <= 1 core. No bare server: it is one process, and one process may hold at most
  RLIMIT_NOFILE files.

FAF pacing: every writer sends a real replay's body at 70 B/s, one 7-byte write per 0.1 s
tick, writers spread over ten send slots per tick (a slot the generators reach more than a
tick late is skipped: its writers send what is due at their next slot, in one write).

Printed per server: CPU seconds of all its processes (user + system, workers and children
included) over the streaming phase (from 3 s after the start until the writers stop) and
over the whole run (connecting, streaming, saving); cores (CPU seconds / window); the
generators' own CPU over the same window; how busy each core was, its softirq time (the
kernel's packet work, charged to whichever process was running: on loopback often the
sender) and steal time (this is a VM); the busy time outside the server and the generators
(other processes, kernel threads, softirq while idle: a large figure means the run competed
with something else for the cores); PSS of all the server's processes idle, with every
connection made (``SETTLE`` s after they all run), and while streaming; how long the writers took to run in the server (from
the first connect until the server counts them all: accept, header, hand-off to a worker);
connections held / refused; readers complete; reader
lag behind the delayed edge while the writers stream (arrival - (when the chunk's last byte
was due at the writers + delay)); saved replays identical to what the writers sent; the
longest reactor stall from /metrics (``replayserver_reactor_stall_seconds``; n/a without the
HTTP listener).
Then a warning for each run the machine bounded (every core >= 90% busy, or slots skipped),
and the goals.
"""
from __future__ import annotations

import argparse
import glob
import os
import pstats
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import yaml

from benchmarks._loadgen import Generators, Load
from benchmarks._proc import (core_times, core_usage, cpu_seconds, open_files, process_tree,
                              pss_bytes, raise_file_limit)
from replayserver.replay.container import read_fafreplay
from tests.support.server import REPO_ROOT, ServerProcess

#: Benchmark server settings: short delays so that a run takes seconds, not minutes.
DELAY = 5.0
GRACE = 2.0
#: The streaming phase is measured from this long after the start (readers connect, bursts).
WARMUP = 3.0
#: PSS with every connection made is read this long after they all run: after the spool wrote
#: out their first bytes and the heap trim (replayserver.memory) gave the burst's holes back.
SETTLE = 6.0
#: Most files one process may hold here.
FILE_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
MB = 1e6


# --- the scenarios and their goals --------------------------------------------------------

Goal = tuple[str, str, bool]  # what, the figure, met


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def cpu_and_memory_of_bare(load: Load, this: dict, bare: dict | None) -> list[Goal]:
    if bare is None:
        return []
    cpu, pss = this["cpu"] / bare["cpu"], this["pss_load"] / bare["pss_load"]
    return [("server CPU <= 0.5x bare", f"{cpu:.2f}x", cpu <= 0.5),
            ("PSS <= 1.5x bare", f"{pss:.2f}x", pss <= 1.5)]


def total_memory(load: Load, this: dict, bare: dict | None) -> list[Goal]:
    return [("PSS <= 60 MB", f"{this['pss_load'] / MB:.1f} MB", this["pss_load"] <= 60 * MB)]


def memory_per_connection(load: Load, this: dict, bare: dict | None) -> list[Goal]:
    each = (this["pss_held"] - this["pss_idle"]) / load.connections / 1024
    return [("<= 16 KiB per connection above idle", f"{each:.1f} KiB", each <= 16)]


def everything_served(load: Load, this: dict, lag: float) -> list[Goal]:
    result, vault = this["load"], this["vault"]
    return [
        ("every connection held", f"{result['held']}/{load.connections}",
         result["held"] == load.connections and not result["refused"]),
        ("every replay saved byte-exact", f"{vault['correct']}/{load.games}",
         vault["correct"] == load.games),
        ("every reader complete", f"{result['readers_complete']}/{load.readers}",
         result["readers_complete"] == load.readers),
        (f"reader lag p99 < {lag:g} s", f"{_number(result['lag_p99'])} s",
         result["lag_p99"] is not None and result["lag_p99"] < lag),
    ]


def peak3(load: Load, this: dict, bare: dict | None) -> list[Goal]:
    return everything_served(load, this, lag=1)


def peak10(load: Load, this: dict, bare: dict | None) -> list[Goal]:
    cores = this["cpu"] / this["window"]
    return everything_served(load, this, lag=2) + [
        ("server CPU <= 1 core", f"{cores:.2f} cores", cores <= 1)]


@dataclass(frozen=True)
class Scenario:
    name: str
    load: Load
    goals: Callable[[Load, dict, dict | None], list[Goal]]
    delay: float = DELAY
    #: This server with its HTTP listener (for the stall gauge), not in the default
    #: configuration (which has none): for the scenarios without a memory goal.
    http: bool = False


SCENARIOS = {scenario.name: scenario for scenario in [
    Scenario("writers900", Load(games=150, writers=6), cpu_and_memory_of_bare),
    Scenario("mixed2000", Load(games=200, writers=8, readers=400), total_memory),
    Scenario("idle2000", Load(games=250, writers=8, seconds=0), memory_per_connection),
    Scenario("peak3", Load(games=750, writers=8, readers=900, seconds=60, reader_after=2),
             peak3, delay=10.0, http=True),
    Scenario("peak10", Load(games=2250, writers=8, readers=2000, seconds=60, reader_after=2),
             peak10, delay=10.0, http=True),
]}
DEFAULT = ("writers900", "mixed2000", "idle2000")


# --- the servers ------------------------------------------------------------------------

class BareServer:
    """benchmarks.bare in its own process."""

    def __init__(self, beat: float | None = None) -> None:
        self.label = f"bare, beat {beat:g} s" if beat else "bare"
        self.beat = beat
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        beat = ["--beat", str(self.beat)] if self.beat else []
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.bare", *beat],
                                        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        self.port = int(self.process.stdout.readline())

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def wait_connections(self, load: Load) -> tuple[int, float] | None:
        time.sleep(2)
        return None

    def stall(self) -> float | str:
        return "n/a"

    def profiling(self, phase: str) -> None:
        pass

    def check_vault(self, load: Load, games: list) -> dict | None:
        return None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class ReplayServer:
    """``twistd -n replayserver`` with the benchmark's configuration (see the module doc)."""

    label = "this server"
    HTTP = re.compile(r"HTTP listener on IPv4Address\(.*port=(\d+)\)")

    def __init__(self, delay: float, workers: int | None, read_interval: float | None,
                 profile: str | None, log: Path | None = None, http: bool = False) -> None:
        self.directory = tempfile.TemporaryDirectory(prefix="replayserver-bench-")
        folder = Path(self.directory.name)
        defaults = yaml.safe_load((REPO_ROOT / "etc" / "replayserver.yaml").read_text())
        settings = {name: dict(values) for name, values in defaults.items() if values}
        settings["server"]["listen"] = "tcp:0:backlog=1024:interface=127.0.0.1"
        if http:
            settings["server"]["http_listen"] = "tcp:0:interface=127.0.0.1"
        self.http = http
        if workers is not None:
            settings["server"]["workers"] = workers
        if read_interval is not None:
            settings["server"]["read_interval"] = read_interval
        settings["replay"].update(delay=delay, grace_period=GRACE)
        settings["storage"].update(vault=str(folder / "replays"), spool=str(folder / "spool"))
        settings["limits"]["connections_per_peer"] = None
        environment = {}
        if profile:
            for stale in glob.glob(f"{profile}.*"):
                os.remove(stale)
            environment = {"PYTHONPATH": str(Path(__file__).with_name("_profile_hook")),
                           "REPLAYSERVER_BENCH_PROFILE": profile}
        self.server = ServerProcess(folder, settings, environment=environment)
        self.profile = profile
        self.keep_log = log
        self.http_port = 0

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        self.server.start(timeout=60)
        if not self.http:
            return
        deadline = time.monotonic() + 30
        while not (match := self.HTTP.search(self.server.log())):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no HTTP listener in the log:\n{self.server.log()}")
            time.sleep(0.1)
        self.http_port = int(match.group(1))

    def pids(self) -> list[int]:
        return process_tree(self.server.process.pid)

    def metrics(self, name: str) -> list[tuple[str, float]] | None:
        """The samples (labels text, value) of one metric on /metrics; None if /metrics does
        not answer within 10 s."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
        except OSError:
            return None
        pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
        return [(labels or "", float(value)) for labels, value in pattern.findall(text)]

    def writers(self) -> int:
        """The writers running in the server: from /metrics with the HTTP listener, else the
        spool files its processes hold open (one per writer, opened once it joined its game)."""
        if self.http:
            samples = self.metrics("replayserver_active_connections_count") or []
            return round(sum(value for labels, value in samples
                             if 'category="writer"' in labels))
        return open_files(self.pids(), ".stream")

    def wait_connections(self, load: Load) -> tuple[int, float] | None:
        """Until every writer runs in the server (a while at most), then 1 s more; how many
        writers the server counted, and when (time.monotonic())."""
        deadline = time.monotonic() + 30 + load.connections / 200
        while True:
            writers = self.writers()
            seen = time.monotonic()
            if writers >= load.games * load.writers or seen > deadline:
                break
            time.sleep(0.2)
        time.sleep(1)
        return writers, seen

    def stall(self) -> float | str:
        """The longest reactor stall (the largest sample), "n/a" or "no answer"."""
        if not self.http:
            return "n/a"
        samples = self.metrics("replayserver_reactor_stall_seconds")
        if samples is None:
            return "no answer"
        return max(value for _, value in samples) if samples else "n/a"

    def profiling(self, phase: str) -> None:
        """Start (phase "start") or stop and write ("stop") the profile of every process."""
        if self.profile:
            for pid in self.pids():
                os.kill(pid, signal.SIGUSR1 if phase == "start" else signal.SIGUSR2)

    def check_vault(self, load: Load, games: list, timeout: float = 120.0) -> dict:
        """Every game's saved replay against the header + the body its writers sent."""
        header, body = load.replay_parts()
        # uneven: the writers of a game sent different lengths (one was cut off)
        outcome = {"correct": 0, "wrong": 0, "missing": 0, "uneven": 0}
        deadline = time.monotonic() + timeout
        for game_id, body_min, body_max in games:
            outcome["uneven"] += body_min != body_max
            path = self.server.replay_path(game_id)
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not path.exists():
                outcome["missing"] += 1
            elif read_fafreplay(path.read_bytes()).scfa == header + body[:body_max]:
                outcome["correct"] += 1
            else:
                outcome["wrong"] += 1
        return outcome

    def stop(self) -> None:
        self.server.kill()
        if self.keep_log:
            shutil.copyfile(self.server.log_path, self.keep_log)
        if self.profile:
            paths = glob.glob(f"{self.profile}.*")
            if paths:
                print(f"-- profile of {self.label}, streaming phase, all processes:")
                pstats.Stats(*paths).sort_stats("tottime").print_stats(30)
        self.directory.cleanup()


# --- one run ----------------------------------------------------------------------------

def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def measure(server: BareServer | ReplayServer, scenario: Scenario, generators: int | None
            ) -> dict:
    """Start the server, run the scenario's load against it, stop it; the figures."""
    load = scenario.load
    # this server's readers end after the delay and the grace period; the bare one's never
    end_after = (scenario.delay + GRACE + 30 + load.connections / 1000
                 if isinstance(server, ReplayServer) else 1.0)
    server.start()
    try:
        time.sleep(2)
        pids = server.pids()
        figures: dict = {"pss_idle": pss_bytes(pids)}
        cpu_at_start = cpu_seconds(pids)
        connecting = time.monotonic()
        load_generators = Generators(load, server.port, delay=scenario.delay,
                                     end_after=end_after, processes=generators)
        try:
            figures["connected"] = load_generators.connected()
            running = server.wait_connections(load)
            figures["writers_in"] = running and (running[0], running[1] - connecting)
            time.sleep(SETTLE)
            figures["pss_held"] = pss_bytes(pids)
            start = time.monotonic() + 0.5
            load_generators.start(start)
            if load.seconds > WARMUP + 1:
                sleep_until(start + WARMUP)
                before = (time.monotonic(), [cpu_seconds([pid]) for pid in pids],
                          cpu_seconds(load_generators.pids), core_times())
                server.profiling("start")
                sleep_until(start + load.seconds - 0.3)
                window = time.monotonic() - before[0]
                each = [cpu_seconds([pid]) - cpu if Path(f"/proc/{pid}").exists() else None
                        for pid, cpu in zip(pids, before[1])]
                figures.update(
                    window=window, cpu=sum(cpu for cpu in each if cpu is not None),
                    cpu_each=each,
                    generator_cpu=cpu_seconds(load_generators.pids) - before[2],
                    cores=core_usage(before[3], core_times()))
                figures["other_cpu"] = (sum(figures["cores"]["busy"]) * window - figures["cpu"]
                                        - figures["generator_cpu"])
                server.profiling("stop")
                figures["pss_load"] = pss_bytes(pids)
                figures["stall_load"] = server.stall()
            figures["load"] = load_generators.results()
        finally:
            load_generators.stop()
        figures["vault"] = (server.check_vault(load, figures["load"]["games"])
                            if load.seconds else None)
        figures["cpu_run"] = cpu_seconds(pids) - cpu_at_start
        figures["stall_end"] = server.stall()
        figures["processes"] = len(pids)
    finally:
        server.stop()
    return figures


# --- printing ---------------------------------------------------------------------------

def _ratio(this: float | None, base: float | None) -> str:
    return "" if not this or not base else f"{this / base:.2f}x"


def print_table(scenario: Scenario, runs: list[tuple[str, dict]]) -> None:
    """One row per figure, one column per server, and the ratio of the last column to the
    first (this server / bare) where there are two."""
    columns = [label for label, _ in runs]
    this = runs[-1][1]
    bare = runs[0][1] if len(runs) > 1 else None
    width = max(22, *(len(c) + 2 for c in columns))
    print(f"{'':38}" + "".join(f"{c:>{width}}" for c in columns) + f"{'ratio':>11}")

    def row(name: str, value, digits: int = 2, ratio: bool = False) -> None:
        cells = [value(f) for _, f in runs]
        text = [c if isinstance(c, str) else _number(c, digits) for c in cells]
        end = _ratio(value(this), value(bare)) if ratio and bare is not None else ""
        print(f"{name:38}" + "".join(f"{t:>{width}}" for t in text) + f"{end:>11}")

    load = scenario.load
    if load.seconds > WARMUP + 1:
        row("server CPU, streaming (s)", lambda f: f["cpu"], ratio=True)
        row("server cores, streaming", lambda f: f["cpu"] / f["window"], 3)
        row("  per process (main first)", lambda f: "+".join(
            "died" if cpu is None else f"{cpu / f['window']:.2f}" for cpu in f["cpu_each"]))
        row("generator CPU, streaming (s)", lambda f: f["generator_cpu"])
        row("cores busy, streaming", lambda f: "/".join(f"{c:.0%}" for c in f["cores"]["busy"]))
        row("  softirq / steal (core-s)", lambda f: "/".join(
            f"{sum(f['cores'][k]) * f['window']:.2f}" for k in ("softirq", "steal")))
        row("  busy outside server+generators (s)", lambda f: f["other_cpu"])
    row("server CPU, whole run (s)", lambda f: f["cpu_run"], ratio=True)
    row("generator CPU, whole run (s)", lambda f: f["load"]["cpu"])
    row("server processes", lambda f: str(f["processes"]))
    row("PSS idle (MB)", lambda f: f["pss_idle"] / MB, 1, ratio=True)
    row("PSS connected, before start (MB)", lambda f: f["pss_held"] / MB, 1, ratio=True)
    row("  per connection above idle (KiB)",
        lambda f: (f["pss_held"] - f["pss_idle"]) / load.connections / 1024, 1, ratio=True)
    if load.seconds > WARMUP + 1:
        row("PSS streaming (MB)", lambda f: f["pss_load"] / MB, 1, ratio=True)
    row("connect phase (s)", lambda f: f["load"]["connect_seconds"])
    row("writers running / after (s)", lambda f: "-" if f["writers_in"] is None else
        f"{f['writers_in'][0]}/{load.games * load.writers} / {f['writers_in'][1]:.1f}")
    row("connections held / refused",
        lambda f: f"{f['load']['held']}/{f['load']['refused']}")
    row("writers closed by the server early", lambda f: str(f["load"]["writers_dropped"]))
    row("generator: skipped slots/late/blocked", lambda f: "{}/{:.2f}/{}".format(
        f["load"]["skipped_slots"], f["load"]["max_slot_late"], f["load"]["send_blocked"]))
    if load.readers:
        row("readers complete", lambda f: f"{f['load']['readers_complete']}/{load.readers}")
        row("readers short / mismatch / open",
            lambda f: "{readers_short}/{readers_mismatch}/{readers_open}".format(**f["load"]))
        row("reader lag min/p50/p99/max (s)", lambda f: "/".join(
            _number(f["load"][k]) for k in ("lag_min", "lag_p50", "lag_p99", "lag_max"))
            if f["load"]["lag_samples"] else "-")
    if load.seconds:
        row("saved byte-exact", lambda f: "-" if f["vault"] is None else
            f"{f['vault']['correct']}/{load.games}" + "".join(
                f", {f['vault'][k]} {k}" for k in ("wrong", "missing", "uneven")
                if f["vault"][k]))
    row("reactor stall, streaming / end (s)", lambda f: " / ".join(
        v if isinstance(v, str) else f"{v:.3f}" for v in (f.get("stall_load", "-"),
                                                           f["stall_end"])))


def print_warnings(runs: list[tuple[str, dict]]) -> None:
    """Runs whose figures are incomplete (processes died) or bounded by the machine (cores
    saturated, generators behind)."""
    for label, f in runs:
        if None in f.get("cpu_each", ()):
            print(f"warning ({label}): server processes died while streaming: its CPU figures "
                  f"leave them (and their replacements) out")
        skipped = f["load"]["skipped_slots"]
        if "cores" in f and min(f["cores"]["busy"]) >= 0.9:
            print(f"warning ({label}): every core was >= 90% busy while streaming: the server "
                  f"competed with the generators and the kernel for CPU")
        if skipped:
            print(f"warning ({label}): the generators fell a tick behind and skipped {skipped} "
                  f"send slots (those writers sent more bytes per write, later; lag includes "
                  f"that)")


def print_goals(scenario: Scenario, this: dict, bare: dict | None) -> None:
    for text, value, ok in scenario.goals(scenario.load, this, bare):
        print(f"goal: {text}: {value} {'PASS' if ok else 'FAIL'}")


def describe(scenario: Scenario, args: argparse.Namespace) -> str:
    load = scenario.load
    parts = [f"{load.games} games x {load.writers} writers"]
    if load.readers:
        parts.append(f"{load.readers} readers")
    if load.idle:
        parts.append(f"{load.idle} idle")
    traffic = (f"{load.replay} body at {load.rate:g} B/s, one write per {load.tick:g} s, "
               f"{load.seconds:g} s" if load.seconds else "header only, then nothing")
    workers = "default" if args.workers is None else args.workers
    beat = "" if args.read_interval is None else f", read_interval {args.read_interval:g} s"
    return (f"== {scenario.name}: {' + '.join(parts)} ({load.connections:,} connections); "
            f"{traffic}; this server: workers {workers}{beat}, delay {scenario.delay:g} s, "
            f"grace {GRACE:g} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default: {' '.join(DEFAULT)})")
    parser.add_argument("--seconds", type=float, help="streaming time (scenario's default)")
    parser.add_argument("--games", type=int, help="games (scenario's default)")
    parser.add_argument("--writers", type=int, help="writers per game (scenario's default)")
    parser.add_argument("--readers", type=int, help="readers in all (scenario's default)")
    parser.add_argument("--idle", type=int, help="connections that send nothing (default 0)")
    parser.add_argument("--tick", type=float,
                        help="s between a writer's writes (default 0.1, FA's tick)")
    parser.add_argument("--workers", type=int, help="server.workers (default: the server's)")
    parser.add_argument("--read-interval", type=float, help="server.read_interval")
    parser.add_argument("--bare-beat", type=float, metavar="S",
                        help="also run the bare server reading each connection every S s")
    parser.add_argument("--replay", help="the sample replay whose bytes the writers send")
    parser.add_argument("--generators", type=int, help="load generator processes")
    parser.add_argument("--only", choices=("bare", "this"), help="run one server only")
    parser.add_argument("--http", action="store_true",
                        help="this server with its HTTP listener in every scenario")
    parser.add_argument("--profile", metavar="FILE",
                        help="cProfile this server over the streaming phase (FILE.<pid>)")
    parser.add_argument("--logs", metavar="DIR", type=Path,
                        help="keep this server's log of each scenario in DIR")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    raise_file_limit()
    for name in args.scenarios or DEFAULT:
        scenario = SCENARIOS[name]
        changes = {key: getattr(args, key)
                   for key in ("games", "writers", "readers", "idle", "tick", "replay")
                   if getattr(args, key) is not None}
        if args.seconds is not None and scenario.load.seconds:
            changes["seconds"] = args.seconds
        scenario = replace(scenario, load=replace(scenario.load, **changes))
        print(describe(scenario, args), flush=True)
        servers: list = []
        if args.only != "this" and scenario.load.connections + 100 > FILE_LIMIT:
            print(f"(no bare server: one process holds at most {FILE_LIMIT:,} files)")
        elif args.only != "this":
            servers.append(BareServer())
            if args.bare_beat:
                servers.append(BareServer(args.bare_beat))
        if args.only != "bare":
            profile = args.profile and str(Path(args.profile).resolve())
            log = args.logs and args.logs / f"{scenario.name}.log"
            servers.append(ReplayServer(scenario.delay, args.workers, args.read_interval,
                                        profile, log, http=scenario.http or args.http))
        runs = []
        for server in servers:
            runs.append((server.label, measure(server, scenario, args.generators)))
        print_table(scenario, runs)
        print_warnings(runs)
        if args.only != "bare":
            bare = runs[0][1] if len(runs) > 1 else None
            print_goals(scenario, runs[-1][1], bare)
        print(flush=True)


if __name__ == "__main__":
    main()
