"""QuorumMerge: builds the canonical body C from the writers' bodies (docs/merge-and-delay.md).

Definitions. A stream *matches* C if C is a prefix of it; it *diverges* if it differs from C at
some byte. (A stream that ended shorter than C is simply never waited for nor voted with again,
and provenance reports it as a prefix of C.)

The merge runs on the delay sampler's tick and on ``finish``, never per chunk. Each run:

1. *Catch-up*: every active stream's bytes that were not compared before are compared with C,
   looking back at most ``comparison_window`` bytes before the end of C: bytes older than that
   (those of a stream lagging more than the window behind C) are skipped. A differing byte
   marks the stream diverged. When C grows within the run, the new bytes are compared the same
   way with every active stream at once, so nothing new is skipped.
2. *Stalemate* (initial state, C not growing): active streams longer than C are grouped by their
   next byte (the one at ``len(C)``). Resolve when some group has at least ``quorum`` members,
   or when no active unfinished stream not longer than C remains that could still vote; never
   before some writer's delayed position is above 0 (so writers arriving together are all
   counted). The winner is the group with the most members, then the longest member, then the
   earliest writer. Streams of the other groups diverge at ``len(C)``.
3. *Quorum*: the winning group's ``quorum`` longest streams are the quorum members; C is
   extended by their common prefix beyond ``len(C)`` (this run and every later one). C's
   delayed length is the minimum of the members' delayed positions (never decreasing, never
   beyond ``len(C)``). When it reaches ``len(C)`` (the members split, ended or stopped), the
   merge goes back to stalemate with all remaining streams. Every resolution adds a byte.

Stall rule (the older design's weakness: a writer that stays connected but stops sending held
the merge, and every reader, until the forced end). A stream is *stalled* while it has not
ended, has not grown for ``stall_timeout`` seconds, and some other stream of the game grew after
it last did. A stalled stream is treated as ended for two purposes: a stalemate does not wait
for it, and it is not chosen as a quorum member while its group has streams that are not
stalled. Its bytes are still compared with C and still count as a vote. If it sends again it
stops being stalled; its new bytes are compared with C like anyone's, so it rejoins only if it
still matches C. In a 1v1 where one game freezes, C stops at the frozen stream's length, the
delayed edge reaches it ``delay`` seconds later, and from that tick on (if the stream is stalled
by then, i.e. ``stall_timeout <= delay``) C follows the other player's stream: readers keep
moving.

Memory: once a byte of a stream is compared (or skipped), it is released; a diverged stream
releases everything at each run. A stream thus holds only the bytes ahead of C: about one
delay's worth during the initial stalemate, much less afterwards.
"""

from __future__ import annotations

import enum

from twisted.logger import Logger

from replayserver.merge.canonical import CanonicalReplay
from replayserver.merge.delay import StreamTiming
from replayserver.merge.stream import WriterStream

log = Logger()


class MergePhase(enum.Enum):
    STALEMATE = "stalemate"  # waiting for enough streams to agree on C's next byte
    QUORUM = "quorum"  # following the quorum members' common prefix


def common_prefix_length(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` (bulk comparisons, then bytes)."""
    size = min(len(a), len(b))
    if a[:size] == b[:size]:
        return size
    low, high = 0, size  # a[:low] == b[:low]; a[low:high] != b[low:high]
    while high - low > 64:
        middle = (low + high) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle
    while a[low] == b[low]:
        low += 1
    return low


class _Follower:
    """The merge's view of one stream."""

    __slots__ = ("stream", "body", "timing", "size", "compared", "released", "out", "diverged_at")

    def __init__(self, stream: WriterStream, timing: StreamTiming) -> None:
        self.stream = stream
        self.body = stream.body
        self.timing = timing
        self.size = 0  # body length as sampled for this run
        self.compared = 0  # body bytes known to match C (or skipped as outside the window)
        self.released = 0  # body bytes released from the stream's buffer
        self.out = False  # diverged, or no valid header: takes no further part
        self.diverged_at: int | None = None  # body offset of the first byte differing from C


class QuorumMerge:
    """The quorum merge state machine of one game, feeding its CanonicalReplay."""

    def __init__(
        self,
        canonical: CanonicalReplay,
        *,
        quorum: int = 2,
        comparison_window: int = 4096,
        stall_timeout: float = 60.0,
        game_id: int | None = None,
    ) -> None:
        """``game_id`` names the game in log lines."""
        if quorum < 1 or comparison_window < 0:
            raise ValueError("quorum must be >= 1 and comparison_window >= 0")
        self._canonical = canonical
        self._quorum_size = quorum
        self._window = comparison_window
        self._stall_timeout = stall_timeout
        self._game_id = game_id
        self._followers: list[_Follower] = []
        self.phase = MergePhase.STALEMATE
        self._quorum: list[_Follower] = []  # the members, in the QUORUM phase
        self._now = 0.0
        self._final = False
        self._latest_growth = 0.0

    def add(self, stream: WriterStream, timing: StreamTiming) -> None:
        """Take part in the merge from the next run on."""
        self._followers.append(_Follower(stream, timing))

    def diverged_at(self, stream: WriterStream) -> int | None:
        """Body offset where ``stream`` was found to differ from C (None: no difference found)."""
        for follower in self._followers:
            if follower.stream is stream:
                return follower.diverged_at
        raise KeyError(stream.name)

    @property
    def quorum_members(self) -> list[WriterStream]:
        """The streams C currently follows (empty in stalemate)."""
        return [follower.stream for follower in self._quorum]

    def run(self, now: float, *, final: bool = False) -> None:
        """One merge step on the lengths just sampled: catch up, then resolve / extend as far
        as the data allows. ``final``: the writing phase is over, so the delay no longer holds
        anything back (every stream counts as delayed by its full length)."""
        if not self._followers:
            return
        self._now = now
        self._final = final
        canonical = self._canonical
        length = canonical.length
        window_start = length - self._window
        latest_growth = 0.0
        for follower in self._followers:
            follower.size = size = follower.timing.length
            if follower.timing.grew_at > latest_growth:
                latest_growth = follower.timing.grew_at
            if follower.out:
                continue
            if follower.stream.header_error is not None:
                follower.out = True
                continue
            stop = size if size < length else length
            start = follower.compared if follower.compared > window_start else window_start
            if start < stop:
                self._compare(follower, start, canonical.slice(start, stop))
            elif stop > follower.compared:
                follower.compared = stop
        self._latest_growth = latest_growth
        self._progress()
        for follower in self._followers:
            needed_from = follower.size if follower.out else follower.compared
            if needed_from > follower.released:
                follower.body.release(needed_from)
                follower.released = needed_from

    def _compare(self, follower: _Follower, start: int, expected: bytes) -> None:
        """Compare the stream's bytes from ``start`` with C's ``expected`` bytes there."""
        mine = follower.body.slice(start, start + len(expected))
        if mine == expected:
            follower.compared = start + len(expected)
        else:
            self._diverge(follower, start + common_prefix_length(mine, expected))

    def _progress(self) -> None:
        canonical = self._canonical
        while True:
            if self.phase is MergePhase.QUORUM:
                self._extend()
                canonical.advance(min([self._delayed(f) for f in self._quorum]))
                if canonical.delayed_length < canonical.length:
                    return
                self.phase, self._quorum = MergePhase.STALEMATE, []
            if not self._resolve():
                return

    def _extend(self) -> None:
        """Append to C the quorum members' common prefix beyond it; check the others on it."""
        canonical = self._canonical
        start = canonical.length
        stop = min([member.size for member in self._quorum])
        if stop <= start:
            return
        data = self._quorum[0].body.slice(start, stop)
        for member in self._quorum[1:]:
            other = member.body.slice(start, stop)
            if other != data:
                data = data[: common_prefix_length(data, other)]
        if not data:
            return
        canonical.append(data)
        stop = canonical.length
        for follower in self._followers:
            if follower.out:
                continue
            if follower in self._quorum:
                follower.compared = stop
            elif follower.size > start:
                # Caught up to ``start`` at the beginning of the run: compare the new bytes.
                end = follower.size if follower.size < stop else stop
                self._compare(follower, start, data[: end - start])

    def _resolve(self) -> bool:
        """Stalemate: pick the next quorum if the rules allow; True if one was picked."""
        if not any(self._delayed(f) > 0 for f in self._followers):
            return False
        position = self._canonical.length
        active = [f for f in self._followers if not f.out]
        groups: dict[int, list[_Follower]] = {}
        for follower in active:
            if follower.size > position:
                groups.setdefault(follower.body.byte_at(position), []).append(follower)
        if not groups:
            return False
        winner = max(groups.values(), key=lambda g: (len(g), max(f.size for f in g)))
        if len(winner) < self._quorum_size and any(
            not f.stream.ended and f.size <= position and not self._stalled(f) for f in active
        ):
            return False
        for group in groups.values():
            if group is not winner:
                for follower in group:
                    self._diverge(follower, position)
        pool = [f for f in winner if not self._stalled(f)] or winner
        pool.sort(key=lambda f: f.size, reverse=True)
        self._quorum = pool[: self._quorum_size]
        self.phase = MergePhase.QUORUM
        return True

    def _delayed(self, follower: _Follower) -> int:
        """The stream's delayed position (its length ``delay`` ago; all of it once final)."""
        return follower.size if self._final else follower.timing.delayed_position

    def _stalled(self, follower: _Follower) -> bool:
        grew_at = follower.timing.grew_at
        return (
            not follower.stream.ended
            and grew_at < self._latest_growth
            and self._now - grew_at >= self._stall_timeout
        )

    def _diverge(self, follower: _Follower, offset: int) -> None:
        follower.out = True
        follower.diverged_at = offset
        log.info(
            "Game {game_id}: writer {index} ({name!r}) diverged from the merged body at offset"
            " {offset}",
            game_id=self._game_id,
            index=follower.stream.index,
            name=follower.stream.name,
            offset=offset,
        )
