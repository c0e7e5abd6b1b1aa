"""The parts of the worker package that need no process: wire records, log relay, the remote
slot, the queue of a restarting worker, spool assignment, metric merging."""
from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.logger import LogLevel, Logger, formatEvent, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from replayserver.accept.handshake import MAX_GAME_ID, ConnectionHeader, ConnectionKind
from replayserver.accept.protocol import ConnectionFactory
from replayserver.config import Config, LimitsSection, ServerSection, StorageSection
from replayserver.deadlines import Deadlines
from replayserver.limits import ConnectionCounter
from replayserver.metrics import Metrics
from replayserver.workers import handoff
from replayserver.workers.handoff import Dispatcher
from replayserver.workers.logs import MAX_LINE, LogRelay, event_line
from replayserver.workers.receiver import RemoteSlot
from replayserver.workers.status import merge, metric_families
from replayserver.workers.placement import assign_spool
from replayserver.workers.supervisor import STOP_MARGIN, WorkersService
from replayserver.workers.wire import (
    CLOSED,
    CONNECTION,
    TCP,
    WEBSOCKET,
    FrameReader,
    HandedOff,
    WireError,
    closed_frame,
    closed_id,
    frame,
    json_payload,
)
from tests.support.server import temporary_directory

records = st.builds(
    HandedOff,
    st.integers(0, 2**64 - 1),
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
        with self.assertRaises(WireError):
            frame(CONNECTION, b"x" * ((8 << 20) + 1))

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=40))
    def test_any_record_payload_decodes_or_is_a_wire_error(self, payload):
        try:
            HandedOff.decode(payload)
        except WireError:
            pass

    def test_the_largest_legitimate_record_fits_a_frame(self):
        from replayserver.workers.recording import MAX_RECORDING

        header = ConnectionHeader(ConnectionKind.WRITER, MAX_GAME_ID, "n" * 1022)
        record = HandedOff(2**64 - 1, WEBSOCKET, header, b"x" * MAX_RECORDING)
        ((_, payload),) = FrameReader().feed(record.encode())
        self.assertEqual(HandedOff.decode(payload), record)

    def test_closed_records(self):
        ((kind, payload),) = FrameReader().feed(closed_frame(2**64 - 1))
        self.assertEqual((kind, closed_id(payload)), (CLOSED, 2**64 - 1))
        with self.assertRaises(WireError):
            closed_id(b"\0" * 7)

    def test_json_payloads_are_objects(self):
        self.assertEqual(json_payload(b'{"id": 1}'), {"id": 1})
        for bad in (b"[1]", b"{", b"\xff"):
            with self.assertRaises(WireError):
                json_payload(bad)


class RemoteSlotTests(SynchronousTestCase):
    def test_held_from_the_start_and_released_once_by_telling_the_main_process(self):
        channel = StringTransport()
        slot = RemoteSlot(12, channel)
        self.assertTrue(slot.held)
        self.assertIsNone(slot.take(IPv4Address("TCP", "127.0.0.1", 1)))
        slot.release()
        slot.release()
        self.assertFalse(slot.held)
        frames = FrameReader().feed(channel.value())
        self.assertEqual([(kind, closed_id(payload)) for kind, payload in frames],
                         [(CLOSED, 12)])


def relayed(event: dict[str, Any], index: int = 3) -> dict[str, Any]:
    """``event`` through a worker's log pipe and the main process's relay."""
    published: list[dict[str, Any]] = []
    relay = LogRelay(index, published.append)
    line = event_line(event)
    assert line.endswith(b"\n") and len(line) <= MAX_LINE, len(line)
    for start in range(0, len(line), 7):  # in pieces, as a pipe may give them
        relay.feed(line[start:start + 7])
    (result,) = published
    return result


def logged(log_format: str, failure: Failure | None = None, **fields: Any) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    log = Logger(namespace="replayserver.test", observer=events.append)
    if failure is None:
        log.info(log_format, **fields)
    else:
        log.failure(log_format, failure, **fields)
    return events[0]


class LogRelayTests(SynchronousTestCase):
    def test_text_and_fields_survive_and_the_worker_is_named(self):
        event = logged("Writer {name!r} of game {game_id} closed", name="evil\nname\x1b[2J",
                       game_id=77)
        result = relayed(event, index=3)
        self.assertEqual(formatEvent(result), formatEvent(event))
        self.assertEqual(formatEvent(result), "Writer 'evil\\nname\\x1b[2J' of game 77 closed")
        self.assertEqual((result["game_id"], result["worker"]), (77, 3))
        self.assertEqual(result["log_level"], LogLevel.info)
        self.assertIn("[worker-3] Writer", formatEventAsClassicLogText(result))

    def test_failures_keep_their_traceback_and_message(self):
        try:
            {}["missing"]
        except KeyError:
            failure = Failure()
        result = relayed(logged("Saving game {game_id} failed", failure, game_id=5))
        text = formatEventAsClassicLogText(result)
        self.assertIn("Saving game 5 failed", text)
        self.assertIn("Traceback (most recent call last)", text)
        self.assertIn("builtins.KeyError: 'missing'", text)
        self.assertEqual(result["log_failure"].getErrorMessage(), "'missing'")
        self.assertEqual(result["log_level"], LogLevel.critical)

    def test_an_event_too_large_for_a_line_is_shortened(self):
        event = logged("Huge {blob}", blob="x" * (2 * MAX_LINE))
        line = event_line(event)
        self.assertLessEqual(len(line), MAX_LINE)
        result = relayed(event)
        self.assertTrue(formatEvent(result).startswith("Huge xxx"))
        self.assertIn("shortened", formatEvent(result))

    def test_bad_lines_are_dropped_with_a_warning(self):
        published: list[dict[str, Any]] = []
        relay = LogRelay(1, published.append)
        good = event_line(logged("fine"))
        with _Warnings() as warnings:
            relay.feed(b"not json\n" + b"[1, 2]\n" + b"y" * (MAX_LINE + 10))
            relay.feed(b"rest of the long line\n" + good)
        self.assertEqual([formatEvent(e) for e in published], ["fine"])
        self.assertEqual(len(warnings.events), 3)
        relay.feed(good[:10])
        relay.end()  # a worker killed in the middle of a line
        relay.feed(good)
        self.assertEqual(len(published), 2)


def spool_game(directory: str, *parts: str) -> None:
    path = os.path.join(directory, *parts)
    os.makedirs(path)
    with open(os.path.join(path, "0.stream"), "wb") as f:
        f.write(b"x")


def layout(directory: str) -> set[str]:
    return {os.path.relpath(os.path.join(root, name), directory)
            for root, _, files in os.walk(directory) for name in files}


class _Warnings:
    """Collects what `LogRelay` logs about a worker's bad lines."""

    def __enter__(self) -> _Warnings:
        from twisted.logger import globalLogPublisher

        self.events: list[dict[str, Any]] = []
        self._publisher = globalLogPublisher
        globalLogPublisher.addObserver(self._observe)
        return self

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("replayserver.workers.logs"):
            self.events.append(event)

    def __exit__(self, *exc: object) -> None:
        self._publisher.removeObserver(self._observe)


class QueueTests(SynchronousTestCase):
    """Connections for a worker that is not running wait, within ``limits.worker_queue*``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.counter = ConnectionCounter(None, None)
        limits = LimitsSection(worker_queue=2, worker_queue_timeout=10)
        self.dispatcher = Dispatcher(2, self.clock, metrics=self.metrics, limits=limits)
        self.factory = ConnectionFactory(
            self.dispatcher.route, deadlines=Deadlines(self.clock), header_timeout=60,
            partial_header_timeout=30, metrics=self.metrics, connections=self.counter)

    def connect(self, header: bytes) -> StringTransportWithDisconnection:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransportWithDisconnection(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(header)
        self.clock.advance(0)  # the hand-off happens on the next turn
        return transport

    def limited(self, limit: str) -> float:
        return self.metrics.registry.get_sample_value(
            "replayserver_limited_connections_total", {"limit": limit}) or 0

    def test_over_the_count_is_closed_at_once(self):
        waiting = [self.connect(b"P/%d/x\0" % game_id) for game_id in (1, 3)]
        other_worker = self.connect(b"P/2/x\0")
        self.assertEqual(self.dispatcher.waiting(), 2)
        self.assertTrue(all(t.connected for t in waiting))
        self.assertFalse(other_worker.connected)  # both workers are down: the queue is full
        self.assertEqual(self.limited("worker_queue"), 1)
        self.assertEqual(self.counter.total, 2)
        served = self.metrics.registry.get_sample_value(
            "replayserver_served_connections_total", {"result": "Refused"})
        self.assertEqual(served, 1)

    def test_waiting_longer_than_the_timeout_is_closed(self):
        first = self.connect(b"G/1/x\0")
        self.clock.advance(5)
        second = self.connect(b"G/3/x\0")
        self.clock.advance(6)
        self.assertFalse(first.connected)
        self.assertTrue(second.connected)
        self.clock.advance(5)
        self.assertFalse(second.connected)
        self.assertEqual(self.limited("worker_queue_timeout"), 2)
        self.assertEqual((self.dispatcher.waiting(), self.counter.total), (0, 0))

    def test_what_the_waiting_connections_hold_is_bounded(self):
        """Each waiting connection holds what it sent after (or, over WebSocket, before) its
        header; in all at most QUEUE_BYTES."""
        self.patch(handoff, "QUEUE_BYTES", 1000)
        first = self.connect(b"P/1/x\0" + b"a" * 600)
        second = self.connect(b"P/3/x\0" + b"b" * 600)
        self.assertTrue(first.connected)
        self.assertFalse(second.connected)
        self.assertEqual(self.limited("worker_queue"), 1)
        first.loseConnection()
        third = self.connect(b"P/3/x\0" + b"c" * 600)  # room again
        self.assertTrue(third.connected)

    def test_a_waiting_connection_that_closes_leaves_the_queue(self):
        transport = self.connect(b"P/1/x\0")
        transport.loseConnection()
        self.assertEqual((self.dispatcher.waiting(), self.counter.total), (0, 0))
        self.clock.advance(20)
        self.assertEqual(self.limited("worker_queue_timeout"), 0)


class _Pool:
    """Stands in for the `WorkerPool` of a `WorkersService` that is stopped."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def stop(self, timeout: float) -> defer.Deferred[None]:
        self.timeouts.append(timeout)
        return defer.succeed(None)


class StopTests(SynchronousTestCase):
    def test_workers_have_the_shutdown_timeout_and_a_margin_to_stop(self):
        directory = temporary_directory(self)
        config = Config(server=ServerSection(workers=2, shutdown_timeout=42),
                        storage=StorageSection(vault=os.path.join(directory, "vault"),
                                               spool=os.path.join(directory, "spool")))
        service = WorkersService(config, Clock())
        service.pool = _Pool()  # type: ignore[assignment]
        stopped = service.stopService()
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(service.pool.timeouts, [42 + STOP_MARGIN])


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
