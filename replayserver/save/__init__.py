"""Saving replays: the vault, the writers' spool, metadata, the save pipeline, crash recovery."""
