"""What crossed a socket: the record every transport hands to its observers.

SIP transports, the Diameter node and the IPsec backends call their observers with a
`WireEvent` for every datagram or stream segment they send or receive, so that the
ladder printer and the pcap writer (imsaka.trace) see the real bytes on the wire.
Observers must be cheap and must not raise; transports call them only when at
least one is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class WireEvent:
    """One datagram (UDP) or one framed message (TCP) as it left or reached a socket.

    `payload` is exactly the transport payload: for ESP-in-UDP it is the ESP packet
    (SPI first), not the decrypted SIP; `inner` may carry the decrypted SIP bytes for
    the ladder (never keys).
    """

    time: float  # time.time() when sent or received
    direction: str  # "out" or "in", as seen by the socket owner
    transport: str  # "udp" or "tcp"
    src: Address
    dst: Address
    payload: bytes
    protocol: str  # "sip", "diameter" or "esp"
    owner: str = ""  # the function that owns the socket: "ue", "pcscf", "icscf", "scscf", "hss"
    inner: bytes | None = None  # decrypted payload of an ESP packet, for the ladder


Observer = Callable[[WireEvent], None]


class Observable:
    """Mix-in: a list of observers and a cheap `_emit`."""

    __slots__ = ()

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: Observer) -> None:
        self._observers.remove(observer)

    def _emit(self, event: WireEvent) -> None:
        for observer in self._observers:
            observer(event)
