"""Property tests of the merge and the delay on streams made from real replay bodies.

Writers send a real body truncated at a random point, some with their tail changed from a
random point on (every byte XORed with a mask of their own, so two changed tails never agree),
in random chunk sizes and interleavings, starting within the delay (so that all of them are
counted, docs/merge-and-delay.md), ending cleanly at random times or left open until the finish.
The delay invariant is checked with writers joining at any time as well.
"""

import os
import random
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support import samples
from tests.test_merge_helpers import DrivenGame, split

SOURCES = ("8805603.scfareplay", "22338092.scfareplay", "8945286.scfareplay",
           samples.DIVERGING[5])
SPLIT = {name: split(name) for name in SOURCES}


@st.composite
def writer_bodies(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    name = draw(st.sampled_from(SOURCES))
    _, body = SPLIT[name]
    bodies = []
    for mask in range(1, draw(st.integers(1, 5)) + 1):
        cut = draw(st.integers(0, len(body)))
        if draw(st.booleans()):
            bodies.append(body[:cut])
        else:
            changed_from = draw(st.integers(0, cut))
            bodies.append(body[:changed_from] + bytes(b ^ mask for b in body[changed_from:cut]))
    return name, bodies


@st.composite
def scenarios(draw: st.DrawFn, late_joins: bool = False) -> dict:
    name, bodies = draw(writer_bodies())
    delay = draw(st.sampled_from([0, 2, 5]))
    latest_start = 4 * delay + 10 if late_joins else delay
    return {
        "name": name,
        "bodies": bodies,
        "delay": delay,
        "quorum": draw(st.integers(1, 3)),
        "starts": [draw(st.integers(0, latest_start)) for _ in bodies],
        "rates": [draw(st.integers(50, 1500)) for _ in bodies],
        "random": random.Random(draw(st.integers(0, 2**32))),  # chunking and interleaving
    }


def split_off_alone(result: bytes, bodies: list[bytes], quorum: int) -> int | None:
    """A position where the result follows a group smaller than the quorum while another
    group there is larger (the merge's rules forbid it), or None."""
    for position in range(len(result)):
        votes = Counter(body[position] for body in bodies
                        if len(body) > position and body[:position] == result[:position])
        mine = votes.pop(result[position])
        if mine < quorum and any(count > mine for count in votes.values()):
            return position
    return None


class MergePropertyTests(SynchronousTestCase):
    @settings(
        max_examples=int(os.environ.get("RECEIVE_EXAMPLES", "150")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(scenarios())
    def test_merge_properties(self, scenario: dict) -> None:
        game, streams, bodies, _, _ = self.play(scenario)
        self.check_result(game, bodies, scenario["quorum"])

    @settings(
        max_examples=int(os.environ.get("RECEIVE_EXAMPLES", "150")),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(scenarios(late_joins=True))
    def test_no_reader_sees_a_byte_before_some_writer_sent_it_delay_ago(self, scenario: dict
                                                                         ) -> None:
        """At every tick, the visible length is at most what some writer that agrees with the
        replay there had sent ``delay`` seconds before, whoever joined late or left early; it
        never decreases; only the end of the writing phase shows the rest."""
        game, _, bodies, history, visible = self.play(scenario)
        result = game.canonical.body()
        agreeing = [len(os.path.commonprefix([body, result])) for body in bodies]
        for tick, shown in enumerate(visible):
            then = tick - scenario["delay"]
            sent_then = [min(history[then][i], agreeing[i]) if then >= 0 else 0
                         for i in range(len(bodies))]
            self.assertLessEqual(shown, max(sent_then), f"tick {tick}")
        self.assertEqual(visible, sorted(visible))

    def play(self, scenario: dict):
        """Run a scenario to the finish; the game, its streams, the writers' bodies, their
        body lengths at each tick and the visible length at each tick."""
        header, _ = SPLIT[scenario["name"]]
        bodies, rng, delay = scenario["bodies"], scenario["random"], scenario["delay"]
        game = DrivenGame(delay=delay, quorum=scenario["quorum"], stall_timeout=float("inf"))
        streams = [game.live.add_writer(f"w{index}") for index in range(len(bodies))]
        data = [header + body for body in bodies]
        sent = [0] * len(bodies)
        history: list[list[int]] = []  # body lengths sampled at each tick
        shown: list[int] = []  # the visible length after each tick
        visible = 0
        second = 0
        while any(sent[i] < len(data[i]) for i in range(len(data))):
            arrivals = []
            for i, stream in enumerate(streams):
                if second >= scenario["starts"][i]:
                    due = min(len(data[i]), sent[i] + scenario["rates"][i])
                    while sent[i] < due:
                        size = min(rng.randint(1, 700), due - sent[i])
                        arrivals.append((i, sent[i], size))
                        sent[i] += size
            self.feed_interleaved(streams, data, arrivals, rng)
            for i, stream in enumerate(streams):
                if sent[i] == len(data[i]) and rng.random() < 0.3:
                    stream.end(clean=True)
            second += 1
            game.tick()
            history.append([len(stream.body) for stream in streams])
            self.check_tick(game, streams, history, delay, visible)
            visible = game.canonical.delayed_length
            shown.append(visible)
        game.live.finish()
        return game, streams, bodies, history, shown

    def feed_interleaved(self, streams, data, arrivals, rng) -> None:
        """Feed in a random interleaving of writers, each writer's chunks in order."""
        queues: dict[int, list[tuple[int, int]]] = {}
        for i, start, size in sorted(arrivals, key=lambda arrival: arrival[1]):
            queues.setdefault(i, []).append((start, size))
        order = [i for i in queues for _ in queues[i]]
        rng.shuffle(order)
        for i in order:
            start, size = queues[i].pop(0)
            streams[i].feed(data[i][start : start + size])

    def check_tick(self, game, streams, history, delay, previous_visible) -> None:
        canonical = game.canonical
        self.assertGreaterEqual(canonical.delayed_length, previous_visible)  # never decreases
        # never beyond what some writer had `delay` seconds ago (ended or not)
        then = len(history) - 1 - delay
        allowed = max(history[then][i] if then >= 0 else 0 for i in range(len(streams)))
        self.assertLessEqual(canonical.delayed_length, allowed)
        for stream in streams:  # a stream keeps only the bytes ahead of the merged body
            if game.live._merge.diverged_at(stream) is not None:
                self.assertEqual(stream.body.retained, 0)
            else:
                self.assertEqual(stream.body.retained,
                                 max(0, len(stream.body) - canonical.length))

    def check_result(self, game, bodies, quorum) -> None:
        result = game.canonical.body()
        self.assertIn(result, bodies)  # byte-equal to one writer's body
        self.assertIsNone(split_off_alone(result, bodies, quorum))
        if all(a.startswith(b) or b.startswith(a) for a in bodies for b in bodies):
            self.assertEqual(result, max(bodies, key=len))
        for record, body in zip(game.live.provenance(), bodies):
            if result.startswith(body):
                self.assertTrue(record.agrees)
            if not record.agrees:
                # a real difference, at or after the first one (the merge does not look at
                # bytes older than the comparison window)
                offset = record.diverged_at
                self.assertNotEqual(body[offset], result[offset])
                self.assertGreaterEqual(offset, len(os.path.commonprefix([body, result])))
