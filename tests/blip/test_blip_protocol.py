"""BLIPProtocol: message round trips, numbering, request/response matching, NoReply."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.blip.blip_link import Link
from tests.blip.blip_reference import RefSender, props_block, read_varint

from fieldsync.blip import (
    BLIPProtocol,
    BLIPProtocolError,
    MessageType,
    RequestReceived,
    ResponseReceived,
)

BODY_SIZES = [0, 1, 5000, 40000]  # single frame, and several frames


@pytest.mark.parametrize(
    ("urgent", "compressed", "no_reply", "size"),
    list(itertools.product([False, True], [False, True], [False, True], BODY_SIZES)),
)
def test_request_round_trip_every_flag_combination(
    urgent: bool, compressed: bool, no_reply: bool, size: int
) -> None:
    link = Link()
    body = os.urandom(size // 2) + b"z" * (size - size // 2)
    props = {"Profile": "test", "x": "1"}
    number = link.a.send_request(
        props, body, urgent=urgent, compressed=compressed, no_reply=no_reply
    )
    link.run()
    (event,) = link.b_events
    assert isinstance(event, RequestReceived)
    msg = event.message
    assert (msg.type, msg.number) == (MessageType.MSG, number)
    assert (msg.properties, msg.body) == (props, body)
    assert (msg.urgent, msg.compressed, msg.no_reply) == (urgent, compressed, no_reply)
    for frame in link.a_frames:
        _, pos = read_varint(frame, 0)
        flags, _ = read_varint(frame, pos)
        if flags & 0x07 == 0:
            assert flags & 0x08 == (0x08 if compressed else 0)
            assert flags & 0x10 == (0x10 if urgent else 0)
            assert flags & 0x20 == (0x20 if no_reply else 0)
    assert [bool(f[1] & 0x40) for f in link.a_frames if f[1] & 7 == 0][-1] is False
    assert link.b.is_awaiting_reply(number) is not no_reply


@pytest.mark.parametrize(
    ("kind", "urgent", "compressed", "size"),
    list(itertools.product(["rpy", "err"], [None, False, True], [False, True], BODY_SIZES)),
)
def test_reply_round_trip_every_flag_combination(
    kind: str, urgent: bool | None, compressed: bool, size: int
) -> None:
    link = Link()
    request_urgent = size % 2 == 0
    number = link.a.send_request({"Profile": "q"}, b"?", urgent=request_urgent)
    link.run()
    body = os.urandom(size)
    if kind == "rpy":
        link.b.send_response(number, {"k": "v"}, body, compressed=compressed, urgent=urgent)
    else:
        link.b.send_error(number, "HTTP", 409, "conflict" * (size // 8), urgent=urgent)
    link.run()
    (event,) = link.a_events
    assert isinstance(event, ResponseReceived) and event.request_number == number
    msg = event.message
    assert msg.number == number
    assert msg.urgent == (request_urgent if urgent is None else urgent)
    if kind == "rpy":
        assert msg.type == MessageType.RPY and not msg.is_error
        assert (msg.properties, msg.body, msg.compressed) == ({"k": "v"}, body, compressed)
        assert msg.error_domain is None and msg.error_code is None and msg.error_message == ""
    else:
        assert msg.type == MessageType.ERR and msg.is_error
        assert msg.properties == {"Error-Domain": "HTTP", "Error-Code": "409"}
        assert (msg.error_domain, msg.error_code) == ("HTTP", 409)
        assert msg.error_message == "conflict" * (size // 8)


def test_error_reply_defaults() -> None:
    """Error-Domain defaults to BLIP; a missing or bad Error-Code reads as 0."""
    a = BLIPProtocol()
    a.send_request({"Profile": "q"})
    a.frames_to_send()
    ref = RefSender()
    (event,) = a.receive_frame(ref.frame(1, 0x02, props_block([("Error-Code", "x")]) + b"oops"))
    assert (event.message.error_domain, event.message.error_code) == ("BLIP", 0)
    assert event.message.error_message == "oops"


def test_number_spaces_are_independent_per_direction() -> None:
    link = Link()
    assert [link.a.send_request({"Profile": "a"}) for _ in range(3)] == [1, 2, 3]
    assert [link.b.send_request({"Profile": "b"}) for _ in range(2)] == [1, 2]
    link.run()
    assert [e.message.number for e in link.b_events] == [1, 2, 3]
    assert [e.message.number for e in link.a_events] == [1, 2]
    # Both sides answer #1: a reply to MSG #1 in each direction, no confusion.
    link.a.send_response(1, {"from": "a"})
    link.b.send_response(1, {"from": "b"})
    link.b.send_response(3, {"from": "b3"})
    link.run()
    a_replies = [e for e in link.a_events if isinstance(e, ResponseReceived)]
    b_replies = [e for e in link.b_events if isinstance(e, ResponseReceived)]
    assert [(e.request_number, e.message.properties["from"]) for e in a_replies] == [
        (1, "b"),
        (3, "b3"),
    ]
    assert [(e.request_number, e.message.properties["from"]) for e in b_replies] == [(1, "a")]


def test_replies_may_come_in_any_order() -> None:
    link = Link()
    for _ in range(4):
        link.a.send_request({"Profile": "p"})
    link.run()
    for n in (3, 1, 4, 2):
        link.b.send_response(n, {"n": str(n)})
    link.run()
    assert [e.request_number for e in link.a_events] == [3, 1, 4, 2]
    assert all(e.message.properties["n"] == str(e.request_number) for e in link.a_events)


def test_no_reply_request_is_never_answered() -> None:
    link = Link()
    number = link.a.send_request({"Profile": "changes"}, b"[]", urgent=True, no_reply=True)
    link.run()
    (event,) = link.b_events
    assert event.message.no_reply
    assert not link.b.is_awaiting_reply(number)
    with pytest.raises(ValueError, match="awaiting a reply"):
        link.b.send_response(number, {})
    with pytest.raises(ValueError, match="awaiting a reply"):
        link.b.send_error(number, "BLIP", 500)
    assert link.b.next_frame() is None


def test_reply_to_no_reply_request_is_fatal_for_receiver() -> None:
    """LiteCore: 'Bad incoming RES #N (no request waiting)'. We treat it the same way."""
    a = BLIPProtocol()
    a.send_request({"Profile": "changes"}, b"[]", no_reply=True)
    a.frames_to_send()
    with pytest.raises(BLIPProtocolError, match=r"reply #1 \(no request waiting\)"):
        a.receive_frame(RefSender().frame(1, 0x01, b"\x00"))


def test_cannot_answer_twice_or_unknown() -> None:
    link = Link()
    link.a.send_request({"Profile": "p"})
    link.run()
    link.b.send_response(1)
    with pytest.raises(ValueError):
        link.b.send_response(1)
    with pytest.raises(ValueError):
        link.b.send_response(2)


def test_bad_arguments() -> None:
    proto = BLIPProtocol()
    with pytest.raises(TypeError, match="bytes-like"):
        proto.send_request({}, "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NUL"):
        proto.send_request({"a": "b\0"})
    assert proto.next_frame() is None  # nothing was queued, no number consumed
    assert proto.send_request({}) == 1


def test_request_first_frames_go_out_in_number_order() -> None:
    """Requests are begun in order even when urgent ones are queued behind normal ones."""
    proto, receiver = BLIPProtocol(), BLIPProtocol()  # the receiver rejects out-of-order starts
    pattern = [False, True, False, True, True, False, True, False, False, True]
    firsts: list[int] = []

    def send_one() -> bool:
        frame = proto.next_frame()
        if frame is None:
            return False
        receiver.receive_frame(frame)
        number, _ = read_varint(frame, 0)
        if number not in firsts:
            firsts.append(number)
        return True

    for i, urgent in enumerate(pattern):  # every message < 128000 bytes: no ACKs needed
        proto.send_request({"Profile": str(i)}, os.urandom(20000 * (i % 3)), urgent=urgent)
        if i % 4 == 3:
            assert send_one()
    while send_one():
        pass
    assert firsts == list(range(1, len(pattern) + 1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=30000),
            st.booleans(),
            st.booleans(),
            st.booleans(),
            st.dictionaries(
                st.text("abcXYZ-", min_size=1, max_size=8),
                st.text(max_size=10).filter(lambda s: "\0" not in s),
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_random_message_mix_round_trips(messages: list) -> None:
    link = Link()
    sent = {}
    for body, urgent, compressed, no_reply, props in messages:
        n = link.a.send_request(
            props, body, urgent=urgent, compressed=compressed, no_reply=no_reply
        )
        sent[n] = (props, body)
    link.run()
    got = {e.message.number: (e.message.properties, e.message.body) for e in link.b_events}
    assert got == sent
