"""DNS-SD over multicast DNS: telling phones on the link where the listener is.

:class:`ServiceAdvertiser` registers one service instance (``<instance>._fieldsync._tcp.local.``)
with python-zeroconf's asyncio API, answering only on the addresses it is given (those of the
listener's interface). TXT records (:func:`build_txt`) name the databases, whether TLS is on, the
certificate's SHA-256 fingerprint for pinning, the replication subprotocol and the port.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Mapping, Sequence

from zeroconf import DNSAddress, DNSOutgoing, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from fieldsync.replication.messages import LISTENER_SUBPROTOCOLS

log = logging.getLogger(__name__)

#: The replication subprotocols the listener accepts, preferred first, as named in the TXT record
#: (a 4.x app looks for ``BLIP_3+CBMobile_4``, a 3.x app for ``BLIP_3+CBMobile_3``).
PROTOCOL = ",".join(LISTENER_SUBPROTOCOLS)
#: The DNS-SD service type fieldsync listeners are advertised under.
DEFAULT_SERVICE_TYPE = "_fieldsync._tcp"
_TXT_ENTRY_MAX = 255
# DNS wire values (RFC 1035, RFC 3596, RFC 6762)
_TYPE_A = 1
_TYPE_AAAA = 28
_CLASS_IN = 1
_CLASS_UNIQUE = 0x8000  # the mDNS cache-flush bit
_FLAGS_QR_RESPONSE = 0x8000
_FLAGS_AA = 0x0400


def build_txt(
    databases: Sequence[str],
    *,
    tls: bool,
    fingerprint: str | None = None,
    port: int,
    protocol: str = PROTOCOL,
) -> dict[str, str]:
    """TXT record entries for a listener.

    ``dbs`` lists the database names (URL paths) comma-separated; ``fp`` is the lowercase hex
    SHA-256 of the listener certificate and is present only with TLS. Raises ValueError when an
    entry would not fit in a TXT string (255 bytes).
    """
    txt = {
        "dbs": ",".join(databases),
        "tls": "1" if tls else "0",
        "proto": protocol,
        "port": str(port),
    }
    if tls and fingerprint:
        txt["fp"] = fingerprint.replace(":", "").lower()
    for key, value in txt.items():
        if len(f"{key}={value}".encode()) > _TXT_ENTRY_MAX:
            raise ValueError(f"TXT entry {key!r} is longer than {_TXT_ENTRY_MAX} bytes")
    return txt


class _OneLineSocketErrors(logging.Filter):
    """Keep python-zeroconf's send errors to one line.

    Withdrawing from an interface that just went down, or answering while an address is being
    replaced, makes sends fail (ENETUNREACH, EADDRNOTAVAIL); zeroconf logs each with a full
    traceback, which says nothing the message does not.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, OSError) and str(record.msg).startswith("Error with socket"):
            record.exc_info = None
            record.exc_text = None
        return True


_ZEROCONF_FILTER = _OneLineSocketErrors()


class ServiceAdvertiser:
    """One DNS-SD service instance, advertised on a chosen set of addresses.

    ``interface`` (a name) lets IPv6 multicast use that interface; IPv4 addresses are enough
    on their own. Methods must be called from one asyncio task at a time.
    """

    def __init__(
        self,
        service_type: str = DEFAULT_SERVICE_TYPE,
        instance_name: str | None = None,
        *,
        host_name: str | None = None,
        interface: str | None = None,
    ) -> None:
        self.service_type = _qualified_type(service_type)
        self.instance_name = instance_name or socket.gethostname().split(".")[0] or "fieldsync"
        self.host_name = _qualified_host(host_name or socket.gethostname().split(".")[0])
        self.interface = interface
        zeroconf_log = logging.getLogger("zeroconf")
        if _ZEROCONF_FILTER not in zeroconf_log.filters:
            zeroconf_log.addFilter(_ZEROCONF_FILTER)
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._addresses: tuple[str, ...] = ()
        self._port = 0
        self._txt: dict[str, str] = {}
        self._closed = False

    @property
    def advertising(self) -> bool:
        """Whether the service is currently registered."""
        return self._info is not None

    @property
    def name(self) -> str:
        """The registered instance name (may differ from the wanted one after a conflict)."""
        if self._info is not None:
            return self._info.name.removesuffix("." + self.service_type)
        return self.instance_name

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses advertised now (empty when not advertising)."""
        return self._addresses if self.advertising else ()

    @property
    def port(self) -> int:
        return self._port

    @property
    def txt(self) -> dict[str, str]:
        return dict(self._txt)

    async def advertise(self, addresses: Sequence[str], port: int, txt: Mapping[str, str]) -> None:
        """Register the service on ``addresses`` (probing for a free name first)."""
        if self._closed:
            raise RuntimeError("the advertiser is closed")
        if self.advertising:
            await self.update(addresses, port, txt)
            return
        normalized = _normalize(addresses)
        if not normalized:
            raise ValueError("nothing to advertise on: no addresses")
        self._zc = AsyncZeroconf(
            interfaces=self._zeroconf_interfaces(normalized), ip_version=_ip_version(normalized)
        )
        info = self._service_info(self.instance_name, normalized, port, txt)
        try:
            broadcast = await self._zc.async_register_service(info, allow_name_change=True)
            await broadcast
        except BaseException:
            zc, self._zc = self._zc, None
            with contextlib.suppress(Exception):
                await zc.async_close()
            raise
        self._info = info
        self._addresses, self._port, self._txt = normalized, port, dict(txt)
        log.info(
            "advertising %r (%s) on %s port %d",
            self.name,
            self.service_type,
            ", ".join(normalized),
            port,
        )

    async def update(
        self,
        addresses: Sequence[str] | None = None,
        port: int | None = None,
        txt: Mapping[str, str] | None = None,
    ) -> None:
        """Re-announce with new addresses, port or TXT; only what changed is replaced."""
        if not self.advertising:
            raise RuntimeError("not advertising; call advertise() first")
        assert self._zc is not None and self._info is not None
        new_addresses = _normalize(addresses) if addresses is not None else self._addresses
        new_port = self._port if port is None else port
        new_txt = self._txt if txt is None else dict(txt)
        if not new_addresses:
            raise ValueError("nothing to advertise on: no addresses; use withdraw()")
        if (new_addresses, new_port, new_txt) == (self._addresses, self._port, self._txt):
            return
        instance = self.name
        info = self._service_info(instance, new_addresses, new_port, new_txt)
        if new_addresses != self._addresses and not hasattr(self._zc, "async_update_interfaces"):
            await self.withdraw()  # older zeroconf: start over on the new addresses
            self.instance_name = instance
            await self.advertise(new_addresses, new_port, new_txt)
            return
        # Register the new records first: adding the new interface re-announces what is
        # registered, and announcing the old address there would keep it alive in caches.
        broadcast = await self._zc.async_update_service(info)
        if new_addresses != self._addresses:
            await self._zc.async_update_interfaces(
                interfaces=self._zeroconf_interfaces(new_addresses),
                ip_version=_ip_version(new_addresses),
            )
        with contextlib.suppress(OSError):  # sends on an interface that just lost its address
            await broadcast
        removed = [a for a in self._addresses if a not in new_addresses]
        if removed:
            self._send_address_goodbyes(removed)
        self._info = info
        self._addresses, self._port, self._txt = new_addresses, new_port, new_txt
        log.info(
            "advertisement of %r updated: %s port %d", instance, ", ".join(new_addresses), new_port
        )

    async def withdraw(self) -> None:
        """Send goodbye packets and stop answering; :meth:`advertise` may be called again."""
        zc, info = self._zc, self._info
        self._zc, self._info = None, None
        if zc is None:
            return
        try:
            if info is not None:
                goodbye = await zc.async_unregister_service(info)
                await goodbye
                log.info("advertisement of %r withdrawn", info.name)
        except Exception as exc:  # an interface that vanished cannot carry a goodbye
            log.info("goodbye for %s not sent: %s", info.name if info else "?", exc)
        finally:
            with contextlib.suppress(Exception):
                await zc.async_close()

    async def close(self) -> None:
        """Withdraw and release the multicast sockets for good."""
        self._closed = True
        await self.withdraw()

    def _send_address_goodbyes(self, addresses: Sequence[str]) -> None:
        """Tell caches to drop addresses this host no longer has (TTL-0 address records).

        Without them a cache that heard the old address less than a second before the update
        keeps it until its TTL runs out (RFC 6762 10.2 only flushes records older than 1 s).
        """
        assert self._zc is not None
        out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
        for address in addresses:
            ip = ipaddress.ip_address(address)
            record_type = _TYPE_A if ip.version == 4 else _TYPE_AAAA
            record = DNSAddress(
                self.host_name, record_type, _CLASS_IN | _CLASS_UNIQUE, 0, ip.packed
            )
            out.add_answer_at_time(record, 0)
        try:
            self._zc.zeroconf.async_send(out)
        except Exception as exc:
            log.debug("address goodbyes not sent: %s", exc)

    def _service_info(
        self, instance: str, addresses: Sequence[str], port: int, txt: Mapping[str, str]
    ) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            self.service_type,
            f"{instance}.{self.service_type}",
            port=port,
            properties=dict(txt),
            server=self.host_name,
            parsed_addresses=list(addresses),
        )

    def _zeroconf_interfaces(self, addresses: Sequence[str]) -> list[str | int]:
        result: list[str | int] = [a for a in addresses if ipaddress.ip_address(a).version == 4]
        if any(ipaddress.ip_address(a).version == 6 for a in addresses):
            index = _interface_index(self.interface)
            if index:
                result.append(index)
        if not result:  # IPv6 only and no interface name: let zeroconf map the addresses
            result = list(addresses)
        return result


def _normalize(addresses: Sequence[str]) -> tuple[str, ...]:
    seen: list[str] = []
    for address in addresses:
        text = str(ipaddress.ip_address(address.split("%", 1)[0]))
        if text not in seen:
            seen.append(text)
    return tuple(seen)


def _ip_version(addresses: Sequence[str]) -> IPVersion:
    versions = {ipaddress.ip_address(a).version for a in addresses}
    if versions == {4}:
        return IPVersion.V4Only
    if versions == {6}:
        return IPVersion.V6Only
    return IPVersion.All


def _interface_index(name: str | None) -> int:
    if not name:
        return 0
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


def _qualified_type(service_type: str) -> str:
    service_type = service_type.rstrip(".")
    if not service_type.endswith(".local"):
        service_type += ".local"
    return service_type + "."


def _qualified_host(host: str) -> str:
    host = host.rstrip(".")
    if not host.endswith(".local"):
        host += ".local"
    return host + "."
