"""Benchmarks: runnable modules (``python -m benchmarks.<name>``; all: ``python -m benchmarks``)."""
