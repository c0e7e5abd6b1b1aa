"""The live delay (REFERENCE §4) on a Clock: one timer per game, `delay` seconds behind."""

from twisted.trial.unittest import SynchronousTestCase

from tests.test_merge_helpers import BODY, DrivenGame


class DelayTests(SynchronousTestCase):
    def test_nothing_visible_before_the_delay_then_the_length_of_delay_ago(self) -> None:
        game = DrivenGame(delay=5)
        writers = [game.writer(), game.writer()]
        lengths = {}  # clock time of the tick -> length sampled then
        for second in range(1, 16):
            for writer in writers:
                writer.feed(BODY[(second - 1) * 50 : second * 50])
            game.tick()
            lengths[second] = len(writers[0].body)
            if second <= 5:  # and no merge before some delayed position is above 0
                self.assertEqual((game.canonical.length, game.canonical.delayed_length), (0, 0))
            else:
                self.assertEqual(game.canonical.delayed_length, lengths[second - 5], second)
                self.assertEqual(game.canonical.length, len(writers[0].body))
        game.live.finish()

    def test_one_timer_per_game_stopped_by_finish(self) -> None:
        game = DrivenGame(delay=300)
        self.assertEqual(game.clock.getDelayedCalls(), [])
        for _ in range(4):
            game.writer(BODY[:10])
        self.assertEqual(len(game.clock.getDelayedCalls()), 1)
        game.live.finish()
        self.assertEqual(game.clock.getDelayedCalls(), [])
        self.assertRaises(RuntimeError, game.live.add_writer, "late")

    def test_an_ended_writer_keeps_its_delay(self) -> None:
        """A player who leaves while others play on: readers see that moment ``delay`` later,
        not at once."""
        game = DrivenGame(delay=300)
        writer = game.writer(BODY[:200])
        game.tick(times=10)
        self.assertEqual(game.canonical.delayed_length, 0)
        writer.feed(BODY[200:300])
        writer.end(clean=True)
        game.tick()
        self.assertEqual(game.canonical.delayed_length, 0)
        game.tick(times=289)  # 300 s after the first 200 bytes arrived
        self.assertEqual(game.canonical.delayed_length, 0)
        game.tick()
        self.assertEqual(game.canonical.delayed_length, 200)
        game.tick(times=10)
        self.assertEqual(game.canonical.delayed_length, 300)
        self.assertEqual(game.canonical.read(0, 1000), BODY[:300])
        self.assertFalse(game.canonical.finished)
        game.live.finish()

    def test_finish_makes_everything_visible_and_wakes_readers(self) -> None:
        game = DrivenGame(delay=300)
        game.writer(BODY[:100]), game.writer(BODY[:120])
        game.tick(times=3)
        waiter = game.canonical.wait(0)
        self.assertNoResult(waiter)
        game.live.finish()
        self.successResultOf(waiter)
        self.assertTrue(game.canonical.finished)
        self.assertEqual(game.canonical.read(0, 1000), BODY[:120])
        self.assertTrue(all(stream.ended and stream.clean_end is False
                            for stream in game.live.streams))
