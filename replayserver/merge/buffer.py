"""StreamBuffer: an append-only byte buffer addressed by absolute offset that can drop its head.

A writer's body only grows, and the merge needs just its tail (the bytes not yet compared with
the merged replay). The buffer is one ``bytearray`` plus two integers:

* ``append`` is the bytearray's own ``extend`` (a C method bound once: no Python frame per
  chunk): amortised O(len(chunk)) (CPython over-allocates), no copy of what is already held,
  no other per-chunk work. Compaction deletes in place, so the bound method stays valid.
* ``release(offset)`` only moves a head index. The released bytes are removed physically
  ("compaction", ``del data[:head]``) when they are at least half of the bytearray, so each
  compaction copies at most as many retained bytes as were released since the previous one:
  amortised O(1) per released byte, and at most twice the retained size is ever held.
"""

from typing import Callable

_MIN_COMPACTION = 4096  # below this, dropping the head is not worth a memmove


class StreamBuffer:
    """Bytes ``[start, len(self))`` of a stream; offsets are absolute (from the stream start)."""

    __slots__ = ("_data", "_base", "_head", "append")

    append: Callable[[bytes], None]
    """Add bytes at the end (the hot path: one bytearray extension)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._base = 0  # absolute offset of self._data[0]
        self._head = 0  # index in self._data of the first retained byte
        self.append = self._data.extend

    def __len__(self) -> int:
        """Total bytes ever appended (released ones included)."""
        return self._base + len(self._data)

    @property
    def start(self) -> int:
        """Absolute offset of the first byte still held."""
        return self._base + self._head

    @property
    def retained(self) -> int:
        """Bytes still held (not released)."""
        return len(self._data) - self._head

    def slice(self, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)``; ``start`` must not be released, ``stop`` is clipped."""
        base = self._base
        if start < base + self._head:
            raise ValueError(f"bytes before offset {self.start} were released (asked {start})")
        return bytes(self._data[start - base : stop - base])

    def byte_at(self, offset: int) -> int:
        """The byte at absolute ``offset`` (held and already appended)."""
        if not self.start <= offset < len(self):
            raise IndexError(f"offset {offset} not held ({self.start}..{len(self)})")
        return self._data[offset - self._base]

    def release(self, offset: int) -> None:
        """Forget every byte before ``offset`` (at most the length; never un-releases)."""
        head = offset - self._base
        if head <= self._head:
            return
        self._head = head
        if head == len(self._data) or (head >= _MIN_COMPACTION and head * 2 >= len(self._data)):
            del self._data[:head]
            self._base += head
            self._head = 0
