"""Where the real sample replays live, and small accessors for them.

The samples are part of the repository, in ``tests/data/replays`` (its README.md says where
each file came from and what it shows); nothing is read from outside the checkout.
"""
import functools
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = REPO_ROOT / "tests" / "data" / "replays"

#: Raw SCFA streams that parse completely.
VALID_SCFA = (
    "8805603.scfareplay",
    "8945286.scfareplay",
    "8468507.scfareplay",
    "8604509.scfareplay",
    "8604509-EcoNoob.scfareplay",
    "8748707-dragonite.scfareplay",
    "22338092.scfareplay",
)
#: A raw SCFA file whose header is corrupt.
CORRUPT_SCFA = "1418712.scfareplay"
#: FAF containers (``.fafreplay``).
FAFREPLAYS = (
    "8653680.fafreplay",
    "TestCommands01.fafreplay",
    "22338092.fafreplay",
    "test.fafreplay",
    "zstd_reference.fafreplay",
)
#: The six writer streams of one live game.
DIVERGING = tuple(f"diverging_1/{i}" for i in range(6))


def path(name: str) -> Path:
    return SAMPLES / name


@functools.lru_cache(maxsize=None)
def read(name: str) -> bytes:
    """The bytes of one sample file (cached: the files are read-only)."""
    return path(name).read_bytes()
