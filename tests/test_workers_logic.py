"""The pure parts of the worker package: wire records, spool assignment, metric merging."""
from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.trial.unittest import SynchronousTestCase

from replayserver.accept.handshake import MAX_GAME_ID, ConnectionHeader, ConnectionKind
from replayserver.workers.wire import (
    CONNECTION,
    TCP,
    WEBSOCKET,
    FrameReader,
    HandedOff,
    WireError,
    frame,
)
from replayserver.workers.status import merge, metric_families
from replayserver.workers.supervisor import assign_spool
from tests.support.server import temporary_directory

records = st.builds(
    HandedOff,
    st.sampled_from([TCP, WEBSOCKET]),
    st.builds(ConnectionHeader, st.sampled_from(list(ConnectionKind)),
              st.integers(0, MAX_GAME_ID), st.text(max_size=50)),
    st.binary(max_size=3000),
)


class WireTests(SynchronousTestCase):
    @settings(max_examples=50, deadline=None)
    @given(st.lists(records, max_size=5), st.integers(1, 64))
    def test_records_survive_any_chunking(self, sent, chunk):
        stream = b"".join(record.encode() for record in sent)
        reader = FrameReader()
        frames = []
        for start in range(0, len(stream), chunk):
            frames += reader.feed(stream[start:start + chunk])
        self.assertEqual([kind for kind, _ in frames], [CONNECTION] * len(sent))
        self.assertEqual([HandedOff.decode(payload) for _, payload in frames], sent)

    def test_oversized_frame_is_refused(self):
        with self.assertRaises(WireError):
            FrameReader().feed(frame(CONNECTION)[:1] + b"\xff\xff\xff\xff")


def spool_game(directory: str, *parts: str) -> None:
    path = os.path.join(directory, *parts)
    os.makedirs(path)
    with open(os.path.join(path, "0.stream"), "wb") as f:
        f.write(b"x")


def layout(directory: str) -> set[str]:
    return {os.path.relpath(os.path.join(root, name), directory)
            for root, _, files in os.walk(directory) for name in files}


class AssignSpoolTests(SynchronousTestCase):
    def test_games_move_to_their_owner_and_back(self):
        spool = os.path.join(temporary_directory(self), "spool")
        spool_game(spool, "run-a", "10")
        spool_game(spool, "run-a", "11")
        spool_game(spool, "worker-1", "run-b", "12")
        spool_game(spool, "worker-5", "run-c", "13")
        self.assertEqual(assign_spool(spool, 2), [10, 11, 12, 13])
        self.assertEqual(layout(spool), {
            "worker-0/run-a/10/0.stream", "worker-1/run-a/11/0.stream",
            "worker-0/run-b/12/0.stream", "worker-1/run-c/13/0.stream",
        })
        self.assertEqual(assign_spool(spool, 1), [10, 11, 12, 13])
        self.assertEqual(layout(spool), {
            "run-a/10/0.stream", "run-a/11/0.stream", "run-b/12/0.stream", "run-c/13/0.stream",
        })
        self.assertEqual(sorted(os.listdir(spool)), ["run-a", "run-b", "run-c"])

    def test_missing_spool(self):
        self.assertEqual(assign_spool(os.path.join(temporary_directory(self), "missing"), 3), [])


class MergeTests(SynchronousTestCase):
    def registry(self, writers: int, served: int) -> CollectorRegistry:
        registry = CollectorRegistry()
        Gauge("active", "Active", ["category"], registry=registry).labels("writer").set(writers)
        Counter("served", "Served", ["result"], registry=registry).labels("Success").inc(served)
        return registry

    def test_samples_with_the_same_labels_add_up(self):
        merged = merge(*(metric_families(self.registry(w, s)) for w, s in [(1, 2), (3, 4)]))
        samples = {(m.name, s.name): s.value for m in merged for s in m.samples}
        self.assertEqual(samples, {("active", "active"): 4, ("served", "served_total"): 6})
        self.assertEqual({m.name: m.type for m in merged}, {"active": "gauge",
                                                             "served": "counter"})
