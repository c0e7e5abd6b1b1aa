"""replayserver: the live replay server of Forged Alliance Forever (Supreme Commander: FA)."""
