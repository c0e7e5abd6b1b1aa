"""The operator's HTTP site (replayserver.http) against a fake game registry, over 127.0.0.1."""
import json
import socket

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.twisted import MetricsResource
from twisted.internet import defer, endpoints, reactor, task, threads
from twisted.internet.error import ConnectionLost
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

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
        site = http.make_site(metrics=MetricsResource(self.metrics),
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
            for path in paths + [b"/metrics/MARK\x9b", b"/live/12MARK", b"/healthz/MARK"]:
                answer = yield threads.deferToThread(
                    raw_request, self.port, method + b" " + path + b" HTTP/1.0\r\n\r\n")
                self.assertTrue(answer.startswith(b"HTTP/1."), answer)  # 400 for some
        self.assertEqual([line for line in lines if "Traceback" in line], [])
        self.assertFalse([line for line in lines if "MARK" in line and "GET" in line],
                         "an access log line")
        self.assertTrue([line for line in lines if "MARK" in line])  # HEAD with a body
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

        # make_site copied the mapping: rebuild with a check in it
        site = http.make_site(metrics=MetricsResource(self.metrics),
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


def render(resource, path=b"healthz"):
    request = DummyRequest([path])
    result = resource.render(request)
    return request, result


class HealthTests(unittest.SynchronousTestCase):
    def test_all_checks_pass(self):
        clock = task.Clock()
        health = http.Health({"a": lambda: None, "b": lambda: defer.succeed(3)}, clock)
        request, _ = render(health)
        self.assertEqual(request.finished, 1)
        self.assertEqual(request.responseCode, 200)
        self.assertIn(b'"status":"ok"', b"".join(request.written))

    def test_failing_check_gives_503_with_reasons(self):
        clock = task.Clock()
        health = http.Health({
            "listeners": lambda: None,
            "database": lambda: defer.fail(ConnectionRefusedError("no answer")),
        }, clock)
        request, _ = render(health)
        self.assertEqual(request.responseCode, 503)
        body = b"".join(request.written).decode()
        self.assertIn('"listeners":"ok"', body)
        self.assertIn("ConnectionRefusedError", body)
        self.assertIn("no answer", body)

    def test_check_that_hangs_times_out_and_is_cancelled(self):
        clock = task.Clock()
        cancelled = []
        health = http.Health({"database": lambda: defer.Deferred(cancelled.append),
                              "vault": lambda: None}, clock, timeout=2.0)
        request, _ = render(health)
        self.assertEqual(request.finished, 0)
        clock.advance(2.0)
        self.assertEqual(request.finished, 1)
        self.assertEqual(len(cancelled), 1)
        self.assertEqual(request.responseCode, 503)
        body = json.loads(b"".join(request.written))
        self.assertEqual(body["checks"], {"database": "TimeoutError: no answer within 2 s",
                                          "vault": "ok"})

    def test_check_that_fails_later_or_raises(self):
        clock = task.Clock()
        later = defer.Deferred()
        health = http.Health({"later": lambda: later, "raises": lambda: 1 / 0}, clock)
        request, _ = render(health)
        self.assertEqual(request.finished, 0)
        later.errback(OSError("the last replay could not be written"))
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(json.loads(b"".join(request.written))["checks"], {
            "later": "OSError: the last replay could not be written",
            "raises": "ZeroDivisionError: division by zero"})
        self.assertEqual(clock.getDelayedCalls(), [])  # no timeout left behind

    def test_client_gone_before_the_answer(self):
        clock = task.Clock()
        pending = defer.Deferred()
        health = http.Health({"database": lambda: pending}, clock)
        request, _ = render(health)
        request.processingFailed(Failure(ConnectionLost("gone")))  # the client dropped
        pending.callback(None)
        self.assertEqual(request.written, [])
