"""The protected ports as `imsaka.sip.transport.SipTransport`s (TS 24.229 §5.1.1.5.1 NOTE 2).

`ProtectedSipTransports(backend)` takes over the backend's delivery and hands each
protected message to the `ProtectedSipTransport` of the local port it arrived at, so
the SIP endpoint (transactions, proxying) can run over the SAs like over a UDP socket.

Which SA carries `send(data, addr)` from local port P: the reply SA of the set that
last delivered a message from `addr` at P, if that set can still send (a response goes
back over the SA pair its request came on); otherwise the newest usable set with an
outbound SA from P to `addr` (established before temporary before superseded or
draining). `respond_to_source` is True: the SA pairs fix the ports, so responses go to
the packet's source, not to the Via sent-by.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from imsaka.ipsec.backend import ProtectedMessage, ProtectedTransport, _norm
from imsaka.ipsec.errors import LocalProtocolError
from imsaka.ipsec.sa import Address, SaSet, SaState, SecurityAssociation

__all__ = ["ProtectedSipTransport", "ProtectedSipTransports"]

log = logging.getLogger("imsaka.ipsec.sip_transport")

Receiver = Callable[[bytes, Address, object], None]
ErrorHandler = Callable[[Address, Exception], None]

_PREFERENCE = {
    SaState.ESTABLISHED: 0,
    SaState.TEMPORARY: 1,
    SaState.SUPERSEDED: 2,
    SaState.DRAINING: 3,
}


class ProtectedSipTransport:
    """One protected port (port-c or port-s) of this node, as a SIP transport."""

    name = "udp"
    reliable = False
    respond_to_source = True

    def __init__(self, group: ProtectedSipTransports, local: Address) -> None:
        self._group = group
        self._local = local
        self._receiver: Receiver | None = None
        self._on_error: ErrorHandler | None = None
        self._last_set: dict[Address, SaSet] = {}
        self.closed = False

    @property
    def local_address(self) -> Address:
        return self._local

    def set_receiver(self, receiver: Receiver) -> None:
        self._receiver = receiver

    def set_error_handler(self, handler: ErrorHandler) -> None:
        self._on_error = handler

    def route(self, addr: Address) -> SecurityAssociation | None:
        """The outbound SA that `send(data, addr)` would use, or None."""
        peer = (_norm(addr[0]), addr[1])
        last = self._last_set.get(peer)
        if last is not None and last.live and last.usable_for_sending():
            sa = last.outbound.get(self._local[1])
            if sa is not None:
                return sa
        best: tuple[int, float, SecurityAssociation] | None = None
        for sa_set in self._group.backend.table.sets():
            sa = sa_set.outbound.get(self._local[1])
            if sa is None or (_norm(sa.dst[0]), sa.dst[1]) != peer:
                continue
            if not sa_set.usable_for_sending():
                continue
            key = (_PREFERENCE.get(sa_set.state, 9), -sa_set.created)
            if best is None or key < best[:2]:
                best = (key[0], key[1], sa)
        return None if best is None else best[2]

    def send(self, data: bytes, addr: Address) -> None:
        if self.closed:
            self._error(addr, LocalProtocolError("protected transport: closed"))
            return
        sa = self.route(addr)
        if sa is None:
            self._error(addr, LocalProtocolError(f"no SA from port {self._local[1]} to {addr}"))
            return
        if not self._group.backend.send(sa, data):
            self._error(addr, LocalProtocolError(f"not sent over SA 0x{sa.spi:08x}"))

    def _error(self, addr: Address, exc: Exception) -> None:
        if self._on_error is not None:
            self._on_error(addr, exc)
        elif log.isEnabledFor(logging.INFO):
            log.info("protected send to %s failed: %s", addr, exc)

    def _deliver(self, msg: ProtectedMessage) -> None:
        self._last_set[(_norm(msg.peer[0]), msg.peer[1])] = msg.sa_set
        if len(self._last_set) > 4096:  # bounded: forget the oldest peers
            for key in list(self._last_set)[:1024]:
                del self._last_set[key]
        if self._receiver is not None:
            self._receiver(msg.data, msg.peer, self)

    async def close(self) -> None:
        self.closed = True
        self._group._detach(self)


class ProtectedSipTransports:
    """The per-port SIP transports of one backend; owns the backend's `on_message`.

    Messages for a port without a transport go to `fallback` (or are counted as
    ``no-sip-transport`` in the backend's drops).
    """

    def __init__(
        self,
        backend: ProtectedTransport,
        *,
        fallback: Callable[[ProtectedMessage], None] | None = None,
    ) -> None:
        self.backend = backend
        self.fallback = fallback
        self._by_port: dict[int, ProtectedSipTransport] = {}
        backend.on_message = self._dispatch

    def transport(self, local_ip: str, port: int) -> ProtectedSipTransport:
        """The transport for our protected `port` (created on first use)."""
        t = self._by_port.get(port)
        if t is None or t.closed:
            t = ProtectedSipTransport(self, (local_ip, port))
            self._by_port[port] = t
        return t

    def _detach(self, t: ProtectedSipTransport) -> None:
        if self._by_port.get(t.local_address[1]) is t:
            del self._by_port[t.local_address[1]]

    def _dispatch(self, msg: ProtectedMessage) -> None:
        t = self._by_port.get(msg.local[1])
        if t is not None:
            t._deliver(msg)
        elif self.fallback is not None:
            self.fallback(msg)
        else:
            self.backend._count("no-sip-transport", f"port {msg.local[1]}")
