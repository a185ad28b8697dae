"""Frame codec: byte-by-byte feeding, round trips, and every way a stream can be broken."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.codec import FrameDecoder, encode
from common.errors import FrameError
from proto import im_pb2


def chat(i: int, body: bytes = b"x") -> im_pb2.Envelope:
    return im_pb2.Envelope(
        seq=i,
        chat=im_pb2.ChatMsg(
            id=i, from_id="a", dest_id="b", dest_type=im_pb2.SINGLE, msg_type=im_pb2.TEXT, body=body
        ),
    )


def test_byte_by_byte_yields_each_frame_once_in_order() -> None:
    frames = [chat(i, bytes([i]) * i) for i in range(1, 20)]
    stream = b"".join(encode(f) for f in frames)
    dec = FrameDecoder()
    out: list[im_pb2.Envelope] = []
    for b in stream:
        out.extend(dec.feed(bytes([b])))
    assert out == frames
    assert dec.buffered == 0


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=20),
    cuts=st.lists(st.integers(min_value=1, max_value=64), max_size=50),
)
def test_round_trip_any_split(bodies: list[bytes], cuts: list[int]) -> None:
    frames = [chat(i + 1, b) for i, b in enumerate(bodies)]
    stream = b"".join(encode(f) for f in frames)
    dec = FrameDecoder()
    out: list[im_pb2.Envelope] = []
    pos = 0
    for c in cuts:
        out.extend(dec.feed(stream[pos : pos + c]))
        pos += c
    out.extend(dec.feed(stream[pos:]))
    assert out == frames


def test_zero_length_is_fatal() -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", 0))


def test_oversize_length_rejected_before_payload_arrives() -> None:
    dec = FrameDecoder(max_frame=1024)
    with pytest.raises(FrameError):
        dec.feed(struct.pack(">I", 1025))  # header alone: nothing buffered for the payload
    assert dec.buffered == 0


def test_truncated_frame_waits_and_holds_at_most_one_frame() -> None:
    data = encode(chat(1, b"y" * 100))
    dec = FrameDecoder()
    assert dec.feed(data[:-1]) == []
    assert dec.buffered <= len(data)
    assert dec.feed(data[-1:]) == [chat(1, b"y" * 100)]


def test_garbage_payload_is_fatal() -> None:
    payload = b"\xff\xff\xff\xff\xff\xff"
    with pytest.raises(FrameError):
        FrameDecoder().feed(struct.pack(">I", len(payload)) + payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise_anything_but_frame_error(data: bytes) -> None:
    dec = FrameDecoder(max_frame=512)
    try:
        for env in dec.feed(data):
            assert isinstance(env, im_pb2.Envelope)
    except FrameError:
        pass
    assert dec.buffered <= 4 + 512


def test_oversize_frames_are_skipped_unbuffered_on_request() -> None:
    """A node link's framer throws an over-size frame away as it arrives, keeping only the start
    of its payload (where the seq is), and goes on with the next frame."""
    from common.codec import LengthPrefixFramer, Skipped, peek_seq

    big = chat(6, b"z" * 5000).SerializeToString()
    small = chat(7).SerializeToString()
    stream = struct.pack(">I", len(big)) + big + struct.pack(">I", 0) + encode(chat(7))
    framer = LengthPrefixFramer(skip_oversize=True)
    got: list[object] = []
    for i in range(0, len(stream), 100):
        framer.feed(stream[i : i + 100])
        assert framer.buffered <= 200  # never the big frame
        while (item := framer.next_payload(1024)) is not None:
            got.append(item)
    assert len(got) == 3
    first, second, third = got
    assert isinstance(first, Skipped) and first.length == len(big) and peek_seq(first.head) == 6
    assert second == Skipped(0, b"")
    assert third == small


def test_the_limit_is_given_per_pull() -> None:
    from common.codec import LengthPrefixFramer

    framer = LengthPrefixFramer()
    framer.feed(encode(chat(1, b"a" * 100)) + encode(chat(2, b"b" * 100)))
    assert framer.next_payload(200) is not None
    with pytest.raises(FrameError):
        framer.next_payload(50)
