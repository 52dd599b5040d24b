"""Varints, frame headers and properties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.blip.blip_reference import read_varint, varint

from fieldsync.blip import BLIPProtocolError, FrameFlags, MessageType
from fieldsync.blip.events import RequestReceived
from fieldsync.blip.frame import decode_header, encode_header
from fieldsync.blip.properties import MAX_PROPERTIES_SIZE, decode_properties, encode_properties
from fieldsync.blip.protocol import BLIPProtocol
from fieldsync.blip.varint import decode_uvarint, encode_uvarint


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (0x7F, b"\x7f"),
        (0x80, b"\x80\x01"),
        (300, b"\xac\x02"),
        (0x3D, b"\x3d"),
        (2**64 - 1, b"\xff" * 9 + b"\x01"),
    ],
)
def test_varint_known_values(value: int, encoded: bytes) -> None:
    assert encode_uvarint(value) == encoded
    assert decode_uvarint(encoded) == (value, len(encoded))


@given(st.integers(min_value=0, max_value=2**64 - 1), st.binary(max_size=4))
def test_varint_round_trip(value: int, tail: bytes) -> None:
    encoded = encode_uvarint(value)
    assert encoded == varint(value)
    assert decode_uvarint(encoded + tail) == (value, len(encoded))


def test_varint_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_uvarint(-1)
    with pytest.raises(ValueError):
        encode_uvarint(2**64)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"\x80", "truncated"),
        (b"\xff\xff", "truncated"),
        (b"\xff" * 10 + b"\x01", "longer than"),
        (b"\xff" * 9 + b"\x7f", "exceeds 64 bits"),
    ],
)
def test_bad_varints(data: bytes, message: str) -> None:
    with pytest.raises(BLIPProtocolError, match=message):
        decode_uvarint(data)


def test_varint32_limit() -> None:
    assert decode_uvarint(b"\xff\xff\xff\xff\x0f", bits=32) == (2**32 - 1, 5)
    with pytest.raises(BLIPProtocolError):
        decode_uvarint(b"\xff\xff\xff\xff\x1f", bits=32)
    with pytest.raises(BLIPProtocolError):
        decode_uvarint(b"\xff\xff\xff\xff\xff\x01", bits=32)


def test_protocol_constants_match_blipprotocol_hh() -> None:
    assert [int(t) for t in MessageType] == [0, 1, 2, 4, 5]
    assert FrameFlags.TYPE_MASK == 0x07
    assert FrameFlags.COMPRESSED == 0x08
    assert FrameFlags.URGENT == 0x10
    assert FrameFlags.NO_REPLY == 0x20
    assert FrameFlags.MORE_COMING == 0x40
    assert MAX_PROPERTIES_SIZE == 100 * 1024


FLAG_BITS = [0x08, 0x10, 0x20, 0x40]


@pytest.mark.parametrize("msg_type", list(MessageType))
@pytest.mark.parametrize("number", [1, 0x7F, 0x80, 123456789, 2**64 - 1])
def test_header_every_type_and_flag_combination(msg_type: MessageType, number: int) -> None:
    for n in range(len(FLAG_BITS) + 1):
        for combo in itertools.combinations(FLAG_BITS, n):
            flags = msg_type | sum(combo)
            encoded = encode_header(number, flags)
            assert encoded == varint(number) + bytes([flags])
            header = decode_header(encoded + b"payload")
            assert (header.number, header.flags, header.type) == (number, flags, msg_type)
            assert header.size == len(encoded)
            assert header.more_coming == bool(flags & 0x40)
            assert header.compressed == bool(flags & 0x08)


@pytest.mark.parametrize("type_bits", [3, 6, 7])
def test_header_unknown_type(type_bits: int) -> None:
    with pytest.raises(BLIPProtocolError, match=f"unknown BLIP message type {type_bits}"):
        decode_header(bytes([1, type_bits]) + b"\0\0\0\0\0")


def test_header_unknown_high_flag_bits_are_ignored() -> None:
    header = decode_header(b"\x05\x81\x01")  # flags 0x81: bit 0x80 set, type RPY
    assert header.type == MessageType.RPY and header.number == 5 and header.size == 3


@pytest.mark.parametrize("frame", [b"", b"\x01", b"\x80", b"\x01\x80", b"\x00\x00"])
def test_header_truncated_or_zero(frame: bytes) -> None:
    with pytest.raises(BLIPProtocolError):
        decode_header(frame)


def test_properties_encoding_is_nul_terminated_pairs() -> None:
    assert encode_properties({}) == b""
    assert encode_properties({"Profile": "rev", "id": "doc1"}) == b"Profile\0rev\0id\0doc1\0"
    assert encode_properties([("a", ""), ("", "b")]) == b"a\0\0\0b\0"
    assert encode_properties({"k": "é"}) == b"k\0\xc3\xa9\0"


text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)


@given(st.dictionaries(text, text, max_size=8))
def test_properties_round_trip(props: dict[str, str]) -> None:
    encoded = encode_properties(props)
    assert decode_properties(encoded) == props
    assert list(decode_properties(encoded)) == list(props)  # order kept


@given(st.dictionaries(text, text, max_size=8), st.sets(text, max_size=8))
def test_properties_decoded_with_shared_strings_are_equal_and_share(
    props: dict[str, str], names: set[str]
) -> None:
    shared = {name: name for name in names}
    decoded = decode_properties(encode_properties(props), shared)
    assert decoded == props and list(decoded) == list(props)
    for key, value in decoded.items():
        for string in (key, value):
            if string in shared:
                assert string is shared[string]  # the one copy, not a new string


def test_a_message_received_by_a_session_shares_its_property_strings() -> None:
    shared = {s: s for s in ("Profile", "rev", "id", "sequence")}
    sender, receiver = BLIPProtocol(), BLIPProtocol(shared_strings=shared)
    sender.send_request({"Profile": "rev", "id": "doc-1", "sequence": "7"}, b"{}")
    frame = sender.next_frame()
    assert frame is not None
    (message,) = [
        e.message for e in receiver.receive_frame(frame) if isinstance(e, RequestReceived)
    ]
    keys = list(message.properties)
    assert keys[0] is shared["Profile"] and message.properties["Profile"] is shared["rev"]
    assert keys[1] is shared["id"] and message.properties["id"] == "doc-1"


def test_properties_first_duplicate_wins() -> None:
    assert decode_properties(b"a\0one\0a\0two\0") == {"a": "one"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"a\0b", "not NUL-terminated"),
        (b"a\0", "odd number"),
        (b"a\0b\0c\0", "odd number"),
        (b"\xff\0b\0", "invalid UTF-8"),
    ],
)
def test_bad_properties(raw: bytes, message: str) -> None:
    with pytest.raises(BLIPProtocolError, match=message):
        decode_properties(raw)


def test_properties_rejects_nul_and_non_str_and_oversize() -> None:
    with pytest.raises(ValueError, match="NUL"):
        encode_properties({"a\0": "b"})
    with pytest.raises(ValueError, match="must be str"):
        encode_properties({"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="too large"):
        encode_properties({"a": "x" * MAX_PROPERTIES_SIZE})


def test_reference_varint_helper_agrees() -> None:
    for v in (0, 1, 127, 128, 16384, 2**40):
        assert read_varint(varint(v), 0) == (v, len(varint(v)))
