"""Sans-IO frame codec: 4-byte big-endian length, then one protobuf ``Envelope``.

Feed received bytes to :meth:`FrameDecoder.feed` and get back the complete envelopes; no sockets
here, so the same code serves every link and the tests drive it byte by byte.

Rules kept:
- a length of 0 or above ``max_frame`` is rejected *before* any payload is buffered, so a hostile
  length prefix can't make us allocate;
- the buffer is a ``bytearray`` consumed from the front by offset and compacted once per feed, so a
  stream of small reads stays O(n);
- at most one incomplete frame is ever buffered (<= 4 + max_frame bytes).
"""

from __future__ import annotations

import struct

from google.protobuf.message import DecodeError

from common.errors import FrameError
from proto import im_pb2

HEADER = struct.Struct(">I")
# 64 KiB is the design default (DESIGN.md §4): text messages are small and files go over REST.
DEFAULT_MAX_FRAME = 64 * 1024


def encode(env: im_pb2.Envelope) -> bytes:
    """One envelope as a frame."""
    payload = env.SerializeToString()
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into envelopes; raises :class:`FrameError` on a broken stream."""

    __slots__ = ("_buf", "_need", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need = 0  # payload length of the frame being assembled, 0 = reading a header

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[im_pb2.Envelope]:
        """Add received bytes; return every envelope they complete, in order."""
        buf = self._buf
        buf += data
        out: list[im_pb2.Envelope] = []
        pos = 0
        end = len(buf)
        while True:
            if self._need == 0:
                if end - pos < HEADER.size:
                    break
                (length,) = HEADER.unpack_from(buf, pos)
                if length == 0 or length > self.max_frame:
                    self._buf = bytearray()
                    raise FrameError(f"frame length {length} outside 1..{self.max_frame}")
                self._need = length
                pos += HEADER.size
            if end - pos < self._need:
                break
            env = im_pb2.Envelope()
            try:
                env.ParseFromString(bytes(buf[pos : pos + self._need]))
            except DecodeError as exc:
                self._buf = bytearray()
                raise FrameError(f"undecodable envelope: {exc}") from None
            pos += self._need
            self._need = 0
            out.append(env)
        if pos:
            del buf[:pos]
        return out
