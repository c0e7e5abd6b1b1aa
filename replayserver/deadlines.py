"""Deadlines: many connection timeouts on one timer.

Every connection has a timeout or two (a header that must arrive, a reader that must take its
data). A `DelayedCall` per connection costs an object and a heap entry each, and thousands of
them are rescheduled as connections come and go. Here deadlines are kept in buckets of
``resolution`` seconds and one timer (armed only while any deadline is pending) fires each
bucket when its time has come: a deadline fires at most one ``resolution`` late, which is fine
for timeouts of seconds to hours.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger


class Deadline:
    """One pending deadline; `Deadlines.cancel` takes it back."""

    __slots__ = ("bucket", "callback")

    def __init__(self, bucket: int, callback: Callable[[], object]) -> None:
        self.bucket = bucket
        self.callback: Callable[[], object] | None = callback


class Deadlines:
    """Calls each callback once its deadline has passed (unless cancelled before)."""

    _log = Logger()

    def __init__(self, clock: IReactorTime, resolution: float = 1.0) -> None:
        self._clock = clock
        self._resolution = resolution
        self._buckets: dict[int, set[Deadline]] = {}
        self._call: IDelayedCall | None = None
        self._armed_for: int | None = None  # the bucket the timer fires for

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(self, seconds: float, callback: Callable[[], object]) -> Deadline:
        """Call ``callback`` in ``seconds`` (up to one resolution later)."""
        bucket = math.ceil((self._clock.seconds() + seconds) / self._resolution)
        deadline = Deadline(bucket, callback)
        self._buckets.setdefault(bucket, set()).add(deadline)
        if self._armed_for is None or bucket < self._armed_for:
            self._arm(bucket)
        return deadline

    def cancel(self, deadline: Deadline | None) -> None:
        """Take a deadline back (nothing if it fired or was cancelled already)."""
        if deadline is None or deadline.callback is None:
            return
        deadline.callback = None
        bucket = self._buckets.get(deadline.bucket)
        if bucket is not None:
            bucket.discard(deadline)
            if not bucket:
                del self._buckets[deadline.bucket]
                if not self._buckets and self._call is not None:
                    self._call.cancel()
                    self._call = self._armed_for = None

    def _arm(self, bucket: int) -> None:
        if self._call is not None:
            self._call.cancel()
        delay = max(0.0, bucket * self._resolution - self._clock.seconds())
        self._armed_for = bucket
        self._call = self._clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = self._armed_for = None
        now = self._clock.seconds()
        due = sorted(bucket for bucket in self._buckets if bucket * self._resolution <= now)
        for bucket in due:
            for deadline in self._buckets.pop(bucket):
                callback, deadline.callback = deadline.callback, None
                if callback is None:
                    continue
                try:
                    callback()
                except Exception:
                    self._log.failure("A connection timeout failed")
        if self._buckets and self._call is None:
            self._arm(min(self._buckets))
