"""Game lifecycle (docs/lifecycle.md) and the registry, driven on a Clock without sockets."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import types
from pathlib import PurePosixPath

import fafreplay
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from replayserver.game.game import GameClosed, GameState
from replayserver.game.interfaces import SaveAbandoned
from replayserver.game.registry import WriterRefused
from tests.support import samples
from tests.support.harness import DELAY, FORCED, GRACE, Server, send

SAMPLE = "8945286.scfareplay"  # 32 KB, 3421 ticks


def body_of(name: str) -> bytes:
    data = samples.read(name)
    return data[fafreplay.body_offset(data):]


class GracePeriodTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = Server(self)
        self.data = samples.read(SAMPLE)

    def test_game_ends_after_grace_period_without_writers(self) -> None:
        server = self.server
        writer, transport = server.writer(1, data=self.data)
        game = server.registry.get(1)
        self.assertEqual(game.writers, 1)
        server.tick(10)
        transport.loseConnection()
        self.assertEqual(game.writers, 0)
        server.tick(GRACE - 1)
        self.assertIs(game.state, GameState.RUNNING)
        server.tick(1)
        self.assertIs(game.state, GameState.SAVING)
        self.assertEqual(game.end_reason, "no writers left")
        [(game_id, canonical, started_at, ended_at, spool)] = server.saver.calls
        self.assertEqual((game_id, started_at, ended_at), (1, 0, 10 + GRACE))
        self.assertTrue(canonical.finished)
        self.assertEqual(canonical.header_raw + canonical.body(), self.data)
        self.assertEqual(len(game.live.provenance()), 1)
        self.assertEqual(sorted(os.listdir(spool.directory)), ["0.json", "0.stream"])
        self.assertEqual(server.gauge("replayserver_finished_replays_total"), 1)

    def test_received_bytes_reach_the_metrics_in_batches(self) -> None:
        """Nothing is counted per chunk: the service reports every few seconds, the game at
        its end."""
        server = self.server
        writer, transport = server.writer(1, data=self.data[:5000])
        game = server.registry.get(1)
        received = "replayserver_received_bytes_total"
        self.assertEqual(server.gauge(received), 0)
        game.report_received()
        self.assertEqual(server.gauge(received), 5000)
        writer.dataReceived(self.data[5000:])
        transport.loseConnection()
        server.tick(GRACE)
        server.saver.finish(1)  # saved and forgotten: the rest is reported
        self.assertEqual(server.gauge(received), len(self.data))

    def test_launch_time_is_when_the_first_header_completes(self) -> None:
        """FA connects at lobby time and sends its header when the game launches."""
        server = self.server
        writer, transport = server.writer(1)
        game = server.registry.get(1)
        server.tick(100)  # the lobby
        self.assertIsNone(game.launched_at)
        writer.dataReceived(self.data)
        self.assertEqual((game.started_at, game.launched_at), (0, 100))
        transport.loseConnection()
        server.tick(GRACE)
        [(_, _, launched_at, ended_at, _)] = server.saver.calls
        self.assertEqual((launched_at, ended_at), (100, 100 + GRACE))

    def test_new_writer_cancels_grace_period(self) -> None:
        server = self.server
        _, first = server.writer(1, data=self.data[:5000])
        first.loseConnection()
        server.tick(GRACE - 1)
        server.writer(1, name="second", data=self.data)
        server.tick(GRACE * 3)
        game = server.registry.get(1)
        self.assertIs(game.state, GameState.RUNNING)
        self.assertEqual(game.writers, 1)
        self.assertEqual(server.saver.calls, [])

    def test_grace_period_restarts_when_the_last_writer_leaves_again(self) -> None:
        server = self.server
        _, first = server.writer(1, data=self.data[:5000])
        first.loseConnection()
        server.tick(20)
        _, second = server.writer(1, name="second", data=self.data)
        server.tick(5)
        second.loseConnection()
        server.tick(GRACE - 1)
        self.assertIs(server.registry.get(1).state, GameState.RUNNING)
        server.tick(1)
        self.assertIs(server.registry.get(1).state, GameState.SAVING)


class ForcedEndTests(SynchronousTestCase):
    def test_forced_end_closes_writers_and_saves(self) -> None:
        server = Server(self, forced_end=600)
        data = samples.read(SAMPLE)
        writer, transport = server.writer(1, data=data[:20000])
        game = server.registry.get(1)
        server.tick(599)
        self.assertTrue(transport.connected)
        server.tick(1)
        self.assertFalse(transport.connected)
        self.assertEqual(game.end_reason, "forced end")
        self.assertIs(game.state, GameState.SAVING)
        writer.dataReceived(data[20000:])  # late bytes of a closing connection are dropped
        canonical = server.saver.calls[0][1]
        self.assertEqual(canonical.header_raw + canonical.body(), data[:20000])
        self.assertEqual(server.served("Success"), 1)
        self.assertEqual(server.active("writer"), 0)

    def test_forced_end_counts_from_creation(self) -> None:
        server = Server(self, forced_end=600)
        data = samples.read(SAMPLE)
        server.tick(100)
        _, first = server.writer(1, data=data)
        server.tick(599)
        self.assertIs(server.registry.get(1).state, GameState.RUNNING)
        server.tick(1)
        self.assertIs(server.registry.get(1).state, GameState.SAVING)


class EndingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = Server(self)
        self.data = samples.read(SAMPLE)

    def end_game(self, game_id: int = 1):
        server = self.server
        _, transport = server.writer(game_id, data=self.data)
        game = server.registry.get(game_id)
        transport.loseConnection()
        server.tick(GRACE)
        return game

    def test_saved_fires_with_path_and_game_is_forgotten(self) -> None:
        server = self.server
        game = self.end_game()
        saved = game.saved
        self.assertNoResult(saved)
        self.assertIs(server.registry.get(1), game)  # ended, not yet saved: still known
        server.saver.finish(1)
        self.assertEqual(self.successResultOf(saved), "vault/1.fafreplay")
        self.assertEqual(self.successResultOf(game.saved), "vault/1.fafreplay")
        self.assertIs(game.state, GameState.SAVED)
        self.assertIsNone(server.registry.get(1))
        self.assertEqual(server.gauge("replayserver_save_duration_seconds_count"), 1)
        self.assertEqual(server.gauge("replayserver_running_replays_count"), 0)

    def test_failed_save_is_logged_once_and_not_unhandled(self) -> None:
        server = self.server
        game = self.end_game()
        with capturedLogs() as events:
            server.saver.finish(1, RuntimeError("disk full"))
        errors = [e for e in events if e["log_level"] >= LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("disk full", str(errors[0]["log_failure"].value))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIs(game.state, GameState.FAILED)
        self.failureResultOf(game.saved, RuntimeError)
        self.assertIsNone(server.registry.get(1))
        self.assertEqual(server.gauge("replayserver_saved_replay_files_total"), 0)

    def test_one_log_line_per_game_end(self) -> None:
        server = self.server
        self.end_game()
        with capturedLogs() as events:
            server.saver.finish(1)
        [line] = [e for e in events if "ended" in e["log_format"]]
        self.assertEqual(line["game_id"], 1)
        self.assertIn("vault/1.fafreplay", line["path"])
        body = self.data[fafreplay.body_offset(self.data):]
        self.assertIn(f"{fafreplay.body_ticks(body)} ticks", line["summary"])

    def test_writer_for_ended_game_is_refused(self) -> None:
        server = self.server
        self.end_game()
        _, transport = server.writer(1, data=self.data)
        self.assertFalse(transport.connected)
        self.assertEqual(server.served("Refused"), 1)
        self.assertEqual(len(server.saver.calls), 1)

    def test_writer_for_saved_game_is_refused(self) -> None:
        server = self.server
        self.end_game()
        server.saver.finish(1)
        self.assertIsNone(server.registry.get(1))
        self.failureResultOf(server.registry.join_writer(1), WriterRefused)
        _, transport = server.writer(1, data=self.data)
        self.assertFalse(transport.connected)
        self.assertIsNone(server.registry.get(1))

    def test_reader_for_ended_game_is_refused(self) -> None:
        server = self.server
        game = self.end_game()
        self.assertRaises(GameClosed, game.add_reader, object())
        _, transport = server.reader(1)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.connected)
        self.assertEqual(server.served("No replay matched"), 1)

    def test_game_id_reusable_after_failed_save(self) -> None:
        server = self.server
        self.end_game()
        server.saver.finish(1, RuntimeError("no header"))
        self.flushLoggedErrors(RuntimeError)
        _, transport = server.writer(1, data=self.data)
        self.assertTrue(transport.connected)
        self.assertIs(server.registry.get(1).state, GameState.RUNNING)


class RegistryStopTests(SynchronousTestCase):
    def test_stop_ends_every_game_and_waits_for_saves(self) -> None:
        server = Server(self)
        data = samples.read(SAMPLE)
        transports = [server.writer(game_id, data=data)[1] for game_id in (1, 2, 3)]
        server.tick(5)
        stopped = server.registry.stop()
        self.assertFalse(any(t.connected for t in transports))
        self.assertEqual(sorted(call[0] for call in server.saver.calls), [1, 2, 3])
        self.assertEqual({g.end_reason for g in server.registry.games()}, {"server shutdown"})
        server.saver.finish(1)
        server.saver.finish(2, RuntimeError("vault unreachable"))
        self.flushLoggedErrors(RuntimeError)
        self.assertNoResult(stopped)
        server.saver.finish(3)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(server.registry.games(), [])

    def test_no_new_game_while_stopping(self) -> None:
        server = Server(self)
        server.registry.stop()
        _, transport = server.writer(7, data=samples.read(SAMPLE))
        self.assertFalse(transport.connected)
        self.assertIsNone(server.registry.get(7))


class SnapshotTests(SynchronousTestCase):
    def test_snapshot_of_a_running_game(self) -> None:
        server = Server(self)
        name = "8468507.scfareplay"
        data = samples.read(name)
        header = fafreplay.Parser().parse_header(data)
        expected_players = [
            army["PlayerName"].decode()
            for army in header["armies"].values()
            if army.get("Human") is True
        ]
        server.tick(50)
        writer, _ = server.writer(1)
        game = server.registry.get(1)
        snapshot = game.snapshot()
        self.assertEqual(
            (snapshot["id"], snapshot["started_at"], snapshot["writers"], snapshot["map"],
             snapshot["players"], snapshot["ticks_received"], snapshot["watchable_at"]),
            (1, 50, 1, None, [], 0, None),
        )
        send(writer, data, 65536)
        server.tick(DELAY - 1)
        snapshot = game.snapshot()
        self.assertEqual(
            snapshot["map"], PurePosixPath(header["map_file"]).parent.name.lower()
        )
        self.assertEqual(sorted(snapshot["players"]), sorted(expected_players))
        self.assertEqual(snapshot["ticks_received"], fafreplay.body_ticks(body_of(name)))
        self.assertEqual(snapshot["ticks_visible"], 0)
        self.assertIsNone(snapshot["watchable_at"])
        server.tick(2)
        snapshot = game.snapshot(detail=True)
        self.assertEqual(snapshot["ticks_visible"], snapshot["ticks_received"])
        self.assertEqual(snapshot["watchable_at"], 50 + DELAY + 1)
        self.assertEqual(snapshot["readers"], 0)
        self.assertEqual(len(snapshot["provenance"]), 1)
        self.assertEqual(json.loads(json.dumps(snapshot)), snapshot)


class AbandonedSaveTests(SynchronousTestCase):
    def test_a_save_given_up_at_shutdown_is_one_warning_not_an_error(self) -> None:
        server = Server(self)
        writer, transport = server.writer(1, data=samples.read(SAMPLE))
        transport.loseConnection()
        server.tick(GRACE)
        with capturedLogs() as events:
            server.saver.finish(1, SaveAbandoned(1))
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("its spool is kept", event["log_format"])
        self.assertNotIn("log_failure", event)
        self.assertEqual(server.sample("replayserver_failed_saves_total",
                                       {"reason": "SaveAbandoned"}), 0)
