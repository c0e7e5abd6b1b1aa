"""StreamBuffer: appends, absolute offsets, head release and compaction."""

from twisted.trial.unittest import SynchronousTestCase

from replayserver.merge.buffer import StreamBuffer


class StreamBufferTests(SynchronousTestCase):
    def test_appends_are_addressed_by_absolute_offset(self) -> None:
        buffer = StreamBuffer()
        for chunk in (b"abc", b"", b"defg", b"h"):
            buffer.append(chunk)
        self.assertEqual(len(buffer), 8)
        self.assertEqual(buffer.slice(2, 6), b"cdef")
        self.assertEqual(buffer.slice(6, 100), b"gh")
        self.assertEqual(buffer.byte_at(7), ord("h"))

    def test_release_keeps_offsets_and_refuses_released_bytes(self) -> None:
        buffer = StreamBuffer()
        buffer.append(b"0123456789")
        buffer.release(4)
        buffer.release(2)  # never un-releases
        self.assertEqual((buffer.start, buffer.retained, len(buffer)), (4, 6, 10))
        self.assertEqual(buffer.slice(4, 7), b"456")
        self.assertRaises(ValueError, buffer.slice, 3, 7)
        self.assertRaises(IndexError, buffer.byte_at, 3)
        self.assertRaises(IndexError, buffer.byte_at, 10)

    def test_compaction_bounds_memory_and_preserves_content(self) -> None:
        buffer = StreamBuffer()
        data = bytes(range(256)) * 400  # 102,400 bytes
        position = 0
        for step in range(0, len(data), 1000):
            buffer.append(data[step : step + 1000])
            position = max(0, len(buffer) - 1500)
            buffer.release(position)
            # held physically: at most twice what is retained, or the small compaction minimum
            held, retained = len(buffer._data), buffer.retained
            self.assertLessEqual(held, max(2 * retained, 4096 + retained))
            self.assertEqual(buffer.slice(position, len(buffer)), data[position : len(buffer)])

    def test_releasing_everything_frees_the_bytes(self) -> None:
        buffer = StreamBuffer()
        buffer.append(b"x" * 100)
        buffer.release(100)
        self.assertEqual((buffer.retained, len(buffer._data), len(buffer)), (0, 0, 100))
        buffer.append(b"yz")
        self.assertEqual(buffer.slice(100, 102), b"yz")
