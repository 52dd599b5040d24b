"""Byte-exact wire format: the golden frames observed from LiteCore, and compression
interoperability with a plain zlib raw-deflate peer."""

from __future__ import annotations

import json
import os
import zlib

import pytest
from tests.blip.blip_reference import (
    CLIENT_ID,
    RefReceiver,
    RefSender,
    golden_frame1,
    props_block,
    split_message,
)

from fieldsync.blip import BLIPProtocol, RequestReceived, ResponseReceived
from fieldsync.blip.compression import Deflater, Inflater


def test_golden_get_checkpoint_frame_encode() -> None:
    expected, _ = golden_frame1()
    proto = BLIPProtocol()
    number = proto.send_request([("Profile", "getCheckpoint"), ("client", CLIENT_ID)])
    assert number == 1
    assert proto.next_frame() == expected
    assert proto.next_frame() is None


def test_golden_get_checkpoint_frame_decode() -> None:
    frame, _ = golden_frame1()
    events = BLIPProtocol().receive_frame(frame)
    assert len(events) == 1 and isinstance(events[0], RequestReceived)
    msg = events[0].message
    assert msg.number == 1 and msg.profile == "getCheckpoint"
    assert msg.properties == {"Profile": "getCheckpoint", "client": CLIENT_ID}
    assert msg.body == b"" and not (msg.urgent or msg.compressed or msg.no_reply)


def test_golden_frame2_propose_changes_compressed_urgent() -> None:
    """Frame 2 of a push is flagged 0x18; its CRC continues from frame 1's."""
    frame1, data1 = golden_frame1()
    body = json.dumps([["doc1", "1-abc", "", 12]]).encode()
    proto = BLIPProtocol()
    proto.send_request([("Profile", "getCheckpoint"), ("client", CLIENT_ID)])
    proto.send_request(
        {"Profile": "proposeChanges", "conflictIncludesRev": "true"},
        body,
        urgent=True,
        compressed=True,
    )
    assert proto.next_frame() == frame1
    frame2 = proto.next_frame()
    assert frame2 is not None
    assert frame2[:2] == b"\x02\x18"
    data2 = props_block([("Profile", "proposeChanges"), ("conflictIncludesRev", "true")]) + body
    inflated = zlib.decompressobj(-15).decompress(frame2[2:-4] + b"\x00\x00\xff\xff")
    assert inflated == data2
    assert frame2[-4:] == zlib.crc32(data1 + data2).to_bytes(4, "big")
    # And the decoder accepts both frames in sequence.
    peer = BLIPProtocol()
    assert peer.receive_frame(frame1)
    (event,) = peer.receive_frame(frame2)
    assert isinstance(event, RequestReceived)
    assert event.message.urgent and event.message.compressed and event.message.body == body


def test_frames_from_plain_zlib_peer_decode() -> None:
    """A peer using zlib raw deflate + Z_SYNC_FLUSH minus 00 00 FF FF, mixed with raw frames."""
    ref = RefSender()
    payloads = [os.urandom(50) + b"abc" * 300, b"", b"hello" * 1000, os.urandom(3000)]
    frames = []
    for i, body in enumerate(payloads, start=1):
        flags = 0x08 if i % 2 else 0x00  # compressed, raw, compressed, raw
        frames.append(ref.frame(i, flags, props_block([("Profile", f"p{i}")]) + body))
    # One multi-frame message whose frames switch compression midway:
    big = os.urandom(1000) + bytes(5000)
    data = props_block([("Profile", "mixed")]) + big
    frames.append(ref.frame(5, 0x08 | 0x40, data[:700]))
    frames.append(ref.frame(5, 0x00 | 0x40, data[700:3000]))
    frames.append(ref.frame(5, 0x08, data[3000:]))
    proto = BLIPProtocol()
    events = [e for f in frames for e in proto.receive_frame(f)]
    bodies = [e.message.body for e in events]
    assert bodies == [*payloads, big]
    assert [e.message.profile for e in events] == ["p1", "p2", "p3", "p4", "mixed"]


def test_frames_to_plain_zlib_peer_decode() -> None:
    """Our frames decode with plain zlib raw inflate after re-appending 00 00 FF FF."""
    proto = BLIPProtocol()
    messages = [
        ({"Profile": "a"}, b"x" * 20000, True),
        ({"Profile": "b"}, os.urandom(40000), False),
        ({"Profile": "c"}, json.dumps(list(range(5000))).encode(), True),
        ({}, b"", True),
    ]
    for props, body, compressed in messages:
        proto.send_request(props, body, compressed=compressed)
    ref = RefReceiver()
    data: dict[int, bytes] = {}
    done = []
    for frame in proto.frames_to_send():
        assert len(frame) <= 16384
        number, flags, chunk = ref.frame(frame)  # asserts the running CRC
        assert bool(flags & 0x08) == messages[number - 1][2]
        data[number] = data.get(number, b"") + chunk
        if not flags & 0x40:
            done.append(number)
    assert sorted(done) == [1, 2, 3, 4]
    for number, (props, body, _) in enumerate(messages, start=1):
        assert split_message(data[number]) == (props, body)


def test_response_frames_use_request_number_and_error_format() -> None:
    peer = BLIPProtocol()
    req = RefSender()
    peer.receive_frame(req.frame(1, 0x10, props_block([("Profile", "getCheckpoint")])))
    peer.send_error(1, "HTTP", 404, "missing")
    frame = peer.next_frame()
    # ERR type 2, urgent inherited from the request -> flags 0x12
    props = props_block([("Error-Domain", "HTTP"), ("Error-Code", "404")])
    data = props + b"missing"
    assert frame == b"\x01\x12" + data + zlib.crc32(data).to_bytes(4, "big")
    (event,) = _requester_with_one_request().receive_frame(frame)
    assert isinstance(event, ResponseReceived)
    msg = event.message
    assert msg.is_error and msg.error_domain == "HTTP" and msg.error_code == 404
    assert msg.error_message == "missing"


def _requester_with_one_request() -> BLIPProtocol:
    proto = BLIPProtocol()
    proto.send_request({"Profile": "getCheckpoint"}, urgent=True)
    assert proto.frames_to_send()
    return proto


def test_empty_properties_still_write_zero_length() -> None:
    proto = BLIPProtocol()
    proto.send_request(None, b"body")
    data = b"\x00body"
    assert proto.next_frame() == b"\x01\x00" + data + zlib.crc32(data).to_bytes(4, "big")


def test_codec_pair_round_trip_shares_context_across_frames() -> None:
    deflater, inflater = Deflater(), Inflater()
    chunks = [b"the same text again and again " * 20 for _ in range(5)]
    sizes = []
    for chunk in chunks:
        out = deflater.deflate(chunk)
        assert out.endswith(b"\x00\x00\xff\xff")
        sizes.append(len(out))
        assert b"".join(inflater.inflate(out[:-4])) == chunk
        inflater.verify(deflater.checksum_bytes())
    assert sizes[1] < sizes[0]  # the shared dictionary pays off on the second frame


@pytest.mark.parametrize("size", [1, 100_000, 3_000_000])
def test_inflate_of_highly_compressible_frame(size: int) -> None:
    deflater, inflater = Deflater(), Inflater()
    out = deflater.deflate(bytes(size))
    pieces = list(inflater.inflate(out[:-4]))
    assert all(len(p) <= 64 * 1024 for p in pieces)
    assert sum(map(len, pieces)) == size
    assert inflater.checksum == zlib.crc32(bytes(size))
