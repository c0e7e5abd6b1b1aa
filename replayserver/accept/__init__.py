"""Accepting connections: the `P/<id>/<name>\\0` / `G/...` header and the protocol that reads it."""
