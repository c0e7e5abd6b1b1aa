"""Benchmark: CPU and memory of receiving and merging 8 writers of the largest sample replay.

Eight writers stream the decoded ``8653680.fafreplay`` (5.6 MB, 48 min) over a one-hour game
compressed to one clock second per round: each round every writer sends the bytes it is due
(with a per-writer lag of 0-3 s of jitter) in chunks of 128 B to 4 KiB, all writers' chunks
shuffled together. Six writers send the whole replay, one leaves at 70 % and one sends another
tail for its last 2 KB (a diverging writer). The merge runs through LiveReplay with a Clock
advanced one second per round (delay 300 s, sample interval 1 s), then finishes.

Printed: the CPU time (time.process_time) of that pipeline against the floor (appending the
same chunks to one bytearray per writer), and peak traced memory (tracemalloc, separate run)
against the merged replay plus one delay's worth of data per writer.
Run: ``python -m benchmarks.merge [--rounds N] [--seed S] [--repeat R]``.
"""

import argparse
import random
import time
import tracemalloc
from typing import Callable

from twisted.internet.task import Clock

from replayserver.merge.delay import Ticker
from replayserver.merge.live import LiveReplay
from replayserver.replay.container import read_fafreplay
from tests.support import samples

DELAY = 300.0
WRITERS = 8


def decoded_replay() -> bytes:
    return read_fafreplay(samples.read("8653680.fafreplay")).scfa


def writer_streams(replay: bytes) -> list[bytes]:
    streams = [replay] * (WRITERS - 2)
    streams.append(replay[: len(replay) * 7 // 10])
    streams.append(replay[:-2048] + bytes(b ^ 0x5A for b in replay[-2048:]))
    return streams


def schedule(streams: list[bytes], rounds: int, seed: int) -> list[list[tuple[int, bytes]]]:
    """Per round, the (writer, chunk) arrivals: writers interleaved at random, each in order."""
    rng = random.Random(seed)
    lags = [rng.uniform(0, 3) for _ in streams]
    sent = [0] * len(streams)
    plan = []
    for round_ in range(rounds):
        per_writer: list[list[bytes]] = []
        for writer, data in enumerate(streams):
            progress = min(1.0, max(0.0, (round_ + 1 - lags[writer]) / (rounds - 4)))
            due = int(len(data) * progress)
            chunks = []
            while sent[writer] < due:
                size = min(rng.randint(128, 4096), due - sent[writer])
                chunks.append(data[sent[writer] : sent[writer] + size])
                sent[writer] += size
            per_writer.append(chunks)
        order = [writer for writer, chunks in enumerate(per_writer) for _ in chunks]
        rng.shuffle(order)
        queues = [iter(chunks) for chunks in per_writer]
        plan.append([(writer, next(queues[writer])) for writer in order])
    return plan


def run_floor(plan: list[list[tuple[int, bytes]]]) -> list[bytearray]:
    buffers = [bytearray() for _ in range(WRITERS)]
    for arrivals in plan:
        for writer, chunk in arrivals:
            buffers[writer] += chunk
    return buffers


def run_merge(plan: list[list[tuple[int, bytes]]]) -> LiveReplay:
    clock = Clock()
    live = LiveReplay(Ticker(clock, 1.0), delay=DELAY)
    streams = [live.add_writer(f"writer{i}") for i in range(WRITERS)]
    for arrivals in plan:
        for writer, chunk in arrivals:
            streams[writer].feed(chunk)
        clock.advance(1.0)
    for stream in live.streams:
        stream.end(clean=True)
    live.finish()
    return live


def best_cpu_times(functions: list[Callable[[], object]], repeat: int) -> list[float]:
    """Best CPU time of each function over ``repeat`` alternating runs (the machine is shared:
    the minimum is the cost, alternating spreads any drift over all of them)."""
    best = [float("inf")] * len(functions)
    for _ in range(repeat):
        for index, function in enumerate(functions):
            start = time.process_time()
            function()
            best[index] = min(best[index], time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    replay = decoded_replay()
    streams = writer_streams(replay)
    plan = schedule(streams, args.rounds, args.seed)
    chunks = sum(len(arrivals) for arrivals in plan)
    total = sum(len(data) for data in streams)

    assert [bytes(b) for b in run_floor(plan)] == streams
    live = run_merge(plan)
    header_size = len(live.canonical.header_raw or b"")
    assert live.canonical.body() == replay[header_size:]
    del live
    floor_time, merge_time = best_cpu_times(
        [lambda: run_floor(plan), lambda: run_merge(plan)], args.repeat
    )

    tracemalloc.start()
    run_merge(plan)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    window = int(DELAY * len(replay) / args.rounds) * WRITERS

    print(f"{WRITERS} writers, {total / 1e6:.1f} MB in {chunks} chunks over {args.rounds} rounds")
    print(f"floor (append to bytearrays): {floor_time:.3f} s CPU (best of {args.repeat})")
    print(f"LiveReplay feed + delay + merge: {merge_time:.3f} s CPU "
          f"({merge_time / floor_time:.2f}x the floor; "
          f"{(merge_time - floor_time) / args.rounds * 1e6:.0f} us per game second above it)")
    print(f"peak traced memory: {peak / 1e6:.1f} MB; merged replay {len(replay) / 1e6:.1f} MB "
          f"+ one delay per writer {window / 1e6:.1f} MB = {(len(replay) + window) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
