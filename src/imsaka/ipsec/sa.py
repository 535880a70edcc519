"""The SA set of one UE registration and its lifetime (TS 33.203 §7.1, §7.4; TS 24.229 §5.1.1.5, §5.2.2).

Four unidirectional ESP transport-mode SAs per set (FACTS §1.1), each keyed by the SPI
that the *receiving* side allocated:

    UE port-c  → P-CSCF port-s   spi = spi-s of the P-CSCF (Security-Server)
    P-CSCF port-s → UE port-c    spi = spi-c of the UE     (Security-Client)
    P-CSCF port-c → UE port-s    spi = spi-s of the UE
    UE port-s  → P-CSCF port-c   spi = spi-c of the P-CSCF

Requests from the UE and the responses to them travel UE port-c ⇄ P-CSCF port-s;
requests from the P-CSCF and their responses travel P-CSCF port-c ⇄ UE port-s. A
response leaves from the local port its request arrived on (`SaSet.reply_sa`). One set
covers UDP and TCP (TS 33.203 §7.1 "The transport protocol selector shall allow UDP
and TCP").

Lifetime, one explicit state table (STYLE.md rule 2), `now` always passed in:

    TEMPORARY   after the 401 (lifetime = reg-await-auth)
        --registered-->   ESTABLISHED (lifetime = max(previous set's, expires + 30 s))
        --discarded-->    REMOVED     (a newer 401 replaces it; nothing is due over it)
        --auth-failed-->  DRAINING    (the 4xx to the protected REGISTER is still due)
        --expired-->      REMOVED
    ESTABLISHED --superseded--> SUPERSEDED (a re-registration's set became established)
        --deregistered--> DRAINING    (the 200 OK to the de-REGISTER is still due)
        --expired-->      DRAINING if a message is due, else REMOVED
    SUPERSEDED  --new-set-used--> REMOVED, or DRAINING while transactions are open
        --expired-->      REMOVED
    DRAINING    --final-sent--> REMOVED when nothing more is due
        --expired-->      REMOVED (the drain deadline: a lost final message cannot pin SAs)

An input not in the table raises LocalProtocolError. The UE deletes its old set "when
the first request or response protected with the newly established set ... is received
... after all SIP transactions that use the old set ... are completed" (24.229
§5.1.1.5.1, SPEC); the P-CSCF mirrors it (UNCONFIRMED verbatim, FACTS §1.2).
"""

from __future__ import annotations

import enum
import heapq
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imsaka.ipsec.errors import LocalProtocolError, PortPoolExhausted, SpiPoolExhausted
from imsaka.ipsec.esp import EspInbound, EspOutbound, EspTransform, forget_keys
from imsaka.ipsec.keys import EspKeys, derive_esp_keys
from imsaka.ipsec.secagree import SecurityMechanism

__all__ = [
    "REG_AWAIT_AUTH",
    "Address",
    "NewRegistrationNeeded",
    "PortPair",
    "PortPool",
    "SaInput",
    "SaSet",
    "SaSetInstalled",
    "SaSetRemoved",
    "SaState",
    "SecurityAssociation",
    "SecurityAssociationTable",
    "SpiAllocator",
]

log = logging.getLogger("imsaka.ipsec.sa")

Address = tuple[str, int]
RandomSource = Callable[[int], bytes]

# TS 24.229 Table 7.8.1: reg-await-auth = 4 min (FACTS §1.2).
REG_AWAIT_AUTH = 240.0
# TS 24.229 §5.1.1.5.1: established lifetime = registration expiry + 30 s.
LIFETIME_MARGIN = 30.0
# How long a DRAINING set waits for its final message (Timer F = 128 s, FACTS §1.2).
DRAIN_GRACE = 128.0


class SaState(enum.Enum):
    TEMPORARY = "temporary"
    ESTABLISHED = "established"
    SUPERSEDED = "superseded"
    DRAINING = "draining"
    REMOVED = "removed"


class SaInput(enum.Enum):
    REGISTERED = "registered"
    DISCARDED = "discarded"
    AUTH_FAILED = "auth-failed"
    SUPERSEDED = "superseded"
    NEW_SET_USED = "new-set-used"
    DEREGISTERED = "deregistered"
    FINAL_SENT = "final-sent"
    EXPIRED = "expired"


S, I = SaState, SaInput  # noqa: E741
# (state, input) -> next state; "drain?" means DRAINING if messages are due, else REMOVED.
_DRAIN_OR_REMOVE = "drain?"
TRANSITIONS: dict[tuple[SaState, SaInput], SaState | str] = {
    (S.TEMPORARY, I.REGISTERED): S.ESTABLISHED,
    (S.TEMPORARY, I.DISCARDED): S.REMOVED,
    (S.TEMPORARY, I.AUTH_FAILED): S.DRAINING,
    (S.TEMPORARY, I.EXPIRED): S.REMOVED,
    (S.ESTABLISHED, I.SUPERSEDED): S.SUPERSEDED,
    (S.ESTABLISHED, I.DEREGISTERED): S.DRAINING,
    (S.ESTABLISHED, I.EXPIRED): _DRAIN_OR_REMOVE,
    (S.ESTABLISHED, I.NEW_SET_USED): S.ESTABLISHED,
    (S.SUPERSEDED, I.NEW_SET_USED): _DRAIN_OR_REMOVE,
    (S.SUPERSEDED, I.EXPIRED): S.REMOVED,
    (S.SUPERSEDED, I.DEREGISTERED): S.DRAINING,
    (S.DRAINING, I.FINAL_SENT): _DRAIN_OR_REMOVE,
    (S.DRAINING, I.EXPIRED): S.REMOVED,
    (S.DRAINING, I.NEW_SET_USED): S.DRAINING,
    (S.DRAINING, I.DEREGISTERED): S.DRAINING,
}
del S, I


# --- allocation ---------------------------------------------------------------------


class SpiAllocator:
    """SPIs for inbound SAs: unique among the live ones, never 0-255 (RFC 4303 §2.1).

    Random (from the injected source) so SPIs are not predictable across
    registrations; an SPI returns to the pool only when its SA is removed.
    """

    __slots__ = ("_live", "_rng", "high", "low")

    def __init__(self, low: int = 0x1000, high: int = 0xFFFFFFFF, rng: RandomSource = os.urandom):
        if not 256 <= low <= high <= 0xFFFFFFFF:
            raise ValueError("spi range: must lie within 256..4294967295")
        self.low, self.high = low, high
        self._rng = rng
        # a dict used as a set: a set's table grows fourfold and stays mostly empty
        # (~240 octets per registered UE at a P-CSCF, two SPIs each), a dict's less
        self._live: dict[int, None] = {}

    def allocate(self, avoid: Iterable[int] = ()) -> int:
        """A fresh SPI, not live and not in `avoid` (e.g. the peer's SPIs on one host)."""
        live = self._live
        # (no copy of the live set per allocation: a P-CSCF holds two per registered UE)
        avoided = {v for v in avoid if self.low <= v <= self.high and v not in live}
        size = self.high - self.low + 1
        if len(live) + len(avoided) >= size:
            raise SpiPoolExhausted("spi: every SPI in the configured range is live")
        for _ in range(64):
            spi = self.low + int.from_bytes(self._rng(4), "big") % size
            if spi not in live and spi not in avoided:
                live[spi] = None
                return spi
        for spi in range(self.low, self.high + 1):  # a crowded small range: scan
            if spi not in live and spi not in avoided:
                live[spi] = None
                return spi
        raise SpiPoolExhausted("spi: every SPI in the configured range is live")  # pragma: no cover

    def release(self, spi: int) -> None:
        self._live.pop(spi, None)

    def take(self, spi: int) -> None:
        """`spi` live again (a set taking over the SPIs of the one it replaces)."""
        if not self.low <= spi <= self.high:
            raise ValueError(f"spi {spi}: outside {self.low}..{self.high}")
        self._live[spi] = None

    def is_live(self, spi: int) -> bool:
        return spi in self._live

    @property
    def live_count(self) -> int:
        return len(self._live)


@dataclass(frozen=True, slots=True)
class PortPair:
    port_c: int
    port_s: int


_PORT_PAIRS: dict[tuple[int, int], PortPair] = {}


def _shared_ports(port_c: int, port_s: int) -> PortPair:
    """One PortPair per (port-c, port-s) seen (a P-CSCF's pair is in every set; bounded)."""
    key = (port_c, port_s)
    known = _PORT_PAIRS.get(key)
    if known is None:
        if len(_PORT_PAIRS) >= 1024:
            _PORT_PAIRS.clear()
        known = _PORT_PAIRS[key] = PortPair(port_c, port_s)
    return known


class PortPool:
    """Protected (port-c, port-s) pairs of the P-CSCF, recycled by reference count.

    Pairs are (first + 2i, first + 2i + 1). Each pair serves up to `sets_per_pair`
    live SA sets (the userspace backend demultiplexes a port by SPI, so sharing is
    safe; 1 gives every UE its own ports as Kamailio does). Allocation prefers the
    least loaded pair; a full pool raises PortPoolExhausted — never a silent reuse.
    """

    __slots__ = ("_use", "pairs", "sets_per_pair")

    def __init__(self, first: int = 5100, count: int = 64, sets_per_pair: int = 1) -> None:
        if count < 1 or sets_per_pair < 1:
            raise ValueError("port pool: count and sets_per_pair must be at least 1")
        if not first >= 1024 or first + 2 * count - 1 > 65535:
            raise ValueError("port pool: ports must lie within 1024..65535")
        self.pairs = [PortPair(first + 2 * i, first + 2 * i + 1) for i in range(count)]
        self.sets_per_pair = sets_per_pair
        self._use = dict.fromkeys(self.pairs, 0)

    def allocate(self) -> PortPair:
        pair = min(self.pairs, key=self._use.__getitem__)
        if self._use[pair] >= self.sets_per_pair:
            raise PortPoolExhausted(
                f"port pool: all {len(self.pairs)} protected port pairs are in use"
            )
        self._use[pair] += 1
        return pair

    def share(self, pair: PortPair) -> PortPair:
        """One more set of the same UE on `pair` (a re-registration keeps the P-CSCF's
        protected ports; only the SPIs change), whatever `sets_per_pair` says."""
        if self._use.get(pair, 0) <= 0:
            raise LocalProtocolError(f"port pool: pair {pair} is not allocated")
        self._use[pair] += 1
        return pair

    def release(self, pair: PortPair) -> None:
        if self._use.get(pair, 0) <= 0:
            raise LocalProtocolError(f"port pool: pair {pair} is not allocated")
        self._use[pair] -= 1

    def in_use(self, pair: PortPair) -> int:
        return self._use.get(pair, 0)


# --- SAs and SA sets ----------------------------------------------------------------


class SecurityAssociation:
    """One unidirectional SA: its selector (addresses, ports) and its ESP state.

    The SA is its own ESP object (`esp` is the SA itself, an `EspInbound` or an
    `EspOutbound`): one object per SA instead of two, four per registered UE at a
    P-CSCF. Attributes: spi, inbound (True: this node receives on it), src, dst, alg,
    ealg, sa_set."""

    __slots__ = ()
    inbound: bool
    src: Address
    dst: Address
    sa_set: SaSet
    spi: int
    alg: str
    ealg: str

    @property
    def esp(self) -> EspInbound | EspOutbound:
        return self  # type: ignore[return-value]

    @property
    def local(self) -> Address:
        return self.dst if self.inbound else self.src

    @property
    def remote(self) -> Address:
        return self.src if self.inbound else self.dst

    def __repr__(self) -> str:
        return (
            f"SecurityAssociation(spi={self.spi!r}, inbound={self.inbound!r}, src={self.src!r}, "
            f"dst={self.dst!r}, alg={self.alg!r}, ealg={self.ealg!r})"
        )


# The SA classes: the ESP side plus the selector (`src`, `dst`) and the set, which
# `SaSet.__init__` fills in right after making each.
class _InboundSa(EspInbound, SecurityAssociation):
    __slots__ = ("dst", "sa_set", "src")
    inbound = True


class _OutboundSa(EspOutbound, SecurityAssociation):
    __slots__ = ("dst", "sa_set", "src")
    inbound = False


@dataclass(frozen=True, slots=True)
class SaSetInstalled:
    sa_set: SaSet


@dataclass(frozen=True, slots=True)
class SaSetRemoved:
    sa_set: SaSet
    reason: str


@dataclass(frozen=True, slots=True)
class NewRegistrationNeeded:
    """An outbound SA of this set nears sequence-number exhaustion (RFC 4303 §3.3.3)."""

    sa_set: SaSet


_SHARED: dict[tuple, tuple] = {}


def _shared(address: tuple) -> tuple:
    """One tuple object per address seen (bounded)."""
    known = _SHARED.get(address)
    if known is None:
        if len(_SHARED) >= 1024:
            _SHARED.clear()
        known = _SHARED[address] = address
    return known


class _SaPair(Mapping):
    """The two SAs of one direction of a set, by SPI (inbound) or local port (outbound):
    a read-only mapping of exactly two entries, a third of a dict's memory (a P-CSCF
    keeps two per registered UE)."""

    __slots__ = ("_k0", "_k1", "_v0", "_v1")

    def __init__(self, k0: int, v0: SecurityAssociation, k1: int, v1: SecurityAssociation) -> None:
        self._k0, self._v0, self._k1, self._v1 = k0, v0, k1, v1

    def __getitem__(self, key: object) -> SecurityAssociation:
        if key == self._k0:
            return self._v0
        if key == self._k1:
            return self._v1
        raise KeyError(key)

    def get(self, key: object, default=None):
        if key == self._k0:
            return self._v0
        if key == self._k1:
            return self._v1
        return default

    def __contains__(self, key: object) -> bool:
        return key == self._k0 or key == self._k1

    def __iter__(self) -> Iterator[int]:
        yield self._k0
        yield self._k1

    def __len__(self) -> int:
        return 2

    def values(self):  # type: ignore[override]
        return (self._v0, self._v1)

    def items(self):  # type: ignore[override]
        return ((self._k0, self._v0), (self._k1, self._v1))

    def __repr__(self) -> str:
        return f"{{{self._k0!r}: {self._v0!r}, {self._k1!r}: {self._v1!r}}}"


class SaSet:
    """Four SAs between one UE contact and the P-CSCF, with one lifetime and one state."""

    __slots__ = (
        "__weakref__",
        "_expires_at",
        "_on_deadline",
        "_scheduled",
        "created",
        "final_due",
        "id",
        "inbound",
        "keys",
        "local_role",
        "open_transactions",
        "outbound",
        "pcscf_ip",
        "pcscf_ports",
        "pcscf_spis",
        "port_pair",
        "state",
        "ue_ip",
        "ue_ports",
        "ue_spis",
        "used",
    )

    def __init__(
        self,
        *,
        set_id: int,
        local_role: str,
        ue_ip: str,
        pcscf_ip: str,
        ue_ports: PortPair,
        pcscf_ports: PortPair,
        ue_spis: tuple[int, int],
        pcscf_spis: tuple[int, int],
        keys: EspKeys,
        now: float,
        lifetime: float,
        rng: RandomSource = os.urandom,
        port_pair: PortPair | None = None,
    ) -> None:
        if local_role not in ("ue", "pcscf"):
            raise LocalProtocolError("local_role: 'ue' or 'pcscf'")
        if len({*ue_spis, *pcscf_spis}) != 4:
            # One key serves all four SAs (Annex I): equal SPIs would make their
            # traffic indistinguishable and their GCM nonces collide.
            raise LocalProtocolError("spi: the four SPIs of an SA set must differ")
        self.id = set_id
        self.local_role = local_role
        self.ue_ip, self.pcscf_ip = ue_ip, pcscf_ip
        self.ue_ports, self.pcscf_ports = ue_ports, pcscf_ports
        self.ue_spis, self.pcscf_spis = ue_spis, pcscf_spis  # (spi-c, spi-s)
        self.keys = keys
        self.created = now
        # The owning table watches every change of the lifetime (its deadline heap).
        # (the table itself, not a bound method of it: one object fewer per set)
        self._on_deadline: SecurityAssociationTable | None = None
        self._scheduled: float | None = None  # due time of its entry in the table's heap
        self._expires_at = now + lifetime
        self.state = SaState.TEMPORARY
        self.final_due = 0
        self.open_transactions = 0
        self.used = False
        self.port_pair = port_pair
        ue_c, ue_s = (ue_ip, ue_ports.port_c), (ue_ip, ue_ports.port_s)
        # the P-CSCF's protected addresses are the same for every set it holds
        p_c, p_s = _shared((pcscf_ip, pcscf_ports.port_c)), _shared((pcscf_ip, pcscf_ports.port_s))
        # (spi, src, dst): the four SAs of TS 33.203 §7.1.
        layout = (
            (pcscf_spis[1], ue_c, p_s),
            (ue_spis[0], p_s, ue_c),
            (ue_spis[1], p_c, ue_s),
            (pcscf_spis[0], ue_s, p_c),
        )
        # The UE receives on SAs 1 and 2 (towards its ports), the P-CSCF on 0 and 3.
        receiving_at = (1, 2) if local_role == "ue" else (0, 3)
        inbound: list = []
        outbound: list = []  # keyed by local port
        # One transform for the four SAs (one key set), built on the first packet.
        transform = EspTransform(keys, rng)
        for index, (spi, src, dst) in enumerate(layout):
            receiving = index in receiving_at
            sa: SecurityAssociation = (
                _InboundSa(spi, keys, transform=transform)
                if receiving
                else _OutboundSa(spi, keys, rng=rng, transform=transform)
            )
            sa.src, sa.dst, sa.sa_set = src, dst, self
            if receiving:
                inbound += (spi, sa)
            else:
                outbound += (src[1], sa)
        self.inbound: Mapping[int, SecurityAssociation] = _SaPair(*inbound)
        self.outbound: Mapping[int, SecurityAssociation] = (
            _SaPair(*outbound)
            if outbound[0] != outbound[2]
            else {outbound[2]: outbound[3]}  # one port for both (as a dict keeps it)
        )

    @property
    def expires_at(self) -> float:
        return self._expires_at

    @expires_at.setter
    def expires_at(self, value: float) -> None:
        self._expires_at = value
        if self._on_deadline is not None:
            self._on_deadline._schedule(self)

    def __repr__(self) -> str:
        return (
            f"<SaSet #{self.id} {self.local_role} {self.state.value} ue={self.ue_ip}"
            f" {self.ue_ports.port_c}/{self.ue_ports.port_s} pcscf={self.pcscf_ip}"
            f" {self.pcscf_ports.port_c}/{self.pcscf_ports.port_s} {self.keys.alg}/{self.keys.ealg}>"
        )

    @property
    def local_ports(self) -> PortPair:
        return self.ue_ports if self.local_role == "ue" else self.pcscf_ports

    @property
    def remote_ports(self) -> PortPair:
        return self.pcscf_ports if self.local_role == "ue" else self.ue_ports

    @property
    def local_ip(self) -> str:
        return self.ue_ip if self.local_role == "ue" else self.pcscf_ip

    @property
    def remote_ip(self) -> str:
        return self.pcscf_ip if self.local_role == "ue" else self.ue_ip

    @property
    def all_sas(self) -> list[SecurityAssociation]:
        return [*self.inbound.values(), *self.outbound.values()]

    # client_sa / server_sa / reply_sa are methods (lookups in the outbound table, the
    # last one with an argument); the set's plain attributes (local_ports, live, ...)
    # are properties. Callers always call them: `sa_set.client_sa()`.
    def client_sa(self) -> SecurityAssociation:
        """Outbound SA for requests this node originates (from its protected client port)."""
        return self.outbound[self.local_ports.port_c]

    def server_sa(self) -> SecurityAssociation:
        """Outbound SA from the protected server port (responses to the peer's requests)."""
        return self.outbound[self.local_ports.port_s]

    def reply_sa(self, arrived_on: SecurityAssociation) -> SecurityAssociation:
        """The outbound SA leaving from the port `arrived_on` delivered to."""
        if arrived_on.sa_set is not self or not arrived_on.inbound:
            raise LocalProtocolError("reply_sa: not an inbound SA of this set")
        return self.outbound[arrived_on.dst[1]]

    def needs_new_registration(self) -> bool:
        # (asked per message sent: a loop, no generator; an outbound SA is its own
        # `EspOutbound`)
        for sa in self.outbound.values():  # noqa: SIM110 - no generator per call
            if sa.needs_new_registration:  # type: ignore[attr-defined]
                return True
        return False

    @property
    def live(self) -> bool:
        return self.state is not SaState.REMOVED

    def usable_for_sending(self) -> bool:
        return self.state in (
            SaState.TEMPORARY,
            SaState.ESTABLISHED,
            SaState.SUPERSEDED,
            SaState.DRAINING,
        )

    def counters(self) -> dict[int, tuple[int, ...]]:
        """Every SA's ESP sequence state by SPI: (last sequence number sent,) for an
        outbound SA, (highest received, replay bitmap) for an inbound one; what
        `SecurityAssociationTable.restore` takes back."""
        out: dict[int, tuple[int, ...]] = {}
        for sa in self.outbound.values():
            out[sa.spi] = (sa.seq,)  # type: ignore[attr-defined]
        for sa in self.inbound.values():
            out[sa.spi] = (sa.top, sa.bitmap)  # type: ignore[attr-defined]
        return out

    def drop_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for sa in self.inbound.values():
            for reason, n in sa.esp.drops.items():  # type: ignore[union-attr]
                out[reason] = out.get(reason, 0) + n
        return out


# --- the per-node table -------------------------------------------------------------


@dataclass(slots=True)
class _Contact:
    temporary: SaSet | None = None
    established: SaSet | None = None
    # superseded / draining sets: a tuple, () for most contacts (an empty list per
    # registered UE cost 56 octets)
    old: tuple[SaSet, ...] = ()


class SecurityAssociationTable:
    """Every SA set of one node (a P-CSCF or a UE), its SPIs, ports and lifetimes.

    Sans-I/O: callers pass `now`; the table queues `SaSetInstalled`, `SaSetRemoved` and
    `NewRegistrationNeeded` events that the backend drains with `next_event()` (to
    install or delete kernel SAs, open or close sockets, rewrite the key file).
    `contact` is the caller's key for one UE registration flow (e.g. (IMPI, UE IP,
    UE port-s)); the table never interprets it.
    """

    def __init__(
        self,
        local_role: str,
        *,
        spis: SpiAllocator | None = None,
        ports: PortPool | None = None,
        rng: RandomSource = os.urandom,
        reg_await_auth: float = REG_AWAIT_AUTH,
        drain_grace: float = DRAIN_GRACE,
    ) -> None:
        if local_role not in ("ue", "pcscf"):
            raise LocalProtocolError("local_role: 'ue' or 'pcscf'")
        self.local_role = local_role
        self.spis = spis or SpiAllocator(rng=rng)
        self.ports = ports
        self.rng = rng
        self.reg_await_auth = reg_await_auth
        self.drain_grace = drain_grace
        self._contacts: dict[object, _Contact] = {}
        self._set_contact: dict[int, object] = {}
        self._by_spi: dict[int, SecurityAssociation] = {}
        self._sets: dict[int, SaSet] = {}
        self._events: deque = deque()
        self._next_id = 1
        self._rereg_signalled: set[int] = set()
        # (expires_at, set id) for every lifetime a set has had; entries whose set is
        # gone or whose lifetime moved are skipped when they surface (lazy deletion),
        # so a message or timer costs O(log n), not a walk over every set.
        self._deadlines: list[tuple[float, int]] = []
        # Counts the entries pushed on `_deadlines`: only a push can bring a deadline
        # earlier than `next_deadline()` was (a lifetime moving later or a set leaving
        # cannot), so a caller whose wake-up was armed for it at an unchanged count
        # keeps it (it wakes early at worst, finds nothing due and asks again).
        self.deadline_version = 0
        # the sets that carried a message since `take_used` (None: nobody asks)
        self._used: list[SaSet] | None = None

    def track_use(self) -> None:
        """From now on `take_used` names the sets that carried a message since it was
        last called (a P-CSCF's state store writes their counters again)."""
        if self._used is None:
            self._used = []
            for s in self._sets.values():
                s.used = False

    def take_used(self) -> list[SaSet]:
        """The sets (still in the table or not) that carried a message since the last
        call, each once; their `used` flags cleared."""
        used = self._used
        if not used:
            return []
        self._used = []
        for s in used:
            s.used = False
        return used

    def _mark_used(self, sa_set: SaSet) -> None:
        sa_set.used = True
        if self._used is not None:
            self._used.append(sa_set)

    # -- queries

    def lookup_inbound(self, spi: int) -> SecurityAssociation | None:
        return self._by_spi.get(spi)

    def sets(self) -> list[SaSet]:
        return list(self._sets.values())

    def live_sas(self) -> list[SecurityAssociation]:
        return [sa for s in self._sets.values() for sa in s.all_sas]

    def current(self, contact: object) -> SaSet | None:
        """The set to originate messages on: the newest established, else the temporary."""
        c = self._contacts.get(contact)
        if c is None:
            return None
        return c.established or c.temporary

    def temporary(self, contact: object) -> SaSet | None:
        c = self._contacts.get(contact)
        return None if c is None else c.temporary

    def next_event(self):
        return self._events.popleft() if self._events else None

    # -- allocation for the offer/answer

    def allocate_local(
        self, avoid: Iterable[int] = (), contact: object = None
    ) -> tuple[tuple[int, int], PortPair | None]:
        """Two fresh inbound SPIs (spi-c, spi-s) and, at the P-CSCF, a protected port pair.

        Call before building Security-Client (UE) or Security-Server (P-CSCF); pass the
        result to `create_temporary`, or give it back with `release_local`. `avoid`: the
        peer's SPIs (both ends may share one host). With `contact`, a UE that already
        has a live set keeps the P-CSCF's port pair (re-registration, a new 401).
        """
        avoid = set(avoid)
        spi_c = self.spis.allocate(avoid)
        try:
            spi_s = self.spis.allocate(avoid | {spi_c})
        except Exception:
            self.spis.release(spi_c)
            raise
        pair = None
        if self.ports is not None:
            try:
                existing = self._live_pair(contact)
                pair = self.ports.share(existing) if existing else self.ports.allocate()
            except Exception:
                self.spis.release(spi_c)
                self.spis.release(spi_s)
                raise
        return (spi_c, spi_s), pair

    def _live_pair(self, contact: object) -> PortPair | None:
        c = self._contacts.get(contact) if contact is not None else None
        if c is None:
            return None
        for s in (c.established, c.temporary, *c.old):
            if s is not None and s.live and s.port_pair is not None:
                return s.port_pair
        return None

    def release_local(self, spis: tuple[int, int], pair: PortPair | None = None) -> None:
        for spi in spis:
            self.spis.release(spi)
        if pair is not None and self.ports is not None:
            self.ports.release(pair)

    # -- lifecycle inputs

    def create_temporary_from(
        self, contact: object, p: Any, *, now: float, keys: EspKeys | None = None
    ) -> SaSet:
        """`create_temporary` from the flat parameters both ends keep after the 401:
        `p` has alg, ealg, the UE's spi_uc/spi_us/port_uc/port_us, the P-CSCF's
        spi_pc/spi_ps/port_pc/port_ps, ue_host, pcscf_host, ik and ck (or `keys`, the
        ESP keys already expanded from them)."""
        client = SecurityMechanism(
            alg=p.alg,
            ealg=p.ealg,
            spi_c=p.spi_uc,
            spi_s=p.spi_us,
            port_c=p.port_uc,
            port_s=p.port_us,
        )
        server = SecurityMechanism(
            alg=p.alg,
            ealg=p.ealg,
            spi_c=p.spi_pc,
            spi_s=p.spi_ps,
            port_c=p.port_pc,
            port_s=p.port_ps,
        )
        return self.create_temporary(
            contact,
            now=now,
            ue_ip=p.ue_host,
            pcscf_ip=p.pcscf_host,
            client=client,
            server=server,
            ik=p.ik,
            ck=p.ck,
            keys=keys,
        )

    def create_temporary(
        self,
        contact: object,
        *,
        now: float,
        ue_ip: str,
        pcscf_ip: str,
        client: SecurityMechanism,
        server: SecurityMechanism,
        ik: bytes,
        ck: bytes,
        port_pair: PortPair | None = None,
        keys: EspKeys | None = None,
    ) -> SaSet:
        """After the 401 (P-CSCF: when forwarding it; UE: on receiving it).

        `client` is the chosen Security-Client entry (UE's spi-c/spi-s/port-c/port-s),
        `server` the Security-Server entry (P-CSCF's). The SPIs this node receives on
        must come from `allocate_local`. Any earlier temporary set of the contact is
        discarded (TS 24.229 §5.2.2 / §5.1.1.5.1); its own SPIs pass to the new set
        when it names them again (a UE's Security-Client is the same in its challenge
        response, so a new challenge to that response is answered over the same SPIs).
        """
        for m, who in ((client, "Security-Client"), (server, "Security-Server")):
            if not m.has_sa_parameters():
                raise LocalProtocolError(f"{who}: lacks alg, spi-c, spi-s, port-c or port-s")
        # Annex H tokens are compared case-insensitively (a UE may write HMAC-SHA-1-96).
        # interned: the set's keys and its four SAs keep these names for its lifetime
        alg = sys.intern((server.alg or "").lower())
        ealg = sys.intern(server.effective_ealg.lower())
        if ((client.alg or "").lower(), client.effective_ealg.lower()) != (alg, ealg):
            raise LocalProtocolError("alg/ealg: Security-Client and Security-Server differ")
        if len({client.spi_c, client.spi_s, server.spi_c, server.spi_s}) != 4:
            raise LocalProtocolError("spi: the four SPIs of an SA set must differ")
        if keys is None:
            keys = derive_esp_keys(alg, ealg, ik=ik, ck=ck)
        elif (keys.alg, keys.ealg) != (alg, ealg):
            raise LocalProtocolError("keys: for another alg/ealg than the set's")
        own = server if self.local_role == "pcscf" else client
        earlier = self._contacts.get(contact)
        replaced = earlier.temporary if earlier is not None else None
        taken_over: tuple[int, ...] = ()
        if replaced is not None:
            mine = replaced.pcscf_spis if self.local_role == "pcscf" else replaced.ue_spis
            taken_over = tuple(spi for spi in (own.spi_c, own.spi_s) if spi in mine)
        for spi in (own.spi_c, own.spi_s):
            if spi in taken_over:
                continue
            if not self.spis.is_live(spi) or spi in self._by_spi:  # type: ignore[arg-type]
                raise LocalProtocolError(f"spi {spi}: not allocated by allocate_local")
        if replaced is not None:
            self._apply(replaced, SaInput.DISCARDED, now, "replaced by a newer 401")
            for spi in taken_over:
                self.spis.take(spi)  # released with the discarded set: the new one's now
        c = self._contacts.setdefault(contact, _Contact())  # the discard may have dropped it
        sa_set = SaSet(
            set_id=self._next_id,
            local_role=self.local_role,
            ue_ip=ue_ip,
            pcscf_ip=pcscf_ip,
            ue_ports=PortPair(client.port_c, client.port_s),  # type: ignore[arg-type]
            pcscf_ports=_shared_ports(server.port_c, server.port_s),  # type: ignore[arg-type]
            ue_spis=(client.spi_c, client.spi_s),  # type: ignore[arg-type]
            pcscf_spis=(server.spi_c, server.spi_s),  # type: ignore[arg-type]
            keys=keys,
            now=now,
            lifetime=self.reg_await_auth,
            rng=self.rng,
            port_pair=port_pair,
        )
        self._next_id += 1
        c.temporary = sa_set
        self._sets[sa_set.id] = sa_set
        sa_set._on_deadline = self
        self._schedule(sa_set)
        self._set_contact[sa_set.id] = contact
        for spi, sa in sa_set.inbound.items():
            self._by_spi[spi] = sa
        self._events.append(SaSetInstalled(sa_set))
        return sa_set

    def registered(self, sa_set: SaSet, *, expires: float, now: float) -> None:
        """The 200 OK to the REGISTER protected by the temporary `sa_set` (24.229 §5.1.1.5.1)."""
        c = self._contact_of(sa_set)
        previous = c.established
        lifetime_end = now + expires + LIFETIME_MARGIN
        if previous is not None:
            lifetime_end = max(lifetime_end, previous.expires_at)
        self._apply(sa_set, SaInput.REGISTERED, now)
        sa_set.expires_at = lifetime_end
        if c.temporary is sa_set:
            c.temporary = None
        if previous is not None:
            self._apply(previous, SaInput.SUPERSEDED, now)
            c.old = (*c.old, previous)
        c.established = sa_set

    def restore(
        self,
        contact: object,
        p: Any,
        keys: EspKeys,
        *,
        established: bool,
        expires_at: float,
        counters: Mapping[int, Sequence[int]],
        now: float,
    ) -> SaSet:
        """A set this node held before a restart, as `SaSet.counters` and its
        parameters (`create_temporary_from`'s `p`, with `keys` in place of IK/CK) gave
        it: temporary (a challenge's, its protected REGISTER still to come) or
        established, with its lifetime and every SA's sequence number or replay window
        as they were, so that neither end sees a sequence number again (RFC 4303
        §3.3.3, §3.4.3). Its own SPIs must not be live here."""
        own = (p.spi_pc, p.spi_ps) if self.local_role == "pcscf" else (p.spi_uc, p.spi_us)
        for spi in own:
            if self.spis.is_live(spi) or spi in self._by_spi:
                raise LocalProtocolError(f"spi {spi}: already live")
        for spi in own:
            self.spis.take(spi)
        try:
            sa_set = self.create_temporary_from(contact, p, now=now, keys=keys)
        except Exception:
            for spi in own:
                self.spis.release(spi)
            raise
        if established:
            self.registered(sa_set, expires=0.0, now=now)
        sa_set.expires_at = expires_at
        for sa in sa_set.all_sas:
            value = counters.get(sa.spi)
            if value is None:
                continue
            if sa.inbound:
                sa.top, sa.bitmap = int(value[0]), int(value[1]) & sa.mask  # type: ignore[attr-defined]
            else:
                sa.seq = int(value[0])  # type: ignore[attr-defined]
        return sa_set

    def reregistered(self, sa_set: SaSet, *, expires: float, now: float) -> None:
        """A 200 OK to a re-REGISTER that was not challenged: only the lifetime moves."""
        if sa_set.state is not SaState.ESTABLISHED:
            raise LocalProtocolError(f"reregistered: set is {sa_set.state.value}")
        sa_set.expires_at = max(sa_set.expires_at, now + expires + LIFETIME_MARGIN)

    def auth_failed(self, sa_set: SaSet, *, now: float, response_due: bool = True) -> None:
        """Authentication failed on the temporary set; delete it after the 4xx goes out.

        The draining set leaves the contact's temporary slot at once, so the next 401
        for the same contact installs a new temporary set while the 4xx is still due
        over this one."""
        if response_due:
            sa_set.final_due += 1
        self._apply(sa_set, SaInput.AUTH_FAILED, now, "authentication failed")

    def deregistered(self, sa_set: SaSet, *, now: float, final_messages: int = 1) -> None:
        """De-registration: the set goes once `final_messages` (e.g. the 200 OK to the
        de-REGISTER) have gone out over it (PITFALLS: 'SAs deleted too early')."""
        sa_set.final_due += final_messages
        self._apply(sa_set, SaInput.DEREGISTERED, now, "de-registered")

    def message_sent(self, sa_set: SaSet, *, now: float, final: bool = False) -> None:
        """A message left protected over `sa_set`; `final`: it was one that was due."""
        if not sa_set.used:
            self._mark_used(sa_set)
        if final and sa_set.final_due > 0:
            sa_set.final_due -= 1
            if sa_set.state is SaState.DRAINING:
                self._apply(sa_set, SaInput.FINAL_SENT, now, "final message sent")
        self._check_exhaustion(sa_set)

    def message_received(self, sa_set: SaSet, *, now: float) -> None:
        """A message arrived over `sa_set`: the first one on a newer set retires the old."""
        if not sa_set.used:
            self._mark_used(sa_set)
        c = self._contact_of(sa_set)
        if c.old and c.established is sa_set:
            for old in list(c.old):
                if old.state is SaState.SUPERSEDED:
                    self._apply(old, SaInput.NEW_SET_USED, now, "replaced by a newer set")

    def transaction_started(self, sa_set: SaSet) -> None:
        sa_set.open_transactions += 1

    def transaction_finished(self, sa_set: SaSet, *, now: float) -> None:
        if sa_set.open_transactions <= 0:
            raise LocalProtocolError("transaction_finished: no open transaction on this set")
        sa_set.open_transactions -= 1
        if sa_set.state is SaState.DRAINING and not self._due(sa_set):
            self._apply(sa_set, SaInput.FINAL_SENT, now, "last transaction finished")

    def answers_only(self, sa_set: SaSet, *, until: float, now: float, reason: str) -> None:
        """The registration of `sa_set` ended by a request that came over it (a UE's
        terminated reg-event NOTIFY, TS 24.229 §5.1.1.7): nothing new goes out over it,
        but the answer to that request's retransmissions still does, until `until` (its
        server transaction's end, Timer J), when the set goes. A set not established
        goes now."""
        if sa_set.state not in (SaState.ESTABLISHED, SaState.SUPERSEDED):
            self.remove(sa_set, now=now, reason=reason)
            return
        sa_set.final_due += 1  # (released by its lifetime, not by a message)
        self._apply(sa_set, SaInput.DEREGISTERED, now, reason)
        if until < sa_set.expires_at:
            sa_set.expires_at = until
            self._schedule(sa_set)

    def remove(self, sa_set: SaSet, *, now: float, reason: str = "removed by request") -> None:
        """Drop one set now (its owner decided nothing more is due over it, e.g. the
        set a challenged re-registration replaced, TS 33.203 §7.4). A removed set is
        left alone."""
        if sa_set.live and sa_set.id in self._sets:
            self._remove(sa_set, reason)

    def remove_contact(self, contact: object, *, now: float) -> None:
        """Drop every set of a contact at once (administrative; nothing due is waited for)."""
        c = self._contacts.get(contact)
        if c is None:
            return
        for s in [c.temporary, c.established, *c.old]:
            if s is not None and s.live:
                self._remove(s, "removed by request")

    # -- time

    # One heap entry per live set, `_scheduled` its due time: a lifetime that moves
    # later (temporary -> registered) keeps the earlier entry, moved on when it
    # surfaces; one that moves earlier gets a new entry (the old one is then stale).

    def _front(self) -> tuple[float, SaSet] | None:
        """The earliest live entry, with lifetimes that moved later moved on first."""
        heap = self._deadlines
        while heap:
            deadline, set_id = heap[0]
            s = self._sets.get(set_id)
            if s is None or not s.live or s._scheduled != deadline:
                heapq.heappop(heap)
                continue
            if s.expires_at != deadline:
                s._scheduled = s.expires_at
                heapq.heapreplace(heap, (s.expires_at, set_id))
                continue
            return deadline, s
        return None

    def next_deadline(self) -> float | None:
        front = self._front()
        return None if front is None else front[0]

    def handle_timer(self, now: float) -> None:
        heap = self._deadlines
        while (front := self._front()) is not None and front[0] <= now:
            heapq.heappop(heap)
            s = front[1]
            s._scheduled = None
            self._apply(s, SaInput.EXPIRED, now, "lifetime expired")

    def _schedule(self, sa_set: SaSet) -> None:
        due = sa_set.expires_at
        if sa_set._scheduled is not None and sa_set._scheduled <= due:
            return  # the earlier entry surfaces first and moves on to `due`
        sa_set._scheduled = due
        heapq.heappush(self._deadlines, (due, sa_set.id))
        self.deadline_version += 1
        if len(self._deadlines) > 64 + 2 * len(self._sets):
            # Entries of removed sets and of lifetimes moved earlier: compact now and
            # then so the heap stays proportional to the live sets.
            self._deadlines = [
                (s._scheduled, i)
                for i, s in self._sets.items()
                if s.live and s._scheduled is not None
            ]
            heapq.heapify(self._deadlines)

    # -- internals

    def _due(self, sa_set: SaSet) -> bool:
        return sa_set.final_due > 0 or sa_set.open_transactions > 0

    def _contact_of(self, sa_set: SaSet) -> _Contact:
        contact = self._set_contact.get(sa_set.id)
        if contact is None or sa_set.id not in self._sets:
            raise LocalProtocolError(f"{sa_set!r}: not a live set of this table")
        return self._contacts[contact]

    def _apply(self, sa_set: SaSet, event: SaInput, now: float, reason: str = "") -> None:
        nxt = TRANSITIONS.get((sa_set.state, event))
        if nxt is None:
            raise LocalProtocolError(
                f"sa set #{sa_set.id}: input {event.value} not allowed in state {sa_set.state.value}"
            )
        if nxt == _DRAIN_OR_REMOVE:
            nxt = SaState.DRAINING if self._due(sa_set) else SaState.REMOVED
        if nxt is SaState.DRAINING and sa_set.state is not SaState.DRAINING:
            # A drain waits at most drain_grace for what is due, never longer than the
            # set's own lifetime unless the lifetime is what ended.
            grace_end = now + self.drain_grace
            sa_set.expires_at = (
                grace_end if event is SaInput.EXPIRED else min(sa_set.expires_at, grace_end)
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "sa set #%d %s --%s--> %s", sa_set.id, sa_set.state.value, event.value, nxt.value
            )  # type: ignore[union-attr]
        if nxt is SaState.REMOVED:
            self._remove(sa_set, reason or event.value)
            return
        sa_set.state = nxt  # type: ignore[assignment]
        if nxt is SaState.DRAINING:
            # A draining set only waits for what is due over it: it is no longer the
            # contact's temporary or established set, so a new 401 or a new
            # registration of that contact can install its own (the root of the
            # "temporary slot still points at the draining set" fault).
            c = self._contacts.get(self._set_contact.get(sa_set.id))
            if c is not None:
                moved = False
                if c.temporary is sa_set:
                    c.temporary, moved = None, True
                if c.established is sa_set:
                    c.established, moved = None, True
                if moved and sa_set not in c.old:
                    c.old = (*c.old, sa_set)

    def _remove(self, sa_set: SaSet, reason: str) -> None:
        sa_set.state = SaState.REMOVED
        forget_keys(sa_set.keys)
        sa_set._on_deadline = None
        for spi in sa_set.inbound:
            self._by_spi.pop(spi, None)
        own = sa_set.pcscf_spis if self.local_role == "pcscf" else sa_set.ue_spis
        for spi in own:
            self.spis.release(spi)
        if sa_set.port_pair is not None and self.ports is not None:
            self.ports.release(sa_set.port_pair)
        self._sets.pop(sa_set.id, None)
        self._rereg_signalled.discard(sa_set.id)
        contact = self._set_contact.pop(sa_set.id, None)
        c = self._contacts.get(contact)
        if c is not None:
            if c.temporary is sa_set:
                c.temporary = None
            if c.established is sa_set:
                c.established = None
            if sa_set in c.old:
                c.old = tuple(s for s in c.old if s is not sa_set)
            if c.temporary is None and c.established is None and not c.old:
                del self._contacts[contact]
        self._events.append(SaSetRemoved(sa_set, reason))

    def _check_exhaustion(self, sa_set: SaSet) -> None:
        if sa_set.id not in self._rereg_signalled and sa_set.needs_new_registration():
            self._rereg_signalled.add(sa_set.id)
            self._events.append(NewRegistrationNeeded(sa_set))
