"""Vault paths of saved replays (REFERENCE §7)."""
from pathlib import PurePosixPath

import pytest

from replayserver.replay.vault_path import vault_relpath


@pytest.mark.parametrize(
    ("game_id", "path"),
    [
        (0, "0/0/0/0/0.fafreplay"),
        (1, "0/0/0/0/1.fafreplay"),
        (2000, "0/0/0/20/2000.fafreplay"),
        (1234567, "0/1/23/45/1234567.fafreplay"),
        (1123456789, "11/23/45/67/1123456789.fafreplay"),
        (5500550055, "55/0/55/0/5500550055.fafreplay"),
        (111122223333, "11/22/22/33/111122223333.fafreplay"),
    ],
)
def test_vault_relpath(game_id: int, path: str) -> None:
    assert vault_relpath(game_id) == PurePosixPath(path)


def test_negative_id_is_rejected() -> None:
    with pytest.raises(ValueError):
        vault_relpath(-1)
