"""SIP transports on asyncio: UDP and TCP, IPv4 and IPv6 (RFC 3261 §18).

The transport interface (`SipTransport`) is what the endpoint needs and what other
transports (the IPsec protected transport, imsaka.ipsec) implement too:

    name: str              "udp" / "tcp" (the Via transport; a protected transport
                            says which one it carries)
    reliable: bool         True for streams: no retransmission timers (§17)
    local_address          (host, port) it is bound to / listens on
    send(data, addr)       fire and forget; a failure is reported to the error handler
    set_receiver(cb)       cb(data: bytes, source: (host, port), transport) per message
    set_error_handler(cb)  cb(addr, exc) when sending to addr failed
    async close()
    respond_to_source      optional, default False: when True, the endpoint sends
                            responses back to the packet's source address instead of
                            the Via received/rport/sent-by address (§18.2.2) – for a
                            protected transport whose SA pairs fix the ports

UDP hands up each datagram. TCP frames the stream by Content-Length
(imsaka.sip.framing, bounded buffer): one connection carries many messages, split
and coalesced reads are reassembled; a framing error is answered statelessly (400 /
513, when answerable) and closes the connection, an over-long but well-framed
message is answered 513 and skipped. Every datagram / framed message sent or
received is reported to observers as `imsaka.wire.WireEvent(protocol="sip")`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from imsaka.sip.errors import SipParseError
from imsaka.sip.framing import StreamFramer
from imsaka.sip.message import DEFAULT_MAX_SIZE
from imsaka.wire import Address, Observable, WireEvent

log = logging.getLogger(__name__)

Receiver = Callable[[bytes, Address, "SipTransport"], None]
ErrorHandler = Callable[[Address, Exception], None]


@runtime_checkable
class SipTransport(Protocol):
    """What the endpoint needs from a transport (see the module docstring)."""

    name: str
    reliable: bool

    @property
    def local_address(self) -> Address: ...

    def send(self, data: bytes, addr: Address) -> None: ...

    def set_receiver(self, receiver: Receiver) -> None: ...

    def set_error_handler(self, handler: ErrorHandler) -> None: ...

    async def close(self) -> None: ...


def _addr(sockaddr) -> Address:
    return (sockaddr[0], sockaddr[1])


# Hosts sends went to that are IP literals: a set lookup per datagram sent instead of a
# call into the cache below (a node sends to the same few peers). Bounded.
_LITERALS: set[str] = set()
_LITERALS_MAX = 4096


@functools.lru_cache(maxsize=4096)
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _noop_receiver(data: bytes, source: Address, transport: SipTransport) -> None:
    pass


class _BaseTransport(Observable):
    __slots__ = ()

    def _init_common(self, owner: str, max_size: int) -> None:
        self._observers: list = []
        self.owner = owner
        self.max_size = max_size
        self.counters: Counter = Counter()
        self._receiver: Receiver = _noop_receiver
        self._error_handler: ErrorHandler | None = None
        self.respond_to_source = False

    def set_receiver(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def set_error_handler(self, handler: ErrorHandler) -> None:
        self._error_handler = handler

    def _deliver(self, data: bytes, source: Address) -> None:
        try:
            self._receiver(data, source, self)
        except Exception:  # a broken receiver must not stop the socket serving
            self.counters["receiver_errors"] += 1
            log.exception("sip %s: receiver failed on a message from %s", self.name, source)

    def _report(self, direction: str, src: Address, dst: Address, payload: bytes) -> None:
        if self._observers:
            self._emit(
                WireEvent(time.time(), direction, self.name, src, dst, payload, "sip", self.owner)
            )

    def _send_failed(self, addr: Address, exc: Exception) -> None:
        self.counters["send_errors"] += 1
        log.info("sip %s: sending to %s failed: %s", self.name, addr, exc)
        if self._error_handler is not None:
            self._error_handler(addr, exc)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr) -> None:
        # the transport's count, observers and _deliver in one frame: this runs once per datagram
        # (an IPv4 address comes as the (host, port) pair already; IPv6 as a 4-tuple)
        owner = self.owner
        if len(addr) != 2:
            addr = (addr[0], addr[1])
        counters = owner.counters
        counters["received"] += 1
        if owner._observers:
            owner._report("in", addr, owner._local, data)
        if len(data) > owner.max_size:
            # the receiver still sees it: it answers 513 when the head allows
            counters["oversized"] += 1
        try:
            owner._receiver(data, addr, owner)
        except Exception:  # a broken receiver must not stop the socket serving
            counters["receiver_errors"] += 1
            log.exception("sip udp: receiver failed on a message from %s", addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable) surface here without a usable address
        self.owner.counters["icmp_errors"] += 1


class UdpTransport(_BaseTransport):
    """One UDP socket (IPv4 or IPv6)."""

    __slots__ = (
        "__weakref__",
        "_error_handler",
        "_local",
        "_observers",
        "_receiver",
        "_transport",
        "counters",
        "max_size",
        "owner",
        "respond_to_source",
    )
    name = "udp"
    reliable = False

    def __init__(self, owner: str = "", max_size: int = DEFAULT_MAX_SIZE) -> None:
        self._init_common(owner, max_size)
        self._transport: asyncio.DatagramTransport | None = None
        self._local: Address = ("", 0)

    @classmethod
    async def create(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        owner: str = "",
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> UdpTransport:
        self = cls(owner, max_size)
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if _is_ip_literal(host):
            # Bound here: given local_addr, uvloop resolves even an IP literal on its
            # thread pool (~120 us and two context switches per socket against ~57 us;
            # the UE simulator opens sockets per UE).
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.bind((host, port))
            except OSError:
                sock.close()
                raise
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=sock
            )
        else:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port), family=family
            )
        self._transport = transport
        self._local = _addr(transport.get_extra_info("sockname"))
        return self

    @property
    def local_address(self) -> Address:
        return self._local

    def send(self, data: bytes, addr: Address) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self._send_failed(addr, ConnectionError("transport closed"))
            return
        host = addr[0]
        if host not in _LITERALS:
            if not _is_ip_literal(host):
                # sendto() would resolve the name synchronously and block the loop
                self._send_failed(addr, ValueError("address must be an IP literal (resolve first)"))
                return
            if len(_LITERALS) >= _LITERALS_MAX:
                _LITERALS.clear()
            _LITERALS.add(host)
        try:
            transport.sendto(data, addr)
        except (OSError, ValueError) as exc:
            self._send_failed(addr, exc)
            return
        self.counters["sent"] += 1
        if self._observers:
            self._report("out", self._local, addr, data)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            # The loop closes the socket in a callback it schedules now: let it run, so
            # that a node restarted at once can bind the same port again.
            await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"<UdpTransport {self._local}>"


class _TcpConnection(asyncio.Protocol):
    def __init__(self, owner: TcpTransport) -> None:
        self.owner = owner
        self.framer = StreamFramer(owner.max_size)
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.local: Address = ("", 0)
        self.last_activity = asyncio.get_running_loop().time()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = _addr(transport.get_extra_info("peername"))
        self.local = _addr(transport.get_extra_info("sockname"))
        self.owner._connected(self)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        self.last_activity = asyncio.get_running_loop().time()
        framer = self.framer
        framer.feed(data)
        while self.transport is not None:
            pings = framer.pings
            try:
                msg = framer.next_message()
            except SipParseError as exc:
                owner._framing_error(self, exc)
                if exc.head is None:  # cannot resynchronise: close
                    self.close()
                    return
                continue
            if framer.pings != pings and not self.transport.is_closing():
                # RFC 5626 §4.4.1: a CRLF ping gets a CRLF pong (a client using
                # keep-alives takes a missing one for a dead flow and reconnects)
                self.transport.write(b"\r\n" * (framer.pings - pings))
                owner.counters["keepalive_pongs"] += framer.pings - pings
            if msg is None:
                return
            owner.counters["received"] += 1
            owner._report("in", self.peer, self.local, msg)
            owner._deliver(msg, self.peer)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("connection closed")
        self.transport.write(data)
        self.last_activity = asyncio.get_running_loop().time()
        self.owner.counters["sent"] += 1
        self.owner._report("out", self.local, self.peer, data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.owner._lost(self)


class TcpTransport(_BaseTransport):
    """A TCP listener plus outgoing connections; messages to an address reuse the
    connection to it (incoming or outgoing), else a new one is opened."""

    __slots__ = (
        "__weakref__",
        "_connecting",
        "_conns",
        "_error_handler",
        "_local",
        "_observers",
        "_receiver",
        "_server",
        "_sweeper",
        "_tasks",
        "counters",
        "idle_timeout",
        "max_connections",
        "max_size",
        "owner",
        "respond_to_source",
    )
    name = "tcp"
    reliable = True

    def __init__(
        self,
        owner: str = "",
        max_size: int = DEFAULT_MAX_SIZE,
        max_connections: int = 1024,
        idle_timeout: float | None = 600.0,
    ) -> None:
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout: must be a positive number of seconds or None")
        self._init_common(owner, max_size)
        self.max_connections = max_connections
        # a connection silent this long is closed (a peer holding sockets open
        # without sending must not exhaust max_connections)
        self.idle_timeout = idle_timeout
        self._sweeper: asyncio.TimerHandle | None = None
        self._server: asyncio.base_events.Server | None = None
        self._conns: dict[Address, _TcpConnection] = {}
        self._connecting: dict[Address, list[bytes]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._local: Address = ("", 0)

    @classmethod
    async def create(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        owner: str = "",
        max_size: int = DEFAULT_MAX_SIZE,
        max_connections: int = 1024,
        idle_timeout: float | None = 600.0,
    ) -> TcpTransport:
        self = cls(owner, max_size, max_connections, idle_timeout)
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = await loop.create_server(
            lambda: _TcpConnection(self), host, port, family=family, reuse_address=True
        )
        self._local = _addr(self._server.sockets[0].getsockname())
        if idle_timeout is not None:
            self._sweeper = loop.call_later(idle_timeout / 2, self._sweep)
        return self

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        limit = loop.time() - self.idle_timeout
        for conn in list(set(self._conns.values())):
            if conn.last_activity < limit:
                self.counters["idle_closed"] += 1
                conn.close()
        self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)

    @property
    def local_address(self) -> Address:
        return self._local

    @property
    def connections(self) -> int:
        return len(self._conns)

    def has_connection(self, addr: Address) -> bool:
        """Whether a connection to `addr` is open (or being opened)."""
        addr = _addr(addr)
        return addr in self._conns or addr in self._connecting

    def _connected(self, conn: _TcpConnection) -> None:
        if len(self._conns) >= self.max_connections:
            # a connection flood must not exhaust us: refuse the newcomer
            self.counters["refused_connections"] += 1
            log.info("sip tcp: refusing %s: %d connections open", conn.peer, len(self._conns))
            conn.close()
            return
        self._conns[conn.peer] = conn
        self.counters["connections"] += 1

    def _lost(self, conn: _TcpConnection) -> None:
        for addr in [a for a, c in self._conns.items() if c is conn]:
            del self._conns[addr]

    def _framing_error(self, conn: _TcpConnection, exc: SipParseError) -> None:
        from imsaka.sip.proxy import error_response_bytes

        self.counters["framing_errors"] += 1
        log.info("sip tcp: framing error from %s: %s", conn.peer, exc)
        head = exc.head if exc.head is not None else bytes(conn.framer._buf[: self.max_size])
        answer = error_response_bytes(head, exc.status, exc.reason)
        if answer is not None:
            try:
                conn.write(answer)
            except ConnectionError:
                pass

    def send(self, data: bytes, addr: Address) -> None:
        addr = _addr(addr)
        conn = self._conns.get(addr)
        if conn is not None:
            try:
                conn.write(data)
            except ConnectionError as exc:
                self._send_failed(addr, exc)
            return
        pending = self._connecting.get(addr)
        if pending is not None:
            pending.append(data)
            return
        self._connecting[addr] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, addr: Address) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _TcpConnection(self), addr[0], addr[1])
        except OSError as exc:
            self._connecting.pop(addr, None)
            self._send_failed(addr, exc)
            return
        queued = self._connecting.pop(addr, [])
        # the connection is registered under its peer address by connection_made
        self._conns[addr] = conn
        for data in queued:
            try:
                conn.write(data)
            except ConnectionError as exc:
                self._send_failed(addr, exc)
                return

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def __repr__(self) -> str:
        return f"<TcpTransport {self._local} connections={len(self._conns)}>"
