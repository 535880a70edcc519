"""SIP transactions as explicit state tables (RFC 3261 §17, amended by RFC 6026).

Sans-I/O: nothing here reads a clock, opens a socket or sleeps. The transaction
layer is fed messages and `now`, and queues events (`Transmit`, `ResponseReceived`,
`RequestReceived`, `TransactionTimeout`, ...) that the asyncio edge
(imsaka.sip.endpoint) drains; it asks `next_deadline()` to arm one timer and calls
`handle_timer(now)` when it fires. Timers A–M are inputs of the tables below.

Four machines, one table each (`(state, input) -> (action, next state)`):
- INVITE client (§17.1.1, RFC 6026 §7.2: Accepted state, Timer M),
- non-INVITE client (§17.1.2),
- INVITE server (§17.2.1, RFC 6026 §7.1: Accepted state, Timer L),
- non-INVITE server (§17.2.2).
A network input that is not in a table is dropped and counted with a named reason;
a TU input that is not in a table (e.g. answering twice) raises LocalProtocolError.

Matching (§17.1.3, §17.2.3): responses by top-Via branch + CSeq method; requests by
branch + sent-by + method (ACK matches INVITE) when the branch has the magic cookie,
else by the RFC 2543 key (Request-URI, From tag, Call-ID, CSeq number, top Via; an
ACK also by the To tag the server sent).
"""

from __future__ import annotations

import heapq
import sys
from collections import Counter, deque
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar

from imsaka.sip._abnf import MAGIC_COOKIE
from imsaka.sip.compact import WirePacker
from imsaka.sip.errors import LocalProtocolError, SipParseError
from imsaka.sip.message import Message, Request, Response


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 Table 4 base values (seconds), the defaults between IM CN subsystem
    elements. `ims_ue()` gives the larger values TS 24.229 Table 7.7.1 applies at the
    UE over a radio bearer (T1 2 s, T2 16 s, T4 17 s: Timer F = 128 s, the value
    behind the 4-minute reg-await-auth)."""

    t1: float = 0.5
    """Round-trip estimate; A, E, G start at T1; B, F, H, J, L, M are 64*T1."""
    t2: float = 4.0
    """Cap of the non-INVITE request and INVITE response retransmit interval."""
    t4: float = 5.0
    """Maximum time a message stays in the network: Timers I and K."""
    timer_d: float = 32.0
    """Wait for response retransmissions after a non-2xx INVITE final (unreliable)."""
    timer_c: float = 180.0
    """An INVITE client transaction in Proceeding waits at most this long for a final
    response, re-armed by each provisional (the proxy's Timer C, §16.6 step 11 and
    §16.8: more than 3 minutes); without it a lost 2xx would leave it for ever."""

    @classmethod
    def ims_ue(cls) -> TimerConfig:
        return cls(t1=2.0, t2=16.0, t4=17.0)

    def wake_up_at(self, deadline: float) -> float:
        """When an edge wakes up for `deadline`: the first point of a grid of T1/10 not
        before it. A timer fires at most T1/10 late, never early, and the timers due
        within one grid step (a busy server ends one transaction per request) share
        one wake-up of the event loop."""
        tick = self.t1 / 10
        at = (deadline // tick + 1) * tick
        return at if at >= deadline else deadline  # (float rounding)

    def end_at(self, due: float) -> float:
        """When a timer that only ends a transaction (D, I, J, K, L, M) set for `due`
        fires: the first point of a grid of 2*T1 not before it. Such a timer keeps the
        state a little longer than its minimum and never shorter (it absorbs
        retransmissions, RFC 3261 §17.1.1.2, §17.2.2), and those of a whole grid step
        share one wake-up: a server at 100 requests/s woke 20 times a second on the
        T1/10 grid for them alone, once a second on this one."""
        grid = 2 * self.t1
        at = -(-due // grid) * grid
        return at if at >= due else due  # (float rounding)

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4", "timer_d", "timer_c"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or v <= 0:
                raise ValueError(f"{name}: must be a positive number of seconds")
        if self.t2 < self.t1:
            raise ValueError("t2: must not be below t1")


class State(Enum):
    # Members are singletons: hash by identity (Enum's own __hash__ is Python code and
    # the transition table is looked up with (state, input) on every event).
    __hash__ = object.__hash__

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Input(Enum):
    # Members are singletons: hash by identity (Enum's own __hash__ is Python code and
    # the transition table is looked up with (state, input) on every event).
    __hash__ = object.__hash__

    # from the network
    RECV_1XX = "1xx received"
    RECV_2XX = "2xx received"
    RECV_FINAL = "300-699 received"
    RECV_REQUEST = "request retransmission received"
    RECV_ACK = "ACK received"
    TRANSPORT_ERROR = "transport error"
    # from the TU (server side)
    SEND_1XX = "TU sends 1xx"
    SEND_2XX = "TU sends 2xx"
    SEND_FINAL = "TU sends 300-699"
    # timers
    TIMER_A = "Timer A"
    TIMER_B = "Timer B"
    TIMER_C = "Timer C"
    TIMER_D = "Timer D"
    TIMER_E = "Timer E"
    TIMER_F = "Timer F"
    TIMER_G = "Timer G"
    TIMER_H = "Timer H"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"


_TU_INPUTS = frozenset({Input.SEND_1XX, Input.SEND_2XX, Input.SEND_FINAL})

S, I = State, Input  # noqa: E741 - short names keep the tables readable

# (state, input) -> (action method, next state)
INVITE_CLIENT_TABLE: dict[tuple[State, Input], tuple[str, State]] = {
    (S.CALLING, I.TIMER_A): ("_retransmit_a", S.CALLING),
    (S.CALLING, I.TIMER_B): ("_timeout", S.TERMINATED),
    (S.CALLING, I.RECV_1XX): ("_pass_up", S.PROCEEDING),
    (S.CALLING, I.RECV_2XX): ("_accept", S.ACCEPTED),
    (S.CALLING, I.RECV_FINAL): ("_ack_and_pass_up", S.COMPLETED),
    (S.CALLING, I.TRANSPORT_ERROR): ("_transport_error", S.TERMINATED),
    (S.PROCEEDING, I.RECV_1XX): ("_pass_up", S.PROCEEDING),
    (S.PROCEEDING, I.RECV_2XX): ("_accept", S.ACCEPTED),
    (S.PROCEEDING, I.RECV_FINAL): ("_ack_and_pass_up", S.COMPLETED),
    (S.PROCEEDING, I.TRANSPORT_ERROR): ("_transport_error", S.TERMINATED),
    # stale timers of the Calling state once a provisional arrived
    (S.PROCEEDING, I.TIMER_A): ("_nothing", S.PROCEEDING),
    (S.PROCEEDING, I.TIMER_B): ("_nothing", S.PROCEEDING),
    (S.PROCEEDING, I.TIMER_C): ("_timeout", S.TERMINATED),
    (S.COMPLETED, I.RECV_FINAL): ("_resend_ack", S.COMPLETED),
    (S.COMPLETED, I.RECV_1XX): ("_absorb", S.COMPLETED),
    (S.COMPLETED, I.TIMER_D): ("_nothing", S.TERMINATED),
    (S.COMPLETED, I.TRANSPORT_ERROR): ("_transport_error", S.TERMINATED),
    # RFC 6026 §8.4: 2xx retransmissions (and forks) go to the TU
    (S.ACCEPTED, I.RECV_2XX): ("_pass_up", S.ACCEPTED),
    (S.ACCEPTED, I.RECV_1XX): ("_absorb", S.ACCEPTED),
    (S.ACCEPTED, I.TIMER_M): ("_nothing", S.TERMINATED),
}

NON_INVITE_CLIENT_TABLE: dict[tuple[State, Input], tuple[str, State]] = {
    (S.TRYING, I.TIMER_E): ("_retransmit_e", S.TRYING),
    (S.TRYING, I.TIMER_F): ("_timeout", S.TERMINATED),
    (S.TRYING, I.RECV_1XX): ("_pass_up", S.PROCEEDING),
    (S.TRYING, I.RECV_2XX): ("_complete", S.COMPLETED),
    (S.TRYING, I.RECV_FINAL): ("_complete", S.COMPLETED),
    (S.TRYING, I.TRANSPORT_ERROR): ("_transport_error", S.TERMINATED),
    (S.PROCEEDING, I.TIMER_E): ("_retransmit_e_t2", S.PROCEEDING),
    (S.PROCEEDING, I.TIMER_F): ("_timeout", S.TERMINATED),
    (S.PROCEEDING, I.RECV_1XX): ("_pass_up", S.PROCEEDING),
    (S.PROCEEDING, I.RECV_2XX): ("_complete", S.COMPLETED),
    (S.PROCEEDING, I.RECV_FINAL): ("_complete", S.COMPLETED),
    (S.PROCEEDING, I.TRANSPORT_ERROR): ("_transport_error", S.TERMINATED),
    (S.COMPLETED, I.RECV_1XX): ("_absorb", S.COMPLETED),
    (S.COMPLETED, I.RECV_2XX): ("_absorb", S.COMPLETED),
    (S.COMPLETED, I.RECV_FINAL): ("_absorb", S.COMPLETED),
    (S.COMPLETED, I.TIMER_K): ("_nothing", S.TERMINATED),
}

INVITE_SERVER_TABLE: dict[tuple[State, Input], tuple[str, State]] = {
    (S.PROCEEDING, I.RECV_REQUEST): ("_resend_last", S.PROCEEDING),
    (S.PROCEEDING, I.SEND_1XX): ("_send", S.PROCEEDING),
    (S.PROCEEDING, I.SEND_2XX): ("_send_2xx", S.ACCEPTED),
    (S.PROCEEDING, I.SEND_FINAL): ("_send_final_invite", S.COMPLETED),
    (S.PROCEEDING, I.TRANSPORT_ERROR): ("_transport_error", S.TERMINATED),
    (S.COMPLETED, I.RECV_REQUEST): ("_resend_last", S.COMPLETED),
    (S.COMPLETED, I.TIMER_G): ("_retransmit_g", S.COMPLETED),
    (S.COMPLETED, I.TIMER_H): ("_timeout", S.TERMINATED),
    (S.COMPLETED, I.RECV_ACK): ("_confirm", S.CONFIRMED),
    (S.COMPLETED, I.TRANSPORT_ERROR): ("_transport_error", S.TERMINATED),
    (S.CONFIRMED, I.RECV_ACK): ("_absorb", S.CONFIRMED),
    (S.CONFIRMED, I.RECV_REQUEST): ("_absorb", S.CONFIRMED),
    (S.CONFIRMED, I.TIMER_G): ("_nothing", S.CONFIRMED),
    (S.CONFIRMED, I.TIMER_H): ("_nothing", S.CONFIRMED),
    (S.CONFIRMED, I.TIMER_I): ("_nothing", S.TERMINATED),
    # RFC 6026 §7.1: the Accepted state absorbs INVITE retransmissions, passes ACKs
    # up, lets the TU retransmit its 2xx, and ends with Timer L.
    (S.ACCEPTED, I.RECV_REQUEST): ("_absorb", S.ACCEPTED),
    (S.ACCEPTED, I.RECV_ACK): ("_pass_ack_up", S.ACCEPTED),
    (S.ACCEPTED, I.SEND_2XX): ("_send", S.ACCEPTED),
    (S.ACCEPTED, I.TRANSPORT_ERROR): ("_transport_error", S.ACCEPTED),
    (S.ACCEPTED, I.TIMER_L): ("_nothing", S.TERMINATED),
}

NON_INVITE_SERVER_TABLE: dict[tuple[State, Input], tuple[str, State]] = {
    (S.TRYING, I.RECV_REQUEST): ("_absorb", S.TRYING),
    (S.TRYING, I.SEND_1XX): ("_send", S.PROCEEDING),
    (S.TRYING, I.SEND_2XX): ("_send_final_non_invite", S.COMPLETED),
    (S.TRYING, I.SEND_FINAL): ("_send_final_non_invite", S.COMPLETED),
    (S.TRYING, I.TRANSPORT_ERROR): ("_transport_error", S.TERMINATED),
    (S.PROCEEDING, I.RECV_REQUEST): ("_resend_last", S.PROCEEDING),
    (S.PROCEEDING, I.SEND_1XX): ("_send", S.PROCEEDING),
    (S.PROCEEDING, I.SEND_2XX): ("_send_final_non_invite", S.COMPLETED),
    (S.PROCEEDING, I.SEND_FINAL): ("_send_final_non_invite", S.COMPLETED),
    (S.PROCEEDING, I.TRANSPORT_ERROR): ("_transport_error", S.TERMINATED),
    (S.COMPLETED, I.RECV_REQUEST): ("_resend_last", S.COMPLETED),
    (S.COMPLETED, I.TIMER_J): ("_nothing", S.TERMINATED),
    (S.COMPLETED, I.TRANSPORT_ERROR): ("_transport_error", S.TERMINATED),
}

del S, I

# The members the per-message paths name, as module globals: in Python 3.11 reading an
# attribute of a class (an Enum's member) is an unspecialised lookup, ~10x a global's.
_TERMINATED = State.TERMINATED
_CALLING, _TRYING, _PROCEEDING = State.CALLING, State.TRYING, State.PROCEEDING
_TIMER_E, _TIMER_F, _TIMER_J, _TIMER_K = Input.TIMER_E, Input.TIMER_F, Input.TIMER_J, Input.TIMER_K
_RECV_1XX, _RECV_2XX, _RECV_FINAL = Input.RECV_1XX, Input.RECV_2XX, Input.RECV_FINAL
_RECV_REQUEST = Input.RECV_REQUEST
_SEND_1XX, _SEND_2XX, _SEND_FINAL = Input.SEND_1XX, Input.SEND_2XX, Input.SEND_FINAL


# -- events ---------------------------------------------------------------------------


def _slot_init(cls: type) -> type:
    """Give a frozen slots dataclass (no defaults) an __init__ that sets each field
    through its slot's descriptor (one C call each) instead of the generated one's
    object.__setattr__ per field: the same object, ~40 % less work per event (a busy
    server makes several per message). Frozen as before: assigning afterwards raises."""
    names = [f.name for f in fields(cls)]
    setters = {f"_set{i}": cls.__dict__[n].__set__ for i, n in enumerate(names)}
    src = (
        f"def _make({', '.join(setters)}):\n"
        f" def __init__(self, {', '.join(names)}):\n"
        + "".join(f"  _set{i}(self, {n})\n" for i, n in enumerate(names))
        + " return __init__\n"
    )
    scope: dict[str, Any] = {}
    exec(src, {}, scope)  # generated from the field names, as dataclasses does
    init = scope["_make"](**setters)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]
    return cls


@_slot_init
@dataclass(frozen=True, slots=True)
class Transmit:
    """Send `data` to `destination` (opaque to the core: the endpoint's (transport,
    address)). `message` is the parsed message when the transaction still holds it;
    a retransmission from the Completed state carries only the bytes (None): the
    transaction keeps nothing else there (see `Transaction`)."""

    key: tuple
    message: Message | None
    data: bytes
    destination: Any


@_slot_init
@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for the TU of a client transaction (each 1xx, the final, and
    2xx retransmissions of an INVITE)."""

    key: tuple
    response: Response


@_slot_init
@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request for the TU. `key` is None for an ACK that matches no
    transaction (the ACK to a 2xx, §17.2.3) – it has no server transaction."""

    key: tuple | None
    request: Request
    source: Any


@_slot_init
@dataclass(frozen=True, slots=True)
class AckReceived:
    """RFC 6026: an ACK matched an INVITE server transaction in the Accepted state."""

    key: tuple
    request: Request
    source: Any


@_slot_init
@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Timer B/F (client: the TU answers itself 408) or H (server: no ACK came)."""

    key: tuple
    timer: str


@_slot_init
@dataclass(frozen=True, slots=True)
class TransportError:
    key: tuple


@_slot_init
@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    key: tuple


@_slot_init
@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response that matches no client transaction (§17.1.3: pass to the core;
    a proxy forwards it statelessly, §16.7 step 3 / §16.11)."""

    response: Response
    source: Any


@dataclass(frozen=True, slots=True)
class Dropped:
    """An input the tables have no place for; counted under `reason`."""

    reason: str
    key: tuple | None = None
    detail: str = ""


Event = (
    Transmit
    | ResponseReceived
    | RequestReceived
    | AckReceived
    | TransactionTimeout
    | TransportError
    | TransactionTerminated
    | StrayResponse
    | Dropped
)


# -- keys -----------------------------------------------------------------------------


def client_key(msg: Message) -> tuple:
    """§17.1.3: top Via branch and CSeq method (ACK never creates one)."""
    branch = msg.top_via.branch
    if not branch:
        raise SipParseError("top Via has no branch")
    return ("c", branch, msg.cseq.method)


# (Via host, port, method) -> the interned key parts (lower-case sent-by, method).
# Bounded: emptied when full.
_KEY_PARTS: dict[tuple, tuple[str, str]] = {}
_KEY_PARTS_MAX = 1024


def server_key(req: Request) -> tuple:
    """§17.2.3 key of a request; ACK maps onto its INVITE. RFC 2543 fallback when the
    branch lacks the magic cookie."""
    via = req.top_via
    method = "INVITE" if req.method == "ACK" else req.method
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        # sent-by and method repeat across a peer's requests: one string object each
        # (the key lives as long as the transaction, up to Timer J), found by host and
        # port without building the sent-by text each time
        parts = _KEY_PARTS.get((via.host, via.port, method))
        if parts is None:
            if len(_KEY_PARTS) >= _KEY_PARTS_MAX:
                _KEY_PARTS.clear()
            parts = _KEY_PARTS[(via.host, via.port, method)] = (
                sys.intern(via.sent_by.lower()),
                sys.intern(method),
            )
        return ("s", branch, parts[0], parts[1])
    return (
        "s2543",
        req.uri,
        req.from_.tag,
        req.call_id,
        req.cseq.seq,
        str(via),
        method,
    )


_PROCESS_PACKER = WirePacker()


# -- transactions ---------------------------------------------------------------------


# Timers whose interval doubles (A, E, G): only these remember their last interval.
_BACKOFF = frozenset({Input.TIMER_A, Input.TIMER_E, Input.TIMER_G})

# The last timer of a finished non-INVITE transaction (J: server, K: client). Its delay
# is one constant per layer, so these expire in the order they were armed: the layer
# keeps them in one FIFO per timer instead of a (due, timer) tuple per transaction and
# an entry in its heap (a busy server holds one per request for 32 s).
_SWEPT_TIMERS = frozenset({Input.TIMER_J, Input.TIMER_K})


class _Swept(tuple):
    __slots__ = ()


# `Transaction.timers` of a transaction whose only timer waits in the layer's FIFO
# (`deadline` is its due time): an empty tuple to every reader, told apart by identity.
_SWEPT: tuple = _Swept()


def _due(pair: tuple[float, Input]) -> float:
    return pair[0]


class Transaction:
    """Common engine: state, table, timers, the owning layer's event queue.

    Memory: a transaction outlives its final response by Timer D/I/J/K/L/M (up to
    32 s on UDP), one per request a busy server handles, so what it keeps there is
    cut to what the state still needs (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1,
    §17.2.2): a server transaction that sent its final keeps the response's bytes
    (`_response_wire`; a non-INVITE one compressed by the layer's `WirePacker`), its status
    (and its To tag where an RFC 2543 ACK is matched by it), and drops the parsed request
    and response; Timer J / K wait in a FIFO of the layer, not in its heap; a client transaction that received its final keeps its key (and, for
    an INVITE, the bytes of its ACK), nothing of the request."""

    __slots__ = (
        "_intervals",
        "_last_input",
        "_last_response",
        "_layer",
        "_request_wire",
        "_response_wire",
        "deadline",
        "destination",
        "key",
        "last_status",
        "reliable",
        "request",
        "state",
        "table",
        "timers",
    )
    TABLE: ClassVar[dict[tuple[State, Input], tuple[str, State]]] = {}
    kind = "transaction"

    def __init__(
        self,
        layer: TransactionLayer,
        key: tuple,
        request: Request,
        destination: Any,
        reliable: bool,
        state: State,
    ) -> None:
        self._layer = layer
        self.key = key
        self.request = request
        self.destination = destination
        self.reliable = reliable
        self.state = state
        self.table = self.TABLE
        self._last_input: Input | None = None
        # armed timers as (due time, timer) pairs, earliest first (a tuple: a
        # transaction has at most two, and a dict costs four times the memory)
        self.timers: tuple[tuple[float, Input], ...] = ()
        self._intervals: dict[Input, float] | None = None
        self._last_response: Response | None = None
        # status of the last response sent (server) or received (client); 0: none yet
        self.last_status = 0
        self.deadline: float | None = None
        # the octets of the request / last response as first sent: retransmissions
        # are the very same bytes even if the TU edits the message object afterwards
        self._request_wire: bytes | None = None
        self._response_wire: bytes | None = None

    @property
    def config(self) -> TimerConfig:
        return self._layer.config

    @property
    def last_response(self) -> Response | None:
        """The last response sent (server) as a parsed message, while the transaction
        still waits for or carries a final one; None once only its bytes are kept."""
        return self._last_response

    @last_response.setter
    def last_response(self, response: Response | None) -> None:
        self._last_response = response
        if response is None:
            self._response_wire = None
            self.last_status = 0
        else:
            self._response_wire = response.to_bytes()
            self.last_status = response.status

    def _shed(self) -> None:
        """Final response sent / received: drop the parsed messages (see the class doc)."""
        self.request = None  # type: ignore[assignment]
        self._last_response = None
        self._intervals = None

    def _input(self, inp: Input, now: float, msg: Message | None = None) -> None:
        entry = self.table.get((self.state, inp))
        if entry is None:
            if inp in _TU_INPUTS:
                raise LocalProtocolError(
                    f"{self.kind}: {inp.value} not allowed in state {self.state.value}"
                )
            self._layer._drop(f"{self.kind}: {inp.value} in state {self.state.value}", self.key)
            return
        action, nxt = entry
        self._last_input = inp
        self.state = nxt
        getattr(self, action)(now, msg)
        if nxt is _TERMINATED:
            self.timers = ()
            self._layer._terminated(self)
        self._rearm()

    def _set_timer(self, timer: Input, now: float, delay: float) -> None:
        self._set_timer_due(timer, now + delay, delay)

    def _set_end_timer(self, timer: Input, now: float, delay: float) -> None:
        """`_set_timer` for a timer that ends the transaction: due on the layer's
        coarse grid (`TimerConfig.end_at`); a zero delay (reliable transport) stays now."""
        due = self._layer.config.end_at(now + delay) if delay > 0 else now
        self._set_timer_due(timer, due, delay)

    def _set_timer_due(self, timer: Input, due: float, delay: float) -> None:
        timers = self.timers
        if not timers:
            # the usual first timer (E, F, J, K...): no list to sort
            self.timers = ((due, timer),)
        else:
            pairs = [t for t in timers if t[1] is not timer]
            pairs.append((due, timer))
            pairs.sort(key=_due)
            self.timers = tuple(pairs)
        if timer in _BACKOFF:
            if self._intervals is None:
                self._intervals = {}
            self._intervals[timer] = delay

    def _stop_timers(self, *which: Input) -> None:
        self.timers = tuple(t for t in self.timers if t[1] not in which)

    def _interval(self, timer: Input) -> float:
        assert self._intervals is not None
        return self._intervals[timer]

    def _rearm(self) -> None:
        timers = self.timers
        if timers is _SWEPT:
            return
        if (
            len(timers) == 1
            and timers[0][1] in _SWEPT_TIMERS
            and self._layer._sweep(self, timers[0])
        ):
            return
        deadline = timers[0][0] if timers else None
        if deadline != self.deadline:
            self.deadline = deadline
            if deadline is not None:
                self._layer._schedule(self, deadline)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at `now`, earliest first."""
        while self.timers and self.state is not _TERMINATED:
            when, timer = self.timers[0]
            if when > now:
                break
            self.timers = self.timers[1:]
            self._input(timer, now)
        self._rearm()

    # -- actions shared by the tables ---------------------------------------------

    def _emit(self, event: Event) -> None:
        self._layer._events.append(event)

    def _transmit(self, msg: Message, data: bytes | None = None) -> None:
        self._emit(
            Transmit(self.key, msg, msg.to_bytes() if data is None else data, self.destination)
        )

    def _transmit_request(self) -> None:
        if self._request_wire is None:
            self._request_wire = self.request.to_bytes()
        self._transmit(self.request, self._request_wire)

    def _transmit_last_response(self) -> None:
        data = self._response_wire
        assert data is not None
        if type(data) is not bytes:
            data = self._layer.packer.unpack(data)
        self._emit(Transmit(self.key, self._last_response, data, self.destination))

    def _nothing(self, now: float, msg: Message | None) -> None:
        pass

    def _absorb(self, now: float, msg: Message | None) -> None:
        self._layer.counters["absorbed"] += 1

    def _pass_up(self, now: float, msg: Message | None) -> None:
        self._emit(ResponseReceived(self.key, msg))

    def _timeout(self, now: float, msg: Message | None) -> None:
        self._emit(TransactionTimeout(self.key, self._last_input.value.removeprefix("Timer ")))

    def _transport_error(self, now: float, msg: Message | None) -> None:
        self._emit(TransportError(self.key))

    def transport_error(self, now: float) -> None:
        """The transport could not send (ICMP unreachable, TCP reset): §17.1.4/§17.2.4."""
        self._input(Input.TRANSPORT_ERROR, now)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key} {self.state.value}>"

    def __lt__(self, other: Transaction) -> bool:
        # ties of the layer's deadline heap (deadline, transaction): any fixed order
        return id(self) < id(other)


class ClientTransaction(Transaction):
    """INVITE or non-INVITE client transaction; starts by sending the request."""

    __slots__ = ("_ack_wire", "is_invite")
    kind = "client"

    def __init__(
        self,
        layer: TransactionLayer,
        key: tuple,
        request: Request,
        destination: Any,
        reliable: bool,
    ) -> None:
        self.is_invite = request.method == "INVITE"
        super().__init__(
            layer,
            key,
            request,
            destination,
            reliable,
            _CALLING if self.is_invite else _TRYING,
        )
        self.table = INVITE_CLIENT_TABLE if self.is_invite else NON_INVITE_CLIENT_TABLE
        # §17.1.1.3: the ACK to a non-2xx final, as bytes, re-sent for each retransmission
        # of that final in Completed (the request itself is no longer kept there)
        self._ack_wire: bytes | None = None

    def start(self, now: float) -> None:
        t1 = self._layer.config.t1
        self._transmit_request()
        if self.is_invite:
            if not self.reliable:
                self._set_timer(Input.TIMER_A, now, t1)
            self._set_timer(Input.TIMER_B, now, 64 * t1)
        elif self.reliable:
            self._set_timer(_TIMER_F, now, 64 * t1)
        else:
            # E (T1) before F (64*T1): the pair in order, no list to sort
            self.timers = ((now + t1, _TIMER_E), (now + 64 * t1, _TIMER_F))
            self._intervals = {_TIMER_E: t1}
        self._rearm()

    def receive_response(self, response: Response, now: float) -> None:
        status = response.status
        if status < 200:
            inp = _RECV_1XX
        elif status < 300:
            inp = _RECV_2XX
        else:
            inp = _RECV_FINAL
        self._input(inp, now, response)

    # INVITE client actions
    def _retransmit_a(self, now: float, msg: Message | None) -> None:
        self._layer.counters["retransmissions"] += 1
        self._transmit_request()
        self._set_timer(Input.TIMER_A, now, 2 * self._interval(Input.TIMER_A))

    def _pass_up(self, now: float, msg: Message | None) -> None:
        if self.is_invite and self.state is State.PROCEEDING:
            self._stop_timers(Input.TIMER_A, Input.TIMER_B)
            self._set_timer(Input.TIMER_C, now, self.config.timer_c)
        self._emit(ResponseReceived(self.key, msg))

    def _final_received(self, msg: Message | None) -> None:
        """Completed / Accepted: only the key is needed from now on."""
        self.last_status = msg.status if isinstance(msg, Response) else 0
        self._request_wire = None
        self._shed()

    def _accept(self, now: float, msg: Message | None) -> None:
        self.timers = ()
        self._set_end_timer(Input.TIMER_M, now, 64 * self.config.t1)
        self._final_received(msg)
        self._emit(ResponseReceived(self.key, msg))

    def _ack_and_pass_up(self, now: float, msg: Message | None) -> None:
        self.timers = ()
        ack = self._build_ack(msg)
        self._ack_wire = ack.to_bytes()
        self._transmit(ack, self._ack_wire)
        self._set_end_timer(Input.TIMER_D, now, 0.0 if self.reliable else self.config.timer_d)
        self._final_received(msg)
        self._emit(ResponseReceived(self.key, msg))

    def _resend_ack(self, now: float, msg: Message | None) -> None:
        self._layer.counters["retransmissions"] += 1
        if self._ack_wire is None:  # Completed entered without an ACK sent (tests)
            self._ack_wire = self._build_ack(msg).to_bytes()
        self._emit(Transmit(self.key, None, self._ack_wire, self.destination))

    def _build_ack(self, response: Response) -> Request:
        """§17.1.1.3: ACK for a non-2xx final, inside the transaction."""
        req = self.request
        ack = Request("ACK", req.uri)
        ack.add("Via", req.get_all("via")[0])
        for name in ("from", "call-id"):
            ack.add(name, req.get(name))
        ack.add("To", response.get("to") or req.get("to"))
        ack.add("CSeq", f"{req.cseq.seq} ACK")
        for route in req.get_all("route"):
            ack.add("Route", route)
        ack.add("Max-Forwards", "70")
        return ack

    # non-INVITE client actions
    def _retransmit_e(self, now: float, msg: Message | None) -> None:
        self._layer.counters["retransmissions"] += 1
        self._transmit_request()
        self._set_timer(Input.TIMER_E, now, min(2 * self._interval(Input.TIMER_E), self.config.t2))

    def _retransmit_e_t2(self, now: float, msg: Message | None) -> None:
        self._layer.counters["retransmissions"] += 1
        self._transmit_request()
        self._set_timer(Input.TIMER_E, now, self.config.t2)

    def _complete(self, now: float, msg: Message | None) -> None:
        self.timers = ()
        self._set_end_timer(_TIMER_K, now, 0.0 if self.reliable else self._layer.config.t4)
        self._final_received(msg)
        self._emit(ResponseReceived(self.key, msg))


class ServerTransaction(Transaction):
    """INVITE or non-INVITE server transaction; the TU answers with `respond`."""

    __slots__ = ("is_invite", "to_tag")
    kind = "server"

    def __init__(
        self,
        layer: TransactionLayer,
        key: tuple,
        request: Request,
        destination: Any,
        reliable: bool,
    ) -> None:
        self.is_invite = request.method == "INVITE"
        super().__init__(
            layer,
            key,
            request,
            destination,
            reliable,
            _PROCEEDING if self.is_invite else _TRYING,
        )
        self.table = INVITE_SERVER_TABLE if self.is_invite else NON_INVITE_SERVER_TABLE
        self.to_tag: str | None = None

    def respond(self, response: Response, now: float) -> None:
        """The TU's response (§17.2.1/§17.2.2)."""
        status = response.status
        if status < 200:
            inp = _SEND_1XX
        elif status < 300:
            inp = _SEND_2XX
        else:
            inp = _SEND_FINAL
        self._input(inp, now, response)

    def receive_request(self, request: Request, now: float) -> None:
        if request.method == "ACK":
            if self.key[0] == "s2543" and self.to_tag is not None and request.to.tag != self.to_tag:
                self._layer._drop("ACK To tag does not match the response", self.key)
                return
            self._input(Input.RECV_ACK, now, request)
        else:
            self._input(_RECV_REQUEST, now, request)

    def _send(self, now: float, msg: Message | None) -> None:
        assert isinstance(msg, Response)
        self.last_response = msg
        # only an RFC 2543 ACK is matched by the To tag (§17.2.3)
        if self.key[0] == "s2543":
            self.to_tag = msg.to.tag if msg.has("to") else None
        self._transmit(msg, self._response_wire)
        if msg.status >= 200:
            # Completed / Accepted: a retransmitted request is recognised by the key
            # and answered with the bytes; the parsed request and response go.
            self._shed()

    def _resend_last(self, now: float, msg: Message | None) -> None:
        if self._response_wire is not None:
            self._layer.counters["retransmissions"] += 1
            self._transmit_last_response()
        else:
            self._layer.counters["absorbed"] += 1

    def _send_2xx(self, now: float, msg: Message | None) -> None:
        self._send(now, msg)
        self._set_end_timer(Input.TIMER_L, now, 64 * self.config.t1)

    def _send_final_invite(self, now: float, msg: Message | None) -> None:
        self._send(now, msg)
        if not self.reliable:
            self._set_timer(Input.TIMER_G, now, self.config.t1)
        self._set_timer(Input.TIMER_H, now, 64 * self.config.t1)

    def _retransmit_g(self, now: float, msg: Message | None) -> None:
        self._layer.counters["retransmissions"] += 1
        self._transmit_last_response()
        self._set_timer(Input.TIMER_G, now, min(2 * self._interval(Input.TIMER_G), self.config.t2))

    def _confirm(self, now: float, msg: Message | None) -> None:
        self._stop_timers(Input.TIMER_G, Input.TIMER_H)
        self._set_end_timer(Input.TIMER_I, now, 0.0 if self.reliable else self.config.t4)

    def _pass_ack_up(self, now: float, msg: Message | None) -> None:
        self._emit(AckReceived(self.key, msg, None))

    def _send_final_non_invite(self, now: float, msg: Message | None) -> None:
        self._send(now, msg)
        if self.reliable:
            self._set_end_timer(_TIMER_J, now, 0.0)
            return
        # Completed for Timer J: only a retransmitted request reads the bytes again
        # (the layer packs them with the next finals: `_finish`)
        layer = self._layer
        delay = 64 * layer.config.t1
        if not layer._finish(self, layer.config.end_at(now + delay)):
            self._response_wire = layer.packer.pack(self._response_wire)
            self._set_end_timer(_TIMER_J, now, delay)


class FinishedServerTransaction:
    """A non-INVITE server transaction in Completed over an unreliable transport
    (RFC 3261 §17.2.2), as the layer keeps it until Timer J: the key, the final's
    octets (packed with the finals around it, `PACK_GROUP` at a time), where they go,
    its status and the due time of J. A retransmitted
    request gets the same octets again; the TU may not answer any more (the
    `ServerTransaction` it answered through stays in Completed for its holder).

    A fifth of a `ServerTransaction` plus its timer: a busy server holds one per request
    it answered for 32 s."""

    __slots__ = ("_response_wire", "deadline", "destination", "key", "last_status")
    kind = "server"
    is_invite = False
    reliable = False
    request = None
    last_response = None
    to_tag = None
    state = State.COMPLETED
    timers: tuple = ()

    def __init__(self, tx: ServerTransaction, deadline: float) -> None:
        self.key = tx.key
        self._response_wire = tx._response_wire
        self.destination = tx.destination
        self.last_status = tx.last_status
        self.deadline = deadline

    def __repr__(self) -> str:
        return f"<FinishedServerTransaction {self.key} Completed>"


_WAITING = frozenset((State.CALLING, State.TRYING, State.PROCEEDING))


@dataclass
class TransactionLayer:
    """Demultiplexes messages onto transactions and collects their events.

    `reliable(destination)` tells whether a destination/source is a reliable
    transport (TCP): then retransmission timers A/E/G are not armed and D/I/J/K are 0.
    `auto_trying`: an INVITE server transaction answers 100 Trying at once (§17.2.1:
    the TU is not known to answer within 200 ms)."""

    config: TimerConfig = field(default_factory=TimerConfig)
    reliable: Any = None
    auto_trying: bool = True
    max_transactions: int = 100_000
    counters: Counter = field(default_factory=Counter)
    _events: deque = field(default_factory=deque, repr=False)
    _client: dict = field(default_factory=dict, repr=False)
    _server: dict = field(default_factory=dict, repr=False)
    _heap: list = field(default_factory=list, repr=False)
    # Timer J / K: transactions in arming order, and the due time armed last of each
    _swept: dict = field(default_factory=dict, repr=False)
    _swept_last: dict = field(default_factory=dict, repr=False)
    # Completed non-INVITE server transactions, as records, in Timer J order
    _finished: deque = field(default_factory=deque, repr=False)
    _finished_last: float = field(default=float("-inf"), repr=False)
    # finished records whose finals wait to be packed together (`PACK_GROUP`)
    _to_pack: list = field(default_factory=list, repr=False)
    packer: WirePacker = field(default_factory=lambda: _PROCESS_PACKER, repr=False)
    """Holds the finals of Completed non-INVITE server transactions compressed; by
    default one per process (a UE simulator runs a layer per UE: one compressor and
    dictionary for all of them, not ~20 KiB each)."""
    # the earliest deadline armed (heap, FIFOs) since an edge last reset it to inf: an
    # edge whose wake-up is armed already asks `next_deadline` only when this is earlier
    _armed_min: float = field(default=float("inf"), repr=False, compare=False)

    # -- client side -------------------------------------------------------------

    def send_request(self, request: Request, destination: Any, now: float) -> ClientTransaction:
        """Start a client transaction for `request` (which carries its own top Via with
        a fresh magic-cookie branch; see imsaka.sip.proxy.push_via)."""
        if request.method == "ACK":
            raise LocalProtocolError("method: ACK is sent outside transactions (send it directly)")
        key = client_key(request)
        if key in self._client:
            raise LocalProtocolError(f"branch: a client transaction {key[1]!r} already exists")
        if len(self._client) + len(self._server) >= self.max_transactions:
            self._overload()
        reliable = self.reliable
        tx = ClientTransaction(
            self, key, request, destination, reliable is not None and bool(reliable(destination))
        )
        self._client[key] = tx
        tx.start(now)
        return tx

    def receive_response(self, response: Response, source: Any, now: float) -> None:
        try:
            key = client_key(response)
        except SipParseError as exc:
            self._drop("response without a usable Via/CSeq", detail=exc.reason)
            return
        tx = self._client.get(key)
        if tx is None:
            self.counters["stray_responses"] += 1
            self._events.append(StrayResponse(response, source))
            return
        tx.receive_response(response, now)

    # -- server side -------------------------------------------------------------

    def receive_request(
        self, request: Request, source: Any, now: float, reply_to: Any = None
    ) -> ServerTransaction | None:
        """Match a request onto a server transaction or create one; the TU gets a
        RequestReceived event for a new request (and for an unmatched ACK).
        `reply_to` is where the transaction sends responses (§18.2.2), default `source`."""
        key = server_key(request)
        tx = self._server.get(key)
        if request.method == "ACK":
            if tx is None or not tx.is_invite:
                self._events.append(RequestReceived(None, request, source))
                return None
            tx.receive_request(request, now)
            return tx
        if tx is not None:
            if type(tx) is FinishedServerTransaction:
                # §17.2.2 Completed: a retransmitted request gets the final again
                self.counters["retransmissions"] += 1
                self._events.append(
                    Transmit(key, None, self.packer.unpack(tx._response_wire), tx.destination)
                )
            else:
                tx.receive_request(request, now)
            return tx
        if len(self._client) + len(self._server) >= self.max_transactions:
            self._overload()
        dest = source if reply_to is None else reply_to
        reliable = self.reliable
        tx = ServerTransaction(
            self, key, request, dest, reliable is not None and bool(reliable(dest))
        )
        self._server[key] = tx
        self._events.append(RequestReceived(key, request, source))
        if tx.is_invite and self.auto_trying:
            from imsaka.sip.message import make_response

            tx.respond(make_response(request, 100), now)
        return tx

    def respond(self, key: tuple, response: Response, now: float) -> None:
        tx = self._server.get(key)
        if tx is None:
            raise LocalProtocolError(f"no server transaction {key!r} (terminated or never created)")
        if type(tx) is FinishedServerTransaction:
            raise LocalProtocolError("server: the final response was sent (state Completed)")
        tx.respond(response, now)

    def server_transaction(self, key: tuple) -> ServerTransaction | None:
        return self._server.get(key)

    def client_transaction(self, key: tuple) -> ClientTransaction | None:
        return self._client.get(key)

    def abandon(self, key: tuple) -> None:
        """End the client transaction `key` here and now, silently: its request is sent
        no more and a late response to it is a stray, or the response of a transaction
        started after it with the same key (a proxy that takes the request to another
        instance of the same next hop, RFC 3263 §4.3, with the same branch)."""
        tx = self._client.pop(key, None)
        if tx is not None:
            tx.timers = ()
            tx.state = _TERMINATED  # (its timer entries are skipped)
            tx.deadline = None
            self.counters["abandoned"] += 1

    def find_cancel_target(self, cancel: Request) -> ServerTransaction | None:
        """§9.2: the INVITE server transaction a CANCEL refers to."""
        key = server_key(cancel)
        return self._server.get((*key[:-1], "INVITE"))

    def transport_error(self, key: tuple, now: float) -> None:
        tx = self._client.get(key) or self._server.get(key)
        if type(tx) is FinishedServerTransaction:
            # (Completed, transport error) -> Terminated, as NON_INVITE_SERVER_TABLE says
            del self._server[key]
            tx.deadline = None  # out of the table: its Timer J entry is skipped
            self._events.append(TransportError(key))
            self._events.append(TransactionTerminated(key))
        elif tx is not None and tx.state is not _TERMINATED:
            tx.transport_error(now)

    # -- time ---------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        best = None
        heap = self._heap
        while heap:
            deadline, tx = heap[0]
            if tx.deadline == deadline and tx.state is not _TERMINATED and tx.timers:
                best = deadline
                break
            heapq.heappop(heap)
        for fifo in self._swept.values():
            while fifo:
                tx = fifo[0]
                if tx.timers is _SWEPT:
                    if best is None or tx.deadline < best:
                        best = tx.deadline
                    break
                fifo.popleft()  # fired, terminated, or re-armed elsewhere
        finished = self._finished
        while finished:
            due = finished[0].deadline
            if due is not None:
                if best is None or due < best:
                    best = due
                break
            self._pop_finished()  # ended by a transport error
        return best

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        swept = self._swept
        # earliest first across the heap and the FIFOs
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            if heap and heap[0][0] == deadline:
                tx = heapq.heappop(heap)[1]
                tx.deadline = None
                tx.handle_timer(now)
                continue
            finished = self._finished
            if finished and finished[0].deadline == deadline:
                # Timer J of a finished server transaction: (Completed, J) -> Terminated
                key = self._pop_finished().key
                del self._server[key]
                self._events.append(TransactionTerminated(key))
                continue
            for timer, fifo in swept.items():
                if fifo and fifo[0].deadline == deadline:
                    tx = fifo.popleft()
                    tx.timers = ()
                    tx.deadline = None
                    tx._input(timer, now)
                    break
            else:  # pragma: no cover - next_deadline named a front of the heap or a FIFO
                break

    # -- events -------------------------------------------------------------------

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        out = list(self._events)
        self._events.clear()
        return out

    def __len__(self) -> int:
        return len(self._client) + len(self._server)

    def pending(self) -> int:
        """Transactions still waiting for a final response (client: Calling/Proceeding;
        server: Trying/Proceeding). Completed ones only absorb retransmissions until
        Timer J/K and are not counted."""
        tables = (self._client.values(), self._server.values())
        return sum(1 for table in tables for tx in table if tx.state in _WAITING)

    # -- internals ----------------------------------------------------------------

    def _overload(self) -> None:
        # (send_request and receive_request compare against max_transactions inline)
        self.counters["overload"] += 1
        raise LocalProtocolError("too many transactions (max_transactions)")

    def _schedule(self, tx: Transaction, deadline: float) -> None:
        heapq.heappush(self._heap, (deadline, tx))
        if deadline < self._armed_min:
            self._armed_min = deadline

    def _finish(self, tx: ServerTransaction, deadline: float) -> bool:
        """Replace `tx` (its final sent, Completed) by a `FinishedServerTransaction`
        queued for Timer J at `deadline`; False when J would be due before one queued
        already (a clock that went back: `tx` keeps its own timer)."""
        if deadline < self._finished_last or self._server.get(tx.key) is not tx:
            return False
        rec = FinishedServerTransaction(tx, deadline)
        self._server[tx.key] = rec
        self._finished.append(rec)
        self._finished_last = deadline
        if deadline < self._armed_min:
            self._armed_min = deadline
        self._to_pack = self.packer.pack_later(self._to_pack, rec, "_response_wire")
        return True

    def _pop_finished(self) -> FinishedServerTransaction:
        """The oldest finished record, out of the Timer J FIFO and, when its final is
        still waiting to be packed, out of that list too (a quiet layer, a UE's, may
        never fill a group: its finals go with their records). `_to_pack` holds the
        newest records of the FIFO, so the oldest is the first of it if there."""
        rec = self._finished.popleft()
        to_pack = self._to_pack
        if to_pack and to_pack[0] is rec:
            del to_pack[0]
        return rec

    def _sweep(self, tx: Transaction, pair: tuple[float, Input]) -> bool:
        """Queue `tx`'s only timer (J or K) in that timer's FIFO; False when it is due
        before one queued already (a clock that went back: the heap takes it)."""
        deadline, timer = pair
        last = self._swept_last.get(timer)
        if last is not None and deadline < last:
            return False
        fifo = self._swept.get(timer)
        if fifo is None:
            fifo = self._swept[timer] = deque()
        fifo.append(tx)
        self._swept_last[timer] = deadline
        if deadline < self._armed_min:
            self._armed_min = deadline
        tx.timers = _SWEPT
        tx.deadline = deadline
        return True

    def _terminated(self, tx: Transaction) -> None:
        table = self._client if isinstance(tx, ClientTransaction) else self._server
        if table.get(tx.key) is tx:
            del table[tx.key]
        self._events.append(TransactionTerminated(tx.key))

    def _drop(self, reason: str, key: tuple | None = None, detail: str = "") -> None:
        # `reason` comes from a fixed set (table misses, named faults): bounded keys
        self.counters["dropped"] += 1
        self.counters[f"dropped: {reason}"] += 1
        self._events.append(Dropped(reason, key, detail))
