"""Errors raised by the replay byte format readers, all subclasses of ReplayFormatError."""


class ReplayFormatError(Exception):
    """Bytes that are not a valid replay (or container); ``offset`` says where, when known."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        if offset is not None:
            message = f"{message} (at byte {offset})"
        super().__init__(message)
        self.offset = offset


class HeaderError(ReplayFormatError):
    """An SCFA header that cannot be parsed; ``field`` names the header field being read."""

    def __init__(self, message: str, field: str | None = None, offset: int | None = None) -> None:
        if field is not None:
            message = f"{field}: {message}"
        super().__init__(message, offset)
        self.field = field


class BodyError(ReplayFormatError):
    """An invalid frame in an SCFA body; ``offset`` is the frame's position in the body."""


class ContainerError(ReplayFormatError):
    """A .fafreplay file whose JSON line or compressed payload is invalid."""
