"""The connection header rules of REFERENCE §2, one table row per rule."""
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from replayserver.accept.handshake import (
    MAX_GAME_ID,
    MAX_HEADER_TEXT,
    ConnectionHeader,
    ConnectionKind,
    HandshakeError,
    HandshakeParser,
)

WRITER, READER = ConnectionKind.WRITER, ConnectionKind.READER

VALID = [
    (b"P/1/foo\0", ConnectionHeader(WRITER, 1, "foo")),
    (b"G/1/foo\0", ConnectionHeader(READER, 1, "foo")),
    (b"G/1/name/with/slash\0", ConnectionHeader(READER, 1, "name/with/slash")),
    (b"P/8805603/Rhiza.SCFAreplay\0", ConnectionHeader(WRITER, 8805603, "Rhiza.SCFAreplay")),
    (b"P/007/x\0", ConnectionHeader(WRITER, 7, "x")),
    (b"P/5/\0", ConnectionHeader(WRITER, 5, "")),
    (b"G/3/\xc3\xa9t\xc3\xa9\0", ConnectionHeader(READER, 3, "\u00e9t\u00e9")),
    (b"P/%d/x\0" % MAX_GAME_ID, ConnectionHeader(WRITER, MAX_GAME_ID, "x")),
    (b"P/0/x\0", ConnectionHeader(WRITER, 0, "x")),
]

BAD = [
    b"X/1/foo\0",
    b"p/1/foo\0",
    b"PP1/foo\0",
    b"GET / HTTP/1.1\r\n\r\n",
    b"P/foo\0",  # no slash after the id
    b"P/\0",
    b"P/bar/x\0",
    b"P/-1/x\0",
    b"P/+5/x\0",
    b"P/ 5/x\0",
    b"P/5 /x\0",
    b"P//x\0",
    b"P/1_0/x\0",
    b"P/\xd9\xa3/x\0",  # ARABIC-INDIC DIGIT THREE: str.isdecimal() would accept it
    b"P/%d/x\0" % (MAX_GAME_ID + 1),
    b"P/1/\xff\xfe\0",  # name not UTF-8
    b"P/1/\xc3\0",  # truncated UTF-8 sequence
]


def feed_all(
    data: bytes, chunk: int | None = None
) -> tuple[ConnectionHeader | None, HandshakeParser]:
    parser = HandshakeParser()
    chunk = chunk or max(len(data), 1)
    result = None
    for start in range(0, len(data), chunk):
        result = parser.feed(data[start:start + chunk])
        if result is not None:
            break
    return result, parser


class ValidHeaderTests(SynchronousTestCase):
    def test_valid_headers(self) -> None:
        for data, expected in VALID:
            for chunk in (None, 1, 3):
                with self.subTest(data=data, chunk=chunk):
                    self.assertEqual(feed_all(data, chunk)[0], expected)

    def test_leftover_is_the_stream_start(self) -> None:
        header, parser = feed_all(b"P/12/a\0\x01\x02\x03")
        self.assertEqual(header, ConnectionHeader(WRITER, 12, "a"))
        self.assertEqual(parser.leftover, b"\x01\x02\x03")

    def test_leftover_with_a_nul_inside(self) -> None:
        parser = HandshakeParser()
        self.assertIsNone(parser.feed(b"P/12/a"))
        self.assertIsNotNone(parser.feed(b"\0Supreme\0Commander"))
        self.assertEqual(parser.leftover, b"Supreme\0Commander")

    def test_no_leftover(self) -> None:
        self.assertEqual(feed_all(b"G/1/a\0")[1].leftover, b"")

    def test_incomplete_is_none(self) -> None:
        for data in (b"", b"P", b"P/", b"P/1", b"P/1/name"):
            with self.subTest(data=data):
                self.assertIsNone(HandshakeParser().feed(data))

    def test_longest_header(self) -> None:
        name = b"n" * (MAX_HEADER_TEXT - len(b"1/") - 1)
        header, _ = feed_all(b"P/1/" + name + b"\0", 100)
        self.assertEqual(header, ConnectionHeader(WRITER, 1, name.decode()))


class BadHeaderTests(SynchronousTestCase):
    def test_bad_headers(self) -> None:
        for data in BAD:
            for chunk in (None, 1):
                with self.subTest(data=data, chunk=chunk):
                    self.assertRaises(HandshakeError, feed_all, data, chunk)

    def test_bad_prefix_detected_after_two_bytes(self) -> None:
        parser = HandshakeParser()
        self.assertIsNone(parser.feed(b"X"))
        self.assertRaises(HandshakeError, parser.feed, b"Y")

    def test_no_nul_within_limit(self) -> None:
        parser = HandshakeParser()
        self.assertIsNone(parser.feed(b"P/1/" + b"n" * (MAX_HEADER_TEXT - 3)))
        self.assertRaises(HandshakeError, parser.feed, b"n")

    def test_nul_just_past_limit(self) -> None:
        name = b"n" * (MAX_HEADER_TEXT - len(b"1/"))
        self.assertRaises(HandshakeError, feed_all, b"P/1/" + name + b"\0")


class EndOfStreamTests(SynchronousTestCase):
    def test_empty_connections_end_quietly(self) -> None:
        for data in (b"", b"P", b"X"):
            with self.subTest(data=data):
                parser = HandshakeParser()
                parser.feed(data)
                self.assertTrue(parser.empty)
                parser.end()

    def test_end_mid_header_is_bad_data(self) -> None:
        for data in (b"P/", b"G/1", b"P/1/name"):
            with self.subTest(data=data):
                parser = HandshakeParser()
                parser.feed(data)
                self.assertFalse(parser.empty)
                self.assertRaises(HandshakeError, parser.end)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        kind=st.sampled_from([b"P/", b"G/"]),
        game_id=st.integers(min_value=0, max_value=MAX_GAME_ID),
        name=st.text(
            alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
            max_size=100,
        ),
        rest=st.binary(max_size=50),
        chunk=st.integers(min_value=1, max_value=64),
    )
    def test_round_trip(
        self, kind: bytes, game_id: int, name: str, rest: bytes, chunk: int
    ) -> None:
        data = kind + str(game_id).encode() + b"/" + name.encode() + b"\0" + rest
        header, parser = feed_all(data, chunk)
        expected_kind = WRITER if kind == b"P/" else READER
        self.assertEqual(header, ConnectionHeader(expected_kind, game_id, name))
        # Whatever chunk completed the header, the bytes after the NUL come back.
        consumed = -(-(len(data) - len(rest)) // chunk) * chunk
        self.assertEqual(parser.leftover, data[len(data) - len(rest):consumed])

    @settings(max_examples=200, deadline=None)
    @given(data=st.binary(max_size=1100))
    def test_arbitrary_bytes_never_crash(self, data: bytes) -> None:
        try:
            header, _ = feed_all(data, 7)
        except HandshakeError:
            return
        if header is not None:
            self.assertIn(data[:2], (b"P/", b"G/"))
            self.assertLessEqual(header.game_id, MAX_GAME_ID)
