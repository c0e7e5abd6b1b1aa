"""Header + body scan time of the largest samples: this package against faf-replay-parser.

Prints, per sample, the best of several runs of ``parse_header`` + ``scan_body`` on the SCFA
bytes, of ``fafreplay.Parser(stop_on_desync=False).parse`` on the same bytes (header, body
framing, ticks and desyncs: the same work), and their ratio.
"""
import timeit

from replayserver.replay.body import scan_body
from replayserver.replay.container import read_fafreplay
from replayserver.replay.header import parse_header
from tests.support import samples

LARGEST = ("8653680.fafreplay", "8604509.scfareplay", "8748707-dragonite.scfareplay")
REPEAT = 15  # best of: the machine may be busy


def ours(scfa: bytes) -> None:
    header = parse_header(scfa)
    scan_body(scfa[header.size :])


def best_of(function, scfa: bytes) -> float:
    return min(timeit.repeat(lambda: function(scfa), number=1, repeat=REPEAT))


def main() -> None:
    try:
        import fafreplay
    except ImportError:
        fafreplay = None
        print("faf-replay-parser is not installed: only this package is timed")
    for name in LARGEST:
        data = samples.read(name)
        scfa = read_fafreplay(data).scfa if data[:1] == b"{" else data
        mine = best_of(ours, scfa)
        line = f"{name}: {len(scfa) / 1e6:.1f} MB  replayserver {mine * 1e3:.1f} ms"
        if fafreplay is not None:
            parser = fafreplay.Parser(stop_on_desync=False)
            theirs = best_of(parser.parse, scfa)
            line += f"  fafreplay {theirs * 1e3:.1f} ms  ratio {mine / theirs:.1f}x"
        print(line)


if __name__ == "__main__":
    main()
