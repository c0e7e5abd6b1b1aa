"""Worker mode: games pinned to worker processes by id (``server.workers`` > 1).

The listening process (`supervisor`) reads each connection's header and hands the socket to the
worker that owns its game (`handoff`); each worker process (`worker`) adopts the sockets it is
given (`receiver`) and runs the games as a one-process server would. `wire` is the format of
the channel between them; `recording` carries WebSocket connections across; `status` merges
the workers' metrics, live games and health checks; `logs` relays the workers' log events into
the main process's log. See docs/operations.md, "Worker processes".
"""
