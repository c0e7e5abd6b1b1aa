"""Sending a game's merged replay to its readers (spectators)."""
