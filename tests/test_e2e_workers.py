"""End to end with ``server.workers: 2``: games pinned to two worker processes.

Games with odd ids run in worker 1, even ids in worker 0. A worker killed with SIGKILL is
restarted and saves its games from its spool while the other worker's games go on untouched;
SIGTERM saves every game of every worker; /metrics, /live and /healthz cover both workers.
Connections for a worker that is restarting wait within ``limits.worker_queue`` and
``limits.worker_queue_timeout``. With ``--logger=replayserver.reporting.json_logger`` every
line of the server's output, the workers' events included, is a JSON event.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from tests.support import samples
from tests.support.clients import still_open
from tests.support.server import (
    ServerProcess,
    joined,
    receive_all,
    send_stream,
    temporary_directory,
)

WORKER_STARTED = re.compile(r"Worker (\d+) started \(pid (\d+)\)")
HTTP_LISTENING = re.compile(r"HTTP listener on IPv4Address\(.*port=(\d+)\)")
SETTINGS = {"server": {"workers": 2}, "replay": {"delay": 0.5, "grace_period": 0.5}}
REPLAY = samples.read("8945286.scfareplay")
ODD, EVEN = 6001, 6002  # worker 1, worker 0


def worker_pids(server: ServerProcess) -> dict[int, int]:
    """The latest pid of each worker, from the server's log."""
    return {int(index): int(pid) for index, pid in WORKER_STARTED.findall(server.log())}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]




def wait_for(condition, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {timeout} s: {what}")
        time.sleep(0.05)


class JsonLoggingServer(ServerProcess):
    """A server whose log is JSON lines (``--logger``); its port is chosen beforehand, since
    the start-up line that names it is JSON too."""

    def __init__(self, directory: str | Path, settings: dict, **options) -> None:
        port = free_port()
        settings = {**settings, "server": {**settings.get("server", {}),
                                           "listen": f"tcp:{port}:interface=127.0.0.1"}}
        super().__init__(directory, settings, **options)
        self.port = port

    def command(self) -> list[str]:
        twistd, *rest = super().command()
        return [twistd, "--logger=replayserver.reporting.json_logger", *rest]


class WorkersEndToEnd(SynchronousTestCase):
    def start(self, server_class: type[ServerProcess] = ServerProcess, **sections
              ) -> ServerProcess:
        settings = {**SETTINGS, **sections}
        settings["server"] = {**SETTINGS["server"], **sections.get("server", {})}
        # the environment would override the file (REPLAYSERVER_SERVER_WORKERS=1 runs)
        server = server_class(temporary_directory(self), settings,
                              environment={"REPLAYSERVER_SERVER_WORKERS": "2"}).start()
        self.addCleanup(server.kill)
        self.threads = ThreadPoolExecutor(max_workers=8)
        self.addCleanup(self.threads.shutdown)
        return server

    def saved(self, server: ServerProcess, game_id: int) -> bytes:
        return read_fafreplay(server.wait_for_file(game_id, timeout=20)).scfa

    def test_sigkill_of_one_worker_leaves_the_other_workers_games_alone(self):
        server = self.start()
        pids = worker_pids(server)
        self.assertEqual(sorted(pids), [0, 1])
        header = parse_header(REPLAY).size
        part = header + (len(REPLAY) - header) // 2
        # The odd game streams through the kill; the even game has sent half of its replay.
        odd_writer = server.connect("P", ODD, "odd")
        streaming = self.threads.submit(send_stream, odd_writer, REPLAY, 512, 0.02)
        even_writer = server.connect("P", EVEN, "even")
        even_writer.sendall(REPLAY[:part])
        time.sleep(0.3)
        odd_reader = self.threads.submit(receive_all, server.connect("G", ODD, "watcher"))
        time.sleep(1.5)  # more than the spool's flush interval

        os.kill(pids[0], signal.SIGKILL)
        even_writer.settimeout(10)
        self.assertEqual(even_writer.recv(1), b"")  # its worker is gone
        even_writer.close()

        streaming.result(timeout=30)
        self.assertTrue(joined(odd_reader.result(timeout=30)) == REPLAY)
        self.assertTrue(self.saved(server, ODD) == REPLAY)
        recovered = self.saved(server, EVEN)
        self.assertTrue(recovered == REPLAY[:part], f"recovered {len(recovered)} of {part} bytes")
        restarted = worker_pids(server)
        self.assertEqual(restarted[1], pids[1])
        self.assertNotEqual(restarted[0], pids[0])
        self.assertTrue(alive(restarted[0]) and alive(pids[1]))
        log = server.log()
        self.assertIn("Worker 0 died", log)
        self.assertNotIn("Traceback", log)
        # The restarted worker takes new games.
        send_stream(server.connect("P", EVEN + 2, "next"), REPLAY)
        self.assertTrue(self.saved(server, EVEN + 2) == REPLAY)

    def test_sigterm_saves_the_games_of_every_worker(self):
        server = self.start(replay={"delay": 0.5, "grace_period": 60})
        pids = worker_pids(server)
        writers = {game_id: server.connect("P", game_id, "w") for game_id in (ODD, EVEN)}
        for writer in writers.values():
            writer.sendall(REPLAY[:20000])
        time.sleep(0.5)
        # twistd ends by re-raising the signal it stopped for, once everything is stopped
        self.assertEqual(server.terminate(), -signal.SIGTERM)
        for game_id in writers:
            self.assertTrue(self.saved(server, game_id) == REPLAY[:20000])
        self.assertFalse(any(alive(pid) for pid in pids.values()))
        log = server.log()
        self.assertLess(log.index("Closed)"), log.index("Shutting down: every worker saves"))
        self.assertLess(log.rindex("All games saved"), log.index("All workers stopped"))
        self.assertIn("Server Shut Down", log)

    def test_one_metrics_and_one_live_api_for_all_workers(self):
        server = self.start(server={"http_listen": "tcp:0:interface=127.0.0.1"})
        port = int(HTTP_LISTENING.search(server.log()).group(1))
        writers = [server.connect("P", game_id, "w") for game_id in (ODD, EVEN)]
        for writer in writers:
            writer.sendall(REPLAY[:5000])
        reader = server.connect("G", ODD, "watcher")
        self.addCleanup(lambda: [c.close() for c in (*writers, reader)])
        deadline = time.monotonic() + 10
        while True:
            games = self.get_json(port, "/live")["games"]
            if sorted(game["id"] for game in games) == [ODD, EVEN] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(sorted((game["id"], game["writers"], game["readers"]) for game in games),
                         [(ODD, 1, 1), (EVEN, 1, 0)])
        detail = self.get_json(port, f"/live/{EVEN}")
        self.assertEqual([p["name"] for p in detail["provenance"]], ["w"])
        with self.assertRaises(urllib.error.HTTPError) as missing:
            self.get_json(port, f"/live/{EVEN + 2}")
        self.assertEqual(missing.exception.code, 404)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        values = {(s.name, frozenset(s.labels.items())): s.value
                  for family in text_string_to_metric_families(text) for s in family.samples}
        self.assertEqual(values["replayserver_active_connections_count",
                                frozenset({("category", "writer")})], 2)
        self.assertEqual(values["replayserver_active_connections_count",
                                frozenset({("category", "reader")})], 1)
        self.assertEqual(values["replayserver_running_replays_count", frozenset()], 2)

    @staticmethod
    def get_json(port: int, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def test_connections_for_a_restarting_worker_wait_within_bounds(self):
        server = self.start(limits={"worker_queue": 3, "worker_queue_timeout": 1})
        # Worker 0 dies again and again: its restart delay grows (0.5, 1, 2, then 4 s).
        for restarts in range(1, 4):
            pid = worker_pids(server)[0]
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: worker_pids(server)[0] != pid, what=f"restart {restarts}")
        honest = server.connect("P", ODD, "honest")
        streaming = self.threads.submit(send_stream, honest, REPLAY, 512, 0.01)
        os.kill(worker_pids(server)[0], signal.SIGKILL)
        wait_for(lambda: server.log().count("Worker 0 died") == 4, what="the fourth death")
        self.assertIn("restarting it in 4.0 s", server.log())
        waiting = [server.connect("P", EVEN + 2 * i, "queued") for i in range(5)]
        time.sleep(0.3)
        self.assertEqual(sorted(still_open(c) for c in waiting), [False] * 2 + [True] * 3)
        wait_for(lambda: not any(still_open(c) for c in waiting), timeout=3,
                 what="the queue's timeout")
        log = server.log()
        self.assertEqual(log.count("limit worker_queue reached"), 2)
        self.assertEqual(log.count("limit worker_queue_timeout reached"), 3)
        # The other worker's game went on; the restarted worker takes new games.
        streaming.result(timeout=30)
        self.assertTrue(self.saved(server, ODD) == REPLAY)
        wait_for(lambda: "Worker 0 started" in server.log()[len(log):], what="the restart")
        send_stream(server.connect("P", EVEN, "later"), REPLAY)
        self.assertTrue(self.saved(server, EVEN) == REPLAY)
        self.assertNotIn("Traceback", server.log())

    def test_healthz_includes_the_workers_checks(self):
        server = self.start(server={"http_listen": "tcp:0:interface=127.0.0.1"},
                            database={"host": "127.0.0.1", "port": free_port()})
        port = int(HTTP_LISTENING.search(server.log()).group(1))
        with self.assertRaises(urllib.error.HTTPError) as failing:
            self.get_json(port, "/healthz")
        self.assertEqual(failing.exception.code, 503)
        answer = json.loads(failing.exception.read())
        self.assertEqual(answer["status"], "failing")
        checks = answer["checks"]
        self.assertEqual((checks["listeners"], checks["workers"], checks["vault"]),
                         ("ok", "ok", "ok"))
        self.assertIn("worker 0: ", checks["database"])
        self.assertIn("worker 1: ", checks["database"])
        # A worker that is not running fails the "workers" check.
        os.kill(worker_pids(server)[1], signal.SIGSTOP)
        os.kill(worker_pids(server)[1], signal.SIGKILL)
        wait_for(lambda: "Worker 1 died" in server.log())
        with self.assertRaises(urllib.error.HTTPError) as failing:
            self.get_json(port, "/healthz")
        checks = json.loads(failing.exception.read())["checks"]
        self.assertEqual(checks["workers"], "RuntimeError: workers [1] are not running")

    def test_healthz_passes_with_every_worker_healthy(self):
        server = self.start(server={"http_listen": "tcp:0:interface=127.0.0.1"})
        port = int(HTTP_LISTENING.search(server.log()).group(1))
        self.assertEqual(self.get_json(port, "/healthz"), {
            "status": "ok", "checks": {"listeners": "ok", "workers": "ok", "vault": "ok"}})

    def test_json_logs_are_json_lines_for_every_process(self):
        server = self.start(JsonLoggingServer)
        name = "json\nwriter\x1b[31m"
        send_stream(server.connect("P", ODD, name), REPLAY)
        send_stream(server.connect("P", EVEN, "even"), REPLAY)
        self.saved(server, ODD)
        self.saved(server, EVEN)
        bad = server.raw_connection()
        bad.sendall(b"X/junk\0")
        bad.close()
        wait_for(lambda: "unknown connection type" in server.log())
        self.assertEqual(server.terminate(), -signal.SIGTERM)
        events = []
        for number, line in enumerate(server.log().splitlines(), 1):
            try:
                events.append(json.loads(line))
            except ValueError:
                self.fail(f"line {number} is not JSON: {line[:300]!r}")
        by_worker = {index: [e for e in events if e.get("worker") == index] for index in (0, 1)}
        for index, relayed in by_worker.items():
            self.assertTrue(relayed, f"no event of worker {index}")
            self.assertTrue(all(e["log_system"] == f"worker-{index}" for e in relayed))
            self.assertTrue(any("All games saved" in e["log_format"] for e in relayed))
        # The writer's name as its worker formatted it: escaped, one line.
        names = [value for e in by_worker[1] for key, value in e.get("log_flattened", {}).items()
                 if key.startswith("name!r")]
        self.assertIn(repr(name), names)
        main = [e for e in events if "worker" not in e]
        self.assertTrue(any(e.get("log_format") == "Worker {index} started (pid {pid})"
                            for e in main))
        self.assertTrue(any("unknown connection type" in json.dumps(e) for e in main))

