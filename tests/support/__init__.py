"""Helpers shared by the test modules (sample files, processes, databases)."""
