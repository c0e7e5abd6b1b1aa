"""The .fafreplay container: one line of JSON metadata, a newline, then the compressed SCFA replay.

Reading follows the ``compression`` key (docs/replay-format.md): "zstd" is version 2 (a raw
zstd frame, decoded with a streaming decompressor since server-written frames have no content
size); absent or null is the legacy version 1 (strict base64 of Qt qCompress: a 4-byte
big-endian length, then a zlib stream). Whitespace after the payload (a final newline) is ignored.
Writing always produces version 2 with a streaming compressor.

Files come from anywhere (``replayserver-inspect`` reads what it is given), so reading streams
and is bounded whatever the file says:

* the JSON metadata line may be at most MAX_METADATA_SIZE (1 MiB) long, its newline aside;
* the decompressed SCFA replay may be at most MAX_SCFA_SIZE (256 MiB; a five-hour 8-player game
  is well under 50 MB). A payload that inflates past it is a ContainerError stating the cap,
  raised as soon as the cap is passed: a file of a few hundred KB can hold gigabytes of zstd.
  The zstd frame's content size is never trusted. Compressed input goes to the decompressor
  _ZSTD_STEP bytes at a time; a zstd block is at most 128 KiB and takes at least 4 bytes, so
  one step yields at most 4 MiB (zstd's default window limit, 128 MiB, bounds its own buffer);
* in version 1, a qCompress length above the cap is refused before inflating; the zlib stream
  is inflated _ZLIB_STEP bytes at a time and may not yield more than that length; the base64
  text is decoded as it is read.

``open_fafreplay`` reads a binary file this way and hands the SCFA bytes over in chunks;
``read_fafreplay`` decodes a file held in memory into one bytes object.
"""
import binascii
import io
import itertools
import json
import typing
import zlib
from collections.abc import Iterable, Iterator, Mapping

import attrs
import zstandard

from replayserver.replay.errors import ContainerError

MAX_METADATA_SIZE = 1 << 20
MAX_SCFA_SIZE = 256 << 20

_READ_SIZE = 1 << 16  # bytes read from the file at a time
_ZSTD_STEP = 128  # compressed bytes per zstd step: at most 32 blocks, 4 MiB, come out
_ZLIB_STEP = 1 << 20  # most decompressed bytes per zlib step


@attrs.frozen
class FafReplay:
    """A decoded .fafreplay file."""

    metadata: dict[str, typing.Any]
    scfa: bytes
    format: str  # "fafreplay-v1" or "fafreplay-v2"


@attrs.frozen
class FafReplayStream:
    """A .fafreplay being read: metadata and format are known, the SCFA bytes come as
    ``chunks`` are iterated (which raises ContainerError when the payload turns out bad)."""

    metadata: dict[str, typing.Any]
    format: str  # "fafreplay-v1" or "fafreplay-v2"
    chunks: Iterator[bytes]


def read_fafreplay(data: bytes, max_size: int = MAX_SCFA_SIZE) -> FafReplay:
    """Decode a whole .fafreplay file; ContainerError on anything invalid or over the caps."""
    replay = open_fafreplay(io.BytesIO(data), max_size)
    return FafReplay(replay.metadata, b"".join(replay.chunks), replay.format)


def open_fafreplay(file: typing.BinaryIO, max_size: int = MAX_SCFA_SIZE) -> FafReplayStream:
    """Read the metadata line of the .fafreplay at the position of ``file``, and return it with
    an iterator that decompresses the rest of the file (at most ``max_size`` bytes in all).

    Raises ContainerError for a bad metadata line or compression key."""
    line = file.readline(MAX_METADATA_SIZE + 1)
    if not line.endswith(b"\n"):
        if len(line) > MAX_METADATA_SIZE:
            raise ContainerError(
                f"JSON metadata line longer than the cap of {MAX_METADATA_SIZE} bytes", 0
            )
        raise ContainerError("no newline after the JSON metadata line")
    metadata = _metadata(line[:-1])
    compression = metadata.get("compression")
    if compression is None:
        chunks = _qt_uncompress(file, len(line), max_size)
        return FafReplayStream(metadata, "fafreplay-v1", chunks)
    if compression == "zstd":
        chunks = _zstd_decompress(file, len(line), max_size)
        return FafReplayStream(metadata, "fafreplay-v2", chunks)
    raise ContainerError(f"unknown compression {compression!r}", 0)


def write_fafreplay(
    out: typing.BinaryIO, metadata: Mapping[str, object], chunks: Iterable[bytes], level: int = 10,
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


def _metadata(line: bytes) -> dict[str, typing.Any]:
    try:
        metadata = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ContainerError(f"bad JSON metadata line: {error}", 0) from None
    if not isinstance(metadata, dict):
        raise ContainerError(f"JSON metadata is a {type(metadata).__name__}, not an object", 0)
    return metadata


def _zstd_decompress(file: typing.BinaryIO, offset: int, max_size: int) -> Iterator[bytes]:
    """The frame's decompressed bytes; ``offset`` is where the payload starts in the file."""
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    size = 0
    while True:
        block = file.read(_READ_SIZE)
        if not block:
            raise ContainerError("truncated zstd payload", offset)
        view = memoryview(block)
        for start in range(0, len(block), _ZSTD_STEP):
            try:
                scfa = decompressor.decompress(view[start : start + _ZSTD_STEP])
            except zstandard.ZstdError as error:
                raise ContainerError(f"corrupt zstd payload: {error}", offset + start) from None
            size += len(scfa)
            if size > max_size:
                raise _over_the_cap(max_size, offset + start)
            if scfa:
                yield scfa
            if decompressor.eof:
                # the frame ends inside this step; a final newline (some clients write one)
                # or other whitespace may follow it, nothing else
                unused = decompressor.unused_data
                end = min(start + _ZSTD_STEP, len(block)) - len(unused)
                if not _only_whitespace(unused + block[start + _ZSTD_STEP :], file):
                    raise ContainerError("bytes after the zstd frame", offset + end)
                return
        offset += len(block)


def _qt_uncompress(file: typing.BinaryIO, offset: int, max_size: int) -> Iterator[bytes]:
    """The bytes of a base64 qCompress payload; ``offset`` is where it starts in the file."""
    packed = _base64_decode(file, offset)
    head = b""
    for data in packed:
        head += data
        if len(head) >= 4:
            break
    else:
        raise ContainerError("qCompress data shorter than its 4-byte length", offset)
    expected = int.from_bytes(head[:4], "big")
    if expected > max_size:
        raise ContainerError(
            f"qCompress length says {expected} bytes, more than {_cap(max_size)}", offset
        )
    decompressor = zlib.decompressobj()
    size = 0
    for data in itertools.chain([head[4:]], packed):
        while not decompressor.eof:
            try:
                scfa = decompressor.decompress(data, _ZLIB_STEP)
            except zlib.error as error:
                raise ContainerError(f"corrupt zlib payload: {error}", offset) from None
            size += len(scfa)
            if size > expected:
                raise ContainerError(
                    f"zlib stream inflates to more than the {expected} bytes its qCompress "
                    "length says", offset
                )
            if scfa:
                yield scfa
            data = decompressor.unconsumed_tail
            if not data and len(scfa) < _ZLIB_STEP:  # a full step may hold output back
                break
        if decompressor.eof and (data or decompressor.unused_data):
            raise ContainerError("bytes after the zlib stream", offset)
    if not decompressor.eof:
        raise ContainerError("truncated zlib payload", offset)
    if size != expected:
        raise ContainerError(f"qCompress length says {expected} bytes, zlib gave {size}", offset)


def _base64_decode(file: typing.BinaryIO, offset: int) -> Iterator[bytes]:
    """The bytes of strict base64 text read from ``file`` piece by piece (whole quanta of four
    characters at a time): the same as decoding the whole text, with trailing whitespace
    stripped, in one go.

    Strict: the base64 alphabet only, in whole quanta, "=" only to pad the last quantum.
    binascii's strict mode checks all of that but one case on Python 3.11: "=" after a quantum
    that needs no padding ("AAAA=") passes (CPython gh-118314, fixed in 3.13). Decoding piece by
    piece, such a "=" would pass or fail depending on where the reads end, so it is refused
    here: a "=" at the start of a quantum is never valid."""
    pending = b""  # the characters of an incomplete quantum
    ended = False  # padding or whitespace seen: only whitespace may follow
    while text := file.read(_READ_SIZE):
        if ended:
            if text.strip():
                raise ContainerError("bad base64 payload: data after its end", offset)
            continue
        text = pending + text
        body = text.rstrip()
        ended = len(body) < len(text)
        cut = len(body) if ended else len(body) - len(body) % 4
        piece = body[:cut]  # starts at a quantum, as every piece before it held whole quanta
        pad = piece.find(b"=")
        if pad >= 0 and pad % 4 == 0:
            raise ContainerError("bad base64 payload: padding at the start of a group of four",
                                 offset + pad)
        try:
            data = binascii.a2b_base64(piece, strict_mode=True)
        except binascii.Error as error:
            raise ContainerError(f"bad base64 payload: {error}", offset) from None
        ended = ended or piece.endswith(b"=")
        pending = body[cut:]
        offset += cut
        if data:
            yield data
    if pending:
        raise ContainerError("bad base64 payload: it ends inside a group of four", offset)


def _only_whitespace(data: bytes, file: typing.BinaryIO) -> bool:
    """Whether ``data`` and the rest of ``file`` are whitespace only (read piece by piece)."""
    while not data.strip():
        data = file.read(_READ_SIZE)
        if not data:
            return True
    return False


def _over_the_cap(max_size: int, offset: int) -> ContainerError:
    return ContainerError(f"payload decompresses to more than {_cap(max_size)}", offset)


def _cap(max_size: int) -> str:
    mib = f" ({max_size >> 20} MiB)" if max_size % (1 << 20) == 0 else ""
    return f"the cap of {max_size} bytes{mib}"
