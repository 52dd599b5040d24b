"""Malformed input always gives a clear BLIPProtocolError: never a crash, hang or other error."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.blip.blip_reference import RefSender, props_block, varint

from fieldsync.blip import BLIPProtocol, BLIPProtocolError


def valid_frame(number: int = 1, flags: int = 0, body: bytes = b"hello") -> bytes:
    return RefSender().frame(number, flags, props_block([("Profile", "p")]) + body)


def raw_frame(header: bytes, data: bytes, crc_of: bytes | None = None) -> bytes:
    """A frame with an arbitrary header and data and the CRC of ``crc_of`` (default data)."""
    crc = zlib.crc32(data if crc_of is None else crc_of)
    return header + data + crc.to_bytes(4, "big")


def test_valid_frame_is_accepted() -> None:
    assert BLIPProtocol().receive_frame(valid_frame())[0].message.body == b"hello"


def test_corrupted_crc() -> None:
    frame = bytearray(valid_frame())
    frame[-1] ^= 0x01
    with pytest.raises(BLIPProtocolError, match="checksum mismatch"):
        BLIPProtocol().receive_frame(bytes(frame))


@pytest.mark.parametrize("flags", [0x00, 0x08])
def test_corrupted_data_fails_crc(flags: int) -> None:
    frame = bytearray(valid_frame(flags=flags, body=b"some body text " * 20))
    frame[len(frame) // 2] ^= 0x20
    with pytest.raises(BLIPProtocolError, match=r"checksum mismatch|invalid deflate"):
        BLIPProtocol().receive_frame(bytes(frame))


def test_crc_must_run_across_frames() -> None:
    """A second frame carrying a CRC computed from zero (not running) is rejected."""
    proto = BLIPProtocol()
    proto.receive_frame(valid_frame(1))
    with pytest.raises(BLIPProtocolError, match="checksum mismatch"):
        proto.receive_frame(valid_frame(2))


@pytest.mark.parametrize("flags", [0x00, 0x08, 0x18])
def test_every_truncation_of_a_frame_is_an_error(flags: int) -> None:
    frame = valid_frame(flags=flags, body=os.urandom(200))
    for cut in range(len(frame)):
        with pytest.raises(BLIPProtocolError):
            BLIPProtocol().receive_frame(frame[:cut])


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"", "empty"),
        (b"\x01", "truncated frame header"),
        (b"\x81", "truncated frame header"),
        (b"\x01\x00", "too short for a checksum"),
        (b"\x01\x00\x00\x00", "too short for a checksum"),
    ],
)
def test_truncated_frames(frame: bytes, message: str) -> None:
    with pytest.raises(BLIPProtocolError, match=message):
        BLIPProtocol().receive_frame(frame)


@pytest.mark.parametrize("msg_type", [3, 6, 7])
def test_unknown_type(msg_type: int) -> None:
    frame = raw_frame(bytes([1, msg_type]), b"\x00")
    with pytest.raises(BLIPProtocolError, match=f"unknown BLIP message type {msg_type}"):
        BLIPProtocol().receive_frame(frame)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\xff" * 11, "message number"),
        (b"\x01" + b"\xff" * 11, "flags"),
        (b"\xff" * 9 + b"\x7f\x00", "exceeds 64 bits"),
        (b"\x00\x00", "message number 0"),
    ],
)
def test_bad_header_varints(header: bytes, message: str) -> None:
    with pytest.raises(BLIPProtocolError, match=message):
        BLIPProtocol().receive_frame(header + b"\x00" * 8)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xff\xff\xff\xff\x01", "properties length"),  # > 32-bit varint
        (b"\x80", "too short to hold the properties length"),  # varint cut by frame end
        (varint(200_000) + b"x", "excessively large"),
        (b"\x03a\0b", "not NUL-terminated"),
        (b"\x02a\0", "odd number"),
        (b"\x04\xff\0b\0", "invalid UTF-8"),
        (b"\x10a\0b\0", "ends before the end of its properties"),  # length > message
    ],
)
def test_bad_properties(data: bytes, message: str) -> None:
    with pytest.raises(BLIPProtocolError, match=message):
        BLIPProtocol().receive_frame(raw_frame(b"\x01\x00", data))


def test_properties_may_span_frames() -> None:
    data = props_block([("Profile", "x" * 100)]) + b"body"
    ref = RefSender()
    proto = BLIPProtocol()
    assert proto.receive_frame(ref.frame(1, 0x40, data[:10])) == []
    (event,) = proto.receive_frame(ref.frame(1, 0x00, data[10:]))
    assert event.message.profile == "x" * 100 and event.message.body == b"body"


def test_reply_to_unknown_request() -> None:
    with pytest.raises(BLIPProtocolError, match=r"reply #1 \(too high\)"):
        BLIPProtocol().receive_frame(raw_frame(b"\x01\x01", b"\x00"))
    proto = BLIPProtocol()
    proto.send_request({"Profile": "p"})
    proto.frames_to_send()
    proto.receive_frame(raw_frame(b"\x01\x01", b"\x00"))
    with pytest.raises(BLIPProtocolError, match=r"reply #1 \(no request waiting\)"):
        proto.receive_frame(raw_frame(b"\x01\x02", b"\x00", crc_of=b"\x00\x00"))


def test_reply_before_request_fully_sent_is_rejected() -> None:
    """As in LiteCore, a reply only matches a request whose last frame has gone out."""
    proto = BLIPProtocol()
    proto.send_request({"Profile": "p"}, os.urandom(50_000))
    proto.next_frame()
    with pytest.raises(BLIPProtocolError, match="no request waiting"):
        proto.receive_frame(raw_frame(b"\x01\x01", b"\x00"))


@pytest.mark.parametrize(("number", "state"), [(2, "too high"), (1, "already finished")])
def test_out_of_sequence_request(number: int, state: str) -> None:
    proto = BLIPProtocol()
    if number == 1:
        proto.receive_frame(raw_frame(b"\x01\x00", b"\x00"))
        with pytest.raises(BLIPProtocolError, match=f"request #1 \\({state}\\)"):
            proto.receive_frame(raw_frame(b"\x01\x00", b"\x00", crc_of=b"\x00\x00"))
    else:
        with pytest.raises(BLIPProtocolError, match=f"request #2 \\({state}\\)"):
            proto.receive_frame(raw_frame(b"\x02\x00", b"\x00"))


def test_invalid_deflate_data() -> None:
    with pytest.raises(BLIPProtocolError, match="invalid deflate"):
        BLIPProtocol().receive_frame(raw_frame(b"\x01\x08", b"\xff\xff\xff\xff"))


def test_finished_deflate_stream_is_rejected() -> None:
    data = props_block([("Profile", "p")])
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = z.compress(data) + z.flush(zlib.Z_FINISH)
    with pytest.raises(BLIPProtocolError, match="deflate"):
        BLIPProtocol().receive_frame(raw_frame(b"\x01\x08", body, crc_of=data))


def test_failure_is_sticky() -> None:
    proto = BLIPProtocol()
    with pytest.raises(BLIPProtocolError):
        proto.receive_frame(b"\x01\x03\x00\x00\x00\x00")
    with pytest.raises(BLIPProtocolError, match="already failed"):
        proto.receive_frame(valid_frame())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_random_bytes_never_crash(frames: list[bytes]) -> None:
    proto = BLIPProtocol()
    for frame in frames:
        try:
            proto.receive_frame(frame)
        except BLIPProtocolError:
            return


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_valid_streams_never_crash(data: st.DataObject) -> None:
    sender = BLIPProtocol()
    sender.send_request({"Profile": "a"}, b"abc" * 3000, compressed=True)
    sender.send_request({"Profile": "b"}, os.urandom(5000), urgent=True)
    sender.send_request({"Profile": "c"}, b"", no_reply=True)
    frames = sender.frames_to_send()
    index = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[index])
    mutation = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    pos = data.draw(st.integers(0, len(frame) - 1))
    if mutation == "flip":
        frame[pos] ^= data.draw(st.integers(1, 255))
    elif mutation == "cut":
        del frame[pos:]
    else:
        frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    frames[index] = bytes(frame)
    proto = BLIPProtocol()
    try:
        for f in frames:
            proto.receive_frame(f)
    except BLIPProtocolError:
        return
