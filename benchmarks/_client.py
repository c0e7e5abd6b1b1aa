"""The load generator of the load benchmarks: FAF writers, readers and idle connections.

One generator is one process (``python -m benchmarks._client PORT PLAN``, PLAN a JSON
object; it prints one JSON line of results). A process may hold at most RLIMIT_NOFILE
connections, so the driver (benchmarks/load.py) splits big loads by game over several.
Plain non-blocking sockets and one selector keep the generator's own CPU per chunk small,
since it competes with the server for the machine's cores.

Each writer sends ``P/<game>/<name>\\0`` and the SCFA header of a real replay, then from the
common start on, every ``interval`` seconds, the body bytes it is due at ``rate`` bytes/s
(FA sends about 7 bytes every tick of 0.1 s: ~70 B/s in 7-byte chunks). Writers are spread
over ten send slots per interval, as real games are not in step. After ``seconds`` every
writer closes (a clean end). Readers connect ``reader_after`` seconds after the start and
read until the server closes them; each chunk they receive while writers stream gives one
lag sample: its arrival time minus the time its last byte was due at the writers plus the
delay (the lag behind the delayed edge; sampling adds up to one ``sample_interval``).
Idle connections connect first and send nothing for ``hold`` seconds. The generator prints
``{"event": "start"}`` when the writers start streaming and ``{"event": "stop"}`` when they
stop, so that the driver can measure the server over the steady streaming phase.
"""
from __future__ import annotations

import collections
import json
import resource
import selectors
import socket
import sys
import time

from replayserver.replay.header import parse_header
from tests.support import samples

#: Send slots per interval: writer i sends in slot i % SLOTS.
SLOTS = 10


def raise_fd_limit() -> None:
    """RLIMIT_NOFILE soft limit up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Writer:
    __slots__ = ("game_id", "sock", "sent", "pending")

    def __init__(self, game_id: int, sock: socket.socket) -> None:
        self.game_id, self.sock, self.sent, self.pending = game_id, sock, 0, 0


class Reader:
    __slots__ = ("game_id", "sock", "received", "connected_at")

    def __init__(self, game_id: int, sock: socket.socket, connected_at: float) -> None:
        self.game_id, self.sock, self.received, self.connected_at = game_id, sock, 0, connected_at


def connect(port: int, greeting: bytes = b"") -> socket.socket | None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if greeting:
            sock.sendall(greeting)
    except OSError:
        return None
    sock.setblocking(False)
    return sock


def generate(port: int, plan: dict) -> dict:
    """Run the plan against 127.0.0.1:port; the measurements (JSON-able)."""
    raise_fd_limit()
    cpu_start = time.process_time()
    data = samples.read(plan["replay"])
    header_size = parse_header(data).size
    header, body = data[:header_size], data[header_size:]
    rate, interval, delay = plan["rate"], plan["interval"], plan["delay"]
    counts = collections.Counter()
    lags: collections.Counter[int] = collections.Counter()  # lag in ms -> samples

    idle = [connect(port) for _ in range(plan.get("idle", 0))]
    counts["idle_connected"] = sum(sock is not None for sock in idle)
    writers = []
    for game_id in plan["games"]:
        for index in range(plan["writers"]):
            sock = connect(port, f"P/{game_id}/w{index}".encode() + b"\0" + header)
            if sock is None:
                counts["writers_failed"] += 1
            else:
                writers.append(Writer(game_id, sock))
    counts["writers_connected"] = len(writers)
    slots = [writers[slot::SLOTS] for slot in range(SLOTS)]

    selector = selectors.DefaultSelector()
    readers: list[Reader] = []
    start = time.monotonic()
    print(json.dumps({"event": "start"}), flush=True)
    stop_at = start + plan["seconds"]
    readers_at = start + plan["reader_after"]
    hold_until = start + plan.get("hold", 0)
    end_by = stop_at + plan["linger"]
    streaming, readers_due = bool(writers), bool(plan["readers"])
    tick = 0

    def send(writer: Writer, now: float) -> None:
        due = min(len(body), int((now - start) * rate))
        if due <= writer.sent:
            return
        try:
            writer.sent += writer.sock.send(body[writer.sent:due])
        except BlockingIOError:
            counts["send_blocked"] += 1
        except OSError:
            counts["send_failed"] += 1
        if writer.sent < due:
            counts["send_short"] += 1

    def receive(reader: Reader, now: float) -> None:
        try:
            chunk = reader.sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            selector.unregister(reader.sock)
            reader.sock.close()
            readers.remove(reader)
            finished.append(reader)
            return
        reader.received += len(chunk)
        counts["reader_bytes"] += len(chunk)
        position = reader.received - header_size  # body bytes received
        if position > 0 and now < stop_at:
            visible_at = start + position / rate + delay  # when its last byte became due
            if visible_at >= reader.connected_at:
                lags[round((now - visible_at) * 1000)] += 1

    finished: list[Reader] = []
    while True:
        now = time.monotonic()
        next_slot = start + (tick + 1) * interval / SLOTS
        if streaming and now >= next_slot:  # one slot per pass: readers are served between
            tick += 1
            if now - next_slot > interval:
                counts["late_slots"] += 1
            for writer in slots[tick % SLOTS]:
                send(writer, now)
            if now >= stop_at:
                print(json.dumps({"event": "stop"}), flush=True)
                for writer in writers:
                    send(writer, stop_at)
                    writer.sock.close()
                streaming = False
            next_slot = start + (tick + 1) * interval / SLOTS
        if readers_due and now >= readers_at:
            readers_due = False
            for game_id in plan["readers"]:
                sock = connect(port, f"G/{game_id}/r".encode() + b"\0")
                if sock is None:
                    counts["readers_failed"] += 1
                    continue
                reader = Reader(game_id, sock, time.monotonic())
                readers.append(reader)
                selector.register(sock, selectors.EVENT_READ, reader)
            counts["readers_connected"] = len(readers)
        if idle and now >= hold_until:
            for sock in idle:
                if sock is not None:
                    sock.close()
            idle = []
        if not streaming and not readers_due and not idle and (not readers or now >= end_by):
            break
        wake = min(t for t in (next_slot if streaming else None, readers_at if readers_due
                               else None, hold_until if idle else None, end_by)
                   if t is not None)
        for key, _ in selector.select(max(0.0, wake - time.monotonic())):
            receive(key.data, time.monotonic())
    for reader in readers:
        reader.sock.close()

    sent: dict[int, int] = {}
    for writer in writers:
        sent[writer.game_id] = max(sent.get(writer.game_id, 0), writer.sent)
    for reader in finished:
        if reader.received == 0:
            counts["readers_refused"] += 1
        elif reader.received == header_size + sent.get(reader.game_id, 0):
            counts["readers_complete"] += 1
        else:
            counts["readers_short"] += 1
    counts["readers_open_at_end"] = len(readers)
    return {
        **counts,
        "sent": sent,
        "lags_ms": dict(lags),
        "cpu": time.process_time() - cpu_start,
    }


def main() -> None:
    port, plan = int(sys.argv[1]), json.loads(sys.argv[2])
    print(json.dumps(generate(port, plan)), flush=True)


if __name__ == "__main__":
    main()
