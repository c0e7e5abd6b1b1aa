"""End to end: a reader's timeline against the writers' send times while players leave.

Three players stream one real game; the first leaves early, the second a little later, the third
plays on. At no moment may a reader have received a body byte that no writer had sent
``replay.delay`` seconds earlier (one ``sample_interval`` of slack, plus a little for the
scheduling of this test's threads): a player who leaves does not make the game visible
(docs/merge-and-delay.md). Once the writing phase is over, the reader gets the rest at once.
"""
from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.header import parse_header
from tests.support import samples
from tests.support.server import ServerProcess, receive_all, temporary_directory

DELAY = 3.0
SAMPLE = 0.2
GRACE = 1.0
#: Scheduling slack of this test's threads and the server's event loop.
SLACK = 0.3
SETTINGS = {"replay": {"delay": DELAY, "sample_interval": SAMPLE, "grace_period": GRACE}}


def stream_and_leave(connection: socket.socket, header: bytes, body: bytes, start: float,
                     leave_after: float, chunk: int, pause: float) -> list[tuple[float, int]]:
    """Send the header, then the body in chunks until ``leave_after`` seconds after
    ``start``; returns (time, body bytes sent) after each send."""
    sent = [(time.monotonic(), 0)]
    connection.sendall(header)
    position = 0
    while position < len(body) and time.monotonic() - start < leave_after:
        connection.sendall(body[position:position + chunk])
        position += len(body[position:position + chunk])
        sent.append((time.monotonic(), position))
        time.sleep(pause)
    connection.close()
    return sent


def sent_by(timeline: list[tuple[float, int]], moment: float) -> int:
    """Body bytes a writer had sent at ``moment``."""
    return max((size for at, size in timeline if at <= moment), default=0)


class DelayWhilePlayersLeaveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = ServerProcess(temporary_directory(self), SETTINGS).start()
        self.addCleanup(self.server.kill)
        self.threads = ThreadPoolExecutor(max_workers=8)
        self.addCleanup(self.threads.shutdown)

    def test_leaving_players_do_not_make_the_game_visible(self) -> None:
        data = samples.read("8945286.scfareplay")  # 32 KB, 3421 ticks
        size = parse_header(data).size
        header, body = data[:size], data[size:]
        start = time.monotonic()
        leaves = (1.5, 3.0, 7.0)  # seconds after the start
        writers = [
            self.threads.submit(stream_and_leave, self.server.connect("P", 7101, f"p{i}"),
                                header, body, start, leave, 300, 0.05)
            for i, leave in enumerate(leaves)
        ]
        time.sleep(0.3)
        reader = self.threads.submit(receive_all, self.server.connect("G", 7101, "spectator"))
        timelines = [writer.result(timeout=60) for writer in writers]
        pieces = reader.result(timeout=60)
        last_write = max(timeline[-1][0] for timeline in timelines)
        received = 0
        checked = 0
        for at, piece in pieces:
            received += len(piece)
            body_received = max(0, received - size)
            if at >= last_write + GRACE - SLACK:
                break  # the writing phase is over: the rest comes at once
            allowed = max(sent_by(timeline, at - DELAY + SAMPLE + SLACK)
                          for timeline in timelines)
            self.assertLessEqual(body_received, allowed,
                                 f"{at - start:.2f} s after the start")
            checked += 1
        self.assertGreater(checked, 3)  # the check saw the game while it ran
        everything = b"".join(piece for _, piece in pieces)
        longest = max(timeline[-1][1] for timeline in timelines)
        self.assertEqual(everything, header + body[:longest])
