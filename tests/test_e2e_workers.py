"""End to end with ``server.workers: 2``: games pinned to two worker processes.

Games with odd ids run in worker 1, even ids in worker 0. A worker killed with SIGKILL is
restarted and saves its games from its spool while the other worker's games go on untouched;
SIGTERM saves every game of every worker; /metrics and /live cover both workers.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from tests.support import samples
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


class WorkersEndToEnd(SynchronousTestCase):
    def start(self, **sections) -> ServerProcess:
        settings = {**SETTINGS, **sections}
        settings["server"] = {**SETTINGS["server"], **sections.get("server", {})}
        # the environment would override the file (REPLAYSERVER_SERVER_WORKERS=1 runs)
        server = ServerProcess(temporary_directory(self), settings,
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
