"""ReadBeat: writers are read on a beat, not on every packet.

A game writes a few bytes ten times a second, and nobody needs them soon: spectators see them
``replay.delay`` later and the spool writes them out once a second. Reading every packet would
wake the event loop ten times a second per writer. So after each read a writer's transport is
paused (the kernel keeps what arrives meanwhile), and ONE timer resumes every paused writer each
``server.read_interval``; the next wake then reads everything that arrived in between.

A read that left bytes in the socket (it filled the read buffer, or the kernel holds more:
``FIONREAD``) is not paused: the writer is read continuously until it is drained, so a game
that sends in a burst never waits on a full socket buffer. The kernel is asked only after a
read of at least `ASK_FROM` bytes: a game's usual read is a few dozen bytes, and asking costs
a system call per read (what comes after a small read waits for the next beat, as what comes
after any drained read does). A crash
loses what the kernel held for the writers since their last read: at most about one interval.
See docs/saving.md.
"""
from __future__ import annotations

import fcntl
import socket
import struct
import termios

from twisted.internet.interfaces import IReactorTime, ISystemHandle
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from replayserver.transport import Transport

#: Bytes a TCP transport reads at most at once (Twisted's read size): a read this big may have
#: left more in the socket.
FULL_READ = 1 << 16
#: Reads this big or bigger may have come in pieces (loopback, offloaded TCP): the kernel is
#: asked whether more waits.
ASK_FROM = 4096


class ReadBeat:
    """Pauses writers after a read and resumes all of them together every ``interval``."""

    _log = Logger()

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        self._clock = clock
        self.interval = interval
        self._paused: list[Transport] = []
        self._timer: LoopingCall | None = None

    def after_read(self, transport: Transport, size: int) -> None:
        """A writer's transport just delivered ``size`` bytes: pause it until the next beat,
        unless the read may have left more in the socket."""
        if (size >= FULL_READ or self.interval <= 0
                or (size >= ASK_FROM and _more_waiting(transport))):
            return
        transport.pauseProducing()
        self._paused.append(transport)
        if self._timer is None:
            self._timer = LoopingCall(self._resume)
            self._timer.clock = self._clock
            self._timer.start(self.interval, now=False).addErrback(
                lambda failure: self._log.failure("The writers' read beat stopped", failure))

    def _resume(self) -> None:
        paused, self._paused = self._paused, []
        for transport in paused:
            transport.resumeProducing()
        if not paused and self._timer is not None:  # idle: stop until the next pause
            self._timer.stop()
            self._timer = None

    def stop(self) -> None:
        """Resume everything now and stop the timer."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        paused, self._paused = self._paused, []
        for transport in paused:
            transport.resumeProducing()


def _more_waiting(transport: object) -> bool:
    """Whether the kernel holds more bytes of this connection than were just read (a read may
    return less than is there: loopback and offloaded TCP hand data over in pieces)."""
    if not ISystemHandle.providedBy(transport):
        return False  # not a socket (the tests' transports)
    handle = ISystemHandle(transport).getHandle()
    if not isinstance(handle, socket.socket):
        return False
    try:
        counted = fcntl.ioctl(handle.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):  # closed meanwhile
        return False
    waiting: int = struct.unpack("i", counted)[0]
    return waiting > 0
