"""HeapTrim (replayserver.memory) on a Clock, and the C library's malloc_trim for real; metrics
that count nothing where nobody can read them (replayserver.metrics)."""
from __future__ import annotations

import resource

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from replayserver.memory import HeapTrim, find_malloc_trim
from replayserver.metrics import Metrics


def resident_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


class HeapTrimTests(SynchronousTestCase):
    def test_trims_on_its_interval_while_running(self) -> None:
        clock, calls = Clock(), []
        trim = HeapTrim(clock, lambda pad: calls.append(pad) or 1, interval=5.0)
        trim.startService()
        clock.advance(4.9)
        self.assertEqual(calls, [])
        clock.advance(0.1)
        clock.advance(5.0)
        self.assertEqual(calls, [0, 0])
        trim.stopService()
        clock.advance(60)
        self.assertEqual(calls, [0, 0])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_without_malloc_trim_there_is_no_timer(self) -> None:
        clock = Clock()
        trim = HeapTrim(clock, None)  # a C library without malloc_trim
        trim.startService()
        self.assertEqual(clock.getDelayedCalls(), [])
        trim.stopService()

    def test_malloc_trim_gives_freed_holes_back(self) -> None:
        """Blocks freed between live ones stay in the process until trimmed (glibc)."""
        malloc_trim = find_malloc_trim()
        self.assertIsNotNone(malloc_trim, "this machine's C library is glibc")
        assert malloc_trim is not None
        kept, freed = [], []
        for _ in range(4000):  # 36 MB of 9 KB blocks (a header each), every 9th one kept
            freed.extend(bytes(9000) for _ in range(8))
            kept.append(bytes(9000))
        malloc_trim(0)
        before = resident_kib()
        del freed
        after_free = resident_kib()
        malloc_trim(0)
        after_trim = resident_kib()
        self.assertLess(before - after_free, 8 * 1024, "freeing alone gives little back")
        self.assertGreater(after_free - after_trim, 20 * 1024)
        self.assertEqual(len(kept), 4000)


class NullMetricsTests(SynchronousTestCase):
    def test_without_a_reader_metrics_count_nothing(self) -> None:
        metrics = Metrics(exported=False)
        self.assertIsNone(metrics.registry)
        metrics.active_connections.labels(category="writer").inc()
        metrics.served_connections.labels(result="Success").inc(2)
        metrics.reader_lag.set(5)
        metrics.save_duration.observe(0.3)

    def test_exported_metrics_count(self) -> None:
        metrics = Metrics()
        assert metrics.registry is not None
        metrics.active_connections.labels(category="writer").inc()
        metrics.save_duration.observe(0.3)
        self.assertEqual(metrics.registry.get_sample_value(
            "replayserver_active_connections_count", {"category": "writer"}), 1)
        self.assertEqual(metrics.registry.get_sample_value(
            "replayserver_save_duration_seconds_count"), 1)


class CollectorTuningTests(SynchronousTestCase):
    def test_start_freezes_what_exists_and_raises_the_young_threshold(self) -> None:
        import gc

        from replayserver.memory import YOUNG_THRESHOLD, CollectorTuning

        threshold = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *threshold)
        self.addCleanup(gc.unfreeze)
        CollectorTuning().startService()
        self.assertGreater(gc.get_freeze_count(), 1000)  # at least the loaded modules
        self.assertEqual(gc.get_threshold(), (YOUNG_THRESHOLD, *threshold[1:]))
