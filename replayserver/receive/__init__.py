"""Receiving writers: their streams, the live delay, the quorum merge and the canonical replay."""
