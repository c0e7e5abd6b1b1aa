"""Load benchmark: the real server under G games x W writers x R readers, next to a floor.

``python -m benchmarks.load [--games G --writers W --readers R --speed N --seconds S
--idle C]`` starts ``twistd -n replayserver`` (tests/support/server.py) and a load generator
in its own process. Every writer streams a real replay at N times its real rate; readers
measure their lag behind the writers (beyond the configured delay). The same writer traffic
then goes to a bare Twisted server that only receives bytes: the floor. Last, C idle
connections are opened to the replay server to measure the memory each one costs.
Printed: CPU seconds, peak memory (VmHWM), reader lag, memory per idle connection.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from replayserver.replay.body import scan_body
from replayserver.replay.header import parse_header
from tests.support import samples
from tests.support.server import ServerProcess

DELAY = 2.0
REPLAY = "8468507.scfareplay"
SEND_INTERVAL = 0.1
#: Goals of the issue.
CPU_GOAL = 1.5
IDLE_GOAL = 64 * 1024


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the load generator (runs in its own process) ----------------------------------------

def generate(port: int, plan: dict) -> dict:
    """Stream the plan's games to 127.0.0.1:port with Twisted; return the measurements."""
    from twisted.internet import reactor, task
    from twisted.internet.protocol import ClientFactory, Protocol

    data = samples.read(plan["replay"])
    header_size = parse_header(data).size
    body = data[header_size:]
    rate = plan["rate"]
    lags: list[float] = []
    counts = {"connected": 0, "failed": 0, "reader_bytes": 0}
    start = reactor.seconds()
    stop_at = start + plan["seconds"]

    class Writer(Protocol):
        def __init__(self, game_id: int, index: int) -> None:
            self.game_id, self.index, self.sent = game_id, index, 0

        def connectionMade(self) -> None:
            counts["connected"] += 1
            self.transport.write(f"P/{self.game_id}/w{self.index}".encode() + b"\0")
            self.transport.write(data[:header_size])
            self.loop = task.LoopingCall(self.send)
            self.loop.start(SEND_INTERVAL)

        def send(self) -> None:
            now = reactor.seconds()
            target = min(len(body), int((now - start) * rate))
            if target > self.sent:
                self.transport.write(body[self.sent:target])
                self.sent = target
            if now >= stop_at:
                self.loop.stop()
                self.transport.loseConnection()

    class Reader(Protocol):
        def __init__(self, game_id: int) -> None:
            self.game_id, self.received = game_id, 0

        def connectionMade(self) -> None:
            counts["connected"] += 1
            self.transport.write(f"G/{self.game_id}/r".encode() + b"\0")

        def dataReceived(self, chunk: bytes) -> None:
            self.received += len(chunk)
            counts["reader_bytes"] += len(chunk)
            now = reactor.seconds()
            position = self.received - header_size
            if position > 0 and now < stop_at:
                lags.append(now - (start + position / rate) - plan["delay"])

    class Idle(Protocol):
        def connectionMade(self) -> None:
            counts["connected"] += 1

    class Factory(ClientFactory):
        def __init__(self, build) -> None:
            self.build = build

        def buildProtocol(self, addr):
            return self.build()

        def clientConnectionFailed(self, connector, reason) -> None:
            counts["failed"] += 1

    def connect(build) -> None:
        reactor.connectTCP("127.0.0.1", port, Factory(build), timeout=30)

    for game in range(plan["games"]):
        game_id = 900000 + game
        for index in range(plan["writers"]):
            connect(lambda g=game_id, i=index: Writer(g, i))
        for _ in range(plan["readers"]):
            reactor.callLater(1.0, connect, lambda g=game_id: Reader(g))
    for _ in range(plan["idle"]):
        connect(Idle)
    reactor.callLater(plan["seconds"] + plan["linger"], reactor.stop)
    reactor.run()
    lags.sort()
    return {
        **counts,
        "lag_median": statistics.median(lags) if lags else None,
        "lag_p99": lags[int(len(lags) * 0.99)] if lags else None,
        "lag_max": lags[-1] if lags else None,
    }


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


# --- the driver ------------------------------------------------------------------------

def measure(pid: int, port: int, plan: dict) -> dict:
    """Run the generator against a server process; its CPU time and memory meanwhile."""
    command = [sys.executable, "-m", "benchmarks.load", "--generate", str(port), json.dumps(plan)]
    before = cpu_seconds(pid)
    peak_rss = 0
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as generator:
        while generator.poll() is None:
            peak_rss = max(peak_rss, proc_status(pid)["VmRSS"])
            time.sleep(0.2)
        output = generator.stdout.read()
    if generator.returncode:
        raise RuntimeError(f"the load generator failed ({generator.returncode})")
    results = json.loads(output.splitlines()[-1])
    results["cpu"] = cpu_seconds(pid) - before
    results["peak_rss"] = peak_rss
    results.update(proc_status(pid))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--writers", type=int, default=6)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--speed", type=float, default=1.0, help="times the real stream rate")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--generate", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.generate:
        print(json.dumps(generate(int(args.generate[0]), json.loads(args.generate[1]))))
        return
    if args.floor:
        floor_server()
        return

    data = samples.read(REPLAY)
    body = data[parse_header(data).size:]
    real_rate = len(body) / (scan_body(body).ticks / 10)
    plan = {"replay": REPLAY, "rate": real_rate * args.speed, "games": args.games,
            "writers": args.writers, "readers": args.readers, "seconds": args.seconds,
            "linger": 0.5, "delay": DELAY, "idle": 0}
    print(f"{args.games} games x {args.writers} writers x {args.readers} readers, "
          f"{REPLAY} at {args.speed} x its real rate ({real_rate:.0f} B/s per writer), "
          f"{args.seconds:.0f} s")

    with tempfile.TemporaryDirectory() as directory:
        server = ServerProcess(directory, {"replay": {"delay": DELAY, "sample_interval": 1,
                                                      "grace_period": 1}}).start()
        try:
            time.sleep(1)
            idle_before = proc_status(server.process.pid)["VmRSS"]
            idle = measure(server.process.pid, server.port,
                           {**plan, "games": 0, "idle": args.idle, "seconds": 3, "linger": 2})
            idle_cost = (idle["peak_rss"] - idle_before) / max(1, idle["connected"])
            served = measure(server.process.pid, server.port, plan)
        finally:
            server.kill()

    floor_process = subprocess.Popen([sys.executable, "-m", "benchmarks.load", "--floor"],
                                     stdout=subprocess.PIPE, text=True)
    try:
        floor_port = int(floor_process.stdout.readline())
        floor = measure(floor_process.pid, floor_port, {**plan, "readers": 0})
    finally:
        floor_process.kill()
        floor_process.wait()

    ratio = served["cpu"] / floor["cpu"] if floor["cpu"] else float("inf")
    print(f"replay server: CPU {served['cpu']:.2f} s, peak memory "
          f"{served['peak_rss'] / 2**20:.1f} MiB, {served['connected']} connections "
          f"({served['failed']} failed), readers got {served['reader_bytes']} bytes")
    if served["lag_median"] is not None:
        print(f"reader lag beyond the {DELAY:.0f} s delay: median {served['lag_median']:.2f} s, "
              f"p99 {served['lag_p99']:.2f} s, max {served['lag_max']:.2f} s")
    print(f"floor (bare receiving server, writers only): CPU {floor['cpu']:.2f} s, "
          f"peak memory {floor['peak_rss'] / 2**20:.1f} MiB")
    print(f"CPU ratio: {ratio:.2f} x the floor (goal: <= {CPU_GOAL})")
    print(f"idle connections held: {idle['connected']} of {args.idle} "
          f"({idle['failed']} failed); {idle_cost / 1024:.1f} KiB each "
          f"(goal: < {IDLE_GOAL // 1024} KiB); server peak memory (VmHWM) over the whole run "
          f"{served['VmHWM'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
