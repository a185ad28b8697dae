"""One small error tree for the whole project.

Every error we raise derives from :class:`IMError`. Errors that a peer must hear about carry their
wire :class:`proto.im_pb2.ErrorCode`, so the code that catches them can answer with an ERROR frame
without a lookup table. Driver exceptions (sqlite, redis, ...) are translated at the adapter that
calls the driver into :class:`BackendError`; ``asyncio.CancelledError`` is never caught as one.
"""

from __future__ import annotations

from proto import im_pb2


class IMError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(IMError):
    """Configuration is missing or inconsistent; the process refuses to start."""


class BackendError(IMError):
    """A backing service (database, Redis, queue) failed or is unreachable."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service}: {detail}")
        self.service = service
        self.detail = detail


class AuthError(IMError):
    """Credentials or a token were refused."""


class ProtocolError(IMError):
    """A peer broke the protocol; ``fatal`` means the byte stream can't be trusted any more."""

    code: int = im_pb2.BAD_MESSAGE
    fatal: bool = False

    def __init__(self, detail: str, *, code: int | None = None, fatal: bool | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if fatal is not None:
            self.fatal = fatal

    @property
    def code_name(self) -> str:
        return str(im_pb2.ErrorCode.Name(self.code))


class FrameError(ProtocolError):
    """The framing itself is broken (length out of range, undecodable bytes): close the link."""

    code = im_pb2.BAD_FRAME
    fatal = True


class WindowError(ProtocolError):
    """The peer sent more unacked frames than the window allows."""

    code = im_pb2.WINDOW_FULL
    fatal = True
