"""Running games: one `Game` per game id (writers, merge, readers, lifecycle) and their registry."""
