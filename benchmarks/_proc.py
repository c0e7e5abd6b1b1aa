"""What the load benchmark reads from /proc: process trees, their CPU time and PSS, core usage.

Memory is PSS (``/proc/PID/smaps_rollup``): shared library pages count once over all the
processes that map them, so the sum over a server's processes is its real cost; RSS would
count them once per process.
"""
from __future__ import annotations

import os
import resource

_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants (a server's worker processes)."""
    pids, index = [pid], 0
    while index < len(pids):
        try:
            with open(f"/proc/{pids[index]}/task/{pids[index]}/children") as f:
                pids.extend(int(child) for child in f.read().split())
        except OSError:
            pass
        index += 1
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes, their reaped children's included."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total / _TICKS


def pss_bytes(pids: list[int]) -> int:
    """The sum of the processes' proportional set sizes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def open_files(pids: list[int], suffix: str) -> int:
    """How many files whose name ends with ``suffix`` the processes hold open."""
    count = 0
    for pid in pids:
        folder = f"/proc/{pid}/fd"
        try:
            descriptors = os.listdir(folder)
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                count += os.readlink(f"{folder}/{descriptor}").endswith(suffix)
            except OSError:
                pass
    return count


def core_times() -> list[tuple[int, ...]]:
    """Per core since boot (/proc/stat), in clock ticks: (busy, softirq, steal, total).

    busy: user + nice + system + irq + softirq. steal: time the hypervisor gave to others.
    """
    cores = []
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, values[:8])
                busy = user + nice + system + irq + softirq
                cores.append((busy, softirq, steal, busy + idle + iowait + steal))
    return cores


def core_usage(before: list[tuple[int, ...]], after: list[tuple[int, ...]]
               ) -> dict[str, list[float]]:
    """Between two core_times(): per core, the busy, softirq and steal fractions."""
    usage: dict[str, list[float]] = {"busy": [], "softirq": [], "steal": []}
    for old, new in zip(before, after):
        total = max(1, new[3] - old[3])
        for index, key in enumerate(usage):
            usage[key].append((new[index] - old[index]) / total)
    return usage


def raise_file_limit() -> None:
    """RLIMIT_NOFILE's soft limit up to the hard limit (inherited by the processes we start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
