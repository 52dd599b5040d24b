"""The pure rtnetlink parser, on hand-built messages laid out as the kernel sends them."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from fieldsync.agent.interfaces import (
    IFA_ADDRESS,
    IFA_FLAGS,
    IFA_LABEL,
    IFA_LOCAL,
    IFF_RUNNING,
    IFF_UP,
    IFLA_IFNAME,
    IFLA_OPERSTATE,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_OVERRUN,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    AddressMessage,
    LinkMessage,
    OverrunMessage,
    parse_netlink_messages,
    parse_rtattrs,
)


def rtattr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def nlmsg(kind: int, payload: bytes, seq: int = 0) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(payload), kind, 0, seq, 0) + payload
    return raw + b"\0" * (-len(raw) % 4)


def link(kind: int, index: int, name: str, flags: int, operstate: int | None = None) -> bytes:
    payload = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, index, flags, 0xFFFFFFFF)
    payload += rtattr(IFLA_IFNAME, name.encode() + b"\0")
    if operstate is not None:
        payload += rtattr(IFLA_OPERSTATE, bytes([operstate]))
    return nlmsg(kind, payload)


def addr(
    kind: int,
    index: int,
    family: int,
    address: str,
    prefix: int,
    *,
    local: str | None = None,
    label: str | None = None,
    flags: int | None = None,
) -> bytes:
    payload = struct.pack("=BBBBI", family, prefix, 0, 0, index)
    payload += rtattr(IFA_ADDRESS, socket.inet_pton(family, address))
    if local:
        payload += rtattr(IFA_LOCAL, socket.inet_pton(family, local))
    if label:
        payload += rtattr(IFA_LABEL, label.encode() + b"\0")
    if flags is not None:
        payload += rtattr(IFA_FLAGS, struct.pack("=I", flags))
    return nlmsg(kind, payload)


def test_new_link() -> None:
    (message,) = parse_netlink_messages(link(RTM_NEWLINK, 3, "wlan0", IFF_UP | IFF_RUNNING, 6))
    assert message == LinkMessage(
        deleted=False, index=3, name="wlan0", flags=IFF_UP | IFF_RUNNING, operstate="up"
    )
    assert message.up


def test_link_down_and_deleted() -> None:
    down, gone = parse_netlink_messages(
        link(RTM_NEWLINK, 3, "wlan0", IFF_UP, 2) + link(RTM_DELLINK, 3, "wlan0", 0)
    )
    assert isinstance(down, LinkMessage) and not down.up and down.operstate == "down"
    assert isinstance(gone, LinkMessage) and gone.deleted and gone.operstate is None


def test_ipv4_address_prefers_ifa_local() -> None:
    (message,) = parse_netlink_messages(
        addr(RTM_NEWADDR, 3, socket.AF_INET, "10.0.0.254", 32, local="10.0.0.1", label="wlan0")
    )
    assert message == AddressMessage(
        deleted=False,
        index=3,
        family=socket.AF_INET,
        prefixlen=32,
        address="10.0.0.1",
        label="wlan0",
        flags=0,
    )


def test_ipv6_address_removed_with_extended_flags() -> None:
    (message,) = parse_netlink_messages(
        addr(RTM_DELADDR, 7, socket.AF_INET6, "fe80::1", 64, flags=0x200)
    )
    assert isinstance(message, AddressMessage)
    assert message.deleted and message.address == "fe80::1" and message.flags == 0x200


def test_several_messages_in_one_datagram_and_other_types_skipped() -> None:
    data = (
        link(RTM_NEWLINK, 1, "lo", 0)
        + nlmsg(24, b"\0" * 12)  # RTM_NEWROUTE: not ours
        + addr(RTM_NEWADDR, 1, socket.AF_INET, "127.0.0.1", 8)
        + nlmsg(NLMSG_DONE, struct.pack("=i", 0))
    )
    messages = parse_netlink_messages(data)
    assert [type(m) for m in messages] == [LinkMessage, AddressMessage]


def test_overrun_and_errors_ask_for_a_reread() -> None:
    assert parse_netlink_messages(nlmsg(NLMSG_OVERRUN, b"")) == [OverrunMessage("netlink overrun")]
    (error,) = parse_netlink_messages(nlmsg(NLMSG_ERROR, struct.pack("=i", -105) + b"\0" * 16))
    assert isinstance(error, OverrunMessage) and "105" in error.reason
    assert parse_netlink_messages(nlmsg(NLMSG_ERROR, struct.pack("=i", 0) + b"\0" * 16)) == []


def test_truncated_datagram() -> None:
    data = link(RTM_NEWLINK, 3, "wlan0", IFF_UP)
    messages = parse_netlink_messages(data[:-6])
    assert len(messages) == 1 and isinstance(messages[0], OverrunMessage)
    short_payload = nlmsg(RTM_NEWADDR, b"\x02\x18")
    assert isinstance(parse_netlink_messages(short_payload)[0], OverrunMessage)


def test_rtattrs_stop_at_a_bad_length() -> None:
    data = rtattr(IFLA_IFNAME, b"eth0\0") + struct.pack("=HH", 200, 9) + b"xx"
    assert parse_rtattrs(data) == {IFLA_IFNAME: b"eth0\0"}


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    for message in parse_netlink_messages(data):
        assert isinstance(message, LinkMessage | AddressMessage | OverrunMessage)


@given(st.lists(st.tuples(st.integers(1, 10_000), st.text(min_size=1, max_size=15)), max_size=5))
def test_round_trip_link_names(links: list[tuple[int, str]]) -> None:
    data = b"".join(
        link(RTM_NEWLINK, index, name.replace("\0", ""), IFF_UP) for index, name in links
    )
    messages = parse_netlink_messages(data)
    assert [(m.index, m.name) for m in messages if isinstance(m, LinkMessage)] == [
        (index, name.replace("\0", "")) for index, name in links
    ]
