"""End to end, against ``twistd -n replayserver``: metrics, live API, health, WebSocket, Bugsnag.

The server runs as its own process (tests.support.server) with its HTTP and WebSocket
listeners on ports the system picks; their ports are read from the server's log. Blocking
socket clients run in threads; WebSocket clients and the Bugsnag sink run on the reactor.
"""
import re
import shutil
import signal
import tempfile
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from tests.support import samples
from tests.support.httpsink import HttpSink, http_get, websocket_connect
from tests.support.server import ServerProcess, joined, receive_all, send_stream

LOCAL = "tcp:0:interface=127.0.0.1"
HTTP_LISTENING = re.compile(r"HTTP listener on IPv4Address\(.*port=(\d+)\)")
WS_LISTENING = re.compile(r"WebSocket listener on IPv4Address\(.*port=(\d+)\)")
REPLAY = samples.read("8945286.scfareplay")
CHUNK, PAUSE = 512, 0.04  # about 2.5 s per stream


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def metric_values(text: str) -> dict:
    """{(sample name, frozenset of labels): value} of a Prometheus text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(values: dict, name: str, **labels: str) -> float:
    return values[(name, frozenset(labels.items()))]


@defer.inlineCallbacks
def ws_send_stream(peer, data: bytes, *, clean: bool):
    """Stream ``data`` in binary messages; then close with 1000, or drop the TCP connection."""
    for start in range(0, len(data), CHUNK):
        peer.sendMessage(data[start:start + CHUNK], isBinary=True)
        yield sleep(PAUSE)
    if clean:
        peer.sendClose(1000)
    else:
        peer.transport.loseConnection()  # no WebSocket close handshake
    yield peer.closed


class OpsEndToEnd(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def start_server(self, **settings):
        directory = Path(tempfile.mkdtemp(prefix="replayserver-e2e-ops-"))
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        settings.setdefault("server", {}).update(http_listen=LOCAL, websocket_listen=LOCAL)
        server = ServerProcess(directory, settings)
        yield threads.deferToThread(server.start)
        self.addCleanup(threads.deferToThread, server.kill)
        log = server.log()
        self.http_port = int(HTTP_LISTENING.search(log).group(1))
        self.ws_port = int(WS_LISTENING.search(log).group(1))
        self.server = server
        return server

    def get(self, path: str):
        return http_get(self.http_port, path)

    @defer.inlineCallbacks
    def metrics(self):
        response = yield self.get("/metrics")
        self.assertEqual(response.code, 200)
        return metric_values(response.body.decode())

    @defer.inlineCallbacks
    def wait_until(self, path: str, predicate, timeout: float = 15.0):
        """GET ``path`` until ``predicate(response)`` holds; the last response."""
        for _ in range(int(timeout / 0.1)):
            response = yield self.get(path)
            if predicate(response):
                return response
            yield sleep(0.1)
        self.fail(f"{path} never satisfied the condition; last: {response.code} {response.body!r}\n"
                  f"{self.server.log()}")

    @defer.inlineCallbacks
    def ws_connection(self, kind: str, game_id: int, name: str):
        peer = yield websocket_connect(self.ws_port, "/ignored/path")
        peer.sendMessage(f"{kind}/{game_id}/{name}".encode() + b"\0", isBinary=True)
        return peer

    @defer.inlineCallbacks
    def test_mixed_transports_share_a_game_and_operators_see_it(self):
        server = yield self.start_server()
        game_id = 9001
        tcp_writers = []
        for name in ("tcp1", "tcp2"):
            tcp_writers.append((yield threads.deferToThread(server.connect, "P", game_id, name)))
        ws_writer = yield self.ws_connection("P", game_id, "ws1")
        yield self.wait_until(f"/live/{game_id}", lambda r: r.code == 200 and r.json()["writers"] == 3)
        tcp_reader = yield threads.deferToThread(server.connect, "G", game_id, "reader1")
        ws_reader = yield self.ws_connection("G", game_id, "reader2")
        yield self.wait_until(f"/live/{game_id}", lambda r: r.json()["readers"] == 2)

        streaming = [threads.deferToThread(send_stream, c, REPLAY, CHUNK, PAUSE) for c in tcp_writers]
        streaming.append(ws_send_stream(ws_writer, REPLAY, clean=True))
        tcp_received = threads.deferToThread(receive_all, tcp_reader)
        yield sleep(1.5)

        # while it runs
        live = (yield self.get("/live")).json()["games"]
        (game,) = [g for g in live if g["id"] == game_id]
        self.assertEqual((game["writers"], game["readers"]), (3, 2))
        self.assertTrue(game["map"])
        self.assertTrue(game["players"])
        self.assertGreater(game["ticks_received"], 0)
        for key in ("started_at", "ticks_visible", "watchable_at"):
            self.assertIn(key, game)
        detail = (yield self.get(f"/live/{game_id}")).json()
        self.assertEqual(sorted(p["name"] for p in detail["provenance"]), ["tcp1", "tcp2", "ws1"])
        values = yield self.metrics()
        self.assertEqual(metric(values, "replayserver_active_connections_count", category="writer"), 3)
        self.assertEqual(metric(values, "replayserver_active_connections_count", category="reader"), 2)
        self.assertEqual(metric(values, "replayserver_active_connections_count", category="initial"), 0)
        self.assertEqual(metric(values, "replayserver_running_replays_count"), 1)
        self.assertEqual(metric(values, "replayserver_finished_replays_total"), 0)

        yield defer.gatherResults(streaming)
        tcp_bytes = joined((yield tcp_received))
        self.assertEqual((yield ws_reader.closed), (True, 1000))
        self.assertEqual(tcp_bytes, ws_reader.body())
        self.assertEqual(tcp_bytes, REPLAY)
        self.assertTrue(all(binary for _, binary in ws_reader.messages))
        yield threads.deferToThread(server.wait_for_file, game_id)

        # after it
        yield self.wait_until("/metrics", lambda r: metric(
            metric_values(r.body.decode()), "replayserver_running_replays_count") == 0)
        values = yield self.metrics()
        self.assertEqual(metric(values, "replayserver_served_connections_total", result="Success"), 5)
        self.assertEqual(metric(values, "replayserver_finished_replays_total"), 1)
        self.assertEqual(metric(values, "replayserver_saved_replay_files_total"), 1)
        for category in ("initial", "reader", "writer"):
            self.assertEqual(metric(values, "replayserver_active_connections_count", category=category), 0)
        self.assertNotIn(game_id, [g["id"] for g in (yield self.get("/live")).json()["games"]])
        gone = yield self.get(f"/live/{game_id}")
        self.assertEqual(gone.code, 404)
        self.assertIn("error", gone.json())

    @defer.inlineCallbacks
    def test_websocket_close_1000_completes_a_stream_and_a_dropped_one_is_cut(self):
        server = yield self.start_server()
        game_id = 9002
        keeper = yield threads.deferToThread(server.connect, "P", game_id, "keeper")  # keeps it running
        clean = yield self.ws_connection("P", game_id, "clean")
        cut = yield self.ws_connection("P", game_id, "cut")
        yield defer.gatherResults([ws_send_stream(clean, REPLAY, clean=True),
                                   ws_send_stream(cut, REPLAY[: len(REPLAY) // 2], clean=False)])

        def both_ended(response):
            ended = [p for p in response.json()["provenance"] if p["name"] in ("clean", "cut")]
            return len(ended) == 2 and all(p["ended"] for p in ended)

        detail = yield self.wait_until(f"/live/{game_id}", both_ended)
        by_name = {p["name"]: p for p in detail.json()["provenance"]}
        self.assertIs(by_name["clean"]["clean_end"], True)
        self.assertIs(by_name["cut"]["clean_end"], False)
        self.assertEqual(by_name["clean"]["received"], len(REPLAY))
        values = yield self.metrics()
        self.assertEqual(metric(values, "replayserver_served_connections_total", result="Success"), 1)
        self.assertEqual(metric(values, "replayserver_served_connections_total", result="I/O error"), 1)
        yield threads.deferToThread(keeper.close)
        yield threads.deferToThread(server.wait_for_file, game_id)

    @defer.inlineCallbacks
    def test_healthz_follows_the_vault(self):
        server = yield self.start_server()
        healthy = yield self.get("/healthz")
        self.assertEqual((healthy.code, healthy.json()["status"]), (200, "ok"))
        away = server.vault.with_name("replays.away")
        server.vault.rename(away)
        server.vault.write_bytes(b"")  # a file where the vault directory should be
        failing = yield self.get("/healthz")
        self.assertEqual(failing.code, 503)
        self.assertNotEqual(failing.json()["checks"]["vault"], "ok")
        self.assertEqual(failing.json()["checks"]["listeners"], "ok")
        server.vault.unlink()
        away.rename(server.vault)
        self.assertEqual((yield self.get("/healthz")).code, 200)

    @defer.inlineCallbacks
    def test_healthz_writes_nothing_to_the_vault(self):
        server = yield self.start_server()

        def tree():
            return {str(path): path.stat().st_mtime_ns
                    for path in [server.vault, *server.vault.rglob("*")]}

        before = tree()
        yield sleep(0.05)  # a write now would show in a modification time
        for _ in range(5):
            response = yield self.get("/healthz")
            self.assertEqual(response.code, 200, response.body)
        self.assertEqual(tree(), before)

    @defer.inlineCallbacks
    def test_any_game_id_path_is_answered_and_none_reaches_the_log(self):
        server = yield self.start_server()
        for path in ("/live/" + "9" * 5000, f"/live/{2**64}", "/live/12%0aMARK",
                     "/live/MARK%1b[2J", "/MARK"):
            response = yield self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertIn("error", response.json())
        response = yield self.get("/live/" + "0" * 5000 + "9004")
        self.assertEqual((response.code, response.json()["error"]),
                         (404, "no running game 9004"))
        yield self.get("/metrics")
        log = server.log()
        for text in ("MARK", "GET /", "Traceback", "Unhandled error"):
            self.assertNotIn(text, log)

    @defer.inlineCallbacks
    def test_failed_save_reaches_bugsnag_once_with_the_game_id(self):
        sink = HttpSink()
        url = yield sink.start()
        self.addCleanup(sink.stop)
        server = yield self.start_server(bugsnag={"api_key": "0" * 8 + "f" * 24, "endpoint": url,
                                                  "release_stage": "e2e"})
        game_id = 9003
        away = server.vault.with_name("replays.away")
        server.vault.rename(away)
        server.vault.write_bytes(b"")  # the save cannot write
        writer = yield threads.deferToThread(server.connect, "P", game_id, "w")
        yield threads.deferToThread(send_stream, writer, REPLAY, 8192)
        (posted,) = yield sink.wait_for(1)
        (event,) = posted.json()["events"]
        self.assertEqual(event["metaData"]["game"]["id"], game_id)
        self.assertEqual(event["releaseStage"], "e2e")
        yield sleep(3.5)  # the saver retries after 1 s and 2 s more
        self.assertEqual(len(sink.received), 1)
        server.vault.unlink()
        away.rename(server.vault)
        yield threads.deferToThread(server.wait_for_file, game_id, 30.0)
        # the reporter does not hold up a clean shutdown (twistd re-raises SIGTERM at exit)
        self.assertIn((yield threads.deferToThread(server.terminate)), (0, -signal.SIGTERM))
