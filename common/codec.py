"""Sans-IO frame codec: 4-byte big-endian length, then one protobuf ``Envelope``.

Two layers, no sockets in either:
- :class:`LengthPrefixFramer` splits a TCP byte stream into frame *payloads* (bytes), pulled one
  at a time with a size limit given per pull, so the link can change the limit mid-stream (a
  small one before GREET) and stop pulling when it must (a GREET awaiting its verdict, a full
  handler queue) with the rest still unparsed;
- :class:`FrameDecoder` is that framer plus the protobuf parse, for tools and tests that want
  envelopes.

Rules kept:
- a length of 0 or above the limit is rejected *before* any payload is buffered, so a hostile
  length prefix can't make us allocate; on a node link (``skip_oversize``) such a frame is skipped
  instead, its bytes discarded as they arrive, and reported as :class:`Skipped` (with the first
  bytes of its payload, where the sender put the link sequence) so it can be refused alone;
- received data is consumed by offset; a partial frame is kept in a ``bytearray`` that only grows
  by appends, so a stream of small reads stays O(n);
- at most one incomplete frame is ever buffered (<= 4 + limit bytes) beyond what the caller
  chose not to pull yet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from common.errors import FrameError
from proto import im_pb2

HEADER = struct.Struct(">I")
# 64 KiB is the design default (DESIGN.md §4): text messages are small and files go over REST.
DEFAULT_MAX_FRAME = 64 * 1024
# enough of a payload to read its link sequence: the tag byte plus a 10-byte varint
SEQ_HEAD = 11


def encode(env: im_pb2.Envelope) -> bytes:
    """One envelope as a frame."""
    payload = env.SerializeToString()
    return HEADER.pack(len(payload)) + payload


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


@dataclass(slots=True, frozen=True)
class Skipped:
    """A frame the framer refused and discarded: its length and the start of its payload."""

    length: int
    head: bytes


class LengthPrefixFramer:
    """Splits a byte stream into payloads; raises :class:`FrameError` on a broken stream."""

    __slots__ = ("_buf", "_head", "_pos", "_skip", "_skip_len", "skip_oversize")

    def __init__(self, *, skip_oversize: bool = False) -> None:
        self.skip_oversize = skip_oversize
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._skip = 0  # bytes still to discard of a refused frame
        self._skip_len = 0  # length of the frame being (or just) skipped
        self._head = b""  # the refused frame's first bytes

    @property
    def buffered(self) -> int:
        """Bytes received and not yet pulled."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        if self._skip:
            data = self._discard(data)
        if not data:
            return
        if self._pos >= len(self._buf):
            self._buf, self._pos = data, 0  # the usual case: nothing left over, no copy
            return
        if not isinstance(self._buf, bytearray):
            self._buf = bytearray(memoryview(self._buf)[self._pos :])
            self._pos = 0
        elif self._pos:
            del self._buf[: self._pos]  # O(1) at the front of a bytearray
            self._pos = 0
        self._buf += data

    def _discard(self, data: bytes) -> bytes:
        take = min(self._skip, len(data))
        if len(self._head) < SEQ_HEAD:
            self._head += data[: SEQ_HEAD - len(self._head)]
        self._skip -= take
        return data[take:]

    def next_payload(self, limit: int) -> bytes | Skipped | None:
        """The next complete payload (at most ``limit`` bytes), a :class:`Skipped` frame, or
        None when more data is needed."""
        if self._skip:
            return None
        if self._skip_len:  # a skipped frame just ended
            return self._skipped()
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < HEADER.size:
            self._compact()
            return None
        (length,) = HEADER.unpack_from(buf, pos)
        if length == 0 or length > limit:
            if not self.skip_oversize:
                self._buf, self._pos = b"", 0
                raise FrameError(f"frame length {length} outside 1..{limit}")
            self._pos = pos + HEADER.size
            if length == 0:
                return Skipped(0, b"")
            rest = bytes(memoryview(buf)[self._pos :])
            self._buf, self._pos = b"", 0
            self._skip = self._skip_len = length
            left = self._discard(rest)
            if self._skip:
                return None
            self.feed(left)
            return self._skipped()
        end = pos + HEADER.size + length
        if end > len(buf):
            self._compact()
            return None
        payload = bytes(memoryview(buf)[pos + HEADER.size : end])
        self._pos = end
        if end == len(buf):
            self._buf, self._pos = b"", 0
        return payload

    def _skipped(self) -> Skipped:
        out = Skipped(self._skip_len, self._head)
        self._skip_len, self._head = 0, b""
        return out

    def _compact(self) -> None:
        """Keep only the unpulled bytes, so a big chunk's consumed part is not held."""
        if self._pos:
            self._buf = bytearray(memoryview(self._buf)[self._pos :])
            self._pos = 0


class FrameDecoder:
    """Splits a byte stream into envelopes; raises :class:`FrameError` on a broken stream."""

    __slots__ = ("_framer", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._framer = LengthPrefixFramer()

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return self._framer.buffered

    def feed(self, data: bytes) -> list[im_pb2.Envelope]:
        """Add received bytes; return every envelope they complete, in order."""
        self._framer.feed(data)
        out: list[im_pb2.Envelope] = []
        while (payload := self._framer.next_payload(self.max_frame)) is not None:
            assert isinstance(payload, bytes)  # no skipping here
            out.append(parse(payload))
        return out


def parse(payload: bytes) -> im_pb2.Envelope:
    env = im_pb2.Envelope()
    try:
        env.ParseFromString(payload)
    except DecodeError as exc:
        raise FrameError(f"undecodable envelope: {exc}") from None
    return env


def peek_seq(head: bytes) -> int:
    """The link sequence at the start of a payload (field 1, a varint, which every sender here
    writes first), or 0 when the bytes don't start that way."""
    if not head or head[0] != 0x08:
        return 0
    value = shift = 0
    for b in head[1:SEQ_HEAD]:
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value
        shift += 7
    return 0
