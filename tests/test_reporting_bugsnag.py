"""Bugsnag error reports (replayserver.bugsnag_reporter) delivered to a local HTTP sink, and JSON logs."""
import io
import json
import sys
import types

from twisted.internet import defer, reactor
from twisted.logger import Logger, LogLevel
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.trial import unittest

from replayserver import bugsnag_reporter as reporting
from replayserver import reporting as logs
from replayserver.config import BugsnagSection
from tests.support.httpsink import HttpSink

API_KEY = "0123456789abcdef0123456789abcdef"


class SaveFailed(Exception):
    pass


def failure_of(exception: Exception) -> Failure:
    try:
        raise exception
    except Exception:
        return Failure()


def report_of(posted) -> dict:
    """The single event of a Bugsnag notification payload."""
    (event,) = posted.json()["events"]
    return event


class ReporterTests(unittest.TestCase):

    @defer.inlineCallbacks
    def setUp(self):
        self.log = Logger(namespace="replayserver.game.game")
        self.sink = HttpSink()
        url = yield self.sink.start()
        self.addCleanup(self.sink.stop)
        self.reporter = reporting.BugsnagReporter(api_key=API_KEY, endpoint=url, reactor=reactor,
                                                  release_stage="test")
        self.reporter.startService()
        self.addCleanup(self.stop_reporter)

    def stop_reporter(self):
        self.flushLoggedErrors()  # trial fails tests that log errors; logging them is the point here
        if self.reporter.running:
            return self.reporter.stopService()

    @defer.inlineCallbacks
    def test_logged_failure_reaches_bugsnag_with_the_game_id(self):
        self.log.failure("saving game {game_id} failed", failure_of(SaveFailed("vault gone")),
                         game_id=4242)
        (posted,) = yield self.sink.wait_for(1)
        self.assertEqual(posted.headers["bugsnag-api-key"], API_KEY)
        event = report_of(posted)
        self.assertEqual(event["exceptions"][0]["errorClass"], "tests.test_reporting_bugsnag.SaveFailed")
        self.assertEqual(event["exceptions"][0]["message"], "vault gone")
        self.assertEqual(event["metaData"]["game"], {"id": 4242})
        self.assertEqual(event["metaData"]["log"]["message"], "saving game 4242 failed")
        self.assertEqual(event["context"], "replayserver.game.game")
        self.assertEqual(event["releaseStage"], "test")
        self.assertTrue(event["unhandled"])
        functions = [frame["method"] for frame in event["exceptions"][0]["stacktrace"]]
        self.assertIn("failure_of", functions)

    @defer.inlineCallbacks
    def test_legacy_log_err_is_reported(self):
        legacy_log.err(failure_of(ValueError("bad")), "Unhandled Error")
        (posted,) = yield self.sink.wait_for(1)
        event = report_of(posted)
        self.assertEqual(event["exceptions"][0]["errorClass"], "ValueError")
        self.assertNotIn("game", event["metaData"])

    @defer.inlineCallbacks
    def test_unhandled_deferred_error_is_reported(self):
        d = defer.fail(failure_of(KeyError("lost")))
        del d  # garbage-collected with an unhandled failure: Twisted logs it
        import gc
        gc.collect()
        (posted,) = yield self.sink.wait_for(1)
        self.assertEqual(report_of(posted)["exceptions"][0]["errorClass"], "KeyError")

    @defer.inlineCallbacks
    def test_noise_and_non_errors_are_not_reported(self):
        try:
            raise ConnectionError("server has gone away")
        except ConnectionError:
            legacy_log.err(None, "Rollback failed")  # adbapi's reconnect noise
        self.log.failure("retrying", failure_of(OSError("transient")), level=LogLevel.warn)
        self.log.error("an error without a failure {game_id}", game_id=1)
        self.log.info("hello")
        # the worker sends in order: once this one arrives, nothing before it was queued
        self.log.failure("the real one", failure_of(SaveFailed("x")))
        yield self.sink.wait_for(1)
        yield self.reporter.stopService()
        self.assertEqual([report_of(p)["metaData"]["log"]["message"] for p in self.sink.received],
                         ["the real one"])

    @defer.inlineCallbacks
    def test_same_error_for_the_same_game_is_sent_once(self):
        for attempt in range(3):
            self.log.failure("saving game {game_id} failed", failure_of(SaveFailed(str(attempt))),
                             game_id=7)
        self.log.failure("saving game {game_id} failed", failure_of(SaveFailed("other")), game_id=8)
        yield self.sink.wait_for(2)
        yield self.reporter.stopService()
        self.assertEqual([report_of(p)["metaData"]["game"]["id"] for p in self.sink.received], [7, 8])

    @defer.inlineCallbacks
    def test_queued_reports_are_sent_before_stop_completes(self):
        for game_id in range(5):
            self.log.failure("failed", failure_of(SaveFailed()), game_id=game_id)
        yield self.reporter.stopService()
        self.assertEqual(len(self.sink.received), 5)
        self.log.failure("after stop", failure_of(SaveFailed()), game_id=99)
        self.assertEqual(len(self.sink.received), 5)

    @defer.inlineCallbacks
    def test_queue_is_bounded(self):
        yield self.reporter.stopService()
        self.reporter = reporting.BugsnagReporter(api_key=API_KEY, endpoint=self.sink.url,
                                                  reactor=reactor, queue_limit=2)
        self.reporter.startService()
        for game_id in range(6):  # all logged before the worker can finish one (it needs the reactor)
            self.log.failure("failed", failure_of(SaveFailed()), game_id=game_id)
        yield self.reporter.stopService()
        self.assertEqual(len(self.sink.received), 2)


class ConfigTests(unittest.SynchronousTestCase):
    def test_api_key_gives_a_reporter(self):
        section = BugsnagSection(api_key=API_KEY, endpoint="http://127.0.0.1:9/",
                                 release_stage="staging")
        reporter = reporting.reporter_from_config(section, reactor)
        self.assertIsInstance(reporter, reporting.BugsnagReporter)
        self.assertFalse(reporter.running)


class JsonLoggerTests(unittest.SynchronousTestCase):
    def test_one_json_object_per_line(self):
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = logs.json_logger()
        log = Logger(namespace="replayserver.accept", observer=observer)
        log.info("writer {peer} for game {game_id} ended: {result}", peer="127.0.0.1:5000",
                 game_id=12, result="Success")
        log.failure("boom", failure_of(SaveFailed("disk")), game_id=12)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual((first["game_id"], first["result"], first["log_namespace"]),
                         (12, "Success", "replayserver.accept"))
        self.assertEqual(first["log_level"]["name"], "info")
        self.assertEqual(second["log_level"]["name"], "critical")
        self.assertIn("SaveFailed", json.dumps(second["log_failure"]))
