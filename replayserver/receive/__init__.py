"""Receiving writers: the protocol that takes a writer's bytes into its game and its spool."""
