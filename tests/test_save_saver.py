"""The save pipeline: order of the steps, retries with capped backoff, final failures, the
log lines of failed attempts, saves given up at shutdown."""
import os

import attrs
import fafreplay
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from replayserver.metrics import Metrics
from replayserver.replay.body import scan_body
from replayserver.replay.header import parse_header
from replayserver.save.interfaces import NullIndex
from replayserver.save.metadata import HeaderMetadata
from replayserver.game.interfaces import NothingToSave
from replayserver.replay.errors import ContainerError
from replayserver.game.interfaces import SaveAbandoned
from replayserver.save.saver import ReplaySaver, Ticks, scan_ticks, stored_ticks
from replayserver.save.vault import AlreadyInVault
from tests.support import samples
from tests.support.server import temporary_directory


@attrs.define
class FakeCanonical:
    header_raw: bytes | None
    merged: bytes

    def body(self) -> bytes:
        return self.merged

    @property
    def has_header(self) -> bool:
        return self.header_raw is not None


def canonical_of(name: str) -> FakeCanonical:
    data = samples.read(name)
    header = parse_header(data)
    return FakeCanonical(data[: header.size], data[header.size:])


class FakeVault:
    """Fails its first ``failures`` writes with OSError, then stores in memory."""

    def __init__(self, failures: int = 0, existing: tuple[int, ...] = ()):
        self.failures = failures
        self.files = {game_id: None for game_id in existing}
        self.attempts = 0

    def path(self, game_id):
        return f"/vault/{game_id}.fafreplay"

    def contains(self, game_id):
        return game_id in self.files

    def run(self, function, *args):
        return defer.maybeDeferred(function, *args)

    def write(self, game_id, metadata, scfa):
        self.attempts += 1
        if self.attempts <= self.failures:
            return defer.fail(OSError(28, "No space left on device"))
        if game_id in self.files:
            return defer.fail(AlreadyInVault(game_id, self.path(game_id)))
        self.files[game_id] = (metadata, b"".join(scfa))
        return defer.succeed(self.path(game_id))


class FakeIndex:
    def __init__(self, failures: int = 0):
        self.failures = failures
        self.attempts = 0
        self.marked = []

    def mark_saved(self, game_id, ticks):
        self.attempts += 1
        if self.attempts <= self.failures:
            return defer.fail(ConnectionError("database down"))
        self.marked.append((game_id, ticks))
        return defer.succeed(None)

    def is_saved(self, game_id):
        return defer.succeed(False)


class FakeSpool:
    """A game's spool; records its removal in the shared list ``removed``."""

    def __init__(self, game_id, removed):
        self.game_id = game_id
        self.removed = removed

    def remove(self):
        self.removed.append(self.game_id)
        return defer.succeed(None)


class SaverTests(SynchronousTestCase):
    def make_saver(self, vault=None, index=None, max_retry=300.0):
        self.clock = Clock()
        self.vault = vault or FakeVault()
        self.index = index or FakeIndex()
        self.removed = []
        self.metrics = Metrics()
        return ReplaySaver(
            clock=self.clock, vault=self.vault, metadata=HeaderMetadata(), index=self.index,
            metrics=self.metrics, first_retry=1.0, max_retry=max_retry,
        )

    def spool(self, game_id):
        return FakeSpool(game_id, self.removed)

    def saved_files(self) -> float:
        return self.metrics.saved_replay_files._value.get()

    def test_saves_header_and_body_then_marks_then_removes_spool(self):
        saver = self.make_saver()
        name = "8805603.scfareplay"
        saved = saver.save(17, canonical_of(name), 100.0, 200.0, self.spool(17))
        result = self.successResultOf(saved)
        self.assertEqual(result.path, "/vault/17.fafreplay")
        metadata, scfa = self.vault.files[17]
        self.assertEqual(scfa, samples.read(name))
        self.assertEqual((metadata["uid"], metadata["launched_at"], metadata["game_end"]),
                         (17, 100, 200))
        data = samples.read(name)
        oracle_ticks = fafreplay.body_ticks(data[fafreplay.body_offset(data):])
        self.assertEqual(self.index.marked, [(17, oracle_ticks)])
        self.assertEqual(result.ticks, oracle_ticks)
        self.assertEqual(self.removed, [17])
        self.assertTrue(self.successResultOf(saver.is_saved(17)))
        self.assertEqual(self.saved_files(), 1)

    def test_vault_failures_are_retried_with_backoff_and_the_spool_kept(self):
        saver = self.make_saver(vault=FakeVault(failures=3))
        saved = saver.save(5, canonical_of("8805603.scfareplay"), 0, 1, self.spool(5))
        self.assertNoResult(saved)
        self.assertEqual(self.vault.attempts, 1)
        self.assertEqual(saver.pending, {5: "vault write"})
        for wait, attempts in [(1.0, 2), (2.0, 3), (4.0, 4)]:
            self.clock.advance(wait - 0.01)
            self.assertEqual(self.vault.attempts, attempts - 1)
            self.assertEqual(self.removed, [])
            self.clock.advance(0.01)
            self.assertEqual(self.vault.attempts, attempts)
        self.assertEqual(self.successResultOf(saved).path, "/vault/5.fafreplay")
        self.assertEqual(saver.pending, {})
        self.assertEqual(self.removed, [5])
        # Only the first failure of a save is logged with its traceback (it is reported).
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_backoff_is_capped(self):
        saver = self.make_saver(vault=FakeVault(failures=6), max_retry=5.0)
        saved = saver.save(5, canonical_of("8805603.scfareplay"), 0, 1, self.spool(5))
        waits = []
        while not saved.called:
            before = self.vault.attempts
            start = self.clock.seconds()
            while self.vault.attempts == before:
                self.clock.advance(0.5)
            waits.append(self.clock.seconds() - start)
        self.assertEqual(waits, [1.0, 2.0, 4.0, 5.0, 5.0, 5.0])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_index_failures_are_retried_and_the_spool_kept_until_marked(self):
        saver = self.make_saver(index=FakeIndex(failures=2))
        saved = saver.save(8, canonical_of("8805603.scfareplay"), 0, 1, self.spool(8))
        self.assertEqual(self.vault.attempts, 1)
        self.assertEqual(saver.pending, {8: "index update"})
        self.assertTrue(self.successResultOf(saver.is_saved(8)))  # the file is in the vault already
        self.clock.advance(1.0)
        self.assertEqual(self.removed, [])
        self.clock.advance(2.0)
        self.assertEqual(self.successResultOf(saved).path, "/vault/8.fafreplay")
        self.assertEqual(self.vault.attempts, 1)  # the file is not written twice
        self.assertEqual(len(self.index.marked), 1)
        self.assertEqual(self.removed, [8])
        self.assertEqual(self.saved_files(), 1)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)

    def test_no_header_is_not_saved(self):
        saver = self.make_saver()
        saved = saver.save(9, FakeCanonical(None, b""), 0, 1, self.spool(9))
        self.failureResultOf(saved, NothingToSave)
        self.assertEqual((self.vault.attempts, self.index.marked), (0, []))
        self.assertEqual(self.removed, [9])

    def test_game_already_in_vault_is_not_saved_again(self):
        saver = self.make_saver(vault=FakeVault(existing=(10,)))
        self.assertTrue(self.successResultOf(saver.is_saved(10)))
        saved = saver.save(10, canonical_of("8805603.scfareplay"), 0, 1, self.spool(10))
        self.failureResultOf(saved, AlreadyInVault)
        self.assertEqual((self.vault.attempts, self.index.marked), (0, []))
        self.assertEqual(self.removed, [10])

    def test_ticks_match_the_reference_parser(self):
        for name in ("8805603.scfareplay", "8945286.scfareplay", "diverging_1/5"):
            data = samples.read(name)
            body = data[fafreplay.body_offset(data):]
            self.assertEqual(scan_ticks([body]).count, fafreplay.body_ticks(body))

    def test_ticks_stop_at_a_bad_frame(self):
        data = samples.read("8805603.scfareplay")
        body = data[fafreplay.body_offset(data):]
        cut = body[: scan_body(body[: len(body) // 2]).offset]  # ends with a whole frame
        self.assertEqual(scan_ticks([cut + b"\xff\x03\x00" + body]).count,
                         fafreplay.body_ticks(cut))

    def test_null_index(self):
        index = NullIndex()
        self.assertIsNone(self.successResultOf(index.mark_saved(1, 2)))
        self.assertFalse(self.successResultOf(index.is_saved(1)))


class HangingVault(FakeVault):
    """A vault whose writes never finish (a hung disk)."""

    def write(self, game_id, metadata, scfa):
        self.attempts += 1
        self.writing = defer.Deferred()
        return self.writing


class AbandonTests(SynchronousTestCase):
    """`abandon`: the stopping service gives up the saves still waiting; they keep their spool."""

    def setUp(self):
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)
        self.removed = []

    def make_saver(self, vault, index=None):
        self.clock = Clock()
        return ReplaySaver(clock=self.clock, vault=vault, metadata=HeaderMetadata(),
                           index=index or FakeIndex(), metrics=Metrics())

    def save(self, saver, game_id):
        return saver.save(game_id, canonical_of("8805603.scfareplay"), 0, 1,
                          FakeSpool(game_id, self.removed))

    def test_waiting_saves_fail_at_once_and_keep_their_spool(self):
        saver = self.make_saver(FakeVault(failures=100))
        first, second = self.save(saver, 1), self.save(saver, 2)
        index = FakeIndex(failures=100)
        third_saver = self.make_saver(FakeVault(), index)
        third = self.save(third_saver, 3)  # waits at the index update
        self.assertEqual(saver.pending, {1: "vault write", 2: "vault write"})
        saver.abandon()
        third_saver.abandon()
        for saving in (first, second, third):
            self.failureResultOf(saving, SaveAbandoned)
        self.assertEqual(self.removed, [])
        self.assertEqual(saver.pending, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no retry left behind
        self.flushLoggedErrors(OSError, ConnectionError)

    def test_an_attempt_under_way_is_given_up_too(self):
        vault = HangingVault()
        saver = self.make_saver(vault)
        saving = self.save(saver, 4)
        self.assertNoResult(saving)
        saver.abandon()
        self.failureResultOf(saving, SaveAbandoned)
        vault.writing.callback("/vault/4.fafreplay")  # finishes later: nothing happens

    def test_a_save_after_abandon_keeps_its_spool(self):
        saver = self.make_saver(FakeVault())
        saver.abandon()
        self.failureResultOf(self.save(saver, 5), SaveAbandoned)
        self.assertEqual(saver.vault.attempts, 0)
        self.assertEqual(self.removed, [])


class FailedAttemptLogTests(SynchronousTestCase):
    def test_one_error_line_per_attempt_the_first_with_its_traceback(self):
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        saver = ReplaySaver(clock=(clock := Clock()), vault=FakeVault(failures=3),
                            metadata=HeaderMetadata(), index=FakeIndex(failures=1),
                            metrics=Metrics())
        saved = saver.save(6, canonical_of("8805603.scfareplay"), 0, 1, FakeSpool(6, []))
        clock.pump([1] * (1 + 2 + 4 + 1))
        self.successResultOf(saved)
        lines = [event for event in logged if "failed at its" in event["log_format"]]
        self.assertEqual([(e["step"], e["log_level"]) for e in lines],
                         [("vault write", LogLevel.error)] * 3
                         + [("index update", LogLevel.error)])
        self.assertEqual([e["game_id"] for e in lines], [6] * 4)
        self.assertIn("No space left on device", lines[0]["cause"])
        self.assertIn("database down", lines[3]["cause"])
        # the first line of the save carries the traceback (Bugsnag); the others do not
        self.assertEqual(["log_failure" in e for e in lines], [True, False, False, False])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class StoredTicksTests(SynchronousTestCase):
    def test_ticks_of_a_stored_file_match_the_reference_parser(self):
        scfa = samples.read("22338092.scfareplay")
        self.assertEqual(stored_ticks(str(samples.path("22338092.fafreplay"))),
                         Ticks(fafreplay.body_ticks(scfa[fafreplay.body_offset(scfa):])))

    def test_a_bad_file_counts_what_it_can(self):
        directory = temporary_directory(self)
        path = os.path.join(directory, "bad.fafreplay")
        with open(path, "wb") as f:
            f.write(b"not json\n")
        ticks = stored_ticks(path)
        self.assertEqual(ticks.count, 0)
        self.assertIsInstance(ticks.error, ContainerError)
