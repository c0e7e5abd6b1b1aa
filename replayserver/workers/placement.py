"""Which worker process owns which game, and where its spool is (worker mode).

Games are pinned to workers by id (``game_id % count``); each worker has its own spool
directory inside the server's, so a worker's crash touches only its games, and at start every
game an earlier run spooled is moved to the spool of the worker that owns it now
(`assign_spool`). Imported by the one-process server too, which gathers every spooled game in
its own spool (docs/operations.md, "Worker processes").
"""
from __future__ import annotations

import os

from replayserver.save.spooled import STREAM_SUFFIX, spooled_game_id


def worker_count(setting: int | None) -> int:
    """Worker processes for ``server.workers`` (None = one per core); 0 or 1 = single process."""
    if setting is None:
        return os.cpu_count() or 1
    return setting


def worker_for(game_id: int, count: int) -> int:
    """The index of the worker that owns a game."""
    return game_id % count


def worker_spool(spool: str, index: int) -> str:
    """Worker ``index``'s spool directory: a crash of one worker touches only its games."""
    return os.path.join(spool, f"worker-{index}")


def assign_spool(directory: str, count: int) -> list[int]:
    """Move spooled games of earlier runs to their owner's spool; returns every spooled game.

    The owner of game ``g`` is ``<directory>/worker-<g % count>`` with ``count`` > 1 and
    ``<directory>`` itself otherwise. Call it only while no spool is open there.
    """
    if not os.path.isdir(directory):
        return []
    places = [directory] + [
        os.path.join(directory, name) for name in os.listdir(directory)
        if name.startswith("worker-") and os.path.isdir(os.path.join(directory, name))
    ]
    found = [
        (place, run, game)
        for place in places for run in os.listdir(place)
        if not run.startswith("worker-") and os.path.isdir(os.path.join(place, run))
        for game in os.listdir(os.path.join(place, run)) if spooled_game_id(game) is not None
    ]
    games = []
    for place, run, game in found:
        source = os.path.join(place, run, game)
        game_id = spooled_game_id(game)
        assert game_id is not None
        if any(name.endswith(STREAM_SUFFIX) for name in os.listdir(source)):
            games.append(game_id)
        owner = worker_spool(directory, worker_for(game_id, count)) if count > 1 else directory
        if owner != place:
            os.makedirs(os.path.join(owner, run), exist_ok=True)
            os.rename(source, os.path.join(owner, run, game))
    for place in places:
        for run in os.listdir(place):
            run_directory = os.path.join(place, run)
            if (not run.startswith("worker-") and os.path.isdir(run_directory)
                    and not os.listdir(run_directory)):
                os.rmdir(run_directory)
        if place != directory and not os.listdir(place):
            os.rmdir(place)
    return sorted(set(games))
