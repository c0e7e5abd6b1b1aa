"""The six real writer streams of REFERENCE §5's golden case, in many chunkings and orders."""

import os
import random

import fafreplay
from twisted.trial.unittest import SynchronousTestCase

from tests.support import samples
from tests.test_merge_helpers import DrivenGame

STREAMS = [samples.read(name) for name in samples.DIVERGING]
HEADER_SIZES = [fafreplay.body_offset(data) for data in STREAMS]
BODIES = [data[size:] for data, size in zip(STREAMS, HEADER_SIZES)]


def play(seed: int) -> tuple[DrivenGame, bytes, list[int]]:
    """Feed the six streams as six writers in a random arrival order and chunking; return the
    game (not finished), the header expected (the first one to complete) and the delayed
    lengths seen after each tick."""
    rng = random.Random(seed)
    game = DrivenGame(delay=rng.choice([0, 3, 10]))
    order = list(range(6))
    rng.shuffle(order)  # arrival order of the writers
    streams = {writer: game.live.add_writer(samples.DIVERGING[writer]) for writer in order}
    starts = {writer: rng.randint(0, 3) for writer in order}
    rate = rng.randint(200, 900)  # bytes per second: the game's pace, the same for everyone
    sent = dict.fromkeys(order, 0)
    first_header = None
    visible = []
    second = 0
    while any(sent[writer] < len(STREAMS[writer]) for writer in order):
        chunks: dict[int, list[tuple[int, int]]] = {}
        for writer in order:
            due = (second - starts[writer] + 1) * rate + rng.randint(-300, 300)
            due = min(len(STREAMS[writer]), due)
            chunks[writer] = []
            while sent[writer] < due:
                size = min(rng.choice([1, 3, 50, 200, 700, 1500]), due - sent[writer])
                chunks[writer].append((sent[writer], size))
                sent[writer] += size
        arrivals = [writer for writer in order for _ in chunks[writer]]
        rng.shuffle(arrivals)  # writers interleaved at random, each writer's chunks in order
        for writer in arrivals:
            start, size = chunks[writer].pop(0)
            streams[writer].feed(STREAMS[writer][start : start + size])
            if first_header is None and start + size >= HEADER_SIZES[writer]:
                first_header = STREAMS[writer][: HEADER_SIZES[writer]]
        for writer in order:
            if sent[writer] == len(STREAMS[writer]) and rng.random() < 0.5:
                streams[writer].end(clean=True)  # the others stay open until the finish
        game.tick()
        visible.append(game.canonical.delayed_length)
        second += 1
    assert first_header is not None
    return game, first_header, visible


class DivergingStreamsTests(SynchronousTestCase):
    def test_any_chunking_and_order_gives_stream_5_with_the_first_header(self) -> None:
        for seed in range(int(os.environ.get("RECEIVE_SEEDS", "25"))):
            game, first_header, visible = play(seed)
            game.live.finish()
            self.assertEqual(game.canonical.body(), BODIES[5], seed)
            self.assertEqual(game.canonical.header_raw, first_header, seed)
            self.assertEqual(visible, sorted(visible), seed)

    def test_prefix_facts_show_up_in_provenance(self) -> None:
        game, _, _ = play(seed=1)
        game.live.finish()
        provenance = {p.name: p for p in game.live.provenance()}
        by_stream = [provenance[name] for name in samples.DIVERGING]
        final = game.canonical.body()
        shared = [len(os.path.commonprefix([body, final])) for body in BODIES]
        # REFERENCE §5: stream 0 splits off after 7,025 body bytes; streams 2-5 share 25,524
        # bytes with stream 1, which is a prefix of the final replay.
        self.assertEqual(shared[0], 7025)
        self.assertEqual(by_stream[0].diverged_at, 7025)
        self.assertEqual(by_stream[0].diverged_tick, fafreplay.body_ticks(final[:7025]))
        self.assertEqual((by_stream[1].agrees, by_stream[1].body_length), (True, 25_524))
        self.assertEqual(by_stream[2].diverged_at, shared[2])
        self.assertGreater(shared[2], 25_524)
        for index in (3, 4, 5):
            self.assertTrue(by_stream[index].agrees)
        self.assertEqual([p.matched for p in by_stream], [False] * 5 + [True])
        self.assertEqual([p.received for p in by_stream], [len(data) for data in STREAMS])
        self.assertTrue(all(p.header_ok for p in by_stream))
        self.assertEqual(by_stream[0].as_dict()["diverged_at"], 7025)
