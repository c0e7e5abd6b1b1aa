"""Run every benchmark module listed in MODULES, in order (``make bench``)."""
import importlib

#: Benchmark modules of this package; each has a ``main()`` that prints its figures.
MODULES = [
    "scan",
    "merge",
    "baseline",
    "load",
]


def main() -> None:
    for name in MODULES:
        print(f"== benchmarks.{name}")
        importlib.import_module(f"benchmarks.{name}").main()


if __name__ == "__main__":
    main()
