"""The UE's side of the reg event package, sans-I/O: TS 24.229 §5.1.1.3 (subscription to
the registration state), §5.1.1.7 (network-initiated de-registration), RFC 3680 (the
``application/reginfo+xml`` document), RFC 6665 (the subscription dialog).

This module holds the pieces the registration core (`imsaka.ue.core`) uses: a bounded,
entity-free parser of reginfo documents, the parsed `Subscription-State` header, and
the state of the one subscription dialog the UE keeps. It sends nothing and reads no
clock.

The parser refuses what a registration-state document never needs and what makes an XML
parser dangerous: a body over `MAX_REGINFO` octets and any document type declaration
(no DTD means no entity of any kind, internal or external). Everything else not in
RFC 3680 §5.4 (unknown elements and attributes, extensions) is ignored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imsaka.xmlsafe import parse_untrusted

if TYPE_CHECKING:
    from xml.etree import ElementTree

__all__ = [
    "CONTENT_TYPE",
    "MAX_REGINFO",
    "REG_SUBSCRIBE_EXPIRES",
    "RegSubscription",
    "Reginfo",
    "ReginfoContact",
    "ReginfoError",
    "ReginfoRegistration",
    "SubState",
    "SubscriptionState",
    "parse_reginfo",
    "parse_subscription_state",
    "uri_key",
]

CONTENT_TYPE = "application/reginfo+xml"
# TS 24.229 §5.1.1.3: the UE asks for 600 000 s, as for the registration itself.
REG_SUBSCRIBE_EXPIRES = 600000
# A reginfo for one IMPI lists its implicit set with a few contacts each: under 1 KiB
# for three IMPUs and one contact. 16 KiB leaves room for large implicit sets (a SIP
# message over UDP is at most 64 KiB anyway) and stops a document that only costs.
MAX_REGINFO = 16 * 1024

_NS = "{urn:ietf:params:xml:ns:reginfo}"
# RFC 3680 §5.4 schema enumerations.
_DOC_STATES = frozenset({"full", "partial"})
_REG_STATES = frozenset({"init", "active", "terminated"})
_CONTACT_STATES = frozenset({"active", "terminated"})
_CONTACT_EVENTS = frozenset(
    {
        "registered",
        "created",
        "refreshed",
        "shortened",
        "expired",
        "deactivated",
        "probation",
        "unregistered",
        "rejected",
    }
)


class ReginfoError(ValueError):
    """A reginfo body the UE does not accept (answered 400, the state is kept)."""


@dataclass(frozen=True, slots=True)
class ReginfoContact:
    uri: str
    state: str
    event: str
    expires: int | None = None


@dataclass(frozen=True, slots=True)
class ReginfoRegistration:
    aor: str
    state: str
    contacts: tuple[ReginfoContact, ...]


@dataclass(frozen=True, slots=True)
class Reginfo:
    version: int
    state: str
    registrations: tuple[ReginfoRegistration, ...]


def uri_key(uri: str) -> str:
    """A URI as compared here: without angle brackets or header parameters, lower case
    (scheme and host are case-insensitive; the user parts we compare are ours)."""
    uri = uri.strip()
    if uri.startswith("<"):
        uri = uri[1:].partition(">")[0]
    return uri.lower()


def _int_attr(elem: ElementTree.Element, name: str, *, required: bool) -> int | None:
    text = elem.get(name)
    if text is None:
        if required:
            raise ReginfoError(f"<{_local(elem.tag)}> without {name}")
        return None
    text = text.strip()
    if not text.isdigit() or len(text) > 10:
        raise ReginfoError(f"<{_local(elem.tag)}> {name} is not a non-negative integer")
    return int(text)


def _enum_attr(elem: ElementTree.Element, name: str, allowed: frozenset[str]) -> str:
    value = elem.get(name)
    if value is None or value not in allowed:
        raise ReginfoError(f"<{_local(elem.tag)}> {name}={value!r} is not one of RFC 3680's")
    return value


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_reginfo(body: bytes) -> Reginfo:
    """An ``application/reginfo+xml`` body (RFC 3680 §5.3) → `Reginfo`; ReginfoError for
    an oversize body, a DTD, bad XML or a document outside the schema's required parts."""
    root = parse_untrusted(body, limit=MAX_REGINFO, what="reginfo", error=ReginfoError)
    if root.tag != f"{_NS}reginfo":
        raise ReginfoError(f"root element {root.tag!r} is not reginfo")
    version = _int_attr(root, "version", required=True)
    assert version is not None
    state = _enum_attr(root, "state", _DOC_STATES)
    registrations = []
    for reg in root.iterfind(f"{_NS}registration"):
        aor = reg.get("aor")
        if not aor:
            raise ReginfoError("<registration> without aor")
        if reg.get("id") is None:
            raise ReginfoError("<registration> without id")
        reg_state = _enum_attr(reg, "state", _REG_STATES)
        contacts = []
        for c in reg.iterfind(f"{_NS}contact"):
            uri_elem = c.find(f"{_NS}uri")
            uri = (uri_elem.text or "").strip() if uri_elem is not None else ""
            if not uri:
                raise ReginfoError("<contact> without <uri>")
            contacts.append(
                ReginfoContact(
                    uri=uri,
                    state=_enum_attr(c, "state", _CONTACT_STATES),
                    event=_enum_attr(c, "event", _CONTACT_EVENTS),
                    expires=_int_attr(c, "expires", required=False),
                )
            )
        registrations.append(ReginfoRegistration(aor.strip(), reg_state, tuple(contacts)))
    return Reginfo(version, state, tuple(registrations))


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """Subscription-State (RFC 6665 §8.2.3): ``active``/``pending``/``terminated`` with
    its ``expires``, ``reason`` and ``retry-after`` parameters."""

    state: str
    expires: int | None = None
    reason: str = ""
    retry_after: int | None = None


def parse_subscription_state(value: str | None) -> SubscriptionState:
    if value is None:
        raise ReginfoError("NOTIFY without Subscription-State")
    head, *params = value.split(";")
    state = head.strip().lower()
    if not state:
        raise ReginfoError("empty Subscription-State")
    expires: int | None = None
    retry_after: int | None = None
    reason = ""
    for p in params:
        name, _, v = p.partition("=")
        name, v = name.strip().lower(), v.strip()
        if name == "expires":
            if not v.isdigit() or len(v) > 10:
                raise ReginfoError(f"Subscription-State expires={v!r}")
            expires = int(v)
        elif name == "reason":
            reason = v.lower()
        elif name == "retry-after" and v.isdigit() and len(v) <= 10:
            retry_after = int(v)  # (a malformed one is ignored: it only advises)
    return SubscriptionState(state, expires, reason, retry_after)


class SubState(enum.Enum):
    SUBSCRIBING = "subscribing"  # SUBSCRIBE out, neither its 2xx nor a NOTIFY yet
    ACTIVE = "active"  # a 2xx or a NOTIFY came: the dialog exists


class RegSubscription:
    """The UE's reg-event subscription dialog (RFC 6665 §4.1; RFC 3261 §12).

    `remote_tag`, `route_set` and `remote_target` come from the 2xx to the SUBSCRIBE
    (Record-Route reversed, Contact: §12.1.2) or, when a NOTIFY overtook that 2xx
    (RFC 6665 §4.1.2.4), from the NOTIFY (its Record-Route in order, §12.1.1) until the
    2xx arrives. `refresh_at`/`expires_at` are absolute times on the core's clock."""

    __slots__ = (
        "call_id",
        "expires_at",
        "local_cseq",
        "local_tag",
        "pending_branch",
        "pending_cseq",
        "refresh_at",
        "remote_cseq",
        "remote_tag",
        "remote_target",
        "route_from_2xx",
        "route_set",
        "state",
        "version",
    )

    def __init__(self, call_id: str, local_tag: str) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = ""
        self.remote_target = ""
        self.route_set: tuple[str, ...] = ()
        self.route_from_2xx = False
        self.local_cseq = 0
        self.remote_cseq = -1
        self.pending_cseq = ""  # CSeq text of the SUBSCRIBE awaiting its final answer
        self.pending_branch = ""  # and its Via branch
        self.state = SubState.SUBSCRIBING
        self.expires_at: float | None = None
        self.refresh_at: float | None = None
        self.version = -1  # of the last reginfo taken (RFC 3680 §5.2: newer only)

    def deadline(self) -> float | None:
        """When the core must look at this subscription again: the refresh (none while a
        SUBSCRIBE is out: its transaction ends it) or, at the latest, the expiry."""
        if self.pending_cseq or self.refresh_at is None:
            return self.expires_at
        if self.expires_at is None:
            return self.refresh_at
        return min(self.refresh_at, self.expires_at)

    def __repr__(self) -> str:
        return f"<RegSubscription {self.state.value} call-id={self.call_id!r}>"
