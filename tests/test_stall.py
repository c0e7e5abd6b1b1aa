"""StallWatch: how late a timer fires is how long the event loop was blocked."""
from prometheus_client import CollectorRegistry, Gauge
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from replayserver.stall import StallWatch


class StallWatchTests(SynchronousTestCase):
    def test_the_longest_lateness_is_kept(self):
        clock = Clock()
        registry = CollectorRegistry()
        gauge = Gauge("stall", "test", registry=registry)
        watch = StallWatch(clock, gauge, interval=0.1)
        watch.startService()
        clock.advance(0.1)  # on time
        self.assertEqual(registry.get_sample_value("stall"), 0)
        clock.advance(0.1 + 2.5)  # the loop was blocked for 2.5 s
        self.assertAlmostEqual(registry.get_sample_value("stall"), 2.5)
        clock.advance(0.1 + 1.0)  # a shorter stall keeps the longest
        self.assertAlmostEqual(registry.get_sample_value("stall"), 2.5)
        watch.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
