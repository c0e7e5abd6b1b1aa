"""A process imports only what its configuration uses: no Bugsnag without a key, no WebSocket,
MySQL or web libraries where those are off (a worker process and the listening process alike).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.support.server import REPO_ROOT, temporary_directory

OPTIONAL = ("bugsnag", "autobahn", "pymysql", "twisted.web", "twisted.enterprise")

PROBE = """
import json, os, sys
from twisted.internet import reactor
from replayserver.config import load_config
from replayserver.tap import make_service
config = load_config(None, os.environ)
make_service(config, reactor)
if {worker}:
    from replayserver.workers.worker import build_replay_worker
    build_replay_worker(config, reactor, 0, 2)
print(json.dumps(sorted(name for name in {optional!r} if name in sys.modules)))
"""


class LeanImportTests(SynchronousTestCase):
    def loaded(self, environment: dict[str, str], worker: bool = False,
               also: tuple[str, ...] = ()) -> list[str]:
        """Which of the optional libraries (and of ``also``) a process made this way imported."""
        directory = temporary_directory(self)
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT),
               "REPLAYSERVER_SERVER_LISTEN": "tcp:0:interface=127.0.0.1",
               "REPLAYSERVER_STORAGE_VAULT": os.path.join(directory, "vault"),
               "REPLAYSERVER_STORAGE_SPOOL": os.path.join(directory, "spool"), **environment}
        code = PROBE.format(worker=worker, optional=OPTIONAL + also)
        result = subprocess.run([sys.executable, "-c", code], env=env, cwd=directory,
                                capture_output=True, text=True, timeout=60, check=True)
        return json.loads(result.stdout.splitlines()[-1])

    def test_defaults_import_none_of_the_optional_libraries(self) -> None:
        for workers in ("1", "2"):
            with self.subTest(workers=workers):
                self.assertEqual(self.loaded({"REPLAYSERVER_SERVER_WORKERS": workers}), [])
        self.assertEqual(self.loaded({"REPLAYSERVER_SERVER_WORKERS": "2"}, worker=True), [])

    def test_one_process_leaves_the_worker_machinery_out(self) -> None:
        self.assertEqual(self.loaded({"REPLAYSERVER_SERVER_WORKERS": "1"},
                                     also=("replayserver.workers.supervisor",)), [])
        self.assertEqual(self.loaded({"REPLAYSERVER_SERVER_WORKERS": "2"},
                                     also=("replayserver.workers.supervisor",)),
                         ["replayserver.workers.supervisor"])

    def test_each_configured_part_brings_its_library(self) -> None:
        loaded = self.loaded({
            "REPLAYSERVER_SERVER_WORKERS": "1",
            "REPLAYSERVER_SERVER_WEBSOCKET_LISTEN": "tcp:0:interface=127.0.0.1",
            "REPLAYSERVER_SERVER_HTTP_LISTEN": "tcp:0:interface=127.0.0.1",
            "REPLAYSERVER_BUGSNAG_API_KEY": "0" * 32,
            "REPLAYSERVER_DATABASE_PORT": "9",  # nothing listens there: never connected here
        })
        self.assertEqual(loaded, sorted(OPTIONAL))

    def test_metrics_library_only_where_metrics_can_be_read(self) -> None:
        """One process keeps metrics only with its HTTP listener; in worker mode the
        listening process gathers its workers' metrics, so both keep them."""
        also = ("prometheus_client",)
        self.assertEqual(self.loaded({"REPLAYSERVER_SERVER_WORKERS": "1"}, also=also), [])
        with_http = {"REPLAYSERVER_SERVER_WORKERS": "1",
                     "REPLAYSERVER_SERVER_HTTP_LISTEN": "tcp:0:interface=127.0.0.1"}
        self.assertIn("prometheus_client", self.loaded(with_http, also=also))
        self.assertIn("prometheus_client",
                      self.loaded({"REPLAYSERVER_SERVER_WORKERS": "2"}, worker=True, also=also))

    def test_http_listener_without_twisted_web_resources(self) -> None:
        """The operator's API uses Twisted's HTTP protocol, not its resource tree (which would
        bring twisted.web.server, templates and Perspective Broker along)."""
        loaded = self.loaded({"REPLAYSERVER_SERVER_WORKERS": "1",
                              "REPLAYSERVER_SERVER_HTTP_LISTEN": "tcp:0:interface=127.0.0.1"},
                             also=("twisted.web.http", "twisted.web.server", "twisted.spread"))
        self.assertIn("twisted.web.http", loaded)
        self.assertNotIn("twisted.web.server", loaded)
        self.assertNotIn("twisted.spread", loaded)
