"""What a P-CSCF hands to the one that follows it across a restart.

A P-CSCF keeps its registrations, SA sets and reg-event subscriptions in memory (TS
24.229 §5.2.2, §5.2.3; TS 33.203 §7). A new process knows none of them: a UE finds out
at its next refresh, which the usual grant puts up to a week away, and registers anew.
With the kernel's SAs (XFRM) the ESP state outlives the process; the userspace backend
keeps it in the process, so it is written out here instead, and read back by the next
start: all at once on a stop asked for (SIGTERM: ``[pcscf].state_file``, exact), or
record by record as it runs (``[pcscf].state_store``, `imsaka.cscf.pcscf_store`: as
last written, after a crash too):

- every registration that is established or challenged (its temporary set awaiting
  the protected REGISTER), and one the network ended whose last answer or NOTIFY is
  still due over its SAs (released when that has passed, or a transaction's life
  after the start);
- its SA sets, with the ESP keys expanded from IK/CK (TS 33.203 Annex I; never IK/CK
  themselves, which the P-CSCF does not keep), their lifetimes, and every SA's
  sequence state: the last sequence number sent on each outbound SA, the highest
  received and the replay bitmap of each inbound one, so that the UE sees no sequence
  number again and no packet received before the stop is accepted after it (RFC 4303
  §3.3.3, §3.4.3);
- its Security-Server / Security-Client texts (the next REGISTER's Security-Verify is
  checked against them, RFC 3329 §2.3.1), Service-Route, P-Associated-URI, contact;
- its reg-event subscription's dialog (RFC 6665 §4.1; RFC 3261 §12), so the S-CSCF's
  NOTIFYs keep finding it and the refresh comes when it was due.

Also carried: the sets held for the retransmissions of the REGISTER whose last answer
they carried (a de-REGISTER's 200 OK: `PcscfCore.held_sets`), with that answer
(`held_record`; in the store, under their key, a NUL and our spi-s, which no IMPI
holds). What else is under way (forwarded requests awaiting an answer, a set a
re-registration superseded) is not: the UE's and the core's retransmissions finish
those transactions through the new process, which forwards them under the branches
its predecessor used.

Sans-I/O: `dump` turns a core's state into a JSON-ready document (`record_of` one
registration's record, `held_record` one held set's), `load` a document back into
what `PcscfCore.adopt` and `SecurityAssociationTable.restore` take (`crashed`: counters
as written some time before the stop, moved on). Times are kept as seconds left at
`saved_at` (wall clock; the document's, or a record's own), since the monotonic clocks
of two processes share no origin. The document holds ESP keys: the file is written
readable by its owner only and deleted once read; the store is the operator's Redis.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imsaka.cscf.pcscf import (
    TRANSACTION_LIFETIME,
    PcscfCore,
    PcscfSa,
    Registration,
    RegState,
)
from imsaka.cscf.pcscf_regsub import RegEventSubscription
from imsaka.ipsec.keys import EspKeys
from imsaka.ipsec.sa import SaSet, SaState

__all__ = [
    "FORMAT",
    "SEQ_MARGIN",
    "VERSION",
    "RestoredHold",
    "RestoredRegistration",
    "RestoredSet",
    "StateError",
    "dump",
    "held_record",
    "load",
    "record_of",
]

FORMAT = "imsaka-pcscf-state"
VERSION = 1
# After a crash: how far past the last written sequence number an outbound SA goes on
# (more than any SA carries between two writes of a store; 2^32 - 1 numbers in all, and
# the P-CSCF asks for a new registration 65,536 before the end, `EspOutbound`)
SEQ_MARGIN = 1 << 20
# ... and an inbound window's bitmap: every number up to its top received (masked to
# the window's size by `SecurityAssociationTable.restore`)
ALL_RECEIVED = (1 << 1024) - 1

_SA_INTS = (
    "spi_uc",
    "spi_us",
    "port_uc",
    "port_us",
    "spi_pc",
    "spi_ps",
    "port_pc",
    "port_ps",
)


class StateError(ValueError):
    """A state document this P-CSCF cannot take back (one line, no key material)."""


@dataclass(frozen=True, slots=True)
class RestoredSet:
    """One SA set to give back to the SA table (`SecurityAssociationTable.restore`)."""

    sa: PcscfSa
    keys: EspKeys
    established: bool
    expires_at: float
    counters: dict[int, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class RestoredHold:
    """A set in its grace (`PcscfCore.adopt_held`): the REGISTER it answered, by our
    branch, gets `final` again over it until `release_at`."""

    set: RestoredSet
    branch: str
    release_at: float
    reason: str
    final: bytes | None


@dataclass(frozen=True, slots=True)
class RestoredRegistration:
    registration: Registration
    sets: tuple[RestoredSet, ...]
    subscription: RegEventSubscription | None


# ------------------------------------------------------------------------------- dump


def dump(
    core: PcscfCore,
    sets: Mapping[int, SaSet],
    *,
    own: Mapping[str, Any],
    now: float,
    wall: float,
) -> dict[str, Any]:
    """The document for the registrations of `core`, their subscriptions and SA sets
    (`sets`, by the P-CSCF's spi-s). `own`: the P-CSCF's address and ports, which the
    next one must have for the sets to be of use."""
    out = []
    for reg in core.registrations.values():
        record = record_of(reg, core.subscription_of(reg.impi), sets, now)
        if record is not None:
            out.append(record)
    held = []
    for hold in core.held_sets():
        record = held_record(hold, sets, now)
        if record is not None:
            held.append(record)
    return {
        "format": FORMAT,
        "version": VERSION,
        "saved_at": wall,
        "pcscf": dict(own),
        "registrations": out,
        "held": held,
    }


def record_of(
    reg: Registration,
    sub: RegEventSubscription | None,
    sets: Mapping[int, SaSet],
    now: float,
    wall: float | None = None,
) -> dict[str, Any] | None:
    """The record of one registration (with its subscription `sub`, if confirmed), or
    None when it is not to be taken back. `wall`: the wall clock, for a record kept
    apart from a document (a store's), whose times count from its own ``saved_at``."""
    record = _registration(reg, sets, now)
    if record is None:
        return None
    if sub is not None and sub.confirmed and not sub.ending and sub.impi == reg.impi:
        record["subscription"] = _subscription(sub, now)
    if wall is not None:
        record["saved_at"] = wall
    return record


def held_record(
    hold: tuple[PcscfSa, str, float, str, bytes | None],
    sets: Mapping[int, SaSet],
    now: float,
    wall: float | None = None,
) -> dict[str, Any] | None:
    """The record of one set held for a REGISTER's retransmissions (an entry of
    `PcscfCore.held_sets`), or None when its set is no longer held. `wall` as in
    `record_of`."""
    sa, branch, release_at, reason, final = hold
    kept = _set(sa, sets, SaState.DRAINING, now)
    if kept is None:
        return None
    record = {
        "impi": sa.impi,
        "set": kept,
        "branch": branch,
        "release_in": release_at - now,
        "reason": reason,
        "final": None if final is None else base64.b64encode(final).decode(),
    }
    if wall is not None:
        record["saved_at"] = wall
    return record


def _registration(
    reg: Registration, sets: Mapping[int, SaSet], now: float
) -> dict[str, Any] | None:
    established = _set(reg.sa, sets, SaState.ESTABLISHED, now) if reg.sa else None
    temporary = _set(reg.temporary, sets, SaState.TEMPORARY, now) if reg.temporary else None
    if reg.state is RegState.REGISTERED:
        if established is None and reg.clear_source is None:
            return None
    elif temporary is None:
        return None
    return {
        "impi": reg.impi,
        "impu": reg.impu,
        "ue_host": reg.ue_host,
        "state": reg.state.value,
        "contact": reg.contact,
        "expires_in": reg.expires_at - now if reg.expires_at else None,
        "security_server": list(reg.security_server),
        "security_client": list(reg.security_client),
        "pending_server": list(reg.pending_server),
        "service_route": list(reg.service_route),
        "associated_uris": list(reg.associated_uris),
        "clear_source": list(reg.clear_source) if reg.clear_source else None,
        "started_over": reg.started_over,
        "answered_cseq": reg.answered_cseq,
        "challenged_cseq": reg.challenged_cseq,
        "ue_sub": reg.ue_sub,
        "ue_sub_call_id": reg.ue_sub_call_id,
        # ended by the network, the UE's REGISTER (its de-REGISTER) still to be
        # answered over the SAs, or its terminated NOTIFY still to pass them
        "network_terminated": reg.network_terminated,
        "release_in": reg.release_at - now if reg.release_at else None,
        "sa": established,
        "temporary": temporary,
        "temporary_expires_in": reg.temporary_expires - now if temporary else None,
    }


def _set(sa: PcscfSa, sets: Mapping[int, SaSet], state: SaState, now: float) -> dict | None:
    s = sets.get(sa.spi_ps)
    if s is None or s.state is not state or s.pcscf_spis != (sa.spi_pc, sa.spi_ps):
        return None
    keys = s.keys
    record: dict[str, Any] = {
        "alg": sa.alg,
        "ealg": sa.ealg,
        "ue_host": sa.ue_host,
        "pcscf_host": sa.pcscf_host,
    }
    for name in _SA_INTS:
        record[name] = getattr(sa, name)
    record.update(
        ik_esp=keys.ik_esp.hex(),
        ck_esp=keys.ck_esp.hex(),
        salt=keys.salt.hex(),
        expires_in=s.expires_at - now,
        counters={str(spi): list(v) for spi, v in s.counters().items()},
    )
    return record


def _subscription(sub: RegEventSubscription, now: float) -> dict[str, Any]:
    return {
        "call_id": sub.call_id,
        "impu": sub.impu,
        "local_tag": sub.local_tag,
        "remote_tag": sub.remote_tag,
        "remote_target": sub.remote_target,
        "route_set": list(sub.route_set),
        "cseq": sub.cseq,
        "expires_in": sub.expires_at - now if sub.expires_at else None,
        "refresh_in": sub.refresh_at - now if sub.refresh_at else None,
        "age": now - sub.since,
    }


# ------------------------------------------------------------------------------- load


def load(
    doc: object,
    *,
    own: Mapping[str, Any],
    now: float,
    wall: float,
    crashed: bool = False,
    types: tuple[type[Registration], type[RegEventSubscription]] = (
        Registration,
        RegEventSubscription,
    ),
) -> list[RestoredRegistration | RestoredHold]:
    """What document `doc` gives back at loop time `now` (wall clock `wall`): the
    registrations with time left, their sets that have not run out, their
    subscriptions. Raises StateError when it is not a document of this format and
    version, names another address or ports than `own`, or a field is unreadable.

    `crashed`: the document was written some time before the P-CSCF stopped (a store
    written as it ran), so the SAs carried packets the counters do not show. Then
    every outbound SA goes on `SEQ_MARGIN` past the last number written (the UE takes
    any number above those it had, RFC 4303 §3.4.3, so none is seen twice), and every
    inbound SA's window counts all numbers up to its top as received (what came before
    that top is not taken again; what came after it, since the write, could be once).

    `types`: the classes of registration and subscription to make (the adopting
    core's `registration_type`, `subscription_type`)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateError(f"not an {FORMAT} document")
    if doc.get("version") != VERSION:
        raise StateError(f"version {doc.get('version')!r}; this P-CSCF reads {VERSION}")
    theirs = doc.get("pcscf")
    if not isinstance(theirs, dict) or {k: theirs.get(k) for k in own} != dict(own):
        raise StateError(f"written by a P-CSCF at {theirs!r}, this one is at {dict(own)!r}")
    saved_at = _number(doc, "saved_at")
    records = doc.get("registrations")
    if not isinstance(records, list):
        raise StateError("registrations: not a list")
    out = []
    for i, record in enumerate(records):
        try:
            # seconds left at the save, minus the time since: this loop's clock
            at = record.get("saved_at", saved_at) if isinstance(record, dict) else saved_at
            if isinstance(at, bool) or not isinstance(at, (int, float)):
                raise ValueError("saved_at: not a number")
            restored = _restored(record, now - max(0.0, wall - at), now, crashed, types)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"registrations[{i}]: {_reason(exc)}") from None
        if restored is not None:
            out.append(restored)
    held = doc.get("held", [])
    if not isinstance(held, list):
        raise StateError("held: not a list")
    for i, record in enumerate(held):
        try:
            at = record.get("saved_at", saved_at) if isinstance(record, dict) else saved_at
            if isinstance(at, bool) or not isinstance(at, (int, float)):
                raise ValueError("saved_at: not a number")
            hold = _restored_hold(record, now - max(0.0, wall - at), now, crashed)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"held[{i}]: {_reason(exc)}") from None
        if hold is not None:
            out.append(hold)
    return out


def _restored_hold(record: object, shift: float, now: float, crashed: bool) -> RestoredHold | None:
    if not isinstance(record, dict):
        raise ValueError("not an object")
    release_at = _at(record["release_in"], "release_in", shift)
    if release_at <= now:
        return None  # its REGISTER's transaction ended meanwhile
    kept = _restored_set(record["set"], _text(record, "impi"), True, shift, now, crashed)
    if kept is None:
        return None
    final = record["final"]
    if final is not None:
        final = base64.b64decode(_text(record, "final"), validate=True)
    return RestoredHold(kept, _text(record, "branch"), release_at, _text(record, "reason"), final)


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"{exc.args[0]} missing"
    return str(exc) or type(exc).__name__


def _number(doc: Mapping[str, Any], name: str) -> float:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StateError(f"{name}: not a number")
    return float(value)


def _strings(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name}: not a list of strings")
    return tuple(value)


def _text(record: Mapping[str, Any], name: str) -> str:
    value = record[name]
    if not isinstance(value, str):
        raise ValueError(f"{name}: not a string")
    return value


def _int(record: Mapping[str, Any], name: str) -> int:
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: not an integer")
    return value


def _at(value: object, name: str, shift: float) -> float:
    """A `*_in` field (seconds left at the save, or null) as a time on this clock (0.0
    for null)."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: not a number")
    return shift + float(value)


def _restored(
    record: object,
    shift: float,
    now: float,
    crashed: bool,
    types: tuple[type[Registration], type[RegEventSubscription]],
) -> RestoredRegistration | None:
    if not isinstance(record, dict):
        raise ValueError("not an object")
    state = RegState(_text(record, "state"))
    expires_at = _at(record["expires_in"], "expires_in", shift)
    if state is RegState.REGISTERED and expires_at + 30.0 <= now:
        return None  # ran out while no P-CSCF was there (its own expiry, +30 s)
    source = record["clear_source"]
    if source is not None:
        if not (isinstance(source, list) and len(source) == 2):
            raise ValueError("clear_source: not [host, port]")
        source = (str(source[0]), int(source[1]))
    impi = _text(record, "impi")
    reg = types[0](
        impi=impi,
        impu=_text(record, "impu"),
        ue_host=_text(record, "ue_host"),
        state=state,
        contact=_text(record, "contact"),
        security_server=_strings(record["security_server"], "security_server"),
        security_client=_strings(record["security_client"], "security_client"),
        pending_server=_strings(record["pending_server"], "pending_server"),
        service_route=_strings(record["service_route"], "service_route"),
        associated_uris=_strings(record["associated_uris"], "associated_uris"),
        expires_at=expires_at,
        clear_source=source,
        started_over=bool(record["started_over"]),
        # (absent in a record written before 2026-11-28: none seen)
        answered_cseq=_int(record, "answered_cseq") if "answered_cseq" in record else 0,
        challenged_cseq=_int(record, "challenged_cseq") if "challenged_cseq" in record else 0,
        ue_sub=_int(record, "ue_sub"),
        # (absent in a record written before 2026-11-29: not known)
        ue_sub_call_id=str(record.get("ue_sub_call_id") or ""),
        network_terminated=bool(record.get("network_terminated", False)),
    )
    reg.release_at = _at(record.get("release_in"), "release_in", shift)
    if reg.network_terminated and not reg.release_at:
        # its REGISTER's answer was due when the P-CSCF stopped: if the UE's
        # retransmission does not bring it through this one within a transaction's
        # life, the sets go then (`PcscfCore._network_end`)
        reg.release_at = now + TRANSACTION_LIFETIME
    sets: list[RestoredSet] = []
    if record["sa"] is not None:
        restored = _restored_set(record["sa"], impi, True, shift, now, crashed)
        if restored is not None:
            reg.sa = restored.sa
            sets.append(restored)
    if record["temporary"] is not None:
        restored = _restored_set(record["temporary"], impi, False, shift, now, crashed)
        if restored is not None:
            reg.temporary = restored.sa
            reg.temporary_expires = _at(
                record["temporary_expires_in"], "temporary_expires_in", shift
            )
            sets.append(restored)
    if reg.sa is None and reg.temporary is None and reg.clear_source is None:
        return None  # every set it had ran out meanwhile
    if reg.state is RegState.CHALLENGED and reg.temporary is None:
        return None
    sub = None
    if record.get("subscription") is not None and reg.state is RegState.REGISTERED:
        sub = _restored_subscription(record["subscription"], reg, shift, now, types[1])
    return RestoredRegistration(reg, tuple(sets), sub)


def _restored_set(
    record: object, impi: str, established: bool, shift: float, now: float, crashed: bool
) -> RestoredSet | None:
    if not isinstance(record, dict):
        raise ValueError("set: not an object")
    expires_at = _at(record["expires_in"], "expires_in", shift)
    if expires_at <= now:
        return None
    ints = {name: _int(record, name) for name in _SA_INTS}
    sa = PcscfSa(
        impi=impi,
        alg=_text(record, "alg"),
        ealg=_text(record, "ealg"),
        ue_host=_text(record, "ue_host"),
        pcscf_host=_text(record, "pcscf_host"),
        **ints,
    )
    keys = EspKeys(
        sa.alg,
        sa.ealg,
        bytes.fromhex(_text(record, "ik_esp")),
        bytes.fromhex(_text(record, "ck_esp")),
        bytes.fromhex(_text(record, "salt")),
    )
    counters_in = record["counters"]
    if not isinstance(counters_in, dict):
        raise ValueError("counters: not an object")
    counters: dict[int, tuple[int, ...]] = {}
    for spi, value in counters_in.items():
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
        ):
            raise ValueError(f"counters[{spi}]: not a list of counts")
        if crashed and len(value) == 1:
            value = [value[0] + SEQ_MARGIN]
        elif crashed and len(value) == 2:
            value = [value[0], ALL_RECEIVED]
        counters[int(spi)] = tuple(value)
    return RestoredSet(sa, keys, established, expires_at, counters)


def _restored_subscription(
    record: object,
    reg: Registration,
    shift: float,
    now: float,
    kind: type[RegEventSubscription],
) -> RegEventSubscription | None:
    if not isinstance(record, dict):
        raise ValueError("subscription: not an object")
    expires_at = _at(record["expires_in"], "subscription.expires_in", shift)
    if expires_at and expires_at <= now:
        return None  # lapsed at the S-CSCF meanwhile: the next 200 OK subscribes anew
    age = record["age"]
    if isinstance(age, bool) or not isinstance(age, (int, float)):
        raise ValueError("subscription.age: not a number")
    sub = kind(
        _text(record, "call_id"), reg.impi, _text(record, "impu"), _text(record, "local_tag"), now
    )
    sub.remote_tag = _text(record, "remote_tag")
    sub.remote_target = _text(record, "remote_target")
    sub.route_set = _strings(record["route_set"], "subscription.route_set")
    sub.cseq = _int(record, "cseq")
    sub.expires_at = expires_at
    sub.refresh_at = _at(record["refresh_in"], "subscription.refresh_in", shift)
    sub.since = now - float(age)
    return sub if sub.confirmed else None
