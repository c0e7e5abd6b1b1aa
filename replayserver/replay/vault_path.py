"""Where a game's .fafreplay lives in the replay vault, relative to the vault's root."""
from pathlib import PurePosixPath


def vault_relpath(game_id: int) -> PurePosixPath:
    """``<a>/<b>/<c>/<d>/<id>.fafreplay`` (docs/replay-format.md): the id left-padded to 10 digits,
    its last 10 kept, the last 2 of those dropped, the other 8 split into four pairs, each
    written as an integer: 2000 -> ``0/0/0/20/2000.fafreplay``."""
    if game_id < 0:
        raise ValueError(f"negative game id {game_id}")
    digits = f"{game_id:010d}"[-10:-2]
    pairs = (str(int(digits[i : i + 2])) for i in range(0, 8, 2))
    return PurePosixPath(*pairs, f"{game_id}.fafreplay")
