"""Protected transports at the Gm protected ports: one interface, two backends.

Both the P-CSCF and the UE simulator use the same object: it owns the UDP sockets of
the protected ports of the live SA sets (opened on `SaSetInstalled`, closed when the
last set using a port is removed), delivers each received SIP message as a
`ProtectedMessage` naming the SA and SA set it arrived on and the peer address, and
sends SIP over a chosen outbound SA (`send`), or back over the SA a request came on
(`send_reply`), so a stateful proxy can answer on the SA of the request.

- `UserspaceBackend` (default, no privileges): each datagram on a protected port is
  an ESP packet carried in UDP as in RFC 3948; ESP is transport mode and its payload
  is the inner UDP header (ports of the SA selector) plus the SIP message, Next
  Header 17. Demultiplexed by SPI.
- `imsaka.ipsec.xfrm.XfrmBackend`: the kernel does ESP; the same sockets carry clear
  SIP and the kernel policies protect it. Demultiplexed by (peer, local port).

The asyncio edge is thin (STYLE.md rule 9): non-blocking sockets with `add_reader`,
the sans-I/O `SecurityAssociationTable` fed `loop.time()`, one `call_at` re-armed for
its next deadline. Every received datagram is reported to observers as a
`imsaka.wire.WireEvent` (protocol "esp", payload = the ESP packet, inner = the SIP).
Drops are counted by reason in `drops` and logged without key material.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imsaka.ipsec import esp as _esp
from imsaka.ipsec.errors import LocalProtocolError, SequenceNumberExhausted
from imsaka.ipsec.keyfile import write_esp_sa_file
from imsaka.ipsec.sa import (
    Address,
    NewRegistrationNeeded,
    SaSet,
    SaSetInstalled,
    SaSetRemoved,
    SaState,
    SecurityAssociation,
    SecurityAssociationTable,
)
from imsaka.wire import Observable, Observer, WireEvent

__all__ = [
    "BACKENDS",
    "ProtectedMessage",
    "ProtectedTransport",
    "UserspaceBackend",
    "create_backend",
    "udp_checksum",
]

log = logging.getLogger("imsaka.ipsec.backend")

MAX_DATAGRAM = 65535
MAX_KEYFILE_SAS = 4096  # removed SAs kept in the esp_sa file, oldest dropped first
_UDP = struct.Struct(">HHHH")

# Drop triggers of the transport (the ESP ones are in imsaka.ipsec.esp).
NOT_ESP_CLEAR_SIP = "clear-sip-on-protected-port"
UNKNOWN_SPI = _esp.WRONG_SPI
WRONG_PORT = "esp-sa-wrong-local-port"
SOURCE_MISMATCH = "esp-source-mismatch"
NOT_UDP = "esp-next-header-not-udp"
BAD_INNER_UDP = "esp-bad-inner-udp"
SELECTOR_MISMATCH = "esp-selector-mismatch"
SA_NOT_USABLE = "sa-set-removed"
SEQ_EXHAUSTED = "esp-sequence-exhausted"
SEND_FAILED = "send-failed"
UNKNOWN_PEER = "xfrm-no-sa-for-peer"

# `SaSet.usable_for_sending`, as a set for the per-message check
_SENDABLE = frozenset(
    (SaState.TEMPORARY, SaState.ESTABLISHED, SaState.SUPERSEDED, SaState.DRAINING)
)

_SIP_START = (b"REGISTER", b"INVITE", b"SIP/2.0", b"ACK", b"BYE", b"OPTIONS", b"SUBSCRIBE",
              b"NOTIFY", b"CANCEL", b"PRACK", b"UPDATE", b"MESSAGE", b"INFO", b"REFER",
              b"PUBLISH")  # fmt: skip


@dataclass(frozen=True, slots=True)
class ProtectedMessage:
    """A SIP message that arrived protected, with where and how it arrived."""

    data: bytes
    sa: SecurityAssociation  # the inbound SA it arrived on
    sa_set: SaSet
    peer: Address  # the sender's (IP, port)
    local: Address  # our protected port it arrived at
    received_at: float  # loop.time()


def udp_checksum(src_ip: str, dst_ip: str, segment: bytes) -> int:
    """RFC 768 / RFC 8200 §8.1 checksum over the pseudo-header and the UDP segment."""
    src = _packed(src_ip)
    dst = _packed(dst_ip)
    length = len(segment)
    if len(src) == 4:
        pseudo = src + dst + struct.pack(">BBH", 0, 17, length)
    else:
        pseudo = src + dst + struct.pack(">IxxxB", length, 17)
    data = pseudo + segment
    if len(data) % 2:
        data += b"\x00"
    # RFC 1071: the one's complement sum of the 16-bit words is the number the octets
    # spell, modulo 0xFFFF (2^16 = 1 there), one big-integer operation in C; the sum
    # 0xFFFF it cannot tell from 0 gives the same checksum (transmitted as 0xFFFF).
    total = int.from_bytes(data, "big") % 0xFFFF
    return ((~total) & 0xFFFF) or 0xFFFF


@functools.lru_cache(maxsize=1024)
def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


@functools.lru_cache(maxsize=1024)
def _address_sum(src_ip: str, dst_ip: str) -> int:
    """The pseudo-header's addresses summed as 16-bit words, modulo 0xFFFF."""
    return int.from_bytes(_packed(src_ip) + _packed(dst_ip), "big") % 0xFFFF


def _checksum_of(src_ip: str, dst_ip: str, sport: int, dport: int, data: bytes) -> int:
    """`udp_checksum` of the segment with header (sport, dport, 8 + len(data), 0) and
    payload `data`, without building either: modulo 0xFFFF (2^16 = 1 there) the sum of
    the words of an even-length prefix and of what follows is the sum of their values,
    and both pseudo-headers (IPv4: length in 16 bits, IPv6: in 32) add length + 17."""
    length = 8 + len(data)
    value = int.from_bytes(data, "big")
    if len(data) % 2:
        value <<= 8  # the zero octet that pads it to whole words
    total = (_address_sum(src_ip, dst_ip) + 17 + 2 * length + sport + dport + value) % 0xFFFF
    return ((~total) & 0xFFFF) or 0xFFFF


class _Port:
    __slots__ = ("address", "refs", "sock")

    def __init__(self, sock: socket.socket, address: Address) -> None:
        self.sock = sock
        self.address = address
        self.refs = 0


class ProtectedTransport(Observable):
    """Common part of the backends: sockets per protected port, timers, delivery."""

    name = "base"

    def __init__(
        self,
        table: SecurityAssociationTable,
        *,
        on_message: Callable[[ProtectedMessage], None] | None = None,
        owner: str = "",
        key_file: str | Path | None = None,
        keep_removed_keys: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.table = table
        self.on_message = on_message
        self.owner = owner or table.local_role
        self.key_file = Path(key_file) if key_file else None
        self.keep_removed_keys = keep_removed_keys
        self._observers: list[Observer] = []
        self._loop = loop
        self._ports: dict[int, _Port] = {}
        self._queue: asyncio.Queue[ProtectedMessage] | None = None
        self._timer: asyncio.Handle | None = None
        # The deadline `_timer` was armed for: uvloop's call_at returns a plain Handle
        # without when() for a deadline already past, so it is kept here.
        self._timer_at: float | None = None
        # The table's `deadline_version` when `_timer` was armed: no deadline earlier
        # than the armed one can have come since while it is unchanged.
        self._armed_version = -1
        self._keyed: dict[int, SecurityAssociation] = {}
        self._closed = False
        self.drops: dict[str, int] = {}
        self.delivered = 0
        self.sent = 0
        self.events: list[object] = []  # NewRegistrationNeeded / SaSetRemoved, for the owner
        self.on_table_event: Callable[[object], None] | None = None

    # -- lifecycle

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    async def start(self) -> None:
        self.sync()

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for port in list(self._ports.values()):
            self._close_port(port)
        self._ports.clear()

    async def __aenter__(self) -> ProtectedTransport:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the table's events → sockets, kernel state, key file

    def sync(self) -> None:
        """Apply the table's queued events (install/remove), then re-arm the timer.

        Call after every table input (create_temporary, registered, deregistered ...);
        `send` and the receive path call it themselves.
        """
        if not self.table._events:
            # (most calls: a message came or went, nothing installed or removed)
            self._arm_timer()
            return
        changed = False
        # The SAs whose keys go to the key file: kept only when one is written (else
        # every SA ever installed would stay referenced here).
        keyed = self.key_file is not None
        while (event := self.table.next_event()) is not None:
            if isinstance(event, SaSetInstalled):
                self._installed(event.sa_set)
                if keyed:
                    for sa in event.sa_set.all_sas:
                        self._keyed[sa.spi] = sa
                changed = True
            elif isinstance(event, SaSetRemoved):
                self._removed(event.sa_set)
                if keyed and not self.keep_removed_keys:
                    for sa in event.sa_set.all_sas:
                        self._keyed.pop(sa.spi, None)
                changed = True
            if isinstance(event, SaSetRemoved | NewRegistrationNeeded):
                self.events.append(event)
                if self.on_table_event is not None:
                    self.on_table_event(event)
        if changed and self.key_file is not None:
            self._trim_keyed()
            write_esp_sa_file(self.key_file, self._keyed.values())
        self._arm_timer()

    def _trim_keyed(self) -> None:
        # Removed SAs stay in the key file so a capture of the whole run decrypts, but
        # a long-running node must not grow it without bound: forget the oldest.
        excess = len(self._keyed) - MAX_KEYFILE_SAS
        if excess <= 0:
            return
        for spi in [s for s, sa in self._keyed.items() if not sa.sa_set.live][:excess]:
            del self._keyed[spi]

    def _installed(self, sa_set: SaSet) -> None:
        for port in (sa_set.local_ports.port_c, sa_set.local_ports.port_s):
            self._ref_port(sa_set.local_ip, port)

    def _removed(self, sa_set: SaSet) -> None:
        for port in (sa_set.local_ports.port_c, sa_set.local_ports.port_s):
            p = self._ports.get(port)
            if p is not None:
                p.refs -= 1
                if p.refs <= 0:
                    self._close_port(p)
                    del self._ports[port]

    def _arm_timer(self) -> None:
        if self._closed:
            return
        table = self.table
        version = table.deadline_version
        if self._timer is not None and version == self._armed_version:
            return  # no earlier deadline since it was armed (a later one: see below)
        deadline = table.next_deadline()
        self._armed_version = version
        if self._timer is not None:
            # An armed wake-up at or before the deadline stays: a lifetime that moved
            # later (a re-registration) costs no re-arm per message; the early wake-up
            # finds nothing due and arms for the deadline then.
            at = self._timer_at
            if deadline is not None and at is not None and at <= deadline:
                return
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.table.handle_timer(self.now())
        self.sync()

    # -- sockets

    def hold_port(self, ip: str, port: int) -> int:
        """Keep a protected port bound for the node's lifetime, SA or no SA (0: the
        kernel picks one); returns the bound port. Stray ESP or clear SIP arriving
        while no set uses the port is then read and counted as a drop
        (`esp-unknown-spi`, `clear-sip-on-protected-port`) instead of being refused
        by the kernel with ICMP port unreachable, and no other socket can take the
        port between start and the first SA set. Released by `close()`."""
        return self._ref_port(ip, port)

    def release_port(self, port: int) -> None:
        """Give back one `hold_port` reference; the socket closes with its last user
        (an SA set installed on the port holds its own reference)."""
        p = self._ports.get(port)
        if p is None:
            return
        p.refs -= 1
        if p.refs <= 0:
            self._close_port(p)
            del self._ports[port]

    def _ref_port(self, ip: str, port: int) -> int:
        p = self._ports.get(port) if port else None
        if p is None:
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # Port 0 without SO_REUSEADDR: with it, Linux may pick a port that
                # another SO_REUSEADDR UDP socket already has (two UEs on one port).
                sock.setblocking(False)
                sock.bind((ip, port))
                port = sock.getsockname()[1]
            except OSError:
                sock.close()
                raise
            p = _Port(sock, (ip, port))
            self.loop.add_reader(sock.fileno(), self._readable, p)
            self._ports[port] = p
        p.refs += 1
        return port

    def _close_port(self, p: _Port) -> None:
        try:
            self.loop.remove_reader(p.sock.fileno())
        except (ValueError, RuntimeError):  # loop already closed
            pass
        p.sock.close()

    def bound_ports(self) -> list[int]:
        return sorted(self._ports)

    def _readable(self, p: _Port) -> None:
        # Drain what is queued, bounded so one flood cannot starve the loop.
        for _ in range(64):
            try:
                data, peer = p.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable surfaced on Linux
                self._count(SEND_FAILED if exc.errno == errno.ECONNREFUSED else "recv-error")
                return
            self._datagram(p, data, (peer[0], peer[1]))

    def _datagram(self, p: _Port, data: bytes, peer: Address) -> None:
        raise NotImplementedError

    # -- delivery

    def _deliver(self, msg: ProtectedMessage) -> None:
        self.delivered += 1
        self.table.message_received(msg.sa_set, now=msg.received_at)
        self.sync()
        if self.on_message is not None:
            self.on_message(msg)
        else:
            if self._queue is None:
                self._queue = asyncio.Queue()
            self._queue.put_nowait(msg)

    async def receive(self) -> ProtectedMessage:
        """The next protected message (when no `on_message` callback is set)."""
        if self._queue is None:
            self._queue = asyncio.Queue()
        return await self._queue.get()

    def _count(self, reason: str, detail: str = "") -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        if log.isEnabledFor(logging.INFO):
            log.info("%s drop reason=%s %s", self.owner, reason, detail)

    # -- sending

    def send(self, sa: SecurityAssociation, data: bytes, *, final: bool = False) -> bool:
        """Send SIP `data` over the outbound `sa`; False (counted) if it cannot go.

        `final`: this message is one that was due before the set may go (the 200 OK to
        a de-REGISTER, the 4xx after a failed authentication).
        """
        if sa.inbound:
            raise LocalProtocolError("send: needs an outbound SA (use reply_sa / client_sa)")
        sa_set = sa.sa_set
        if sa_set.state not in _SENDABLE:
            self._count(SA_NOT_USABLE, f"set #{sa_set.id}")
            return False
        p = self._ports.get(sa.src[1])
        if p is None:
            self._count(SA_NOT_USABLE, f"port {sa.src[1]} not open")
            return False
        try:
            wire = self._encode(sa, data)
        except SequenceNumberExhausted:
            self._count(SEQ_EXHAUSTED, f"spi 0x{sa.spi:08x}")
            self.table.message_sent(sa_set, now=self.now())
            self.sync()
            return False
        try:
            p.sock.sendto(wire, sa.dst)
        except OSError as exc:
            self._count(SEND_FAILED, f"errno={exc.errno}")
            return False
        self.sent += 1
        if self._observers:
            self._emit(
                WireEvent(
                    time.time(), "out", "udp", sa.src, sa.dst, wire, self._protocol,
                    self.owner, data,
                )
            )  # fmt: skip
        self.table.message_sent(sa_set, now=self.now(), final=final)
        self.sync()
        return True

    def send_reply(
        self, arrived_on: SecurityAssociation, data: bytes, *, final: bool = False
    ) -> bool:
        """Send a response back over the SA pair its request arrived on."""
        return self.send(arrived_on.sa_set.reply_sa(arrived_on), data, final=final)

    _protocol = "esp"

    def _encode(self, sa: SecurityAssociation, data: bytes) -> bytes:
        raise NotImplementedError


class UserspaceBackend(ProtectedTransport):
    """ESP in userspace, carried in UDP at the protected ports (RFC 4303 + RFC 3948)."""

    name = "userspace"

    def _encode(self, sa: SecurityAssociation, data: bytes) -> bytes:
        length = 8 + len(data)
        if length > MAX_DATAGRAM - 100:
            raise LocalProtocolError("send: SIP message too large for one UDP datagram")
        (src_ip, sport), (dst_ip, dport) = sa.src, sa.dst
        checksum = _checksum_of(src_ip, dst_ip, sport, dport, data)
        return sa.protect(_UDP.pack(sport, dport, length, checksum) + data, 17)  # type: ignore[attr-defined]

    def _datagram(self, p: _Port, data: bytes, peer: Address) -> None:
        now = self.now()
        # (`peek_spi` and `lookup_inbound`, inline: once per datagram)
        spi = int.from_bytes(data[:4], "big") if len(data) >= 8 else None
        sa = None if spi is None else self.table._by_spi.get(spi)
        inner = None
        try:
            if sa is None:
                if data.startswith(_SIP_START):
                    self._count(NOT_ESP_CLEAR_SIP, f"from {peer[0]}:{peer[1]}")
                elif spi is None:
                    self._count(_esp.TOO_SHORT, f"from {peer[0]}:{peer[1]}")
                else:
                    self._count(UNKNOWN_SPI, f"spi=0x{spi:08x} from {peer[0]}:{peer[1]}")
                return
            if sa.dst[1] != p.address[1]:
                self._count(WRONG_PORT, f"spi=0x{spi:08x}")
                return
            src = sa.src
            if peer[1] != src[1] or (peer[0] != src[0] and _norm(peer[0]) != _norm(src[0])):
                self._count(SOURCE_MISMATCH, f"spi=0x{spi:08x} from {peer[0]}:{peer[1]}")
                return
            result = sa.unprotect_payload(data)  # type: ignore[attr-defined]
            if type(result) is _esp.EspDrop:
                self._count(result.reason, f"spi=0x{spi:08x}")
                return
            next_header, payload = result
            if next_header != 17:
                self._count(NOT_UDP, f"next header {next_header}")
                return
            if len(payload) < 8:
                self._count(BAD_INNER_UDP, "short")
                return
            sport, dport, length, _ = _UDP.unpack_from(payload)
            if length != len(payload):
                self._count(BAD_INNER_UDP, "length")
                return
            if sport != sa.src[1] or dport != sa.dst[1]:
                self._count(SELECTOR_MISMATCH, f"ports {sport}->{dport}")
                return
            inner = payload[8:]
        finally:
            if self._observers:
                self._emit(
                    WireEvent(
                        time.time(), "in", "udp", peer, p.address, data, "esp", self.owner,
                        inner,
                    )
                )  # fmt: skip
        self._deliver(ProtectedMessage(inner, sa, sa.sa_set, peer, p.address, now))


def _norm(ip: str) -> str:
    if ip.startswith("::ffff:"):
        return ip[7:]
    return ip


BACKENDS = ("userspace", "xfrm")


def create_backend(name: str, table: SecurityAssociationTable, **kwargs) -> ProtectedTransport:
    """`userspace` (default) or `xfrm`; the xfrm backend checks the kernel in `start()`."""
    if name == "userspace":
        return UserspaceBackend(table, **kwargs)
    if name == "xfrm":
        from imsaka.ipsec.xfrm import XfrmBackend

        return XfrmBackend(table, **kwargs)
    raise LocalProtocolError(f"ipsec backend: unknown {name!r} (userspace or xfrm)")
