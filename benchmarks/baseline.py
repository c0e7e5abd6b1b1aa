"""Idle memory of each server process, per configuration, beside the bare Twisted server.

``python -m benchmarks.baseline``: starts ``twistd -n replayserver`` (etc/replayserver.yaml
with the listener on a free port of 127.0.0.1 and vault and spool in a temporary directory)
in each configuration below, one after the other, waits until it is idle, and prints the PSS
of each of its processes (the listening process first, then the workers), then the bare
server's (benchmarks/bare.py). Nothing else should run meanwhile: PSS splits shared pages
between the processes that map them.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks._proc import process_tree, pss_bytes
from tests.support.server import REPO_ROOT, ServerProcess

#: Seconds a started server is left alone before it is measured.
IDLE_AFTER = 4.0
MB = 1e6
HTTP = "tcp:0:interface=127.0.0.1"

#: name -> changes to the ``server`` section of etc/replayserver.yaml
CONFIGURATIONS = {
    "default (workers 1, no HTTP listener)": {},
    "workers 1, http_listen": {"http_listen": HTTP},
    "workers 3, no HTTP listener": {"workers": 3},
    "workers 3, http_listen": {"workers": 3, "http_listen": HTTP},
}


def measure(server: dict[str, object]) -> list[float]:
    """The idle PSS (MB) of each process of a server with these ``server`` settings."""
    defaults = yaml.safe_load((REPO_ROOT / "etc" / "replayserver.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="replayserver-baseline-") as folder:
        settings = {name: dict(values) for name, values in defaults.items() if values}
        settings["server"].update(listen="tcp:0:interface=127.0.0.1", **server)
        settings["storage"].update(vault=str(Path(folder) / "replays"),
                                   spool=str(Path(folder) / "spool"))
        process = ServerProcess(folder, settings).start(timeout=60)
        try:
            time.sleep(IDLE_AFTER)
            return [pss_bytes([pid]) / MB for pid in process_tree(process.process.pid)]
        finally:
            process.kill()


def measure_bare() -> float:
    bare = subprocess.Popen([sys.executable, "-m", "benchmarks.bare"], stdout=subprocess.PIPE,
                            text=True, cwd=REPO_ROOT)
    try:
        bare.stdout.readline()  # its port: listening
        time.sleep(IDLE_AFTER)
        return pss_bytes([bare.pid]) / MB
    finally:
        bare.kill()
        bare.wait()


def main() -> None:
    for name, server in CONFIGURATIONS.items():
        each = measure(server)
        print(f"{name:40s} {sum(each):6.1f} MB PSS in {len(each)} processes: "
              + " + ".join(f"{value:.1f}" for value in each), flush=True)
    print(f"{'bare Twisted server (benchmarks.bare)':40s} {measure_bare():6.1f} MB PSS")


if __name__ == "__main__":
    main()
