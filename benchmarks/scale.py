"""FAF's peak x10 on ``workers: 2`` (issue 8), and one saturating load on 1 and on 2 workers.

``python -m benchmarks.scale [--games G --writers W --readers R --seconds S --generators N
--workers K --saturating G W R --skip-peak --skip-compare]`` first runs G games x W writers
and R readers in all (default 2,500 x 6 + 5,000 = 20,000 connections, FAF's peak x10) against
a ``workers: K`` server (default 2), the load generators split by game over N processes (each
may hold at most RLIMIT_NOFILE connections; the server's main process holds each connection
until its header is read, each worker its own). Every writer sends 7 bytes per 0.1 s tick
(70 B/s). Then it runs one load that saturates one process (``--saturating``, default 750 x 8
+ 900 readers: 3x FAF's peak, see benchmarks.peak) on 1 and on 2 workers. Printed as in
benchmarks.peak: CPU per server process and per core, reader lag behind the delayed edge,
memory per connection, saved replays checked against what was sent; and the 2-worker /
1-worker ratios. All on one machine: the generators compete with the server for its cores.
"""
from __future__ import annotations

import argparse

from benchmarks._client import raise_fd_limit
from benchmarks.load import lag_percentiles, print_rows, served_load


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=2500)
    parser.add_argument("--writers", type=int, default=6, help="per game")
    parser.add_argument("--readers", type=int, default=5000, help="in all")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--generators", type=int, default=4, help="load generator processes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--saturating", type=int, nargs=3, default=[750, 8, 900],
                        metavar=("GAMES", "WRITERS", "READERS"))
    parser.add_argument("--skip-peak", action="store_true", help="only the 1 / 2 workers runs")
    parser.add_argument("--skip-compare", action="store_true", help="only the x10 run")
    args = parser.parse_args(argv)
    raise_fd_limit()
    rows = []
    if not args.skip_peak:
        print(f"-- {args.games} games x {args.writers} writers + {args.readers} readers on "
              f"{args.workers} workers, {args.seconds:.0f} s, {args.generators} generators",
              flush=True)
        row = served_load(args.workers, args.games, args.writers, args.readers,
                          seconds=args.seconds, processes=args.generators)
        rows.append((f"x10 peak, {args.workers} wk", row))
        print_rows(rows[-1:])
    if not args.skip_compare:
        games, writers, readers = args.saturating
        compared = []
        for workers in (1, 2):
            print(f"-- saturating load {games} x {writers} + {readers} on {workers} worker(s)",
                  flush=True)
            row = served_load(workers, games, writers, readers, seconds=args.seconds,
                              processes=args.generators // 2 or 1)
            compared.append(row)
            rows.append((f"saturating, {workers} wk", row))
            print_rows(rows[-1:])
        one, two = compared
        cores = [sum(r["steady"]["cpu"].values()) for r in compared]
        lags = [lag_percentiles(r["lags_ms"]) for r in compared]
        print(f"2 workers / 1 worker: server CPU {cores[1] / max(cores[0], 1e-9):.2f} x; reader "
              f"lag p99 {lags[0]['p99']} s -> {lags[1]['p99']} s; late generator slots "
              f"{one.get('late_slots', 0)} -> {two.get('late_slots', 0)}")
    print("== summary (server cores: per process, main first, over the steady phase; cores "
          "busy: the whole machine, load generators included)")
    print_rows(rows)


if __name__ == "__main__":
    main()
