"""HTTP helpers for tests: a local sink that records POSTs, a minimal GET client, and a
WebSocket client.

All only ever use 127.0.0.1. The GET client speaks HTTP/1.0 and reads until the server closes,
so when its Deferred fires both ends of the connection are gone (trial's reactor check stays
clean); the sink closes its open connections in ``stop()``.
"""
from __future__ import annotations

import json

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.web import http, resource, server


@attrs.frozen
class Posted:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


class _Channel(http.HTTPChannel):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.site.channels.discard(self)
        for d in self.site.closed_waiters.pop(self, []):
            d.callback(None)


class _Site(server.Site):
    protocol = _Channel

    def __init__(self, root: resource.Resource) -> None:
        super().__init__(root)
        self.noisy = False
        self.channels: set[_Channel] = set()
        self.closed_waiters: dict[_Channel, list[defer.Deferred]] = {}


class _Recorder(resource.Resource):
    isLeaf = True

    def __init__(self, sink: "HttpSink") -> None:
        super().__init__()
        self._sink = sink

    def render_POST(self, request: server.Request) -> bytes:
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self._sink.record(Posted(request.path.decode(), headers, request.content.read()))
        request.setHeader(b"content-type", b"application/json")
        return b"{}"


class HttpSink:
    """Records every POST to any path; ``url`` once started."""

    def __init__(self) -> None:
        self.received: list[Posted] = []
        self._waiters: list[tuple[int, defer.Deferred]] = []
        self._site = _Site(_Recorder(self))
        self._port = None

    @defer.inlineCallbacks
    def start(self):
        ep = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self._port = yield ep.listen(self._site)
        return self.url

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port.getHost().port}/"

    def record(self, posted: Posted) -> None:
        self.received.append(posted)
        ready = [w for w in self._waiters if len(self.received) >= w[0]]
        for w in ready:
            self._waiters.remove(w)
            w[1].callback(self.received[: w[0]])

    def wait_for(self, count: int) -> defer.Deferred:
        """Fires with the first ``count`` POSTs once they have arrived."""
        if len(self.received) >= count:
            return defer.succeed(self.received[:count])
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((count, d))
        return d

    @defer.inlineCallbacks
    def stop(self):
        if self._port is not None:
            yield self._port.stopListening()
        waits = []
        for channel in list(self._site.channels):
            d: defer.Deferred = defer.Deferred()
            self._site.closed_waiters.setdefault(channel, []).append(d)
            waits.append(d)
            channel.transport.loseConnection()
        yield defer.gatherResults(waits)


class _GetClient(protocol.Protocol):
    def __init__(self, request: bytes) -> None:
        self._request = request
        self._data = bytearray()
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._data += data

    def connectionLost(self, reason) -> None:
        self.done.callback(bytes(self._data))


@attrs.frozen
class Response:
    code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


@defer.inlineCallbacks
def http_get(port: int, path: str):
    """GET ``path`` from 127.0.0.1:``port`` over HTTP/1.0; fires with a Response."""
    client = _GetClient(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
    ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    yield endpoints.connectProtocol(ep, client)
    raw = yield client.done
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(lines[0].split()[1]), headers, body)


class WebSocketPeer(WebSocketClientProtocol):
    """A WebSocket client that records the messages it gets and how the connection closed."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[tuple[bytes, bool]] = []
        self.opened: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()  # fires with (wasClean, code)

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((payload, isBinary))

    def onClose(self, wasClean: bool, code, reason) -> None:
        self.closed.callback((wasClean, code))

    def body(self) -> bytes:
        """The payloads of all messages received, joined."""
        return b"".join(payload for payload, _ in self.messages)


@defer.inlineCallbacks
def websocket_connect(port: int, path: str = "/"):
    """An open WebSocketPeer connected to ws://127.0.0.1:``port````path``."""
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}")
    factory.protocol = WebSocketPeer
    peer = yield endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    yield peer.opened
    return peer
