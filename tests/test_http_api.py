"""The operator's HTTP site (replayserver.http) against a fake game registry, over 127.0.0.1."""
import json
import socket
import time

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.internet import defer, endpoints, reactor, task, threads
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from replayserver import http
from tests.support.httpsink import http_get


@attrs.define
class FakeGame:
    game_id: int
    calls: list = attrs.field(factory=list)

    def snapshot(self, detail: bool = False) -> dict:
        self.calls.append(detail)
        view = {"id": self.game_id, "writers": 2, "map": "scmp_020"}
        if detail:
            view["provenance"] = [{"writer": "a", "bytes": 10, "matched": True}]
        return view


@attrs.define
class FakeRegistry:
    running: dict

    def games(self):
        return list(self.running.values())

    def get(self, game_id: int):
        if game_id == 13:
            raise OSError("game 13 cannot be looked at")
        return self.running.get(game_id)


def raw_request(port: int, data: bytes) -> bytes:
    """Send ``data`` as it is (any bytes in the request line); the answer until the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer


class SiteTests(unittest.TestCase):
    def setUp(self):
        self.registry = FakeRegistry({7: FakeGame(7), 12: FakeGame(12)})
        self.metrics = CollectorRegistry()
        self.checks = {}
        site = http.OperatorSite(metrics=http.registry_text(self.metrics),
                                 live=http.RegistryLive(self.registry), checks=self.checks,
                                 clock=reactor)
        d = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)

        def listening(port):
            self.port = port.getHost().port
            self.addCleanup(port.stopListening)

        return d.addCallback(listening)

    @defer.inlineCallbacks
    def test_live_lists_every_game_summary(self):
        for path in ("/live", "/live/"):
            response = yield http_get(self.port, path)
            self.assertEqual(response.code, 200)
            self.assertEqual(response.headers["content-type"], "application/json")
            self.assertEqual(response.json(), {"games": [g.snapshot() for g in self.registry.games()]})
        self.assertNotIn(True, self.registry.running[7].calls)

    @defer.inlineCallbacks
    def test_live_follows_the_registry(self):
        del self.registry.running[7]
        response = yield http_get(self.port, "/live")
        self.assertEqual([g["id"] for g in response.json()["games"]], [12])

    @defer.inlineCallbacks
    def test_one_game_has_detail(self):
        response = yield http_get(self.port, "/live/12")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json(), self.registry.running[12].snapshot(detail=True))
        self.assertIn("provenance", response.json())

    @defer.inlineCallbacks
    def test_unknown_or_malformed_game_is_json_404(self):
        huge = "9" * 5000  # beyond Python's int-string limit
        for path in ("/live/8", "/live/abc", "/live/-1", "/nothing", f"/live/{huge}",
                     f"/live/{2**64}", f"/live/{2**64 - 1}",
                     "/live/0" + "0" * 5000 + "8", "/live/1%0a2"):
            response = yield http_get(self.port, path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(response.headers["content-type"], "application/json")
            self.assertIn("error", response.json())

    @defer.inlineCallbacks
    def test_leading_zeros_name_the_same_game(self):
        response = yield http_get(self.port, "/live/" + "0" * 5000 + "12")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.json()["id"], 12)

    @defer.inlineCallbacks
    def test_client_paths_never_reach_the_log(self):
        lines = []

        def observe(event):
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        # Twisted refuses most control characters in a request line, not DEL or 0x80-0xB0
        paths = [b"/live/MARK\x1b[31m", b"/nothing/MARK\rforged", b"/MARK%0aforged",
                 b"/live/" + b"9" * 5000 + b"MARK", b"/live/MARK\x7f\x7f", b"/MARK\x9b31m"]
        for method in (b"GET", b"HEAD", b"POST", b"FOO"):
            for path in paths + [b"/metrics/MARK\x9b", b"/live/12MARK", b"/healthz/MARK",
                                 b"/live/13?MARK\x9b31m"]:
                answer = yield threads.deferToThread(
                    raw_request, self.port, method + b" " + path + b" HTTP/1.0\r\n\r\n")
                self.assertTrue(answer.startswith(b"HTTP/1."), answer)  # 400 for some
        self.assertEqual([line for line in lines if "Traceback" in line], [])
        marked = [line for line in lines if "MARK" in line]
        self.assertFalse([line for line in marked if "failed" not in line], "an access log line")
        self.assertEqual(len(marked), 2)  # game 13 failed, for GET and for HEAD
        for line in lines:
            self.assertTrue(line.isprintable(), line)

    @defer.inlineCallbacks
    def test_methods_other_than_get_are_405_json(self):
        for method in (b"POST", b"PUT", b"DELETE", b"FOO"):
            for path in (b"/", b"/live", b"/live/12", b"/metrics", b"/healthz", b"/x\x9b"):
                answer = yield threads.deferToThread(
                    raw_request, self.port, method + b" " + path + b" HTTP/1.0\r\n\r\n")
                head, _, body = answer.partition(b"\r\n\r\n")
                self.assertTrue(head.startswith(b"HTTP/1.0 405 "), answer)
                self.assertIn(b"\r\nAllow: GET, HEAD", head)
                self.assertIn("error", json.loads(body))

    @defer.inlineCallbacks
    def test_metrics_exposes_the_given_registry(self):
        Counter("replayserver_example_total", "example", ["result"], registry=self.metrics) \
            .labels(result="Bad data").inc(3)
        Gauge("replayserver_example_count", "example", registry=self.metrics).set(5)
        response = yield http_get(self.port, "/metrics")
        self.assertEqual(response.code, 200)
        text = response.body.decode()
        self.assertIn('replayserver_example_total{result="Bad data"} 3.0', text)
        self.assertIn("replayserver_example_count 5.0", text)

    @defer.inlineCallbacks
    def test_healthz_over_the_wire(self):
        self.checks_ok = True

        def flaky():
            if not self.checks_ok:
                raise OSError("vault gone")

        # the site copied the mapping: rebuild with a check in it
        site = http.OperatorSite(metrics=http.registry_text(self.metrics),
                                 live=http.RegistryLive(self.registry),
                                 checks={"vault": flaky}, clock=reactor)
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        ok = yield http_get(port.getHost().port, "/healthz")
        self.checks_ok = False
        failing = yield http_get(port.getHost().port, "/healthz")
        self.assertEqual((ok.code, ok.json()), (200, {"status": "ok", "checks": {"vault": "ok"}}))
        self.assertEqual(failing.code, 503)
        self.assertEqual(failing.json(), {"status": "failing", "checks": {"vault": "OSError: vault gone"}})


class Answered:
    """What a Deferred answer of `http.Health` gave (code, JSON body), once it fired."""

    def __init__(self, answer):
        self.code = self.body = None
        answer.addCallback(self._got)

    def _got(self, answer):
        self.code, content_type, body = answer
        assert content_type == b"application/json"
        self.body = json.loads(body)


class HealthTests(unittest.SynchronousTestCase):
    def test_all_checks_pass(self):
        clock = task.Clock()
        health = http.Health({"a": lambda: None, "b": lambda: defer.succeed(3)}, clock)
        answered = Answered(health.answer())
        self.assertEqual(answered.code, 200)
        self.assertEqual(answered.body, {"status": "ok", "checks": {"a": "ok", "b": "ok"}})

    def test_failing_check_gives_503_with_reasons(self):
        clock = task.Clock()
        health = http.Health({
            "listeners": lambda: None,
            "database": lambda: defer.fail(ConnectionRefusedError("no answer")),
        }, clock)
        answered = Answered(health.answer())
        self.assertEqual(answered.code, 503)
        self.assertEqual(answered.body["status"], "failing")
        self.assertEqual(answered.body["checks"]["listeners"], "ok")
        self.assertIn("ConnectionRefusedError", answered.body["checks"]["database"])
        self.assertIn("no answer", answered.body["checks"]["database"])

    def test_check_that_hangs_times_out_and_is_cancelled(self):
        clock = task.Clock()
        cancelled = []
        health = http.Health({"database": lambda: defer.Deferred(cancelled.append),
                              "vault": lambda: None}, clock, timeout=2.0)
        answered = Answered(health.answer())
        self.assertIsNone(answered.code)
        clock.advance(2.0)
        self.assertEqual(len(cancelled), 1)
        self.assertEqual(answered.code, 503)
        self.assertEqual(answered.body["checks"], {"database": "TimeoutError: no answer within 2 s",
                                                   "vault": "ok"})

    def test_check_that_fails_later_or_raises(self):
        clock = task.Clock()
        later = defer.Deferred()
        health = http.Health({"later": lambda: later, "raises": lambda: 1 / 0}, clock)
        answered = Answered(health.answer())
        self.assertIsNone(answered.code)
        later.errback(OSError("the last replay could not be written"))
        self.assertEqual(answered.code, 503)
        self.assertEqual(answered.body["checks"], {
            "later": "OSError: the last replay could not be written",
            "raises": "ZeroDivisionError: division by zero"})
        self.assertEqual(clock.getDelayedCalls(), [])  # no timeout left behind


class ClientGoneTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_client_gone_before_the_answer(self):
        """The answer comes after the client left: nothing is written, nothing fails (trial
        fails the test on any error logged)."""
        pending = defer.Deferred()
        asked = []

        def check():
            asked.append(True)
            return pending

        site = http.OperatorSite(metrics=http.registry_text(CollectorRegistry()),
                                 live=http.RegistryLive(FakeRegistry({})),
                                 checks={"database": check}, clock=reactor)
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)

        def ask_and_leave():
            with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                while not asked:
                    time.sleep(0.01)

        yield threads.deferToThread(ask_and_leave)
        yield task.deferLater(reactor, 0.3, lambda: None)  # the server sees the close
        pending.callback(None)
