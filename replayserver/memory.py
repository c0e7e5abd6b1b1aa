"""How a server process manages its memory: `HeapTrim` and `CollectorTuning`.

HeapTrim hands the heap pages that freed objects leave behind back to the system.

CPython allocates objects above 512 bytes (received data, replay headers, buffers) with the C
library's ``malloc``. glibc gives memory back to the system only from the top of its heaps:
the free blocks a burst leaves in the middle stay in the process, counted in its PSS, until
``malloc_trim`` releases their pages. A burst is common here: when a game launches, each of
its players connects and sends its replay header (5 to 50 KB) in one read, which is held until
the spool writes it out a second later; a thousand writers connecting at once leave about
10 MB of such holes. `HeapTrim` calls ``malloc_trim(0)`` every `INTERVAL` seconds, in every
process. A call costs about 1 ms per 8 MB of heap (20 ms measured on a 165 MB one), so it
stalls the event loop briefly (docs/operations.md, "Memory"). Where the C library has no
``malloc_trim`` (musl, macOS) it does nothing.
"""
from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

#: Seconds between two trims.
INTERVAL = 5.0


def find_malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim``, or None where there is none (looked up among the
    symbols the process has loaded, which include the C library's)."""
    try:
        function: Callable[[int], int] = getattr(ctypes.CDLL(None), "malloc_trim")
    except (OSError, AttributeError):
        return None
    return function


class HeapTrim(Service):
    """Calls ``trim(0)`` (the C library's ``malloc_trim``: `find_malloc_trim`) every
    ``interval`` seconds while the service runs; nothing if ``trim`` is None."""

    def __init__(self, clock: IReactorTime, trim: Callable[[int], int] | None,
                 interval: float = INTERVAL) -> None:
        self._loop: LoopingCall | None = None
        if trim is not None:
            self._loop = LoopingCall(trim, 0)
            self._loop.clock = clock
        self._interval = interval

    def startService(self) -> None:
        Service.startService(self)
        if self._loop is not None:
            self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()


#: Allocations (minus deallocations) of container objects between two youngest-generation
#: collections (CPython's default is 700).
YOUNG_THRESHOLD = 10_000


class CollectorTuning(Service):
    """Keeps the cyclic garbage collector off the objects that live as long as the process.

    A server holds hundreds of thousands of long-lived objects (its modules, then a few dozen
    per connection), and each full collection walks all of them: measured at FAF's peak x3,
    the collector took 2.5 s of CPU over a minute, in pauses of up to 0.2 s. At start, once
    every module is loaded, what exists is collected once and frozen (never walked again,
    ``gc.freeze``), and the youngest generation is collected every `YOUNG_THRESHOLD`
    allocations instead of 700, so fewer objects are promoted towards full collections.
    Reference counting still frees everything at once; only cycles wait for the collector.
    """

    def startService(self) -> None:
        Service.startService(self)
        gc.collect()
        gc.freeze()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
