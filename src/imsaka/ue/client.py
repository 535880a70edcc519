"""UE simulator, asyncio edge: sockets, SIP client transactions and the UE's SA set.

Moves what `imsaka.ue.core.UeRegistration` decides onto the wire (STYLE.md rule 9):
clear REGISTERs over a UDP socket at the UE's unprotected port (TS 24.229 §5.1.1.2.1),
protected ones over ESP from port-c to the P-CSCF's port-s through the IPsec backend
(`imsaka.ipsec.backend`, TS 33.203 §7.1); RFC 3261 §17 client transactions
(`imsaka.sip.transaction`) retransmit over UDP and time out with Timer F.

The reg-event subscription of TS 24.229 §5.1.1.3: the SUBSCRIBE leaves like any
protected request (port-c to the P-CSCF's port-s, over the newest established set);
the S-CSCF's NOTIFYs arrive over the SA at the UE's port-s and are answered through a
server transaction back over the same SA pair (port-s to the P-CSCF's port-c).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imsaka.aka.isim import Isim, accept_any_amf
from imsaka.aka.milenage import Milenage
from imsaka.aka.sqn import SqnArray
from imsaka.ipsec.backend import ProtectedMessage, create_backend
from imsaka.ipsec.sa import SaSet, SaState, SecurityAssociationTable
from imsaka.sip import Request, SipParseError, parse_message
from imsaka.sip.transaction import (
    RequestReceived,
    ResponseReceived,
    TimerConfig,
    TransactionLayer,
    TransactionTimeout,
    Transmit,
)
from imsaka.sip.transport import UdpTransport
from imsaka.ue.config import UeConfig
from imsaka.ue.core import (
    NETWORK_DEREGISTERED,
    Deregistered,
    Event,
    NetworkDeregistered,
    Registered,
    RegistrationFailed,
    RegStateNotified,
    SaParameters,
    SecurityAssociationsEstablished,
    SecurityAssociationsReleased,
    SendRequest,
    SendResponse,
    SetUpSecurityAssociations,
    Subscribed,
    SubscriptionEnded,
    UeRegistration,
)
from imsaka.ue.regevent import SubState
from imsaka.wire import Observer

log = logging.getLogger(__name__)

__all__ = ["UeClient", "UeResult"]


@dataclass(slots=True)
class UeResult:
    """How a registration (or de-registration) attempt ended."""

    ok: bool
    status: int = 0
    reason: str = ""
    expires: int = 0
    service_route: tuple[str, ...] = ()
    associated_uris: tuple[str, ...] = ()
    protected: bool = False
    events: list[Any] = field(default_factory=list, repr=False)


_CRLF = b"\r\n"
# The timers of every UE's transaction layer (one frozen object for all the UEs of a
# process) and its wake-up grid of T1/10 (`TimerConfig.wake_up_at`).
_TIMERS = TimerConfig()
_TICK = _TIMERS.t1 / 10


def _ignore_datagram(data: bytes, source: tuple[str, int], transport: Any) -> None:
    pass


def _wake_one(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _time_out(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(UeResult(False, 408, "no final answer in time"))


class UeClient:
    """One simulated UE on loopback (or any address) towards one P-CSCF."""

    def __init__(
        self,
        config: UeConfig,
        *,
        observers: Iterable[Observer] = (),
        key_file: str | Path | None = None,
        rng: random.Random | None = None,
        name: str = "ue",
        timers: TimerConfig | None = None,
    ) -> None:
        """`timers`: the SIP timers of the UE's transactions (RFC 3261 Table 4; Timer
        F = 64·T1 ends a REGISTER the network never answers)."""
        if config.transport != "udp":
            raise ValueError("transport: the UE simulator speaks UDP towards the P-CSCF")
        self.config = config
        self.name = name
        self._observers = list(observers)
        self._key_file = key_file
        self._rng = rng or random.SystemRandom()
        milenage = (
            Milenage(config.k, op=config.op) if config.op else Milenage(config.k, opc=config.opc)
        )
        sqn_array = SqnArray()
        if config.sqn:
            # Seed SQN_MS: SEQ_MS of every IND slot at the configured SQN's SEQ.
            seq = config.sqn >> sqn_array.ind_bits
            sqn_array = SqnArray(entries=[seq] * (1 << sqn_array.ind_bits))
        self.isim = Isim(milenage, sqn_array, accept_amf=config.amf_accept or accept_any_amf)
        self.table = SecurityAssociationTable("ue")
        self.backend: Any = None
        self.udp: UdpTransport | None = None
        self._timers = timers = timers or _TIMERS
        self.transactions = TransactionLayer(config=timers)
        self.core: UeRegistration | None = None
        self._timer: asyncio.TimerHandle | None = None
        # The deadline `_timer` is armed for (uvloop's call_at may return a Handle
        # without when()): re-arming for the same deadline is skipped.
        self._timer_at: float | None = None
        self._waiter: asyncio.Future | None = None
        self._sets: dict[int, SaSet] = {}  # by spi_uc (our inbound at port-c)
        # Client transactions open over a set, by transaction key: a set a challenged
        # re-registration replaced goes only once they have ended (TS 24.229 §5.1.1.5.1:
        # "after all SIP transactions that use the old set ... are completed").
        self._open_on: dict[tuple, SaSet] = {}
        self._offered_spis: tuple[int, int] | None = None
        self._port_s = 0
        # Protected ports bound for the current offer (port-c, port-s), held by the
        # backend until the next offer replaces them or the client closes.
        self._held_c = 0
        self._held_s = 0
        self.events: list[Event] = []  # of the current (or last) register/deregister run
        self.on_event: Callable[[Event], None] | None = None
        # The event of the last network-initiated de-registration (§5.1.1.7), "" if none.
        self.network_event = ""
        # Futures of `wait_*` callers, woken by reg-event events (None: nobody waits,
        # as in a load test: no list per UE).
        self._watchers: list[asyncio.Future] | None = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        cfg = self.config
        self.udp = await UdpTransport.create(cfg.local_host, cfg.local_port, owner=self.name)
        for obs in self._observers:
            self.udp.add_observer(obs)
        self.udp.set_receiver(self._clear_datagram)
        self.backend = create_backend(
            "userspace",
            self.table,
            on_message=self._protected,
            owner=self.name,
            key_file=self._key_file,
        )
        for obs in self._observers:
            self.backend.add_observer(obs)
        await self.backend.start()
        self.core = UeRegistration(
            cfg,
            self.isim,
            local=self.udp.local_address,
            protected_ports=self._protected_ports,
            spi_allocator=self._allocate_spis,
            rng=self._rng,
        )

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        if self.backend is not None:
            await self.backend.close()
            self.backend.on_message = None
        if self.udp is not None:
            await self.udp.close()
            self.udp.set_receiver(_ignore_datagram)
        if self.core is not None:
            self.core.detach()
        self._wake()  # a `wait_*` caller sees the state as it is now
        # The callbacks above were bound methods of this client (client → socket →
        # callback → client): cut, a closed UE is freed by reference counting at once
        # instead of waiting as cyclic garbage for a full collection, which in a load
        # test holding thousands of UEs costs more than the registration itself.

    async def __aenter__(self) -> UeClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def local_address(self) -> tuple[str, int]:
        assert self.udp is not None
        return self.udp.local_address

    # ---------------------------------------------------------------- allocation

    def _protected_ports(self) -> tuple[int, int]:
        # Bound when offered and kept: a port the kernel merely named free (bound and
        # closed again) can be taken by another socket before the SA set binds it
        # after the 401, which happens at hundreds of UEs per second on one host.
        host = self.config.local_host
        backend = self.backend
        old_c = self._held_c
        self._held_c = port_c = backend.hold_port(host, self.config.port_c or 0)
        if not self._held_s:
            # port-c is new for every offer; port-s is the UE's for its whole life
            # (TS 24.229 §5.1.1.4.2, TS 34.229-1 §8.2), new initial registrations
            # included: it is the contact, and a registration whose 200 the UE never
            # saw is then replaced by the next one instead of left beside it.
            self._held_s = self._port_s = backend.hold_port(host, self.config.port_s or 0)
        if old_c:
            backend.release_port(old_c)
        return port_c, self._port_s

    def _allocate_spis(self) -> tuple[int, int]:
        if self._offered_spis is not None and not any(
            self.table.lookup_inbound(s) for s in self._offered_spis
        ):
            self.table.release_local(self._offered_spis)
        spis, _pair = self.table.allocate_local()
        self._offered_spis = spis
        return spis

    # ---------------------------------------------------------------- public API

    async def register(self, timeout: float = 40.0) -> UeResult:
        """Run an initial registration (packets 1, 7, 8, 13) until 200 or failure."""
        assert self.core is not None
        return await self._run(self.core.register, timeout)

    async def reregister(self, timeout: float = 40.0) -> UeResult:
        """Refresh now (what the re-registration timer does at half the expiry,
        TS 24.229 §5.1.1.4): a protected REGISTER with a new Security-Client."""
        assert self.core is not None
        return await self._run(self.core.register, timeout)

    async def deregister(self, timeout: float = 40.0) -> UeResult:
        """De-register (Expires 0 over the SAs, TS 24.229 §5.1.1.6)."""
        assert self.core is not None
        return await self._run(self.core.deregister, timeout)

    async def _run(self, start: Callable[[float], list[Event]], timeout: float) -> UeResult:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # A new list per run: a UE kept registered for hours holds its last run's
        # events (and the REGISTERs in them), not every one it ever sent.
        events = self.events = []
        now = loop.time()
        self._apply(start(now))
        self._drain(now)
        # One timer handle ends the wait (cheaper than wait_for + shield per attempt).
        timer = loop.call_later(timeout, _time_out, waiter)
        try:
            result: UeResult = await waiter
        finally:
            timer.cancel()
            self._waiter = None
        result.events = events[:]
        return result

    # ---------------------------------------------------------------- inputs

    def _clear_datagram(self, data: bytes, source: tuple[str, int], transport: Any) -> None:
        self._incoming(data, ("clear", source))

    def _protected(self, msg: ProtectedMessage) -> None:
        self._incoming(msg.data, ("sa", msg.sa_set), msg.sa)

    def _incoming(self, data: bytes, source: Any, arrived_on: Any = None) -> None:
        if not data or (data[0] in _CRLF and not data.strip(b"\r\n")):
            return  # keep-alive (a SIP message starts with a letter: no copy for those)
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            log.info("%s: dropped unparsable message: %s", self.name, exc)
            return
        now = asyncio.get_running_loop().time()
        if type(msg) is Request:
            self._request(msg, source, arrived_on, now)
        else:
            self.transactions.receive_response(msg, source, now)
        self._drain(now)

    def _request(self, request: Request, source: Any, arrived_on: Any, now: float) -> None:
        # The UE serves the NOTIFYs of its reg-event subscription; no sessions yet.
        if request.method != "NOTIFY":
            log.info("%s: dropped request %s", self.name, request.method)
            return
        core = self.core
        if arrived_on is None and core is not None and core.sa is not None:
            # Registered over SAs: a NOTIFY in the clear is nobody we listen to.
            log.info("%s: dropped NOTIFY in the clear while protected", self.name)
            return
        # The answer goes back the way the NOTIFY came: over the SA pair it arrived on
        # (from our port-s to the P-CSCF's port-c, TS 24.229 §5.1.1.5.1 NOTE 2).
        reply_to = source if arrived_on is None else ("reply", arrived_on)
        try:
            self.transactions.receive_request(request, source, now, reply_to=reply_to)
        except SipParseError as exc:
            log.info("%s: dropped NOTIFY: %s", self.name, exc)

    def _drain(self, now: float) -> None:
        """Act on the transaction layer's events until none is left, then arm the timer
        once. The core's answers are applied in the same loop: what they send comes back
        here as Transmit (one pass and one timer re-arm per input, not one per event)."""
        core = self.core
        assert core is not None
        next_event = self.transactions.next_event
        later: list[Event] | None = None
        while True:
            while (ev := next_event()) is not None:
                kind = type(ev)
                if kind is Transmit:
                    self._transmit(ev.data, ev.destination)
                elif kind is ResponseReceived:
                    if ev.response.status >= 200:
                        if self._open_on:
                            self._transaction_ended(ev.key, now)
                        self._apply(core.receive(ev.response, now))
                elif kind is TransactionTimeout:
                    if self._open_on:
                        self._transaction_ended(ev.key, now)
                    self._apply(core.transaction_timeout(now, ev.key[2], ev.key[1]))
                elif kind is RequestReceived and ev.key is not None:
                    later = self._serve(ev.key, ev.request, now, later)
            if later is None:
                break
            # What a NOTIFY decided happens once its answer went out (above): an SA
            # set released before would have taken the 200 OK with it.
            events, later = later, None
            self._apply(events)
        self._arm()

    def _serve(
        self, key: tuple, request: Request, now: float, later: list[Event] | None
    ) -> list[Event] | None:
        assert self.core is not None
        rest: list[Event] = []
        for ev in self.core.receive_request(request, now):
            if type(ev) is SendResponse:
                self.transactions.respond(key, ev.response, now)
            else:
                rest.append(ev)
        if not rest:
            return later
        return rest if later is None else later + rest

    def _transmit(self, data: bytes, destination: Any) -> None:
        kind, where = destination
        if kind == "clear":
            self.send_clear(data, where)
        elif kind == "reply":
            arrived_on: Any = where
            if arrived_on.sa_set.state is SaState.REMOVED:
                self._reply_over_newer_set(arrived_on, data)
                return
            self.send_protected(arrived_on.sa_set.reply_sa(arrived_on), data)
        else:
            sa_set: SaSet = where
            if sa_set.state is SaState.REMOVED:
                log.info("%s: not sent: SA set #%d removed", self.name, sa_set.id)
                return
            self.send_protected(sa_set.client_sa(), data)

    def _reply_over_newer_set(self, arrived_on: Any, data: bytes) -> None:
        """An answer sent again (its request came once more) after the set the request
        first came over went: a re-registration replaced it, and the P-CSCF, which knows
        the new set, sent the request again over that one. The answer leaves from the
        same port over the established set (the P-CSCF takes it over any set of ours)."""
        port = arrived_on.dst[1]
        newer = self._established_set()
        if newer is None or port not in newer.outbound:
            log.info("%s: answer not sent: SA set #%d removed", self.name, arrived_on.sa_set.id)
            return
        self.send_protected(newer.outbound[port], data)

    # Every send goes through these two (a test injects loss here).
    def send_clear(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.udp is not None
        self.udp.send(data, addr)

    def send_protected(self, sa: Any, data: bytes) -> bool:
        return self.backend.send(sa, data)

    def _arm(self) -> None:
        at = self.transactions.next_deadline()
        core_at = self.core.next_deadline() if self.core is not None else None
        if core_at and (not at or core_at < at):
            at = core_at
        if not at:
            at = None
        armed = self._timer_at
        if self._timer is not None:
            if at is not None and armed is not None and at <= armed <= at + _TICK:
                return  # already armed for it (most drains change no deadline)
            self._timer.cancel()
            self._timer = None
        if at is not None:
            # the UEs of one process (a load test) due within one step share a wake-up
            at = self._timers.wake_up_at(at)
        self._timer_at = at
        if at is not None:
            self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = asyncio.get_running_loop().time()
        self.transactions.handle_timer(now)
        self._drain(now)
        if self.core is not None:
            events = self.core.handle_timer(now)
            if events:
                self._apply(events)
                self._drain(now)

    # ---------------------------------------------------------------- core events

    def _apply(self, events: list[Event]) -> None:
        """Carry out the core's events; what they send is queued in the transaction
        layer (the caller drains it)."""
        now = asyncio.get_running_loop().time()
        for ev in events:
            self.events.append(ev)
            if self.on_event is not None:
                self.on_event(ev)
            if isinstance(ev, SendRequest):
                if ev.protected:
                    if ev.request.method == "REGISTER":
                        sa_set = self._current_set()
                    else:
                        # Other requests only over an established set (TS 24.229
                        # §5.1.2A.1.1): the newest one after a re-registration.
                        sa_set = self._established_set()
                    if sa_set is None:
                        if ev.request.method != "REGISTER":
                            log.info("%s: %s not sent: no SA set", self.name, ev.request.method)
                            continue
                        self._finish(UeResult(False, 0, "no SA set to protect the REGISTER"))
                        continue
                    tx = self.transactions.send_request(ev.request, ("sa", sa_set), now)
                    self.table.transaction_started(sa_set)
                    self._open_on[tx.key] = sa_set
                else:
                    self.transactions.send_request(ev.request, ("clear", self.config.pcscf), now)
            elif isinstance(ev, SetUpSecurityAssociations):
                self._install(ev.sa, now)
            elif isinstance(ev, SecurityAssociationsEstablished):
                s = self._sets.get(ev.sa.spi_uc)
                if s is not None and s.state is SaState.TEMPORARY:
                    self.table.registered(s, expires=max(ev.lifetime - 30.0, 0.0), now=now)
                    # The 200 OK that established it came over it: a set it replaced
                    # goes now, or once the transactions open over it have ended.
                    self.table.message_received(s, now=now)
                elif s is not None and s.state is SaState.ESTABLISHED:
                    self.table.reregistered(s, expires=max(ev.lifetime - 30.0, 0.0), now=now)
                self.backend.sync()
            elif isinstance(ev, SecurityAssociationsReleased):
                s = self._sets.pop(ev.sa.spi_uc, None)
                if s is not None:
                    log.info("%s: SA set #%d released: %s", self.name, s.id, ev.reason)
                if s is not None and s.state not in (SaState.REMOVED, SaState.DRAINING):
                    if ev.reason.startswith(NETWORK_DEREGISTERED):
                        # Ended by the terminated NOTIFY that came over it (TS 24.229
                        # §5.1.1.7): its retransmissions, if our 200 was lost, still get
                        # the 200 over the set until that transaction ends (Timer J).
                        until = now + 64 * self._timers.t1
                        self.table.answers_only(s, until=until, now=now, reason=ev.reason)
                    else:
                        self.table.remove(s, now=now, reason=ev.reason)
                    self.backend.sync()
            elif isinstance(ev, Registered):
                self._finish(
                    UeResult(
                        True,
                        200,
                        "registered",
                        ev.expires,
                        ev.service_route,
                        ev.associated_uris,
                        ev.protected,
                    )
                )
            elif isinstance(ev, Deregistered):
                # After the NOTIFY that ended our contact the de-registration stands
                # whatever answer the de-REGISTER got (a failover's refusal, say).
                reason = "de-registered (reg-event NOTIFY)" if ev.notified else "de-registered"
                self._finish(UeResult(ev.status < 300 or ev.notified, ev.status, reason))
            elif isinstance(ev, RegistrationFailed):
                self._finish(UeResult(False, ev.status, ev.reason))
            elif isinstance(ev, NetworkDeregistered):
                self.network_event = ev.event  # (the core logged it)
                if not ev.reregistering:
                    self._finish(UeResult(False, 0, str(ev)))
                self._wake()
            elif isinstance(ev, (Subscribed, SubscriptionEnded, RegStateNotified)):
                self._wake()

    def _transaction_ended(self, key: tuple, now: float) -> None:
        """A client transaction over a set got its final answer or timed out: a set
        draining (replaced by a newer one) goes once none is open over it."""
        sa_set = self._open_on.pop(key, None)
        if sa_set is not None and sa_set.state is not SaState.REMOVED:
            self.table.transaction_finished(sa_set, now=now)
            if sa_set.state is SaState.REMOVED:  # the last one over a draining set
                self.backend.sync()

    def _install(self, sa: SaParameters, now: float) -> None:
        # One table contact: this UE's registration flow towards its P-CSCF.
        s = self.table.create_temporary_from(("ue", sa.pcscf_host), sa, now=now)
        log.info(
            "%s: SA set #%d set up (spi-uc %d, spi-us %d)", self.name, s.id, sa.spi_uc, sa.spi_us
        )
        self._offered_spis = None
        self._sets[sa.spi_uc] = s
        self.backend.sync()

    def _established_set(self) -> SaSet | None:
        best = None
        for s in self._sets.values():
            if s.state is SaState.ESTABLISHED and (best is None or s.id > best.id):
                best = s
        return best

    def _current_set(self) -> SaSet | None:
        """The newest live set: the temporary one while a challenge is answered, else the
        established one (TS 33.203 §7.4)."""
        temporary = established = None
        for s in self._sets.values():
            state = s.state
            if state is SaState.TEMPORARY:
                if temporary is None or s.id > temporary.id:
                    temporary = s
            elif state is SaState.ESTABLISHED and (established is None or s.id > established.id):
                established = s
        return temporary if temporary is not None else established

    # ---------------------------------------------------------------- reg event

    @property
    def subscribed(self) -> bool:
        """The reg-event subscription is active and its first NOTIFY was taken."""
        sub = self.core.subscription if self.core is not None else None
        return sub is not None and sub.state is SubState.ACTIVE and sub.version >= 0

    async def wait_subscribed(self, timeout: float = 5.0) -> bool:
        """Wait until `subscribed` (True), or it cannot be any more (no subscription and
        none planned, nor a registration under way whose 2xx would make one) or
        `timeout` passed."""
        return (
            await self._wait_for(lambda: self.subscribed or not self._may_subscribe(), timeout)
            and self.subscribed
        )

    def _may_subscribe(self) -> bool:
        """Whether a reg-event subscription is open, planned, or follows a registration
        under way (one made anew after a refused SUBSCRIBE, say: TS 24.229 §5.1.1.3)."""
        core = self.core
        if core is None:
            return False
        if core.subscription is not None or core.resubscribe_at is not None:
            return True
        return core.config.subscribe_reg_event and core.registering

    async def wait_network_deregistration(self, timeout: float = 5.0) -> str:
        """Wait for a network-initiated de-registration; its event ("" at the timeout)."""
        await self._wait_for(lambda: bool(self.network_event), timeout)
        return self.network_event

    async def _wait_for(self, done: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not done():
            left = end - loop.time()
            if left <= 0:
                return False
            waiter = loop.create_future()
            if self._watchers is None:
                self._watchers = []
            self._watchers.append(waiter)
            handle = loop.call_later(left, _wake_one, waiter)
            try:
                await waiter
            finally:
                handle.cancel()
                if self._watchers is not None and waiter in self._watchers:
                    self._watchers.remove(waiter)
        return True

    def _wake(self) -> None:
        watchers, self._watchers = self._watchers, None
        for waiter in watchers or ():
            _wake_one(waiter)

    def _finish(self, result: UeResult) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(result)
