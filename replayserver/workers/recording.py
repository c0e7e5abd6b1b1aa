"""WebSocket connections across the hand-off: recorded in the listening process, replayed in
the worker.

A WebSocket connection cannot be handed over mid-protocol with its state, so the listening
process records every byte it read (`RecordingWebSocketConnection`) until the `P/` or `G/`
header inside the messages is complete, and the worker feeds the whole recording to a
`ReplayedWebSocketConnection`, which goes through the upgrade again without answering it
(the listening process did) and then runs as any WebSocket connection. Imported only when a
WebSocket listener is configured.

The recording is bounded like the header itself (`MAX_RECORDING`): the upgrade request (at
most `MAX_UPGRADE_REQUEST`), the messages and control frames that came before the one that
completes the header (`BEFORE_HEADER`), that message (at most 1 MiB), and the rest of the read
that brought it (reading stops once the header is complete). A connection that sends more
before its header is complete (a flood of pings, say) is failed as bad data and never reaches
a worker, so no client can make a hand-off record too large for the channel
(docs/operations.md, "Worker processes").

In the worker, the replayed connection's place in the connection count is the one the
listening process holds (`replayserver.workers.receiver.RemoteSlot`): the connection holds it
as any WebSocket connection holds its place, and gives it back when it closes.
"""
from __future__ import annotations

from autobahn.websocket.protocol import WebSocketProtocol

from replayserver.accept.websocket import (
    MAX_MESSAGE_SIZE,
    MAX_UPGRADE_REQUEST,
    WebSocketConnection,
    WebSocketFactory,
)
from replayserver.limits import Slot

CLOSE_POLICY_VIOLATION = WebSocketProtocol.CLOSE_STATUS_CODE_POLICY_VIOLATION  # 1008
#: Bytes of the messages and control frames before the one that completes the header.
BEFORE_HEADER = 64 << 10
#: The largest frame header (RFC 6455: 2 bytes, a 64-bit length, a 4-byte mask).
FRAME_HEADER = 14
#: The most one read of the TCP transport brings (Twisted reads 64 KiB at a time).
READ = 64 << 10
#: Most bytes recorded before the hand-off (about 1.1 MiB).
MAX_RECORDING = MAX_UPGRADE_REQUEST + BEFORE_HEADER + MAX_MESSAGE_SIZE + FRAME_HEADER + READ


class RecordingWebSocketConnection(WebSocketConnection):
    """A WebSocket connection that keeps every byte it read, so a worker can replay it."""

    def __init__(self, slot: Slot | None = None) -> None:
        super().__init__(slot)
        self._recording: list[bytes] = []
        self._recorded: int | None = 0  # None once over the bound

    def dataReceived(self, data: bytes) -> None:
        if self._recorded is None:
            return  # being closed
        self._recorded += len(data)
        if self._recorded > MAX_RECORDING:
            self._recording.clear()
            self._recorded = None
            self.fail_bad_data(CLOSE_POLICY_VIOLATION, f"more than {MAX_RECORDING} bytes before"
                                                       f" the end of the connection header")
            self.dropConnection(abort=True)  # at once: nothing it sends is read any more
            return
        self._recording.append(data)
        super().dataReceived(data)

    def onPing(self, payload: bytes) -> None:
        """Not answered here: the worker answers the recorded pings when it replays them (a
        pong still in this process's buffer at the hand-off would be lost, or cut)."""

    @property
    def recorded_size(self) -> int:
        return self._recorded or 0

    def recorded(self) -> bytes:
        return b"".join(self._recording)


class RecordingWebSocketFactory(WebSocketFactory):
    protocol = RecordingWebSocketConnection


class ReplayedWebSocketConnection(WebSocketConnection):
    """A WebSocket connection replayed from its first byte: the upgrade answer is not sent."""

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if self.state == self.STATE_CONNECTING:
            return  # the main process has answered the upgrade already
        super().sendData(data, sync, chopsize)


class ReplayedWebSocketFactory(WebSocketFactory):
    """Makes the protocol of each handed-off WebSocket connection (``connection(slot)``)."""

    protocol = ReplayedWebSocketConnection
