"""Diameter peer connection, sans-I/O: RFC 6733 §5 (CER/CEA §5.3, DPR/DPA §5.4,
peer state machine §5.6, duplicate detection §6.1.9 / §9.4) and the RFC 3539 §3.4
watchdog (DWR/DWA, Tw, OKAY → SUSPECT → DOWN, and REOPEN after a watchdog failure).

One `PeerConnection` is one transport connection. It is fed bytes and the time
(`receive_data(data, now)`, `handle_timer(now)`), asked for `next_deadline()`, and hands
back the messages to write (`messages_to_send()`) and `events` (frozen dataclasses). No
socket, no asyncio, no clock read: `now` is passed in and randomness (hop-by-hop and
end-to-end ids, watchdog jitter) comes from an injected `random.Random`.

The RFC 6733 §5.6 state machine is the table `TRANSITIONS` below: (state, input) →
(action, next state). An action may end in CLOSED instead (a refused CER). A received
message that is not in the table for the current state is a protocol error: counted,
logged, and the connection is closed. Election (§5.6.4) is left to the node: each
connection is either ours (initiator) or the peer's (responder).

Differences from the letter of the RFCs, on purpose:
- Host-IP-Address may be absent from a CER (Kamailio 5.6 omits it at times).
- A request before the capabilities exchange is answered 3010 DIAMETER_UNKNOWN_PEER
  (we cannot know the sender yet) and the connection closed.
- RFC 3539 §3.4.1 REOPEN applies only to a peer whose previous connection failed its
  watchdog (ended in SUSPECT, DOWN or REOPEN): the node passes those hosts in
  `reopen_hosts`. A connection lost otherwise (RST/FIN, a killed process, DPR) was not a
  watchdog failure: its successor is OKAY once CER/CEA succeed, as before.
- In REOPEN only a DWA answering our outstanding DWR counts towards the
  `PeerConfig.reopen_dwas` (default 3) needed: unsolicited DWAs cannot shorten it.
- Tw jitter is ±min(2 s, Tw/10) so that short test intervals stay short.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import Enum
from typing import Any

from imsaka.diameter import codec
from imsaka.diameter.codec import (
    AVP_AUTH_APPLICATION_ID,
    AVP_DISCONNECT_CAUSE,
    AVP_HOST_IP_ADDRESS,
    AVP_ORIGIN_HOST,
    AVP_ORIGIN_REALM,
    AVP_PRODUCT_NAME,
    AVP_RESULT_CODE,
    AVP_SUPPORTED_VENDOR_ID,
    AVP_VENDOR_ID,
    AVP_VENDOR_SPECIFIC_APPLICATION_ID,
    DIAMETER_MISSING_AVP,
    DIAMETER_NO_COMMON_APPLICATION,
    DIAMETER_SUCCESS,
    DIAMETER_UNKNOWN_PEER,
    FLAG_PROXIABLE,
    FLAG_REQUEST,
    FLAG_RETRANSMIT,
    VENDOR_3GPP,
    Avp,
    Framer,
    Message,
)
from imsaka.diameter.errors import LocalProtocolError, RemoteProtocolError

log = logging.getLogger("imsaka.diameter.peer")

CMD_CAPABILITIES_EXCHANGE = 257
CMD_DEVICE_WATCHDOG = 280
CMD_DISCONNECT_PEER = 282
BASE_COMMANDS = frozenset({CMD_CAPABILITIES_EXCHANGE, CMD_DEVICE_WATCHDOG, CMD_DISCONNECT_PEER})

CX_APPLICATION_ID = 16777216
RELAY_APPLICATION_ID = 0xFFFFFFFF

# Disconnect-Cause (RFC 6733 §5.4.3)
REBOOTING = 0
BUSY = 1
DO_NOT_WANT_TO_TALK_TO_YOU = 2


class PeerState(Enum):
    """RFC 6733 §5.6 states, for one connection (the responder waits in WAIT_CER)."""

    CLOSED = "Closed"
    WAIT_CONN_ACK = "Wait-Conn-Ack"
    WAIT_I_CEA = "Wait-I-CEA"
    WAIT_CER = "Wait-CER"
    I_OPEN = "I-Open"
    R_OPEN = "R-Open"
    CLOSING = "Closing"

    # Members are singletons: hash by identity (Enum's own __hash__ is Python code and
    # runs for every table lookup of every message).
    __hash__ = object.__hash__


class PeerInput(Enum):
    """Events of RFC 6733 §5.6 as they reach one connection."""

    CONN_ACK = "Conn-Ack"  # our TCP connect completed (initiator) / accepted (responder)
    RCV_CER = "Rcv-CER"
    RCV_CEA = "Rcv-CEA"
    RCV_DWR = "Rcv-DWR"
    RCV_DWA = "Rcv-DWA"
    RCV_DPR = "Rcv-DPR"
    RCV_DPA = "Rcv-DPA"
    RCV_REQUEST = "Rcv-Request"  # any other request
    RCV_ANSWER = "Rcv-Answer"  # any other answer
    TIMEOUT = "Timeout"  # the state timer (CER/CEA/DPA wait, watchdog)
    STOP = "Stop"  # local shutdown
    PEER_DISC = "Peer-Disc"  # transport lost

    # Members are singletons: hash by identity (Enum's own __hash__ is Python code and
    # runs for every table lookup of every message).
    __hash__ = object.__hash__


class WatchdogState(Enum):
    """RFC 3539 §3.4.1. REOPEN: a connection re-established after a watchdog failure,
    not used for application traffic until `PeerConfig.reopen_dwas` DWR/DWA exchanges in
    a row succeed (then OKAY); a DWR unanswered twice in REOPEN closes it (DOWN)."""

    OKAY = "OKAY"
    SUSPECT = "SUSPECT"
    DOWN = "DOWN"
    REOPEN = "REOPEN"

    # Members are singletons: hash by identity (Enum's own __hash__ is Python code and
    # runs for every table lookup of every message).
    __hash__ = object.__hash__


S, I = PeerState, PeerInput  # noqa: E741  (table readability)
_OPEN = (S.I_OPEN, S.R_OPEN)
# The members every message's path tests, as globals: an Enum class's attribute is read
# through EnumType's __getattr__ hook, a few hundred instructions each time.
_CLOSED = S.CLOSED
_RCV_REQUEST, _RCV_ANSWER = I.RCV_REQUEST, I.RCV_ANSWER
_REOPEN, _SUSPECT = WatchdogState.REOPEN, WatchdogState.SUSPECT

#: (state, input) → (action, next state). Inputs absent for a state are protocol errors.
TRANSITIONS: dict[tuple[PeerState, PeerInput], tuple[str, PeerState]] = {
    (S.WAIT_CONN_ACK, I.CONN_ACK): ("send_cer", S.WAIT_I_CEA),
    (S.WAIT_CONN_ACK, I.TIMEOUT): ("timed_out", S.CLOSED),
    (S.WAIT_CONN_ACK, I.STOP): ("give_up", S.CLOSED),
    (S.WAIT_CONN_ACK, I.PEER_DISC): ("disconnected", S.CLOSED),
    (S.WAIT_I_CEA, I.RCV_CEA): ("process_cea", S.I_OPEN),
    (S.WAIT_I_CEA, I.TIMEOUT): ("timed_out", S.CLOSED),
    (S.WAIT_I_CEA, I.STOP): ("give_up", S.CLOSED),
    (S.WAIT_I_CEA, I.PEER_DISC): ("disconnected", S.CLOSED),
    (S.WAIT_CER, I.RCV_CER): ("process_cer", S.R_OPEN),
    (S.WAIT_CER, I.RCV_REQUEST): ("refuse_before_cer", S.CLOSED),
    (S.WAIT_CER, I.RCV_DWR): ("refuse_before_cer", S.CLOSED),
    (S.WAIT_CER, I.RCV_DPR): ("refuse_before_cer", S.CLOSED),
    (S.WAIT_CER, I.TIMEOUT): ("timed_out", S.CLOSED),
    (S.WAIT_CER, I.STOP): ("give_up", S.CLOSED),
    (S.WAIT_CER, I.PEER_DISC): ("disconnected", S.CLOSED),
    (S.CLOSING, I.RCV_DPA): ("closed_by_dpa", S.CLOSED),
    (S.CLOSING, I.RCV_ANSWER): ("deliver_answer", S.CLOSING),
    (S.CLOSING, I.RCV_DWR): ("answer_dwr", S.CLOSING),
    (S.CLOSING, I.RCV_DWA): ("watchdog_answer", S.CLOSING),
    (S.CLOSING, I.RCV_DPR): ("answer_dpr", S.CLOSED),
    (S.CLOSING, I.RCV_REQUEST): ("refuse_while_closing", S.CLOSING),
    (S.CLOSING, I.TIMEOUT): ("timed_out", S.CLOSED),
    (S.CLOSING, I.STOP): ("nothing", S.CLOSING),
    (S.CLOSING, I.PEER_DISC): ("disconnected", S.CLOSED),
    (S.CLOSED, I.STOP): ("nothing", S.CLOSED),
    (S.CLOSED, I.PEER_DISC): ("nothing", S.CLOSED),
    (S.CLOSED, I.TIMEOUT): ("nothing", S.CLOSED),
}
for _open in _OPEN:
    TRANSITIONS.update(
        {
            (_open, I.RCV_REQUEST): ("deliver_request", _open),
            (_open, I.RCV_ANSWER): ("deliver_answer", _open),
            (_open, I.RCV_DWR): ("answer_dwr", _open),
            (_open, I.RCV_DWA): ("watchdog_answer", _open),
            (_open, I.RCV_DPR): ("answer_dpr", S.CLOSED),
            (_open, I.RCV_CER): ("refuse_cer_when_open", S.CLOSED),
            (_open, I.TIMEOUT): ("watchdog_timer", _open),
            (_open, I.STOP): ("send_dpr", S.CLOSING),
            (_open, I.PEER_DISC): ("disconnected", S.CLOSED),
        }
    )
del _open


# --- configuration ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """Our side of the capabilities exchange and the timers of one connection."""

    origin_host: str
    """Our Diameter identity (Origin-Host), e.g. "hss.ims.example.org"."""
    origin_realm: str
    """Our realm (Origin-Realm)."""
    host_ip_addresses: tuple[str, ...] = ("127.0.0.1",)
    """Host-IP-Address values advertised in CER/CEA."""
    vendor_id: int = 0
    """Vendor-Id of this product in CER/CEA (0: none / IETF)."""
    product_name: str = "imsaka"
    """Product-Name in CER/CEA."""
    firmware_revision: int | None = 1
    """Firmware-Revision in CER/CEA (omitted when None)."""
    auth_application_ids: tuple[int, ...] = (CX_APPLICATION_ID,)
    """Applications advertised as Vendor-Specific-Application-Id {10415, id}."""
    supported_vendor_ids: tuple[int, ...] = (VENDOR_3GPP,)
    """Supported-Vendor-Id values in CER/CEA."""
    watchdog_interval: float = 30.0
    """Tw (RFC 3539 §3.4.1): idle time before a DWR; the RFC asks for at least 6 s."""
    cer_timeout: float = 10.0
    """How long a new connection may wait for its CER (responder) or CEA (initiator)."""
    dpa_timeout: float = 5.0
    """How long we wait for a DPA after our DPR before closing anyway."""
    max_message_length: int = codec.DEFAULT_MAX_MESSAGE_LENGTH
    """Cap on one message; a header announcing more closes the connection."""
    origin_state_id: int | None = None
    """Origin-State-Id in CER/CEA (RFC 6733 §8.16), e.g. the start time; None: omitted."""
    duplicate_window: float = 30.0
    """How long an answered request's end-to-end id is remembered (RFC 6733 §6.1.9)."""
    reopen_dwas: int = 3
    """DWR/DWA exchanges in a row a REOPEN connection needs before it is OKAY (RFC 3539
    §3.4.1: three)."""

    def __post_init__(self) -> None:
        if not self.origin_host or not isinstance(self.origin_host, str):
            raise ValueError("origin_host: a non-empty Diameter identity is required")
        if not self.origin_realm or not isinstance(self.origin_realm, str):
            raise ValueError("origin_realm: a non-empty realm is required")
        if not self.auth_application_ids:
            raise ValueError("auth_application_ids: at least one application is required")
        for name in ("watchdog_interval", "cer_timeout", "dpa_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive")
        if self.reopen_dwas < 1:
            raise ValueError("reopen_dwas: must be at least 1")
        if self.max_message_length < codec.HEADER_LENGTH:
            raise ValueError("max_message_length: must be at least 20")
        for ip in self.host_ip_addresses:
            try:
                codec.HOST_IP_ADDRESS(ip)
            except ValueError:
                raise ValueError(f"host_ip_addresses: {ip!r} is not an IP address") from None


@dataclass(frozen=True, slots=True)
class RemotePeer:
    """What the other side said about itself in its CER or CEA."""

    origin_host: str
    origin_realm: str
    host_ip_addresses: tuple[str, ...] = ()
    vendor_id: int | None = None
    product_name: str | None = None
    auth_application_ids: frozenset[int] = frozenset()
    supported_vendor_ids: frozenset[int] = frozenset()


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerOpened:
    """Capabilities exchanged: application messages may flow."""

    remote: RemotePeer


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """An application request to hand to the request handler; answer with send_answer."""

    message: Message


@dataclass(frozen=True, slots=True)
class AnswerReceived:
    """The answer to one of our pending requests (matched by hop-by-hop id)."""

    message: Message


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A pending request of ours will get no answer: reason "timeout" or "disconnected"."""

    hop_by_hop: int
    reason: str


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """An input we refused or ignored, with the named trigger it is counted under."""

    trigger: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class WatchdogChanged:
    old: WatchdogState
    new: WatchdogState


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The connection is over: write what is queued, then close the transport."""

    reason: str
    disconnect_cause: int | None = None  # the peer's Disconnect-Cause when it sent DPR


PeerEvent = (
    PeerOpened
    | RequestReceived
    | AnswerReceived
    | RequestFailed
    | MessageDropped
    | WatchdogChanged
    | ConnectionTerminated
)


# --- helpers shared by the connections of one node --------------------------------------


class IdGenerator:
    """Hop-by-hop and end-to-end identifiers (RFC 6733 §3).

    End-to-end: the low 12 bits of the start time in the top 12 bits, random low 20 bits,
    then incremented; hop-by-hop: random start, incremented. Shared by the connections
    of one node so an end-to-end id stays unique across reconnects.
    """

    __slots__ = ("_e2e", "_hbh")

    def __init__(self, rng: random.Random, start_time: float) -> None:
        self._hbh = rng.getrandbits(32)
        self._e2e = ((int(start_time) & 0xFFF) << 20) | rng.getrandbits(20)

    def next_ids(self) -> tuple[int, int]:
        self._hbh = hbh = (self._hbh + 1) & 0xFFFFFFFF
        self._e2e = e2e = (self._e2e + 1) & 0xFFFFFFFF
        return hbh, e2e


class DuplicateCache:
    """Answers to recent requests by (Origin-Host, end-to-end id), RFC 6733 §6.1.9.

    A request seen again (retransmitted with the T flag after a failover, or simply
    repeated) is answered with the stored answer instead of being processed twice; one
    still being processed is dropped. Bounded in size and in time.
    """

    __slots__ = ("_answers", "_in_progress", "max_entries", "window")

    def __init__(self, window: float = 30.0, max_entries: int = 65536) -> None:
        self._answers: OrderedDict[tuple[str, int], tuple[float, bytes]] = OrderedDict()
        self._in_progress: set[tuple[str, int]] = set()
        self.window = window
        self.max_entries = max_entries

    def lookup(self, key: tuple[str, int], now: float) -> bytes | str | None:
        """The stored answer, "in-progress", or None for a new request."""
        if key in self._in_progress:
            return "in-progress"
        found = self._answers.get(key)
        if found is None:
            return None
        if now - found[0] > self.window:
            del self._answers[key]
            return None
        return found[1]

    def started(self, key: tuple[str, int]) -> None:
        self._in_progress.add(key)

    def answered(self, key: tuple[str, int], answer: bytes, now: float) -> None:
        self._in_progress.discard(key)
        answers = self._answers
        answers[key] = (now, answer)
        if len(answers) > self.max_entries:
            answers.popitem(last=False)
        # Expire from the old end while entries are past the window (amortised O(1)).
        while answers:
            first_key = next(iter(answers))
            if now - answers[first_key][0] <= self.window:
                break
            del answers[first_key]

    def abandon(self, key: tuple[str, int]) -> None:
        self._in_progress.discard(key)

    def __len__(self) -> int:
        return len(self._answers)


# --- the connection ---------------------------------------------------------------------


class PeerConnection:
    """One Diameter transport connection (see the module docstring).

    `initiator=True`: we connected and send the CER (to `expected_host` if given, whose
    CEA must name it). `initiator=False`: the peer connected; its CER must come from a
    host in `allowed_hosts` (configured peers only), else CEA 3010 and close.
    A peer whose (lower-case) host is in `reopen_hosts` when the capabilities exchange
    succeeds starts in watchdog state REOPEN instead of OKAY (RFC 3539 §3.4.1): the node
    keeps that collection, and it is read at that moment, not copied.
    """

    def __init__(
        self,
        config: PeerConfig,
        *,
        initiator: bool,
        now: float,
        allowed_hosts: Collection[str] = (),
        expected_host: str | None = None,
        rng: random.Random | None = None,
        ids: IdGenerator | None = None,
        duplicates: DuplicateCache | None = None,
        counters: Counter[str] | None = None,
        reopen_hosts: Collection[str] = (),
        decode: Callable[[bytes], Message] = codec.decode_message,
    ) -> None:
        self.config = config
        # Turns a frame into a Message with the checks and errors of codec.decode_message
        # (a node serving Cx passes cx.decode_frame, which decodes the Cx event as well).
        self._decode = decode
        self.reopen_hosts = reopen_hosts
        self.initiator = initiator
        # DiameterIdentity is an FQDN: compared without regard to case.
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.expected_host = expected_host
        self._rng = rng or random.Random()
        self._random = self._rng.random
        self._tw_base = config.watchdog_interval
        jitter = min(2.0, config.watchdog_interval / 10)
        self._tw_low, self._tw_span = -jitter, jitter - -jitter
        self.ids = ids or IdGenerator(self._rng, now)
        self.duplicates = (
            duplicates if duplicates is not None else DuplicateCache(config.duplicate_window)
        )
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.state = S.WAIT_CONN_ACK if initiator else S.WAIT_CER
        self.watchdog = WatchdogState.OKAY
        self.remote: RemotePeer | None = None
        self.events: list[PeerEvent] = []
        self.record_frames = False  # when True, received frames are kept for observers
        self.received_frames: list[bytes] = []
        self._framer = Framer(config.max_message_length)
        self._out: list[bytes] = []
        self._timer: float | None = now + config.cer_timeout
        self._dwa_pending = False
        self._num_dwa = 0  # RFC 3539 NumDWA, in REOPEN
        self._pending: dict[int, float] = {}  # our requests: hop-by-hop id -> deadline
        self._pending_heap: list[tuple[float, int]] = []
        self._closed_reported = False
        self._started: set[tuple[str, int]] = set()  # requests of the peer not yet answered
        self._disconnect_cause = REBOOTING
        self._cea_static = self._capabilities_avps()

    # --- inputs from the I/O edge ----------------------------------------------------

    def connection_made(self, now: float) -> None:
        """Our connect completed (initiator). The responder starts in WAIT_CER."""
        if self.initiator:
            self._input(I.CONN_ACK, None, now)

    def receive_data(self, data: bytes, now: float) -> None:
        if self.state is _CLOSED:
            return
        try:
            frames = self._framer.feed(data)
        except RemoteProtocolError as exc:
            self._drop(exc.reason, str(exc))
            self._terminate("framing-error")
            return
        for frame in frames:
            if self.record_frames:
                self.received_frames.append(frame)
            self._receive_frame(frame, now)
            if self.state is _CLOSED:
                return
        error = self._framer.error
        if error is not None:
            self._drop(error.reason, str(error))
            self._terminate("framing-error")

    def connection_lost(self, now: float) -> None:
        self._input(I.PEER_DISC, None, now)

    def handle_timer(self, now: float) -> None:
        heap = self._pending_heap
        pending = self._pending
        while heap and heap[0][0] <= now:
            deadline, hbh = heapq.heappop(heap)
            if pending.get(hbh) == deadline:
                del pending[hbh]
                self.events.append(RequestFailed(hbh, "timeout"))
        if self._timer is not None and self._timer <= now:
            self._timer = None
            self._input(I.TIMEOUT, None, now)

    def next_deadline(self) -> float | None:
        heap = self._pending_heap
        pending = self._pending
        while heap and pending.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # answered or failed already
        if heap:
            first = heap[0][0]
            return first if self._timer is None or first < self._timer else self._timer
        return self._timer

    # --- local actions -----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Capabilities exchanged and not closing (the transport is usable)."""
        return self.state in _OPEN

    @property
    def usable(self) -> bool:
        """Open for application requests: open and not in watchdog REOPEN."""
        return self.state in _OPEN and self.watchdog is not WatchdogState.REOPEN

    def send_request(self, msg: Message, now: float, timeout: float | None = None) -> Message:
        """Queue an application request; returns it with its hop-by-hop/end-to-end ids.

        The ids are assigned here unless the message already carries an end-to-end id
        and the T flag (a retransmission after failover keeps its end-to-end id).
        """
        if self.state not in _OPEN or self.watchdog is WatchdogState.REOPEN:
            raise LocalProtocolError(
                f"cannot send a request in state {self.state.value}/{self.watchdog.value}"
            )
        if not msg.is_request:
            raise LocalProtocolError("send_request: message has no R bit")
        hbh, e2e = self.ids.next_ids()
        if msg.flags & FLAG_RETRANSMIT and msg.end_to_end:
            e2e = msg.end_to_end
        msg = msg.with_ids(hbh, e2e)
        self._out.append(codec.encode_message(msg))
        deadline = now + timeout if timeout is not None else float("inf")
        self._pending[hbh] = deadline
        if timeout is not None:
            heapq.heappush(self._pending_heap, (deadline, hbh))
        return msg

    def send_encoded_request(
        self,
        code: int,
        app_id: int,
        body: bytes,
        now: float,
        timeout: float | None = None,
        flags: int = FLAG_REQUEST | FLAG_PROXIABLE,
    ) -> int:
        """Fast path of `send_request` for a prebuilt AVP body; returns the hop-by-hop id."""
        hbh, e2e = self._request_ids(now, timeout)
        self._out.append(codec.encode_parts(code, flags | FLAG_REQUEST, app_id, hbh, e2e, body))
        return hbh

    def send_cx_request(self, request: Any, now: float, timeout: float | None = None) -> int:
        """`send_encoded_request` for a request that encodes itself whole with our ids
        (a Cx request dataclass: `request.encode(hbh, e2e)`, the same octets as its
        header and `encode_body()`, in one join); returns the hop-by-hop id."""
        hbh, e2e = self._request_ids(now, timeout)
        self._out.append(request.encode(hbh, e2e))
        return hbh

    def _request_ids(self, now: float, timeout: float | None) -> tuple[int, int]:
        """The ids of a request about to be queued, pending its answer until `timeout`."""
        if self.state not in _OPEN or self.watchdog is _REOPEN:
            raise LocalProtocolError(
                f"cannot send a request in state {self.state.value}/{self.watchdog.value}"
            )
        ids = self.ids.next_ids()
        hbh = ids[0]
        if timeout is None:
            self._pending[hbh] = float("inf")
        else:
            deadline = self._pending[hbh] = now + timeout
            heapq.heappush(self._pending_heap, (deadline, hbh))
        return ids

    def cancel_request(self, hop_by_hop: int) -> None:
        """Forget a pending request (its caller gave up); a late answer is then dropped."""
        self._pending.pop(hop_by_hop, None)

    def send_answer(self, msg: Message, now: float) -> None:
        """Queue the answer to a RequestReceived (same hop-by-hop and end-to-end ids)."""
        if msg.is_request:
            raise LocalProtocolError("send_answer: message has the R bit")
        self.send_encoded_answer(codec.encode_message(msg), now)

    def send_encoded_answer(self, data: bytes, now: float, end_to_end: int | None = None) -> None:
        """Fast path of `send_answer` for an already encoded answer (header included);
        `end_to_end`: its end-to-end id when the caller has it at hand (else read)."""
        if data[4] & FLAG_REQUEST:
            raise LocalProtocolError("send_answer: message has the R bit")
        if self.remote is not None:
            if end_to_end is None:
                end_to_end = int.from_bytes(data[16:20], "big")
            key = (self.remote.origin_host, end_to_end)
            self._started.discard(key)
            self.duplicates.answered(key, data, now)
        if self.state is _CLOSED:
            self._drop("answer-after-close", f"command {int.from_bytes(data[5:8], 'big')}")
            return
        self._out.append(data)

    def close(self, now: float, cause: int = REBOOTING) -> None:
        """Begin an orderly shutdown: DPR when open (RFC 6733 §5.4), else just close."""
        self._disconnect_cause = cause
        self._input(I.STOP, None, now)

    def messages_to_send(self) -> list[bytes]:
        out = self._out
        self._out = []
        return out

    def pop_events(self) -> list[PeerEvent]:
        events = self.events
        self.events = []
        return events

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # --- the state machine ---------------------------------------------------------------

    def _receive_frame(self, frame: bytes, now: float) -> None:
        try:
            msg = self._decode(frame)
        except RemoteProtocolError as exc:
            self._undecodable(frame, exc, now)
            return
        code = msg.code
        if code in BASE_COMMANDS:
            if code == CMD_DEVICE_WATCHDOG:
                event = I.RCV_DWR if msg.is_request else I.RCV_DWA
            elif code == CMD_CAPABILITIES_EXCHANGE:
                event = I.RCV_CER if msg.is_request else I.RCV_CEA
            else:
                event = I.RCV_DPR if msg.is_request else I.RCV_DPA
        else:
            event = _RCV_REQUEST if msg.flags & FLAG_REQUEST else _RCV_ANSWER
        if self.state in _OPEN and self.watchdog is not _REOPEN:
            # RFC 3539 §3.4.1: any traffic from the peer proves it alive (in REOPEN only
            # a DWA counts: see _do_watchdog_answer).
            self._timer = now + self._tw()
            if self.watchdog is _SUSPECT:
                self._set_watchdog(WatchdogState.OKAY)
        self._input(event, msg, now)

    def _input(self, event: PeerInput, msg: Message | None, now: float) -> None:
        entry = TRANSITIONS.get((self.state, event))
        if entry is None:
            self._drop(
                "unexpected-message",
                f"{event.value} in state {self.state.value}",
            )
            self._terminate("protocol-error")
            return
        action, next_state = entry
        previous = self.state
        self.state = next_state
        _ACTIONS[action](self, msg, now, previous)

    def _do_nothing(self, msg: Message | None, now: float, previous: PeerState) -> None:
        pass

    def _do_send_cer(self, msg: Message | None, now: float, previous: PeerState) -> None:
        hbh, e2e = self.ids.next_ids()
        cer = Message(CMD_CAPABILITIES_EXCHANGE, FLAG_REQUEST, 0, hbh, e2e, self._cea_static)
        self._out.append(codec.encode_message(cer))
        self._timer = now + self.config.cer_timeout

    def _do_process_cer(self, msg: Message | None, now: float, previous: PeerState) -> None:
        assert msg is not None
        try:
            remote = _parse_capabilities(msg)
        except RemoteProtocolError as exc:
            self._drop(exc.reason, str(exc))
            self._answer_cer(msg, exc.result_code, exc.failed_avp)
            self._terminate("cer-invalid")
            return
        if remote.origin_host.lower() not in self.allowed_hosts:
            self._drop("unknown-peer", f"Origin-Host {remote.origin_host!r} is not configured")
            self._answer_cer(msg, DIAMETER_UNKNOWN_PEER, None)
            self._terminate("unknown-peer")
            return
        if not self._common_application(remote):
            self._drop("no-common-application", remote.origin_host)
            self._answer_cer(msg, DIAMETER_NO_COMMON_APPLICATION, None)
            self._terminate("no-common-application")
            return
        self.remote = remote
        self._answer_cer(msg, DIAMETER_SUCCESS, None)
        self._opened(now)

    def _do_process_cea(self, msg: Message | None, now: float, previous: PeerState) -> None:
        assert msg is not None
        result = msg.find(AVP_RESULT_CODE)
        try:
            code = result.u32 if result is not None else None
            remote = _parse_capabilities(msg)
        except RemoteProtocolError as exc:
            self._drop(exc.reason, str(exc))
            self._terminate("cea-invalid")
            return
        if code != DIAMETER_SUCCESS:
            self._drop("cea-refused", f"Result-Code {code}")
            self._terminate("cea-refused")
            return
        expected = self.expected_host
        if expected is not None and remote.origin_host.lower() != expected.lower():
            self._drop("unexpected-peer-host", remote.origin_host)
            self._terminate("unexpected-peer-host")
            return
        if not self._common_application(remote):
            self._drop("no-common-application", remote.origin_host)
            self._terminate("no-common-application")
            return
        self.remote = remote
        self._opened(now)

    def _opened(self, now: float) -> None:
        assert self.remote is not None
        self.events.append(PeerOpened(self.remote))
        if self.remote.origin_host.lower() in self.reopen_hosts:
            # RFC 3539 §3.4.1 DOWN, connection up: NumDWA = 0, DWR now, Pending, REOPEN.
            self.watchdog = WatchdogState.DOWN
            self._set_watchdog(WatchdogState.REOPEN)
            self._num_dwa = 0
            self._send_dwr()
            self._dwa_pending = True
        else:
            self.watchdog = WatchdogState.OKAY
            self._dwa_pending = False
        self._timer = now + self._tw()

    def _do_refuse_before_cer(self, msg: Message | None, now: float, previous: PeerState) -> None:
        assert msg is not None
        self._drop("request-before-cer", f"command {msg.code}")
        self._out.append(
            codec.encode_message(
                codec.error_answer(
                    msg, DIAMETER_UNKNOWN_PEER, self.config.origin_host, self.config.origin_realm
                )
            )
        )
        self._terminate("request-before-cer")

    def _do_refuse_cer_when_open(
        self, msg: Message | None, now: float, previous: PeerState
    ) -> None:
        # RFC 6733 §5.6.4: a second CER on an open connection is an election we lose or
        # a confused peer; either way this connection ends.
        assert msg is not None
        self._drop("cer-when-open", "")
        self._answer_cer(msg, codec.DIAMETER_UNABLE_TO_COMPLY, None)
        self._terminate("cer-when-open")

    def _do_deliver_request(self, msg: Message | None, now: float, previous: PeerState) -> None:
        assert msg is not None and self.remote is not None
        if self.watchdog is _REOPEN:
            # RFC 3539 §3.4.1 REOPEN, receive non-DWA: Throwaway() (no answer either).
            self._drop("reopen-throwaway", f"command {msg.code}")
            return
        if msg.app_id not in self.config.auth_application_ids:
            self._drop("application-unsupported", f"application {msg.app_id}")
            self._error_answer(msg, codec.DIAMETER_APPLICATION_UNSUPPORTED)
            return
        key = (self.remote.origin_host, msg.end_to_end)
        seen = self.duplicates.lookup(key, now)
        if seen is None:
            self.duplicates.started(key)
            self._started.add(key)
            self.events.append(RequestReceived(msg))
        elif seen == "in-progress":
            self._drop("duplicate-in-progress", f"end-to-end 0x{msg.end_to_end:08x}")
        else:
            # Same answer again, with this copy's hop-by-hop id.
            assert isinstance(seen, bytes)
            self._drop("duplicate-request", f"end-to-end 0x{msg.end_to_end:08x}")
            self._out.append(seen[:12] + msg.hop_by_hop.to_bytes(4, "big") + seen[16:])

    def _do_deliver_answer(self, msg: Message | None, now: float, previous: PeerState) -> None:
        assert msg is not None
        if self._pending.pop(msg.hop_by_hop, None) is None:
            self._drop("unknown-hop-by-hop", f"0x{msg.hop_by_hop:08x}")
            return
        self.events.append(AnswerReceived(msg))

    def _do_refuse_while_closing(
        self, msg: Message | None, now: float, previous: PeerState
    ) -> None:
        assert msg is not None
        self._drop("request-while-closing", f"command {msg.code}")
        self._error_answer(msg, codec.DIAMETER_UNABLE_TO_DELIVER)

    def _do_answer_dwr(self, msg: Message | None, now: float, previous: PeerState) -> None:
        assert msg is not None
        avps = [
            codec.ORIGIN_HOST(self.config.origin_host),
            codec.ORIGIN_REALM(self.config.origin_realm),
            codec.RESULT_CODE(DIAMETER_SUCCESS),
        ]
        if self.config.origin_state_id is not None:
            avps.append(codec.ORIGIN_STATE_ID(self.config.origin_state_id))
        dwa = Message(CMD_DEVICE_WATCHDOG, 0, 0, msg.hop_by_hop, msg.end_to_end, tuple(avps))
        self._out.append(codec.encode_message(dwa))

    def _do_watchdog_answer(self, msg: Message | None, now: float, previous: PeerState) -> None:
        if self.watchdog is WatchdogState.REOPEN and previous in _OPEN:
            if not self._dwa_pending:
                self._drop("unsolicited-dwa", "in REOPEN")
                return
            # RFC 3539 §3.4.1 REOPEN, receive DWA: NumDWA++, OKAY at the third.
            self._dwa_pending = False
            self._num_dwa += 1
            if self._num_dwa >= self.config.reopen_dwas:
                self._set_watchdog(WatchdogState.OKAY)
            self._timer = now + self._tw()
            return
        self._dwa_pending = False

    def _do_watchdog_timer(self, msg: Message | None, now: float, previous: PeerState) -> None:
        # RFC 3539 §3.4.1: OKAY: DWR, then SUSPECT if unanswered; SUSPECT: DOWN.
        if self.watchdog is WatchdogState.REOPEN:
            # REOPEN: DWR when none is pending; a DWR unanswered for one Tw sets NumDWA
            # to -1 (the count starts over), unanswered for a second Tw closes (DOWN).
            if not self._dwa_pending:
                self._send_dwr()
                self._dwa_pending = True
            elif self._num_dwa < 0:
                self._set_watchdog(WatchdogState.DOWN)
                self._drop("watchdog-expired", "DWR unanswered in REOPEN")
                self._terminate("watchdog")
                return
            else:
                self._num_dwa = -1
            self._timer = now + self._tw()
        elif self.watchdog is WatchdogState.OKAY and not self._dwa_pending:
            self._send_dwr()
            self._dwa_pending = True
            self._timer = now + self._tw()
        elif self.watchdog is WatchdogState.OKAY:
            self._set_watchdog(WatchdogState.SUSPECT)
            self._timer = now + self._tw()
        else:
            self._set_watchdog(WatchdogState.DOWN)
            self._drop("watchdog-expired", "no traffic for 3 Tw")
            self._terminate("watchdog")

    def _send_dwr(self) -> None:
        hbh, e2e = self.ids.next_ids()
        avps = [
            codec.ORIGIN_HOST(self.config.origin_host),
            codec.ORIGIN_REALM(self.config.origin_realm),
        ]
        if self.config.origin_state_id is not None:
            avps.append(codec.ORIGIN_STATE_ID(self.config.origin_state_id))
        dwr = Message(CMD_DEVICE_WATCHDOG, FLAG_REQUEST, 0, hbh, e2e, tuple(avps))
        self._out.append(codec.encode_message(dwr))

    def _set_watchdog(self, new: WatchdogState) -> None:
        old = self.watchdog
        if old is not new:
            self.watchdog = new
            self.events.append(WatchdogChanged(old, new))

    def _do_send_dpr(self, msg: Message | None, now: float, previous: PeerState) -> None:
        hbh, e2e = self.ids.next_ids()
        cause = self._disconnect_cause
        dpr = Message(
            CMD_DISCONNECT_PEER,
            FLAG_REQUEST,
            0,
            hbh,
            e2e,
            (
                codec.ORIGIN_HOST(self.config.origin_host),
                codec.ORIGIN_REALM(self.config.origin_realm),
                codec.DISCONNECT_CAUSE(cause),
            ),
        )
        self._out.append(codec.encode_message(dpr))
        self._timer = now + self.config.dpa_timeout

    def _do_answer_dpr(self, msg: Message | None, now: float, previous: PeerState) -> None:
        assert msg is not None
        dpa = Message(
            CMD_DISCONNECT_PEER,
            0,
            0,
            msg.hop_by_hop,
            msg.end_to_end,
            (
                codec.ORIGIN_HOST(self.config.origin_host),
                codec.ORIGIN_REALM(self.config.origin_realm),
                codec.RESULT_CODE(DIAMETER_SUCCESS),
            ),
        )
        self._out.append(codec.encode_message(dpa))
        cause_avp = msg.find(AVP_DISCONNECT_CAUSE)
        cause = None
        if cause_avp is not None and len(cause_avp.data) == 4:
            cause = cause_avp.i32
        self._terminate("peer-disconnect", cause)

    def _do_closed_by_dpa(self, msg: Message | None, now: float, previous: PeerState) -> None:
        self._terminate("disconnected-by-us")

    def _do_give_up(self, msg: Message | None, now: float, previous: PeerState) -> None:
        self._terminate("stopped")

    def _do_timed_out(self, msg: Message | None, now: float, previous: PeerState) -> None:
        trigger = {
            S.WAIT_CER: "cer-timeout",
            S.WAIT_I_CEA: "cea-timeout",
            S.WAIT_CONN_ACK: "connect-timeout",
            S.CLOSING: "dpa-timeout",
        }[previous]
        self._drop(trigger, "")
        self._terminate(trigger)

    def _do_disconnected(self, msg: Message | None, now: float, previous: PeerState) -> None:
        self._terminate("connection-lost")

    # --- helpers ---------------------------------------------------------------------------

    def _tw(self) -> float:
        # Tw ± jitter, as tw + rng.uniform(-jitter, jitter) computes it (bit for bit),
        # without its call: every received message sets the timer again.
        return self._tw_base + (self._tw_low + self._tw_span * self._random())

    def _terminate(self, reason: str, cause: int | None = None) -> None:
        self.state = S.CLOSED
        self._timer = None
        # Requests we were still handling: a retransmission on another connection must
        # be processed, not dropped as "in progress" forever.
        for key in self._started:
            self.duplicates.abandon(key)
        self._started.clear()
        if self._pending:
            for hbh in list(self._pending):
                self.events.append(RequestFailed(hbh, "disconnected"))
            self._pending.clear()
            self._pending_heap.clear()
        if not self._closed_reported:
            self._closed_reported = True
            self.events.append(ConnectionTerminated(reason, cause))

    def _drop(self, trigger: str, detail: str) -> None:
        self.counters[trigger] += 1
        if log.isEnabledFor(logging.INFO):
            log.info("diameter drop %s: %s (%s)", trigger, detail, self.config.origin_host)
        self.events.append(MessageDropped(trigger, detail))

    def _undecodable(self, frame: bytes, exc: RemoteProtocolError, now: float) -> None:
        flags, code, app_id, hbh, e2e = codec.peek_header(frame)
        self._drop(exc.reason, str(exc))
        if not flags & FLAG_REQUEST:
            # A broken answer: the request it answers gets no usable answer.
            if self._pending.pop(hbh, None) is not None:
                self.events.append(RequestFailed(hbh, "bad-answer"))
            return
        if self.state not in _OPEN:
            self._terminate("protocol-error")
            return
        stub = Message(code, flags & ~codec.FLAG_ERROR, app_id, hbh, e2e, ())
        self._error_answer(stub, exc.result_code, exc.failed_avp)

    def _error_answer(self, msg: Message, result_code: int, failed: Avp | None = None) -> None:
        answer = codec.error_answer(
            msg,
            result_code,
            self.config.origin_host,
            self.config.origin_realm,
            failed_avp=failed,
        )
        self._out.append(codec.encode_message(answer))

    def _answer_cer(self, cer: Message, result_code: int, failed: Avp | None) -> None:
        avps: list[Avp] = [codec.RESULT_CODE(result_code), *self._cea_static]
        if failed is not None:
            avps.append(codec.FAILED_AVP([failed]))
        flags = codec.FLAG_ERROR if 3000 <= result_code < 4000 else 0
        cea = Message(
            CMD_CAPABILITIES_EXCHANGE, flags, 0, cer.hop_by_hop, cer.end_to_end, tuple(avps)
        )
        self._out.append(codec.encode_message(cea))

    def _capabilities_avps(self) -> tuple[Avp, ...]:
        c = self.config
        avps: list[Avp] = [codec.ORIGIN_HOST(c.origin_host), codec.ORIGIN_REALM(c.origin_realm)]
        avps += [codec.HOST_IP_ADDRESS(ip) for ip in c.host_ip_addresses]
        avps.append(codec.VENDOR_ID(c.vendor_id))
        avps.append(codec.PRODUCT_NAME(c.product_name))
        if c.origin_state_id is not None:
            avps.append(codec.ORIGIN_STATE_ID(c.origin_state_id))
        avps += [codec.SUPPORTED_VENDOR_ID(v) for v in c.supported_vendor_ids]
        # Kamailio's S-CSCF needs the Vendor-Specific-Application-Id form (PITFALLS.md).
        for app in c.auth_application_ids:
            avps.append(
                codec.VENDOR_SPECIFIC_APPLICATION_ID(
                    [codec.VENDOR_ID(VENDOR_3GPP), codec.AUTH_APPLICATION_ID(app)]
                )
            )
        if c.firmware_revision is not None:
            avps.append(codec.FIRMWARE_REVISION(c.firmware_revision))
        return tuple(avps)

    def _common_application(self, remote: RemotePeer) -> bool:
        apps = remote.auth_application_ids
        return RELAY_APPLICATION_ID in apps or any(
            a in apps for a in self.config.auth_application_ids
        )


#: action name of TRANSITIONS -> PeerConnection._do_<name>
_ACTIONS = {name: getattr(PeerConnection, "_do_" + name) for name, _ in set(TRANSITIONS.values())}


def _parse_capabilities(msg: Message) -> RemotePeer:
    """The peer's identity and applications from a CER or CEA (RFC 6733 §5.3.1-2)."""
    host = msg.find(AVP_ORIGIN_HOST)
    realm = msg.find(AVP_ORIGIN_REALM)
    for avp, code in ((host, AVP_ORIGIN_HOST), (realm, AVP_ORIGIN_REALM)):
        if avp is None:
            definition = codec.avp_def(code)
            raise RemoteProtocolError(
                f"{definition.name} missing from capabilities exchange",
                result_code=DIAMETER_MISSING_AVP,
                reason="missing-avp",
                failed_avp=Avp(code, 0, definition.flags, b""),
            )
    assert host is not None and realm is not None
    apps: set[int] = set()
    vendors: set[int] = set()
    ips: list[str] = []
    vendor_id = product = None
    for avp in msg.avps:
        if avp.vendor:
            continue
        c = avp.code
        if c == AVP_AUTH_APPLICATION_ID or c == codec.AVP_ACCT_APPLICATION_ID:
            apps.add(avp.u32)
        elif c == AVP_VENDOR_SPECIFIC_APPLICATION_ID:
            for inner in avp.group:
                if inner.code in (AVP_AUTH_APPLICATION_ID, codec.AVP_ACCT_APPLICATION_ID):
                    apps.add(inner.u32)
        elif c == AVP_SUPPORTED_VENDOR_ID:
            vendors.add(avp.u32)
        elif c == AVP_HOST_IP_ADDRESS:
            ips.append(avp.address)
        elif c == AVP_VENDOR_ID:
            vendor_id = avp.u32
        elif c == AVP_PRODUCT_NAME:
            product = avp.text
    return RemotePeer(
        origin_host=host.text,
        origin_realm=realm.text,
        host_ip_addresses=tuple(ips),
        vendor_id=vendor_id,
        product_name=product,
        auth_application_ids=frozenset(apps),
        supported_vendor_ids=frozenset(vendors),
    )
