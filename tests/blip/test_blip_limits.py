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


def test_default_cap_admits_a_50_mb_message_without_holding_it() -> None:
    """A 50 MB document arrives whole, but in a spool file: the engine's own memory stays
    within its in-memory allowance (2 MiB) while it inflates and assembles it."""
    peer = Peer()
    protocol = BLIPProtocol()
    body = b"x" * (50 * 1000 * 1000)
    frame = peer.deflated(1, MSG, start() + body)
    tracemalloc.start()
    try:
        events = protocol.receive_frame(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB
    assert protocol.peak_incoming_memory <= protocol.limits.max_incoming_memory
    (event,) = events
    spooled = event.message.spooled
    assert event.message.body == b"" and spooled is not None and spooled.size == len(body)
    assert spooled.read() == body
    spooled.close()


def test_partial_messages_keep_one_memory_allowance() -> None:
    """Many requests half-sent at once share the in-memory allowance: beyond it their bodies
    go to spool files, and every message still arrives intact."""
    peer = Peer()
    protocol = limited(max_incoming_memory=1 * MiB)
    chunk = bytes(range(256)) * 1200  # 300 KB
    for number in range(1, 9):
        assert protocol.receive_frame(peer.plain(number, MSG | MORE_COMING, start() + chunk)) == []
    assert protocol.peak_incoming_memory <= 1 * MiB
    messages = [protocol.receive_frame(peer.plain(n, MSG, b"!"))[0].message for n in range(1, 9)]
    bodies = [m.read_body() for m in messages]
    assert bodies == [chunk + b"!"] * 8
    assert sum(m.spooled is not None for m in messages) >= 5  # only ~3 fit in 1 MiB


def test_spool_files_share_one_budget_per_process() -> None:
    """Spooled bytes of every connection draw on one budget: past it, 1009."""
    from fieldsync.blip.spool import SPOOL_BUDGET

    peer = Peer()
    protocol = limited(max_incoming_memory=256 * 1024)
    before = SPOOL_BUDGET.used
    SPOOL_BUDGET.used = SPOOL_BUDGET.limit - 1 * MiB  # as if other peers held the rest
    try:
        with pytest.raises(BLIPProtocolError) as refused:
            for number in range(1, 20):
                protocol.receive_frame(
                    peer.plain(number, MSG | MORE_COMING, start() + b"s" * 300_000)
                )
        assert refused.value.close_code == 1009
        assert "temporary files" in str(refused.value)
        protocol.release()
        assert SPOOL_BUDGET.used == SPOOL_BUDGET.limit - 1 * MiB  # released spools gave back
    finally:
        SPOOL_BUDGET.used = before


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
    """What the session does for big compressed frames (prepare on the loop, inflate in a
    worker thread, then receive) yields exactly what receiving the frame directly does."""
    body = b"field notes, again and again " * 20_000
    frames = []
    peer = Peer()
    frames.append(peer.deflated(1, MSG | MORE_COMING, start() + body[:300_000]))
    frames.append(peer.deflated(1, MSG, body[300_000:]))
    direct, split = BLIPProtocol(), BLIPProtocol()
    got_direct = [e for f in frames for e in direct.receive_frame(f)]
    got_split = []
    for frame in frames:
        prepared = split.prepare_frame(frame)
        assert prepared is not None and prepared.limit <= split.limits.max_message_size
        split.add_prepared(prepared)
        got_split += split.receive_frame(frame, prepared=prepared)
    assert [e.message.body for e in got_split] == [e.message.body for e in got_direct]
    assert got_split[0].message.body == body


def test_off_loop_inflation_stops_at_the_budget() -> None:
    peer = Peer()
    protocol = limited(max_message_size=1 * MiB)
    bomb = peer.deflated(1, MSG, start() + b"\0" * (8 * MiB))
    prepared = protocol.prepare_frame(bomb)
    assert prepared is not None and prepared.limit == 1 * MiB
    with pytest.raises(BLIPProtocolError) as refused:
        protocol.add_prepared(prepared)
    assert refused.value.close_code == 1009
    with pytest.raises(BLIPProtocolError, match="already failed"):
        protocol.receive_frame(bomb, prepared=prepared)
    assert BLIPProtocol().prepare_frame(peer.plain(1, MSG, start())) is None  # not compressed
