"""OPTIONS probes of a next hop that went silent (RFC 3261 §11; RFC 3263 §4.3).

An I-CSCF passes over an S-CSCF instance that left a request unanswered. Rather than
trying it again with a user's request after a fixed time (which then waits out the
silence once more if it is still down), it asks the instance itself: an OPTIONS every
`interval` seconds, each given up on (and sent no more) when the next one goes. The
first final response the instance sends, whatever its status, shows that it runs
again (RFC 3261 §11.2: a server answers OPTIONS as it would the request itself); the
endpoint's own 408 or 503 shows nothing. Edge code: the endpoint's client
transactions and the loop's timers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from imsaka.sip import Request, Response

log = logging.getLogger("imsaka.cscf.probe")

Address = tuple[str, int]


def options_request(target: Address, local_name: str, cseq: int, call_id: str) -> Request:
    """An OPTIONS to the node at `target` itself (no user part: RFC 3261 §11.1)."""
    host, port = target
    uri = f"sip:{host}:{port}" if ":" not in host else f"sip:[{host}]:{port}"
    headers = [
        ("Max-Forwards", "70"),
        ("From", f"<sip:{local_name}>;tag={os.urandom(4).hex()}"),
        ("To", f"<{uri}>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} OPTIONS"),
        ("Accept", "application/sdp"),
        ("Content-Length", "0"),
    ]
    return Request("OPTIONS", uri, headers, b"")


class _Probe:
    __slots__ = ("call_id", "cseq", "sent", "timer", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.call_id = f"probe-{os.urandom(8).hex()}"
        self.cseq = 0
        self.sent: tuple | None = None  # the open OPTIONS (its client transaction key)
        self.timer: asyncio.TimerHandle | None = None


class Prober:
    """Probes each address given to `start` until it answers, then calls `on_up(address)`
    once and stops."""

    def __init__(
        self,
        endpoint: Any,
        local_name: str,
        interval: float,
        on_up: Callable[[Address], None],
        counters: Counter[str],
    ) -> None:
        self.endpoint = endpoint
        self.local_name = local_name
        self.interval = interval
        self._on_up = on_up
        self.counters = counters
        self._probes: dict[Address, _Probe] = {}

    def probing(self, address: Address) -> bool:
        return address in self._probes

    def start(self, address: Address, transport: Any) -> None:
        """Probe `address` over the SIP `transport` until it answers (nothing new if it
        is being probed)."""
        if address in self._probes or self.interval <= 0:
            return
        probe = self._probes[address] = _Probe(transport)
        # (the first one a little later: the request that found it silent was just
        # given up on, and the instance may be restarting)
        probe.timer = asyncio.get_running_loop().call_later(self.interval, self._send, address)

    def _send(self, address: Address) -> None:
        probe = self._probes.get(address)
        if probe is None or getattr(self.endpoint, "closed", False):
            return
        self._drop_open(probe)
        probe.cseq += 1
        request = options_request(address, self.local_name, probe.cseq, probe.call_id)
        self.counters["scscf_probe_sent"] += 1
        try:
            probe.sent = self.endpoint.send_request_callback(
                request, address, probe.transport, lambda r: self._answered(address, probe, r)
            )
        except Exception as exc:  # (no transport: tried again at the next interval)
            log.warning("OPTIONS probe to %s:%d not sent: %s", address[0], address[1], exc)
        probe.timer = asyncio.get_running_loop().call_later(self.interval, self._send, address)

    def _answered(self, address: Address, probe: _Probe, response: Response) -> None:
        if self._probes.get(address) is not probe:
            return
        probe.sent = None
        if response.to.tag is None and response.status in (408, 503):
            # the endpoint's own answer (Timer F, a transport error): still silent
            return
        self.counters["scscf_probe_answered"] += 1
        self._stop(address)
        self._on_up(address)

    def _drop_open(self, probe: _Probe) -> None:
        if probe.sent is not None:
            abandon = getattr(self.endpoint, "abandon_request", None)
            if abandon is not None:
                abandon(probe.sent)
            probe.sent = None

    def _stop(self, address: Address) -> None:
        probe = self._probes.pop(address, None)
        if probe is None:
            return
        if probe.timer is not None:
            probe.timer.cancel()
        self._drop_open(probe)

    def close(self) -> None:
        for address in list(self._probes):
            self._stop(address)
