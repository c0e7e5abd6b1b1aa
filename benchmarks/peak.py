"""FAF's peak on one server process (issue 7): 1x, 3x and 5x, and where one process saturates.

``python -m benchmarks.peak [--multiples 1 3 5 --seconds S --games G --writers W --readers R]``
runs, for each multiple k, a fresh ``workers: 1`` server (short delays: benchmarks.load) under
k x FAF's peak: G games x W writers (default 250 x 8 = 2,000 writers) and R readers (default
300) in all, every writer at 70 B/s in one 7-byte chunk per 0.1 s tick (benchmarks._client).
Printed per run: the server's CPU (cores, over the steady streaming phase) and how busy both
cores were (the load generators share them), the generators' CPU and late send slots, reader
lag behind the delayed edge (p50 / p99 / max), peak memory and memory per connection, readers
that got the whole replay, and saved replays identical to what the writers sent.
"""
from __future__ import annotations

import argparse

from benchmarks._client import raise_fd_limit
from benchmarks.load import print_rows, served_load


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multiples", type=float, nargs="+", default=[1, 3, 5])
    parser.add_argument("--games", type=int, default=250, help="at 1x")
    parser.add_argument("--writers", type=int, default=8, help="per game")
    parser.add_argument("--readers", type=int, default=300, help="in all, at 1x")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    raise_fd_limit()
    rows = []
    for multiple in args.multiples:
        games, readers = round(args.games * multiple), round(args.readers * multiple)
        print(f"-- {multiple:g}x: {games} games x {args.writers} writers + {readers} readers, "
              f"{args.seconds:.0f} s, workers: {args.workers}", flush=True)
        row = served_load(args.workers, games, args.writers, readers, seconds=args.seconds)
        rows.append((f"{multiple:g}x peak", row))
        print_rows(rows[-1:])
    print("== summary (server cores: per process over the steady phase; cores busy: the whole "
          "machine, load generators included)")
    print_rows(rows)


if __name__ == "__main__":
    main()
