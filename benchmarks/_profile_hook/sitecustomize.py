"""Profile hook for benchmark servers: cProfile between SIGUSR1 and SIGUSR2.

benchmarks/load.py puts this directory first on the server's PYTHONPATH with
REPLAYSERVER_BENCH_PROFILE=<path>; Python then imports this module at start in the server and
its worker processes. SIGUSR1 starts profiling; SIGUSR2 stops it and writes the statistics to
``<path>.<pid>``. Without the variable it does nothing.
"""
import cProfile
import os
import signal

_PATH = os.environ.get("REPLAYSERVER_BENCH_PROFILE")

if _PATH:
    _profiler = cProfile.Profile()

    def _start(signum, frame) -> None:
        _profiler.enable()

    def _stop(signum, frame) -> None:
        _profiler.disable()
        _profiler.dump_stats(f"{_PATH}.{os.getpid()}")

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
