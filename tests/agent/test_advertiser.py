"""mDNS advertisement, seen from the other end of the link by python-zeroconf and by avahi."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.agent.netns import Avahi, NetnsPair, NsProcess, avahi_unavailable_reason

from fieldsync.agent.advertiser import PROTOCOL, ServiceAdvertiser, build_txt

SERVICE = "_fieldsync._tcp"
FULL_TYPE = SERVICE + ".local."
INSTANCE = "Pump Station 4"
FULL_NAME = f"{INSTANCE}.{FULL_TYPE}"
FINGERPRINT = "AB:CD:" + "ef" * 30


def test_txt_records() -> None:
    txt = build_txt(["inventory", "readings"], tls=True, fingerprint=FINGERPRINT, port=4984)
    assert txt == {
        "dbs": "inventory,readings",
        "tls": "1",
        "fp": "abcd" + "ef" * 30,
        "proto": PROTOCOL,
        "port": "4984",
    }
    assert PROTOCOL == "BLIP_3+CBMobile_4,BLIP_3+CBMobile_3,BLIP_3+CBMobile_2"
    plain = build_txt(["inventory"], tls=False, fingerprint=FINGERPRINT, port=5000)
    assert plain["tls"] == "0" and "fp" not in plain
    with pytest.raises(ValueError, match="dbs"):
        build_txt(["x" * 100, "y" * 100, "z" * 100], tls=False, port=1)


def test_names() -> None:
    advertiser = ServiceAdvertiser("_fieldsync._tcp", "Pump 4", host_name="pump4")
    assert advertiser.service_type == "_fieldsync._tcp.local."
    assert advertiser.host_name == "pump4.local."
    assert advertiser.name == "Pump 4"
    assert not advertiser.advertising and advertiser.addresses == ()


async def test_update_and_withdraw_need_advertise_first() -> None:
    advertiser = ServiceAdvertiser()
    with pytest.raises(RuntimeError):
        await advertiser.update(["10.0.0.1"])
    await advertiser.withdraw()  # harmless
    with pytest.raises(ValueError):
        await advertiser.advertise([], 4984, {})
    await advertiser.close()
    with pytest.raises(RuntimeError, match="closed"):
        await advertiser.advertise(["10.0.0.1"], 4984, {})


def start_advertiser(netns: NetnsPair) -> NsProcess:
    advertiser = netns.start(netns.device, "advertise.py", SERVICE, INSTANCE, "wlan0")
    advertiser.expect(lambda m: m.get("event") == "ready", what="ready")
    return advertiser


def command(process: NsProcess, **fields: Any) -> dict[str, Any]:
    process.send(json.dumps(fields))
    answer = process.expect(lambda m: m.get("event") in ("done", "error"), what=fields["cmd"])
    assert answer["event"] == "done", answer
    return answer


def resolve_until(browser: NsProcess, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
    """Ask the browser to resolve the service until ``predicate`` holds for the answer."""
    import time

    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        browser.send(json.dumps({"cmd": "resolve", "name": FULL_NAME}))
        last = browser.expect(
            lambda m: m.get("event") in ("resolved", "unresolved"), what="resolution"
        )
        if predicate(last):
            return last
        time.sleep(0.2)
    raise AssertionError(f"the service never resolved as expected; last answer: {last}")


@pytest.mark.netns
def test_zeroconf_browser_in_the_other_namespace(netns: NetnsPair) -> None:
    netns.create_wlan0("10.213.0.1/24")
    browser = netns.start(netns.phone, "browse.py", FULL_TYPE, "10.213.0.2")
    browser.expect(lambda m: m.get("event") == "ready", what="browser ready")
    advertiser = start_advertiser(netns)
    txt = build_txt(["inventory"], tls=True, fingerprint=FINGERPRINT, port=4984)

    # appears
    done = command(advertiser, cmd="advertise", addresses=["10.213.0.1"], port=4984, txt=txt)
    assert done["name"] == INSTANCE
    added = browser.expect(lambda m: m.get("event") == "added", what="added")
    assert added["name"] == FULL_NAME
    assert added["addresses"] == ["10.213.0.1"]
    assert added["port"] == 4984
    assert added["txt"] == txt
    assert added["server"] == "fs-test-device.local."

    # the interface's address changes: the advertisement follows
    netns.ip(netns.device, "addr", "add", "10.213.1.1/24", "dev", "wlan0")
    netns.ip(netns.device, "addr", "del", "10.213.0.1/24", "dev", "wlan0")
    command(advertiser, cmd="update", addresses=["10.213.1.1"])
    browser.expect(lambda m: m.get("event") == "updated", what="updated")
    resolve_until(browser, lambda m: m.get("addresses") == ["10.213.1.1"])

    # TXT-only change (e.g. a new certificate)
    command(advertiser, cmd="update", txt={**txt, "fp": "00" * 32})
    resolve_until(browser, lambda m: m.get("txt", {}).get("fp") == "00" * 32)

    # goodbye
    command(advertiser, cmd="withdraw")
    removed = browser.expect(lambda m: m.get("event") == "removed", what="removed")
    assert removed["name"] == FULL_NAME

    # and back again after a withdraw
    command(advertiser, cmd="advertise", addresses=["10.213.1.1"], port=4984, txt=txt)
    browser.expect(lambda m: m.get("event") == "added", what="added again")
    command(advertiser, cmd="close")
    browser.expect(lambda m: m.get("event") == "removed", what="removed on close")
    assert advertiser.wait() == 0


@pytest.mark.netns
def test_name_conflict_gets_a_new_name(netns: NetnsPair) -> None:
    netns.create_wlan0("10.213.0.1/24")
    netns.ip(netns.device, "addr", "add", "10.213.0.3/24", "dev", "wlan0")
    first = start_advertiser(netns)
    second = start_advertiser(netns)
    txt = build_txt(["inventory"], tls=False, port=4984)
    command(first, cmd="advertise", addresses=["10.213.0.1"], port=4984, txt=txt)
    answer = command(second, cmd="advertise", addresses=["10.213.0.3"], port=4985, txt=txt)
    assert answer["name"] != INSTANCE
    assert answer["name"].startswith(INSTANCE)


@pytest.mark.netns
def test_avahi_browse_sees_the_service(netns: NetnsPair, tmp_path: Path) -> None:
    reason = avahi_unavailable_reason()
    if reason:
        pytest.skip(reason)
    netns.create_wlan0("10.213.0.1/24")
    avahi = Avahi(netns, tmp_path)
    advertiser = start_advertiser(netns)
    txt = build_txt(["inventory", "readings"], tls=True, fingerprint=FINGERPRINT, port=4984)
    command(advertiser, cmd="advertise", addresses=["10.213.0.1"], port=4984, txt=txt)
    (service,) = avahi.wait_for(SERVICE, lambda found: len(found) == 1)
    assert service["interface"] == netns.peer
    assert service["name"] == INSTANCE
    assert service["type"] == SERVICE
    assert service["host"] == "fs-test-device.local"
    assert service["address"] == "10.213.0.1"
    assert service["port"] == 4984
    assert service["txt"] == sorted(f"{k}={v}" for k, v in txt.items())

    netns.ip(netns.device, "addr", "add", "10.213.1.1/24", "dev", "wlan0")
    netns.ip(netns.device, "addr", "del", "10.213.0.1/24", "dev", "wlan0")
    command(advertiser, cmd="update", addresses=["10.213.1.1"])
    avahi.wait_for(SERVICE, lambda found: [s["address"] for s in found] == ["10.213.1.1"])

    command(advertiser, cmd="withdraw")
    avahi.wait_for(SERVICE, lambda found: found == [])
