"""Issue 11 rows 1 and 2 without sockets: the engine's bounds on what a peer makes it hold."""

from __future__ import annotations

import tracemalloc
import zlib

import pytest

from fieldsync.blip import BLIPProtocol, BLIPProtocolError
from fieldsync.blip.frame import COMPRESSED, MORE_COMING, MessageType, encode_header
from fieldsync.blip.varint import encode_uvarint

MiB = 1024 * 1024
MSG = int(MessageType.MSG)


class Peer:
    """Hand-made frames with a consistent running CRC (and a shared deflate context)."""

    def __init__(self) -> None:
        self.crc = 0
        self._z = zlib.compressobj(6, zlib.DEFLATED, -15, 9)

    def plain(self, number: int, flags: int, data: bytes) -> bytes:
        self.crc = zlib.crc32(data, self.crc)
        return encode_header(number, flags) + data + self.crc.to_bytes(4, "big")

    def deflated(self, number: int, flags: int, data: bytes, *, bad_crc: bool = False) -> bytes:
        self.crc = zlib.crc32(data, self.crc)
        packed = self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        crc = self.crc ^ 0xFFFF if bad_crc else self.crc
        return encode_header(number, flags | COMPRESSED) + packed[:-4] + crc.to_bytes(4, "big")


def start(profile: str = "rev") -> bytes:
    props = f"Profile\0{profile}\0".encode()
    return encode_uvarint(len(props)) + props


def limited(**kwargs: int) -> BLIPProtocol:
    from fieldsync.blip.limits import BLIPLimits

    return BLIPProtocol(limits=BLIPLimits(**kwargs))


@pytest.mark.parametrize("bad_crc", [False, True])
def test_deflate_bomb_is_refused_while_inflating(bad_crc: bool) -> None:
    """One 16 KB frame that inflates to 16 MB, against a 1 MiB cap: refused after about the
    cap has been inflated, never the whole bomb (and before its CRC is even checked)."""
    peer = Peer()
    bomb = peer.deflated(1, MSG, start() + b"\0" * (16 * MiB), bad_crc=bad_crc)
    assert len(bomb) < 32 * 1024
    protocol = limited(max_message_size=1 * MiB)
    tracemalloc.start()
    try:
        with pytest.raises(BLIPProtocolError) as refused:
            protocol.receive_frame(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.close_code == 1009
    assert "limit" in str(refused.value)
    assert peak < 3 * MiB


def test_default_cap_admits_a_50_mb_message() -> None:
    peer = Peer()
    protocol = BLIPProtocol()
    body = b"x" * (50 * 1000 * 1000)
    events = protocol.receive_frame(peer.deflated(1, MSG, start() + body))
    assert len(events) == 1 and len(events[0].message.body) == len(body)


def test_partial_messages_share_one_budget() -> None:
    """Many requests half-sent at once cannot each use the whole per-message cap."""
    peer = Peer()
    protocol = limited(max_message_size=1 * MiB)
    chunk = b"y" * (300 * 1024)
    with pytest.raises(BLIPProtocolError) as refused:
        for number in range(1, 10):
            protocol.receive_frame(peer.plain(number, MSG | MORE_COMING, start() + chunk))
    assert refused.value.close_code == 1009
    assert number == 4  # the fourth 300 KB partial message crosses 1 MiB


def test_too_many_requests_in_progress_is_a_policy_violation() -> None:
    peer = Peer()
    protocol = limited(max_open_requests=5)
    with pytest.raises(BLIPProtocolError) as refused:
        for number in range(1, 10):
            protocol.receive_frame(peer.plain(number, MSG | MORE_COMING, start()))
    assert refused.value.close_code == 1008
    assert number == 6


def test_released_protocol_holds_nothing() -> None:
    peer = Peer()
    protocol = BLIPProtocol()
    protocol.receive_frame(peer.plain(1, MSG | MORE_COMING, start() + b"z" * 100_000))
    protocol.receive_frame(peer.plain(2, MSG, start("getCheckpoint")))
    protocol.send_response(2, {}, b"r" * 500_000)
    assert protocol.pending_reply_bytes > 400_000
    protocol.release()
    assert protocol.pending_reply_bytes == 0 and not protocol.has_pending_output
    with pytest.raises(BLIPProtocolError):
        protocol.receive_frame(peer.plain(3, MSG, start("getCheckpoint")))


def test_inflating_off_the_loop_gives_the_same_messages() -> None:
    """What the session does for big compressed frames (inflate in a worker thread, then hand
    the pieces over) yields exactly what receiving the frame directly does."""
    body = b"field notes, again and again " * 20_000
    frames = []
    peer = Peer()
    frames.append(peer.deflated(1, MSG | MORE_COMING, start() + body[:300_000]))
    frames.append(peer.deflated(1, MSG, body[300_000:]))
    direct, split = BLIPProtocol(), BLIPProtocol()
    got_direct = [e for f in frames for e in direct.receive_frame(f)]
    got_split = []
    for frame in frames:
        limit = split.inflate_limit(frame)
        assert limit is not None and limit <= split.limits.max_message_size
        pieces = split.inflate_frame(frame, limit)
        got_split += split.receive_frame(frame, inflated=pieces)
    assert [e.message.body for e in got_split] == [e.message.body for e in got_direct]
    assert got_split[0].message.body == body


def test_off_loop_inflation_stops_at_the_budget() -> None:
    peer = Peer()
    protocol = limited(max_message_size=1 * MiB)
    bomb = peer.deflated(1, MSG, start() + b"\0" * (8 * MiB))
    limit = protocol.inflate_limit(bomb)
    assert limit == 1 * MiB
    with pytest.raises(BLIPProtocolError) as refused:
        protocol.inflate_frame(bomb, limit)
    assert refused.value.close_code == 1009
    assert protocol.inflate_limit(peer.plain(2, MSG, start())) is None  # not compressed
