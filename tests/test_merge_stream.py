"""WriterStream: the header handed over whole (and not kept), the body buffered, invalid
headers, the end."""

from twisted.trial.unittest import SynchronousTestCase

from replayserver.merge.stream import StreamPhase, WriterStream
from replayserver.replay.errors import HeaderError
from replayserver.replay.header import parse_header
from tests.support import samples
from tests.test_merge_helpers import BODY, HEADER


class WriterStreamTests(SynchronousTestCase):
    def test_header_then_body_in_any_chunking(self) -> None:
        data = HEADER + BODY
        for size in (1, 7, 1000, len(data)):
            completed = []
            stream = WriterStream("p.scfareplay", 3,
                                  on_header=lambda *given: completed.append(given))
            for start in range(0, len(data), size):
                self.assertIs(stream.phase, StreamPhase.HEADER if not completed
                              else StreamPhase.BODY)
                stream.feed(data[start : start + size])
            self.assertEqual(completed, [(stream, parse_header(HEADER), HEADER)])
            self.assertEqual(stream.header_size, len(HEADER))
            self.assertEqual(stream.body.slice(0, len(stream.body)), BODY)
            self.assertEqual(stream.received, len(data))
            self.assertEqual((stream.name, stream.index), ("p.scfareplay", 3))

    def test_received_counts_an_incomplete_header(self) -> None:
        stream = WriterStream("w", 0)
        stream.feed(HEADER[:100])
        self.assertEqual((stream.received, stream.header_size, len(stream.body)), (100, None, 0))
        self.assertIs(stream.phase, StreamPhase.HEADER)

    def test_invalid_header_raises_and_ends_the_stream_uncleanly(self) -> None:
        stream = WriterStream("w", 0)
        with self.assertRaises(HeaderError):
            stream.feed(samples.read(samples.CORRUPT_SCFA))
        self.assertTrue(stream.ended)
        self.assertIs(stream.clean_end, False)
        self.assertIsInstance(stream.header_error, HeaderError)
        stream.feed(b"more")  # ignored after the end
        self.assertEqual(len(stream.body), 0)

    def test_end_records_how_and_is_idempotent(self) -> None:
        stream = WriterStream("w", 0)
        stream.feed(HEADER + BODY[:10])
        stream.end(clean=True)
        stream.end(clean=False)
        stream.feed(b"late")
        self.assertEqual((stream.ended, stream.clean_end, len(stream.body)), (True, True, 10))
        self.assertIsNone(stream.header_error)

    def test_end_inside_the_header_is_a_header_error(self) -> None:
        stream = WriterStream("w", 0)
        stream.feed(HEADER[:-1])
        stream.end(clean=True)
        self.assertIsInstance(stream.header_error, HeaderError)
        self.assertFalse(stream.header_ok)
        self.assertIs(stream.phase, StreamPhase.ENDED)


class KnownHeaderTests(SynchronousTestCase):
    """A stream given the game's header compares its bytes instead of parsing them."""

    def test_the_same_header_in_any_chunking_is_not_parsed_again(self) -> None:
        data = HEADER + BODY
        for size in (1, 7, 1000, len(data)):
            completed = []
            stream = WriterStream("w", 1, on_header=lambda *given: completed.append(given),
                                  known_header=lambda: HEADER)
            for start in range(0, len(data), size):
                stream.feed(data[start:start + size])
            self.assertEqual(completed, [])  # nothing decoded: the game has this header
            self.assertIsNone(stream._parser)
            self.assertEqual((stream.header_size, stream.received), (len(HEADER), len(data)))
            self.assertEqual(stream.body.slice(0, len(stream.body)), BODY)

    def test_a_different_header_is_parsed_from_its_first_byte(self) -> None:
        first = samples.read(samples.DIVERGING[1])
        known = first[:parse_header(first).size]
        other = samples.read(samples.DIVERGING[2])  # the same game, Lua keys in another order
        other_header = other[:parse_header(other).size]
        self.assertNotEqual(other_header, known)
        for size in (1, 500, len(other)):
            completed = []
            stream = WriterStream("w", 1, on_header=lambda *given: completed.append(given),
                                  known_header=lambda: known)
            for start in range(0, len(other), size):
                stream.feed(other[start:start + size])
            [(_, header, raw)] = completed
            self.assertEqual(raw, other_header)
            self.assertEqual(len(stream.body), len(other) - len(other_header))

    def test_a_known_header_cut_short_is_a_header_error(self) -> None:
        stream = WriterStream("w", 1, known_header=lambda: HEADER)
        stream.feed(HEADER[:-10])
        stream.end(clean=True)
        self.assertIsInstance(stream.header_error, HeaderError)
        self.assertFalse(stream.header_ok)
