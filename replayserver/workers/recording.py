"""WebSocket connections across the hand-off: recorded in the listening process, replayed in
the worker.

A WebSocket connection cannot be handed over mid-protocol with its state, so the listening
process records every byte it read (`RecordingWebSocketConnection`) until the `P/` or `G/`
header inside the messages is complete, and the worker feeds the whole recording to a
`ReplayedWebSocketConnection`, which goes through the upgrade again without answering it
(the listening process did) and then runs as any WebSocket connection. Imported only when a
WebSocket listener is configured.
"""
from __future__ import annotations

from replayserver.accept.websocket import WebSocketConnection, WebSocketFactory


class RecordingWebSocketConnection(WebSocketConnection):
    """A WebSocket connection that keeps every byte it read, so a worker can replay it."""

    def __init__(self) -> None:
        super().__init__()
        self._recording: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._recording.append(data)
        super().dataReceived(data)

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
    protocol = ReplayedWebSocketConnection
