"""Pure byte formats of FAF replays: the SCFA header and body, and the .fafreplay container."""
