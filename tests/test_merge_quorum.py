"""The quorum merge (REFERENCE §5), rule by rule, and the stall rule, on a Clock."""

import random

from twisted.trial.unittest import SynchronousTestCase

from tests.test_merge_helpers import merge_streams
from replayserver.replay.errors import HeaderError
from tests.support import samples
from tests.test_merge_helpers import BODY, HEADER, DrivenGame, split

PREFIX = BODY[:500]


def noise(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class QuorumRuleTests(SynchronousTestCase):
    def test_a_single_writer_is_followed(self) -> None:
        game = DrivenGame()
        writer = game.writer(BODY[:700])
        game.tick()
        self.assertEqual(game.canonical.read(0, 10_000), BODY[:700])
        writer.feed(BODY[700:])
        game.tick()
        self.assertEqual(game.canonical.read(0, 10_000), BODY)
        self.assertEqual(game.finish(), BODY)

    def test_writers_that_are_prefixes_of_one_another_give_the_longest(self) -> None:
        game = DrivenGame()
        for size in (300, len(BODY), 900, 0):
            game.writer(BODY[:size])
        game.tick()
        self.assertEqual(game.finish(), BODY)
        self.assertEqual([p.agrees for p in game.live.provenance()], [True] * 4)
        self.assertEqual([p.matched for p in game.live.provenance()], [False, True, False, False])

    def test_a_group_reaching_quorum_wins_at_once_and_the_others_diverge(self) -> None:
        game = DrivenGame()
        first = game.writer(PREFIX + b"a" * 20)
        game.writer(PREFIX + b"a" * 10)
        lone = game.writer(PREFIX + b"b" * 30)
        game.tick()
        self.assertEqual(game.provenance(lone).diverged_at, len(PREFIX))
        self.assertEqual(lone.body.retained, 0)  # a diverged stream keeps nothing
        # C holds the quorum's common prefix and waits for the shorter member to vote
        self.assertEqual(game.canonical.body(), PREFIX + b"a" * 10)
        first.feed(b"c")
        game.tick()
        self.assertEqual(game.canonical.length, len(PREFIX) + 10)
        self.assertEqual(game.finish(), PREFIX + b"a" * 20 + b"c")

    def test_a_stalemate_waits_for_a_writer_that_could_still_vote(self) -> None:
        game = DrivenGame()
        game.writer(PREFIX + b"a" * 5)
        slow = game.writer(PREFIX)
        game.tick(times=3)
        self.assertEqual(game.canonical.body(), PREFIX)
        slow.feed(b"b" * 9)  # splits: one member each, the longer group wins
        game.tick()
        self.assertEqual(game.canonical.body(), PREFIX + b"b" * 9)
        self.assertEqual(game.provenance(game.live.streams[0]).diverged_at, len(PREFIX))

    def test_a_writer_that_ended_shorter_is_not_waited_for(self) -> None:
        game = DrivenGame()
        short = game.writer(BODY[:300])
        short.end(clean=True)
        game.writer(BODY)
        game.tick()
        self.assertEqual(game.canonical.length, len(BODY))
        provenance = game.provenance(short)
        self.assertEqual((provenance.agrees, provenance.matched), (True, False))

    def test_most_members_beat_the_longest_member(self) -> None:
        game = DrivenGame(quorum=3)
        writers = [game.writer(PREFIX + tail) for tail in (b"a" * 5, b"a" * 5, b"b" * 50)]
        for writer in writers:
            writer.end(clean=True)
        game.tick()
        self.assertEqual(game.canonical.body(), PREFIX + b"a" * 5)
        self.assertEqual(game.provenance(writers[2]).diverged_at, len(PREFIX))

    def test_no_resolution_before_some_delayed_position_is_above_zero(self) -> None:
        game = DrivenGame(delay=3)
        early = game.writer(b"x" * 10)  # would win alone if the merge did not wait
        game.tick(times=2)
        game.writer(b"y" * 10), game.writer(b"y" * 10)
        game.tick()
        self.assertEqual(game.canonical.length, 0)
        game.tick()  # 4 s: the first writer's delayed position is above 0
        self.assertEqual(game.canonical.body(), b"y" * 10)
        self.assertEqual(game.provenance(early).diverged_at, 0)

    def test_a_differing_byte_marks_a_writer_diverged(self) -> None:
        game = DrivenGame()
        writers = [game.writer(BODY[:400]) for _ in range(3)]
        game.tick()
        writers[0].feed(BODY[400:800]), writers[1].feed(BODY[400:800])
        writers[2].feed(BODY[400:650] + bytes([BODY[650] ^ 1]) + BODY[651:800])
        game.tick()
        self.assertEqual(game.provenance(writers[2]).diverged_at, 650)
        self.assertEqual(writers[2].body.retained, 0)
        writers[2].feed(BODY[800:])  # a diverged writer no longer counts
        game.tick()
        self.assertEqual(writers[2].body.retained, 0)
        self.assertEqual(game.finish(), BODY[:800])

    def test_divergence_is_looked_for_only_within_the_comparison_window(self) -> None:
        data = noise(3000)
        game = DrivenGame(comparison_window=64)
        game.writer(data[:1000]), game.writer(data[:1000])
        game.tick()
        old_difference = game.writer(data[:10] + b"?" + data[11:1000])  # reconnected late
        recent_difference = game.writer(data[:990] + b"?" + data[991:1000])
        game.tick()
        self.assertIsNone(game.provenance(old_difference).diverged_at)
        self.assertEqual(game.provenance(recent_difference).diverged_at, 990)

    def test_streams_keep_only_bytes_ahead_of_the_merged_body(self) -> None:
        data = noise(5000)
        game = DrivenGame(delay=10)
        lead, second, laggard = game.writer(), game.writer(), game.writer()
        sent = {lead: 0, second: 0, laggard: 0}
        for _ in range(30):
            for writer, rate in ((lead, 150), (second, 120), (laggard, 60)):
                writer.feed(data[sent[writer] : sent[writer] + rate])
                sent[writer] += rate
            game.tick()
            merged = game.canonical.length
            for writer in (lead, second, laggard):
                self.assertEqual(writer.body.retained, max(0, len(writer.body) - merged))
        self.assertGreater(game.canonical.length, 0)
        self.assertEqual(game.finish(), data[: sent[lead]])


class StallTests(SynchronousTestCase):
    """A writer that stays connected but stops sending must not hold the readers."""

    def play_frozen_1v1(self, **options) -> tuple[DrivenGame, list[int], list[int]]:
        data = noise(20_000, seed=1)
        game = DrivenGame(delay=30, **options)
        frozen, alive = game.writer(), game.writer()
        alive_lengths, visible = [0], [0]
        for second in range(1, 151):
            if second <= 50:
                frozen.feed(data[(second - 1) * 100 : second * 100])
            alive.feed(data[(second - 1) * 100 : second * 100])
            game.tick()
            alive_lengths.append(len(alive.body))
            visible.append(game.canonical.delayed_length)
        return game, alive_lengths, visible

    def test_readers_keep_moving_with_the_other_players_stream(self) -> None:
        game, alive_lengths, visible = self.play_frozen_1v1(stall_timeout=10)
        for second in range(31, 151):
            self.assertEqual(visible[second], alive_lengths[second - 30], second)
        self.assertEqual(game.live._merge.quorum_members, [game.live.streams[1]])
        frozen = game.provenance(game.live.streams[0])
        self.assertEqual((frozen.agrees, frozen.diverged_at), (True, None))
        game.live.finish()

    def test_without_the_rule_the_frozen_writer_holds_the_readers(self) -> None:
        game, _, visible = self.play_frozen_1v1(stall_timeout=1000)
        self.assertEqual(visible[150], 5000)
        game.live.finish()

    def test_a_stalled_writer_rejoins_if_it_still_matches(self) -> None:
        game, _, _ = self.play_frozen_1v1(stall_timeout=10)
        data = noise(30_000, seed=1)
        frozen, alive = game.live.streams  # now the other way round: "alive" stops at 15,000
        frozen.feed(data[5000:15_000])
        for second in range(60):
            frozen.feed(data[15_000 + second * 100 : 15_100 + second * 100])
            game.tick()
        self.assertIsNone(game.provenance(frozen).diverged_at)
        self.assertEqual(game.canonical.delayed_length, 18_000)  # moving with it again
        self.assertEqual(game.finish(), data[:21_000])
        self.assertTrue(game.provenance(alive).agrees)

    def test_a_stalled_writer_that_resumes_differently_diverges(self) -> None:
        game, _, _ = self.play_frozen_1v1(stall_timeout=10, comparison_window=1 << 16)
        frozen = game.live.streams[0]
        frozen.feed(noise(100, seed=2))
        game.tick()
        self.assertEqual(game.provenance(frozen).diverged_at, 5000)
        self.assertEqual(game.finish(), noise(20_000, seed=1)[:15_000])


class HeaderTests(SynchronousTestCase):
    def test_the_first_complete_header_is_chosen_at_once(self) -> None:
        game = DrivenGame(delay=300)
        other_header, _ = split("diverging_1/2")
        header_known = game.canonical.when_header()
        slow = game.live.add_writer("slow")
        slow.feed(HEADER[:-1])
        fast = game.live.add_writer("fast")
        fast.feed(other_header)
        self.successResultOf(header_known)  # no tick needed
        slow.feed(HEADER[-1:])
        self.assertEqual(game.canonical.header_raw, other_header)
        game.live.finish()

    def test_a_writer_with_an_invalid_header_is_left_out(self) -> None:
        game = DrivenGame()
        bad = game.live.add_writer("bad")
        with self.assertRaises(HeaderError):
            bad.feed(samples.read(samples.CORRUPT_SCFA))
        game.writer(BODY)
        game.tick()
        self.assertEqual(game.finish(), BODY)
        provenance = game.provenance(bad)
        self.assertEqual((provenance.header_ok, provenance.agrees), (False, False))
        self.assertEqual(provenance.header_error, str(bad.header_error))
        self.assertIsNotNone(provenance.header_error)

    def test_finished_without_any_header(self) -> None:
        game = DrivenGame()
        game.live.add_writer("silent").feed(HEADER[:50])
        waiter = game.canonical.when_header()
        game.tick()
        self.assertEqual(game.finish(), b"")
        self.successResultOf(waiter)
        self.assertIsNone(game.canonical.header_raw)


class MergeStreamsTests(SynchronousTestCase):
    def test_whole_streams_merge_offline_ignoring_broken_headers(self) -> None:
        streams = [samples.read(name) for name in samples.DIVERGING]
        broken = [samples.read(samples.CORRUPT_SCFA), streams[1][:100]]
        canonical = merge_streams(broken + streams)
        header, body = split(samples.DIVERGING[5])
        first_header, _ = split(samples.DIVERGING[0])
        self.assertEqual(canonical.body(), body)
        self.assertEqual(canonical.header_raw, first_header)
        self.assertTrue(canonical.finished)
        self.assertEqual(canonical.delayed_length, len(body))

    def test_no_valid_stream_gives_an_empty_finished_replay(self) -> None:
        canonical = merge_streams([samples.read(samples.CORRUPT_SCFA)])
        self.assertEqual((canonical.header_raw, canonical.body(), canonical.finished),
                         (None, b"", True))
