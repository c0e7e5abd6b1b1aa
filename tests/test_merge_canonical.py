"""CanonicalReplay: segments, bounded reads, the delayed edge and its waiters."""

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from replayserver.merge import canonical as canonical_module
from replayserver.merge.canonical import CanonicalReplay
from replayserver.replay.header import parse_header
from tests.test_merge_helpers import HEADER


class CanonicalReplayTests(SynchronousTestCase):
    def test_reads_are_bounded_by_the_delayed_length_and_cross_segments(self) -> None:
        self.patch(canonical_module, "SEGMENT_SIZE", 10)
        replay = CanonicalReplay()
        data = bytes(range(256)) * 3
        for start in range(0, len(data), 7):
            replay.append(data[start : start + 7])
        self.assertEqual(replay.length, len(data))
        self.assertEqual(replay.read(0, 100), b"")
        replay.advance(500)
        self.assertEqual(replay.read(0, 1000), data[:500])
        self.assertEqual(replay.read(495, 10), data[495:500])
        self.assertEqual(replay.read(3, 25), data[3:28])
        self.assertEqual(replay.read(600, 10), b"")
        self.assertEqual(replay.body(), data)
        self.assertEqual(b"".join(replay.chunks(5, 700)), data[5:700])
        replay.advance(10_000)  # never beyond the length
        self.assertEqual(replay.delayed_length, len(data))

    def test_a_whole_segment_is_shared_not_copied(self) -> None:
        self.patch(canonical_module, "SEGMENT_SIZE", 8)
        replay = CanonicalReplay()
        replay.append(b"abcdefgh")
        replay.append(b"ij")
        replay.advance(10)
        self.assertIs(replay.read(0, 8), replay.read(0, 8))
        self.assertEqual(replay.read(6, 4), b"ghij")

    def test_wait_fires_once_the_edge_passes_the_position(self) -> None:
        replay = CanonicalReplay()
        replay.append(b"x" * 100)
        fired = []
        replay.wait(0).addCallback(lambda _: fired.append(0))
        replay.wait(50).addCallback(lambda _: fired.append(50))
        replay.advance(50)
        self.assertEqual(fired, [0])
        replay.advance(40)  # never backwards
        self.assertEqual(replay.delayed_length, 50)
        replay.advance(51)
        self.assertEqual(fired, [0, 50])
        self.assertEqual(self.successResultOf(replay.wait(50)), None)

    def test_waiters_fire_after_the_state_is_updated(self) -> None:
        replay = CanonicalReplay()
        replay.append(b"y" * 10)
        seen = []

        def reader(_: None) -> None:
            seen.append(replay.read(0, 100))
            replay.wait(replay.delayed_length).addCallback(reader)  # waits again, not now

        replay.wait(0).addCallback(reader)
        replay.advance(4)
        self.assertEqual(seen, [b"yyyy"])
        replay.advance(10)
        self.assertEqual(seen, [b"yyyy", b"y" * 10])

    def test_cancelled_waiters_are_forgotten(self) -> None:
        replay = CanonicalReplay()
        replay.append(b"z")
        waiter = replay.wait(0)
        header_waiter = replay.when_header()
        waiter.cancel()
        header_waiter.cancel()
        self.failureResultOf(waiter, CancelledError)
        self.failureResultOf(header_waiter, CancelledError)
        self.assertEqual((replay._waiters, replay._header_waiters), ([], []))
        replay.advance(1)
        replay.finish()

    def test_header_waiters(self) -> None:
        replay = CanonicalReplay()
        waiter = replay.when_header()
        self.assertNoResult(waiter)
        header = parse_header(HEADER)
        replay.set_header(header, HEADER)
        self.successResultOf(waiter)
        replay.set_header(parse_header(HEADER), b"other")  # the first header stays
        self.assertEqual(replay.header_raw, HEADER)
        self.successResultOf(replay.when_header())

    def test_finish_shows_everything_and_fires_every_waiter(self) -> None:
        replay = CanonicalReplay()
        header_waiter = replay.when_header()
        replay.append(b"abc")
        waiter = replay.wait(2)
        replay.finish()
        self.successResultOf(header_waiter)
        self.successResultOf(waiter)
        self.assertIsNone(replay.header_raw)
        self.assertEqual((replay.finished, replay.delayed_length), (True, 3))
        self.successResultOf(replay.wait(1000))


class CancelWhileFiringTests(SynchronousTestCase):
    """A reader that goes away inside another reader's callback cancels a waiter in flight."""

    def test_cancelling_a_position_waiter_being_fired(self) -> None:
        canonical = CanonicalReplay()
        canonical.set_header(parse_header(HEADER), HEADER)
        canonical.append(b"x" * 10)
        first, second = canonical.wait(0), canonical.wait(0)
        first.addCallback(lambda _: second.cancel())
        canonical.advance(5)
        self.successResultOf(first)
        self.failureResultOf(second, CancelledError)

    def test_cancelling_a_header_waiter_being_fired(self) -> None:
        canonical = CanonicalReplay()
        first, second = canonical.when_header(), canonical.when_header()
        first.addCallback(lambda _: second.cancel())
        canonical.finish()
        self.successResultOf(first)
        self.failureResultOf(second, CancelledError)


class KeptHeaderTests(SynchronousTestCase):
    def test_the_header_is_kept_in_a_fraction_of_its_size_and_given_back_whole(self) -> None:
        import gc
        import tracemalloc

        from tests.support import samples

        data = samples.read("8468507.scfareplay")
        raw = data[:parse_header(data).size]
        header = parse_header(raw)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            replays = []
            for _ in range(20):
                replay = CanonicalReplay()
                replay.set_header(header, bytes(raw))
                replays.append(replay)
            gc.collect()
            kept = (tracemalloc.get_traced_memory()[0] - before) / len(replays)
        finally:
            tracemalloc.stop()
        self.assertLess(kept, len(raw) / 2)
        for replay in replays:
            self.assertTrue(replay.has_header)
            self.assertEqual(replay.header_raw, raw)
            self.assertEqual(parse_header(replay.header_raw), header)
