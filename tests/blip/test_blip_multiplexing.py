"""Outgoing multiplexer: frame sizes, round robin, urgent placement, ACK flow control."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.blip.blip_link import Link
from tests.blip.blip_reference import RefSender, props_block, read_varint, varint

from fieldsync.blip import BLIPProtocol, BLIPProtocolError, MessageType, RequestReceived
from fieldsync.blip.compression import Deflater
from fieldsync.blip.outbox import Outbox
from fieldsync.blip.outgoing import MAX_UNACKED_BYTES, OutgoingMessage


def header(frame: bytes) -> tuple[int, int, int]:
    number, pos = read_varint(frame, 0)
    flags, pos = read_varint(frame, pos)
    return number, flags, pos


# ------------------------------------------------------------------ placement rules


def msg(name: int, urgent: bool = False, started: bool = False) -> OutgoingMessage:
    m = OutgoingMessage.build(MessageType.MSG, name, 0x10 if urgent else 0, b"", b"x")
    if started:
        m.bytes_sent = 100
    return m


def order(box: Outbox) -> list[int]:
    return [m.number for m in box]


def test_normal_messages_round_robin() -> None:
    box = Outbox()
    for n in (1, 2, 3):
        box.push(msg(n, started=True))
    for _ in range(4):
        m = box.pop()
        assert m is not None
        box.push(m)
    assert order(box) == [2, 3, 1]


@pytest.mark.parametrize(
    ("queue", "new", "expected"),
    [
        # empty / one message: only one place
        ([], msg(9, urgent=True), [9]),
        ([msg(1, started=True)], msg(9, urgent=True), [1, 9]),
        # no urgent queued: goes after the first (started) normal message
        (
            [msg(1, started=True), msg(2, started=True), msg(3, started=True)],
            msg(9, urgent=True, started=True),
            [1, 9, 2, 3],
        ),
        # after the last urgent, leaving one normal message in between
        (
            [msg(1, True, True), msg(2, started=True), msg(3, started=True)],
            msg(9, urgent=True, started=True),
            [1, 2, 9, 3],
        ),
        (
            [msg(1, started=True), msg(2, True, True), msg(3, started=True), msg(4, started=True)],
            msg(9, urgent=True, started=True),
            [1, 2, 3, 9, 4],
        ),
        # last urgent at the tail: goes right after it
        ([msg(1, started=True), msg(2, True, True)], msg(9, urgent=True, started=True), [1, 2, 9]),
        # a new urgent message never overtakes a message that has not started
        ([msg(1, started=True), msg(2), msg(3)], msg(9, urgent=True), [1, 2, 3, 9]),
        ([msg(1, started=True), msg(2), msg(3, started=True)], msg(9, urgent=True), [1, 2, 9, 3]),
        # ... but a started urgent message (requeued) may
        ([msg(1, started=True), msg(2), msg(3)], msg(9, urgent=True, started=True), [1, 9, 2, 3]),
        # normal messages always go to the tail
        ([msg(1, True, True), msg(2, True, True)], msg(9), [1, 2, 9]),
    ],
)
def test_urgent_placement(
    queue: list[OutgoingMessage], new: OutgoingMessage, expected: list[int]
) -> None:
    box = Outbox()
    for m in queue:
        box._queue.append(m)  # set up the queue as given
    box.push(new)
    assert order(box) == expected


# ------------------------------------------------------------------ frame sizes


def test_frame_sizes_big_by_default_small_before_urgent() -> None:
    proto = BLIPProtocol()
    proto.send_request({"Profile": "big"}, os.urandom(100_000))
    first = proto.next_frame()
    assert first is not None and len(first) == 16384  # nothing urgent waiting: 16 KiB
    proto.send_request({"Profile": "urgent"}, os.urandom(100_000), urgent=True)
    sizes = []
    for _ in range(4):
        frame = proto.next_frame()
        assert frame is not None
        sizes.append((header(frame)[0], len(frame)))
    # normal frame shrinks to 4 KiB while an urgent message waits behind it; urgent frames 16 KiB
    assert sizes == [(1, 4096), (2, 16384), (1, 4096), (2, 16384)]


def test_compressed_frames_respect_size_limit() -> None:
    proto = BLIPProtocol()
    body = b"".join(hashlib.sha256(str(i).encode()).hexdigest().encode() for i in range(20000))
    proto.send_request({"Profile": "c"}, body, compressed=True)
    proto.send_request({"Profile": "r"}, os.urandom(200_000), compressed=True)
    proto.send_request({"Profile": "z"}, bytes(2_000_000), compressed=True)
    link_receiver = BLIPProtocol()
    events = []
    while (frame := proto.next_frame()) is not None:
        assert len(frame) <= 16384
        events += link_receiver.receive_frame(frame)
        for ack in link_receiver.frames_to_send():
            proto.receive_frame(ack)
    got = {e.message.number: e.message.body for e in events}
    assert [len(got[n]) for n in (1, 2, 3)] == [len(body), 200_000, 2_000_000]
    assert got[1] == body and got[3] == bytes(2_000_000)


# ------------------------------------------------------------------ interleaving


def test_large_messages_interleaved_with_urgent() -> None:
    """3 x 300 KB normal messages, then an urgent one: it finishes first, all bodies intact."""
    link = Link()
    bodies = {n: os.urandom(300_000) for n in (1, 2, 3)}
    for n in (1, 2, 3):
        assert link.a.send_request({"Profile": f"big{n}"}, bodies[n]) == n
    for _ in range(3):  # the big ones are under way
        link.step()
    urgent_body = os.urandom(100_000)
    assert (
        link.a.send_request({"Profile": "urgent"}, urgent_body, urgent=True, compressed=True) == 4
    )
    link.run()
    done = [e.message.number for e in link.b_events]
    assert done[0] == 4
    assert sorted(done) == [1, 2, 3, 4]
    got = {e.message.number: e.message.body for e in link.b_events}
    assert got == {**bodies, 4: urgent_body}
    # After the urgent one was queued, it got about every other frame.
    msg_frames = [header(f) for f in link.a_frames if header(f)[1] & 7 == 0]
    numbers = [n for n, _, _ in msg_frames]
    first_urgent = numbers.index(4)
    last_urgent = len(numbers) - 1 - numbers[::-1].index(4)
    window = numbers[first_urgent : last_urgent + 1]
    assert window.count(4) >= len(window) // 2
    # Normal messages were not starved meanwhile.
    assert {1, 2, 3} <= set(window)


def test_compressed_and_raw_messages_mixed_in_one_stream() -> None:
    link = Link()
    sent = {}
    for i in range(12):
        body = (os.urandom(700) + b"repeat " * 3000) if i % 3 else os.urandom(30000)
        n = link.a.send_request(
            {"Profile": f"m{i}"}, body, compressed=i % 2 == 0, urgent=i % 5 == 0
        )
        sent[n] = body
        if i % 4 == 0:
            link.step()
    link.run()
    flags_seen = {header(f)[1] & 0x08 for f in link.a_frames}
    assert flags_seen == {0, 0x08}
    assert {e.message.number: e.message.body for e in link.b_events} == sent
    assert [
        e.message.compressed for e in sorted(link.b_events, key=lambda e: e.message.number)
    ] == [i % 2 == 0 for i in range(12)]


# ------------------------------------------------------------------ flow control


def test_sender_pauses_at_128000_unacked_bytes_and_resumes_on_ack() -> None:
    sender, receiver = BLIPProtocol(), BLIPProtocol()
    body = os.urandom(1_000_000)
    sender.send_request({"Profile": "big"}, body)
    frames = sender.frames_to_send()
    payload_sizes = [len(f) - header(f)[2] for f in frames]
    assert sum(payload_sizes) >= MAX_UNACKED_BYTES == 128_000
    assert sum(payload_sizes[:-1]) < 128_000  # paused right after crossing the threshold
    assert all(header(f)[1] & 0x40 for f in frames)  # still more coming
    assert sender.next_frame() is None and sender.has_pending_output
    assert not sender.has_frames_to_send

    # The receiver ACKs every 50,000 bytes: ACKMSG|Urgent|NoReply, body = varint(bytes so far).
    acks: list[bytes] = []
    received = since_ack = 0
    expected_acks = []
    for frame, size in zip(frames, payload_sizes, strict=True):
        assert receiver.receive_frame(frame) == []
        received += size
        since_ack += size
        if since_ack >= 50_000:
            expected_acks.append(b"\x01\x34" + varint(received))
            since_ack = 0
        acks += receiver.frames_to_send()
    assert acks == expected_acks and len(acks) == 2

    sender.receive_frame(acks[0])  # acknowledges the first 65,504 bytes -> unpaused
    assert sender.has_frames_to_send

    # Finish the transfer, shuttling ACKs back.
    events = []
    while sender.has_pending_output:
        for frame in sender.frames_to_send():
            events += receiver.receive_frame(frame)
        for ack in receiver.frames_to_send():
            sender.receive_frame(ack)
    (event,) = events
    assert isinstance(event, RequestReceived) and event.message.body == body


def _unsent_reply_bytes(protocol: BLIPProtocol) -> int:
    """What the replies queued or paused in ``protocol`` still hold, counted from scratch."""
    queued = [*protocol._outbox, *protocol._icebox.values()]
    return sum(len(seg) for msg in queued if msg.is_response for seg in msg._segments)


@settings(max_examples=40, deadline=None)
@given(
    replies=st.lists(
        st.tuples(st.integers(0, 400_000), st.booleans(), st.integers(0, 4)), max_size=8
    )
)
def test_pending_reply_bytes_follows_the_replies_as_frames_and_acks_go(
    replies: list[tuple[int, bool, int]],
) -> None:
    """The reply budget's count (kept as frames are cut) always equals the unsent bytes of the
    queued and ACK-paused replies, and reaches 0 once everything has gone."""
    phone, device = BLIPProtocol(), BLIPProtocol()
    for _ in replies:
        phone.send_request({"Profile": "getCheckpoint"}, b"")
    for frame in phone.frames_to_send():
        device.receive_frame(frame)
    for number, (size, compressed, frames) in enumerate(replies, start=1):
        device.send_response(number, {"rev": "1-a"}, os.urandom(size), compressed=compressed)
        for _ in range(frames):  # some frames go out between replies, some replies pause
            frame = device.next_frame()
            if frame is not None:
                phone.receive_frame(frame)
            assert device.pending_reply_bytes == _unsent_reply_bytes(device)
    while device.has_pending_output:
        for frame in device.frames_to_send():
            phone.receive_frame(frame)
            assert device.pending_reply_bytes == _unsent_reply_bytes(device)
        for ack in phone.frames_to_send():
            device.receive_frame(ack)
    assert device.pending_reply_bytes == 0


def test_unacked_count_never_exceeds_threshold_plus_one_frame() -> None:
    link = Link()
    link.a.send_request({"Profile": "big"}, os.urandom(2_000_000))
    link.b.send_request({"Profile": "big"}, bytes(3_000_000), compressed=True)
    acked = {"a": 0, "b": 0}
    sent = {"a": 0, "b": 0}
    for _ in range(10_000):
        moved = False
        for side, proto, other in (("a", link.a, link.b), ("b", link.b, link.a)):
            frame = proto.next_frame()
            if frame is None:
                continue
            moved = True
            _, flags, pos = header(frame)
            if flags & 7 in (4, 5):
                acked["b" if side == "a" else "a"] = read_varint(frame, pos)[0]
            else:
                sent[side] += len(frame) - pos
                assert sent[side] - acked[side] < MAX_UNACKED_BYTES + 16384
            events = other.receive_frame(frame)
            (link.b_events if side == "a" else link.a_events).extend(events)
        if not moved:
            break
    assert len(link.a_events) == len(link.b_events) == 1
    assert link.a_events[0].message.read_body() == bytes(3_000_000)


def test_ack_for_unknown_message_is_ignored_and_bad_ack_is_an_error() -> None:
    proto = BLIPProtocol()
    assert proto.receive_frame(b"\x07\x34" + varint(1000)) == []
    assert proto.receive_frame(b"\x07\x35" + varint(1000)) == []
    with pytest.raises(BLIPProtocolError, match="ACK byte count"):
        proto.receive_frame(b"\x07\x34\x80")


def test_replies_are_acked_with_ackrpy() -> None:
    link = Link()
    link.a.send_request({"Profile": "get"})
    link.run()
    link.b.send_response(1, {}, os.urandom(200_000))
    link.run()
    acks = [f for f in link.a_frames if header(f)[1] & 7 == MessageType.ACKRPY]
    assert acks and all(header(f)[:2] == (1, 0x35) for f in acks)
    assert link.a_events[0].message.body and len(link.a_events[0].message.body) == 200_000


def test_ack_from_reference_peer_resumes_paused_message() -> None:
    sender = BLIPProtocol()
    sender.send_request({"Profile": "big"}, bytes(500_000))
    sent = sum(len(f) - header(f)[2] for f in sender.frames_to_send())
    assert sender.next_frame() is None
    sender.receive_frame(b"\x01\x34" + varint(sent - 1000))  # still >= 128000 unacked? no
    assert sender.has_frames_to_send
    # A stale ACK (larger than what was sent) is ignored.
    other = BLIPProtocol()
    other.send_request({"Profile": "big"}, bytes(500_000))
    other.frames_to_send()
    other.receive_frame(b"\x01\x34" + varint(10**9))
    assert not other.has_frames_to_send


def test_deflater_is_shared_across_messages_in_one_direction() -> None:
    """CRC and deflate state run across all messages: a reference receiver follows along."""
    ref = RefSender()
    frames = [
        ref.frame(n, 0x08, props_block([("Profile", "x")]) + b"same body " * 100) for n in (1, 2, 3)
    ]
    assert len(frames[2]) < len(frames[0])
    proto = BLIPProtocol()
    for f in frames:
        assert proto.receive_frame(f)[0].message.body == b"same body " * 100
    d = Deflater()
    d.deflate(b"abc")
    assert d.checksum_bytes() == (0x352441C2).to_bytes(4, "big")  # crc32(b"abc")
