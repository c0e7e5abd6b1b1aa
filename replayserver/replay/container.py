"""The .fafreplay container: one line of JSON metadata, a newline, then the compressed SCFA replay.

Reading follows the ``compression`` key (REFERENCE §7): "zstd" is version 2 (a raw zstd frame,
decoded with a streaming decompressor since server-written frames have no content size);
absent or null is the legacy version 1 (strict base64 of Qt qCompress: a 4-byte big-endian
length, then a zlib stream). Whitespace after the payload (a final newline) is ignored.
Writing always produces version 2 with a streaming compressor.
"""
import binascii
import json
import typing
import zlib
from collections.abc import Iterable

import attrs
import zstandard

from replayserver.replay.errors import ContainerError


@attrs.frozen
class FafReplay:
    """A decoded .fafreplay file."""

    metadata: dict
    scfa: bytes
    format: str  # "fafreplay-v1" or "fafreplay-v2"


def read_fafreplay(data: bytes) -> FafReplay:
    """Decode a whole .fafreplay file; ContainerError on anything invalid."""
    newline = data.find(b"\n")
    if newline < 0:
        raise ContainerError("no newline after the JSON metadata line")
    metadata = _metadata(data[:newline])
    payload = data[newline + 1 :]
    compression = metadata.get("compression")
    if compression is None:
        return FafReplay(metadata, _qt_uncompress(payload, newline + 1), "fafreplay-v1")
    if compression == "zstd":
        return FafReplay(metadata, _zstd_decompress(payload, newline + 1), "fafreplay-v2")
    raise ContainerError(f"unknown compression {compression!r}", 0)


def write_fafreplay(
    out: typing.BinaryIO, metadata: dict, chunks: Iterable[bytes], level: int = 10,
    size: int | None = None,
) -> None:
    """Write a version 2 .fafreplay: ``metadata`` plus compression and version as one compact
    JSON line (json.dumps escapes newlines in strings, so the line has none), then the SCFA
    bytes of ``chunks`` through a streaming zstd compressor at ``level``.

    ``size``, the total length of ``chunks`` when known, goes into the zstd frame and lets zstd
    size its window to the replay (a small replay then needs little memory to compress)."""
    line = json.dumps(
        {**metadata, "compression": "zstd", "version": 2},
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    out.write(line.encode("utf-8") + b"\n")
    compressor = zstandard.ZstdCompressor(level=level)
    with compressor.stream_writer(out, size=-1 if size is None else size,
                                  closefd=False) as writer:
        for chunk in chunks:
            writer.write(chunk)


def _metadata(line: bytes) -> dict:
    try:
        metadata = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ContainerError(f"bad JSON metadata line: {error}", 0) from None
    if not isinstance(metadata, dict):
        raise ContainerError(f"JSON metadata is a {type(metadata).__name__}, not an object", 0)
    return metadata


def _zstd_decompress(payload: bytes, offset: int) -> bytes:
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    try:
        scfa = decompressor.decompress(payload)
    except zstandard.ZstdError as error:
        raise ContainerError(f"corrupt zstd payload: {error}", offset) from None
    if not decompressor.eof:
        raise ContainerError("truncated zstd payload", offset + len(payload))
    if decompressor.unused_data.strip():  # a final newline (as some clients write) is fine
        trailing = len(payload) - len(decompressor.unused_data)
        raise ContainerError("bytes after the zstd frame", offset + trailing)
    return scfa


def _qt_uncompress(payload: bytes, offset: int) -> bytes:
    try:
        packed = binascii.a2b_base64(payload.rstrip(), strict_mode=True)
    except binascii.Error as error:
        raise ContainerError(f"bad base64 payload: {error}", offset) from None
    if len(packed) < 4:
        raise ContainerError("qCompress data shorter than its 4-byte length", offset)
    expected = int.from_bytes(packed[:4], "big")
    decompressor = zlib.decompressobj()
    try:
        scfa = decompressor.decompress(packed[4:])
    except zlib.error as error:
        raise ContainerError(f"corrupt zlib payload: {error}", offset) from None
    if not decompressor.eof:
        raise ContainerError("truncated zlib payload", offset)
    if decompressor.unused_data:
        raise ContainerError("bytes after the zlib stream", offset)
    if len(scfa) != expected:
        raise ContainerError(
            f"qCompress length says {expected} bytes, zlib gave {len(scfa)}", offset
        )
    return scfa
