"""Decoder for the serialized Lua values that SCFA replay headers carry (mods, scenario, armies).

Encoding: a type byte, then 0 = float32 (little-endian), 1 = NUL-terminated string, 2 = nil,
3 = bool (u8, 1 = true; the game writes only 0 and 1, any non-zero byte is read as true),
4 = table (key, value pairs until a 5), 5 = table end.

Decoded as Python values:
* strings become ``str``, decoded as UTF-8 with ``errors="replace"`` (player and mod names can be
  non-ASCII; a bad byte becomes U+FFFD instead of failing the whole header);
* numbers stay ``float`` as stored, also as table keys: an array-like Lua table becomes a dict
  keyed by ``1.0, 2.0, ...`` (equal to and hashing like ``1, 2, ...``, so ``table[1]`` works);
* tables become ``dict`` in their serialized order; a repeated key keeps its last value.

Two bounds keep a hostile header from costing more than its bytes should:

* The decoder is iterative with an explicit stack limited to ``max_depth`` nested tables, so a
  deeply nested attack is a HeaderError, never a RecursionError.
* A LuaBudget counts the values decoded (every table, key and value) across all the blobs of one
  header. Without it a 1 MiB header of empty tables would become some hundred thousand dicts,
  tens of MB of Python objects for one writer. The real sample headers hold at most 800 values
  (14 armies; a game with 7 sim mods has 777: about 40 values per mod, at most 41 per army,
  at most 261 for the scenario), so MAX_LUA_VALUES, over ten times that, leaves room for a
  16-army lobby with some 200 sim mods, while what it lets a header build stays near 1 MB.
"""
import struct

from replayserver.replay.errors import HeaderError

MAX_DEPTH = 64
MAX_LUA_VALUES = 10_000

_FLOAT = struct.Struct("<f")

#: What a Lua table is keyed by: nil and tables are refused as keys.
LuaKey = float | str | bool
#: A decoded Lua value; a table is a dict whose values are Lua values again.
LuaValue = float | str | bool | None | dict[LuaKey, "LuaValue"]
LuaTable = dict[LuaKey, LuaValue]


class LuaBudget:
    """How many more Lua values (tables, keys and values) a header may decode."""

    def __init__(self, limit: int = MAX_LUA_VALUES) -> None:
        self.limit = limit
        self.left = limit

    @property
    def used(self) -> int:
        """Values decoded so far."""
        return self.limit - self.left


def decode_lua(
    data: bytes | bytearray,
    start: int,
    end: int,
    field: str,
    budget: LuaBudget | None = None,
    max_depth: int = MAX_DEPTH,
) -> tuple[LuaValue, int]:
    """Decode one Lua value from ``data[start:end]``; return it and the position after it.

    Every table, key and value decoded is taken from ``budget`` (a fresh LuaBudget when None).
    Raises HeaderError naming ``field`` and the absolute offset in ``data`` of the bad byte.
    """
    if budget is None:
        budget = LuaBudget()
    left = budget.left
    pos = start
    tables: list[LuaTable] = []  # the open tables, innermost last
    keys: list[LuaKey | None] = []  # per open table: the key waiting for its value, or None
    value: LuaValue
    try:
        while True:
            if pos >= end:
                raise HeaderError("Lua value runs past the end of its blob", field, pos)
            tag = data[pos]
            if tag != 5:  # everything else is a new table, key or value
                if left <= 0:
                    raise HeaderError(
                        f"more than {budget.limit} Lua values in the header", field, pos
                    )
                left -= 1
            if tag == 4:
                if len(tables) >= max_depth:
                    raise HeaderError(f"Lua tables nested deeper than {max_depth}", field, pos)
                tables.append({})
                keys.append(None)
                pos += 1
                continue
            if tag == 5:
                if not tables or keys[-1] is not None:
                    raise HeaderError("unexpected Lua table end", field, pos)
                value = tables.pop()
                keys.pop()
                pos += 1
            elif tag == 0:
                if pos + 5 > end:
                    raise HeaderError("Lua number runs past the end of its blob", field, pos)
                value = _FLOAT.unpack_from(data, pos + 1)[0]
                pos += 5
            elif tag == 1:
                nul = data.find(b"\0", pos + 1, end)
                if nul < 0:
                    raise HeaderError("unterminated Lua string", field, pos)
                value = bytes(data[pos + 1 : nul]).decode("utf-8", errors="replace")
                pos = nul + 1
            elif tag == 2:
                value = None
                pos += 1
            elif tag == 3:
                if pos + 2 > end:
                    raise HeaderError("Lua bool runs past the end of its blob", field, pos)
                value = data[pos + 1] != 0
                pos += 2
            else:
                raise HeaderError(f"bad Lua type tag {tag}", field, pos)
            if not tables:
                return value, pos
            key = keys[-1]
            if key is None:
                if value is None or isinstance(value, dict):
                    raise HeaderError("Lua table key is nil or a table", field, pos)
                keys[-1] = value
            else:
                tables[-1][key] = value
                keys[-1] = None
    finally:
        budget.left = left
