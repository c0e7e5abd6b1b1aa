"""End to end: bad connection headers and garbage against a running game change nothing."""
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase

from replayserver.replay.container import read_fafreplay
from tests.support import samples
from tests.support.server import ServerProcess, temporary_directory, joined, receive_all, send_stream

GAME = 3001

#: REFERENCE §2's bad data, aimed at the running game where an id is needed.
BAD_HEADERS = [
    b"X/3001/name\0",                 # neither P/ nor G/
    b"p/3001/name\0",                 # lower case
    b"PG3001/name\0",                 # no slash after the kind
    b"P/3001\0",                      # no slash between id and name
    b"P/bar/name\0",                  # id not a number
    b"P/-1/name\0",
    b"G/+5/name\0",
    b"P/ 3001/name\0",
    b"G//name\0",                     # empty id
    b"P/3001/" + b"n" * 1100,         # no NUL within 1024 bytes
    b"G/3001/\xff\xfename\0",         # name not UTF-8
    b"P/3001/half a header",          # EOF before the NUL
    b"P",                             # one byte, then EOF
    b"",                              # empty connection
]


def bad_connection(port: int, data: bytes) -> bytes:
    """Send ``data``, end our side, return what the server sent before closing."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    with connection:
        try:
            connection.sendall(data)
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may already have closed: that is a valid answer
        received = b""
        while True:
            try:
                piece = connection.recv(65536)
            except ConnectionResetError:
                return received
            if not piece:
                return received
            received += piece


class BadDataTests(SynchronousTestCase):
    def test_bad_headers_and_garbage_leave_the_game_intact(self):
        server = ServerProcess(temporary_directory(self), {"replay": {"delay": 0.5}}).start()
        self.addCleanup(server.kill)
        threads = ThreadPoolExecutor(max_workers=8)
        self.addCleanup(threads.shutdown)
        data = samples.read("diverging_1/5")
        writer = server.connect("P", GAME, "player")
        writer.sendall(data[:4000])
        time.sleep(0.2)
        reader = threads.submit(receive_all, server.connect("G", GAME, "watcher"))
        rest = threads.submit(send_stream, writer, data[4000:], 256, 0.01)

        generator = random.Random(4)
        garbage = [bytes(generator.randrange(256) for _ in range(generator.randrange(1, 3000)))
                   for _ in range(20)]
        corrupt_writer = b"P/3001/corrupt\0" + samples.read(samples.CORRUPT_SCFA)
        attempts = BAD_HEADERS + garbage + [corrupt_writer]
        answers = list(threads.map(lambda d: bad_connection(server.port, d), attempts))
        self.assertEqual(answers, [b""] * len(attempts))

        rest.result(timeout=30)
        self.assertEqual(joined(reader.result(timeout=30)) == data, True)
        saved = read_fafreplay(server.wait_for_file(GAME)).scfa
        self.assertTrue(saved == data, f"saved {len(saved)} bytes instead of {len(data)}")

        # the server still serves a new game
        other = samples.read("8805603.scfareplay")
        send_stream(server.connect("P", GAME + 1, "next"), other)
        self.assertTrue(read_fafreplay(server.wait_for_file(GAME + 1)).scfa == other)
        log = server.log()
        self.assertIn("Bad data", log)
        self.assertNotIn("Traceback", log)
