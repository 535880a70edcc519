"""The registration event package at the S-CSCF (RFC 3680; TS 24.229 §5.4.2.1), sans-I/O.

After a successful registration the P-CSCF (TS 24.229 §5.2.3) and the UE (§5.1.1.3)
SUBSCRIBE to the ``reg`` event of the registered IMPU. The S-CSCF answers 200 and sends a
NOTIFY with the full registration state. When the registration ends it sends a NOTIFY
with the registration ``terminated`` and the reason: user de-registration
(``unregistered``), expiry (``expired``) or network-initiated de-registration after an RTR
(``rejected``, §5.4.1.5). That NOTIFY tells the P-CSCF to remove the UE's security
associations (issue 7).

This module keeps the subscriptions (the dialog state a NOTIFY needs) and builds the
NOTIFY requests and their ``application/reginfo+xml`` bodies. It does no I/O: the S-CSCF
edge sends what it builds.
"""

from __future__ import annotations

import heapq
import re
import sys
from collections.abc import Iterable, Iterator
from functools import lru_cache
from xml.sax.saxutils import escape, quoteattr

from imsaka.cscf.registrar import ContactBinding, Registration
from imsaka.sip import NameAddr, Request, SipParseError, SipUri, parse_uri
from imsaka.sip.compact import SharedTuples

__all__ = [
    "RESTORED_GAP",
    "RegSubscription",
    "RegSubscriptions",
    "authorised_watcher",
    "notify_request",
    "reginfo_body",
    "reginfo_unchanged",
]

CONTENT_TYPE = "application/reginfo+xml"

# A subscription read back from a shared binding store after a restart goes on this many
# NOTIFYs past its stored CSeq and reginfo version: they are written after each NOTIFY
# leaves, so a crash can lose the last few, and its subscriber refuses a NOTIFY whose
# CSeq is not above the last one (RFC 3261 §12.2.2) and ignores a reginfo whose version
# is not newer (RFC 3680 §5.2). A gap costs nothing: every NOTIFY carries full state.
RESTORED_GAP = 16

# RegisterRemoved reason (imsaka.cscf.scscf_core) → RFC 3680 contact event.
TERMINATION_EVENT = {
    "user-deregistration": "unregistered",
    "timeout": "expired",
    "network-initiated": "rejected",
    # RTR with SERVER_CHANGE: the UE is to register again (TS 24.229 §5.4.1.5)
    "server-change": "deactivated",
}


# Text with none of the characters XML escapes (quoteattr: also quotes and the
# whitespace it writes as character references): every SIP URI but an odd one, written
# as it is instead of through saxutils' replace passes.
_XML_PLAIN = re.compile(r"[^&<>\"'\n\r\t]*").fullmatch


def _text(value: str) -> str:
    """`escape(value)` (element content)."""
    return value if _XML_PLAIN(value) else escape(value)


def _attr(value: str) -> str:
    """`quoteattr(value)` (a quoted attribute value)."""
    return f'"{value}"' if _XML_PLAIN(value) else quoteattr(value)


@lru_cache(maxsize=256)
def _sip_host(uri: str) -> str | None:
    # Cached: the URIs asked about are a few P-CSCFs' (their P-Asserted-Identity), each
    # repeated for every UE it serves.
    try:
        parsed = parse_uri(uri)
    except SipParseError:
        return None
    return parsed.host.lower() if isinstance(parsed, SipUri) else None


@lru_cache(maxsize=256)
def _path_hosts(path: tuple[str, ...]) -> frozenset[str]:
    """The hosts named in a contact's Path (one P-CSCF's Path is the same tuple for all
    its UEs: the registrar core shares it), each parsed once."""
    hosts = set()
    for entry in path:
        try:
            host = _sip_host(NameAddr.parse(entry).uri)
        except SipParseError:
            continue
        if host:
            hosts.add(host)
    return frozenset(hosts)


def authorised_watcher(reg: Registration, watchers: list[str]) -> bool:
    """TS 24.229 §5.4.2.1.1 step 1: who may watch this registration. `watchers` are the
    subscriber's identities (its P-Asserted-Identity URIs, else its From URI). Allowed:
    an identity of the user's own non-barred implicit set, or an entity named in the
    Path of one of its contacts (the P-CSCF it is attached through). Application
    servers from the initial filter criteria would be the third kind; this S-CSCF
    evaluates no iFC, so there are none."""
    own = None  # (made on first need: the usual watcher is the P-CSCF, named in Path)
    for uri in watchers:
        host = _sip_host(uri)
        if host is not None and any(host in _path_hosts(b.path) for b in reg.contacts.values()):
            return True
        if own is None:
            own = {reg.impu.lower(), *(a.lower() for a in reg.associated)}
        if uri.lower() in own:
            return True
    return False


# Record-Route sets of the subscribers (one P-CSCF route for many UEs): shared tuples
_ROUTE_SETS = SharedTuples()


class RegSubscription:
    """One reg-event subscription (a dialog created by SUBSCRIBE, RFC 6665 §4.2). Compared
    by identity: it is the state of one dialog, not a value.

    Its three random identifiers (Call-ID, the subscriber's tag, ours) are kept as one
    string, NUL-separated (a SIP header holds no NUL: RFC 3261 §25.1, and the parser
    refuses one), and read back on use: two string objects fewer per subscription, for
    every registered UE and its P-CSCF."""

    __slots__ = (
        "_dialog",
        "_next",
        "_queued",
        "cseq",
        "expires_at",
        "impu",
        "in_flight",
        "remote_target",
        "remote_uri",
        "route_set",
        "timer",
        "version",
    )

    def __init__(
        self,
        impu: str,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        remote_uri: str,
        remote_target: str,
        route_set: tuple[str, ...],
        expires_at: float,
        cseq: int = 0,
        version: int = 0,
        timer: float | None = None,
    ) -> None:
        if "\0" in call_id or "\0" in remote_tag or "\0" in local_tag:
            raise ValueError("NUL in a dialog identifier")
        self.impu = impu
        """The IMPU whose registration is watched (Request-URI / To of the SUBSCRIBE)."""
        self._dialog = f"{call_id}\0{remote_tag}\0{local_tag}"
        self.remote_uri = remote_uri
        """The subscriber's From URI (the To of our NOTIFYs)."""
        self.remote_target = remote_target
        """The subscriber's Contact URI (the Request-URI of our NOTIFYs)."""
        self.route_set = route_set
        """Record-Route of the SUBSCRIBE, in order (RFC 3261 §12.1.1)."""
        self.expires_at = expires_at
        self.cseq = cseq
        self.version = version
        self.timer = timer
        """When its live entry in the expiry heap of `RegSubscriptions` is due, or None."""
        self._queued: float | None = None
        # the key of its entry in that heap (the subscription is the entry), live or stale
        self._next: RegSubscription | None = None
        # the next subscription to the same IMPU (`RegSubscriptions` chains them)
        self.in_flight: list | tuple | None = None
        """None: no NOTIFY of it unanswered; else one is, and these (the notifier's
        items; () for none) wait for its answer, in CSeq order."""

    @property
    def call_id(self) -> str:
        return self._dialog.split("\0", 1)[0]

    @property
    def remote_tag(self) -> str:
        return self._dialog.split("\0", 2)[1]

    @property
    def local_tag(self) -> str:
        """Our tag (the To tag of our 200 OK, the From tag of our NOTIFYs)."""
        return self._dialog.rsplit("\0", 1)[1]

    @property
    def key(self) -> tuple[str, str]:
        call_id, remote_tag, _ = self._dialog.split("\0")
        return (call_id, remote_tag)

    def _is(self, prefix: str) -> bool:
        """Whether this is the dialog whose `_dialog_prefix` is `prefix`."""
        return self._dialog.startswith(prefix)

    def to_dict(self) -> dict:
        """The dialog state, for a binding store that outlives the process (JSON)."""
        call_id, remote_tag, local_tag = self._dialog.split("\0")
        return {
            "impu": self.impu,
            "call_id": call_id,
            "local_tag": local_tag,
            "remote_tag": remote_tag,
            "remote_uri": self.remote_uri,
            "remote_target": self.remote_target,
            "route_set": list(self.route_set),
            "expires_at": self.expires_at,
            "cseq": self.cseq,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, d: dict, gap: int = 0) -> RegSubscription:
        """A subscription as `to_dict` gave it, its NOTIFY CSeq and reginfo version moved
        on by `gap` (see `RESTORED_GAP`). Raises ValueError (KeyError, TypeError) for a
        record that is not one."""
        route_set = d["route_set"]
        texts = (d["impu"], d["call_id"], d["local_tag"], d["remote_tag"], d["remote_uri"])
        if not all(type(t) is str for t in (*texts, d["remote_target"], *route_set)):
            raise ValueError("a subscription's identifiers are text")
        return cls(
            d["impu"],
            d["call_id"],
            d["local_tag"],
            d["remote_tag"],
            d["remote_uri"],
            d["remote_target"],
            tuple(route_set),
            float(d["expires_at"]),
            cseq=int(d["cseq"]) + gap,
            version=int(d["version"]) + gap,
        )

    def __lt__(self, other: RegSubscription) -> bool:  # the expiry heap's order
        return self._queued < other._queued  # type: ignore[operator]

    def __repr__(self) -> str:
        return (
            f"RegSubscription(impu={self.impu!r}, call_id={self.call_id!r}, "
            f"local_tag={self.local_tag!r}, remote_tag={self.remote_tag!r}, "
            f"remote_uri={self.remote_uri!r}, remote_target={self.remote_target!r}, "
            f"route_set={self.route_set!r}, expires_at={self.expires_at!r}, "
            f"cseq={self.cseq!r}, version={self.version!r})"
        )


def _dialog_prefix(key: tuple[str, str]) -> str:
    """What the `_dialog` text of the subscription of dialog `key` starts with."""
    return f"{key[0]}\0{key[1]}\0"


def _share(text: str, same: Iterable[str]) -> str:
    """`text` as one string object with an equal one in `same` (the registration's own
    IMPU or contact), else the interned one (a P-CSCF's URIs, repeated per UE)."""
    for candidate in same:
        if candidate == text:
            return candidate
    return sys.intern(text)


class RegSubscriptions:
    """Subscriptions by IMPU, bounded by the registrations (they end with them), and
    their expiries (RFC 6665 §4.2.2).

    An IMPU has one or two subscribers (its P-CSCF, its UE): they are chained from the
    IMPU's entry (`_next`), oldest first, with no list or dict per IMPU; the URIs every
    subscription of one P-CSCF repeats are one string object, and a UE's own From and
    Contact URIs the registration's IMPU and contact strings.

    Expiries: one heap for all of them, so the edge needs one timer (at
    `next_deadline()`) instead of one per subscription. The subscriptions are the heap's
    entries themselves (ordered by `_queued`), one at most each: a live one (`timer`
    set) or a stale one, left by a subscription that ended, skipped when it surfaces and
    dropped once the stale are the majority. A refresh that moves the expiry later keeps
    the entry (the subscription is armed again when it surfaces); one that moves it
    earlier moves the entry up."""

    __slots__ = ("_by_impu", "_count", "_heap", "_stale", "armed", "arms")

    def __init__(self) -> None:
        self._by_impu: dict[str, RegSubscription] = {}
        self._count = 0
        self._heap: list[RegSubscription] = []
        self._stale = 0
        self.armed = 0
        """Subscriptions with a live expiry entry."""
        self.arms = 0
        """Calls of `arm` (only they can make `next_deadline()` earlier)."""

    def get(self, impu: str, key: tuple[str, str]) -> RegSubscription | None:
        """The subscription of dialog `key` (Call-ID, subscriber's tag) to `impu`."""
        prefix = _dialog_prefix(key)
        s = self._by_impu.get(impu)
        while s is not None:
            if s._is(prefix):
                return s
            s = s._next
        return None

    def add(
        self, sub: RegSubscription, registration: Registration | None = None
    ) -> RegSubscription:
        """Store a new subscription, or refresh the existing one of the same dialog.
        `registration` (the watched one) lends its strings to the subscriber's URIs."""
        contacts: Iterable[str] = registration.contacts if registration is not None else ()
        old = self.get(sub.impu, sub.key)
        if old is not None:
            old.expires_at = sub.expires_at
            # SUBSCRIBE is a target refresh request (RFC 6665 §4.1.2.1; RFC 3261
            # §12.2.2): its Contact is the remote target from now on; the route set
            # stays the one of the dialog's creation.
            if old.remote_target != sub.remote_target:
                old.remote_target = _share(sub.remote_target, contacts)
            return old
        if registration is not None:
            sub.remote_uri = _share(sub.remote_uri, (registration.impu, *registration.associated))
        else:
            sub.remote_uri = sys.intern(sub.remote_uri)
        sub.remote_target = _share(sub.remote_target, contacts)
        sub.route_set = _ROUTE_SETS.share(sub.route_set)
        sub._next = None
        tail = self._by_impu.get(sub.impu)
        if tail is None:
            self._by_impu[sub.impu] = sub
        else:
            while tail._next is not None:
                tail = tail._next
            tail._next = sub
        self._count += 1
        return sub

    def remove(self, sub: RegSubscription) -> None:
        """End `sub`: it leaves the table and its expiry with it."""
        self.disarm(sub)
        prefix = _dialog_prefix(sub.key)
        prev = None
        s = self._by_impu.get(sub.impu)
        while s is not None:
            if s._is(prefix):
                if prev is not None:
                    prev._next = s._next
                elif s._next is not None:
                    self._by_impu[sub.impu] = s._next
                else:
                    del self._by_impu[sub.impu]
                s._next = None
                self._count -= 1
                return
            prev, s = s, s._next

    def of_impu(self, impu: str) -> list[RegSubscription]:
        """Every subscription to `impu` (they stay)."""
        subs = []
        s = self._by_impu.get(impu)
        while s is not None:
            subs.append(s)
            s = s._next
        return subs

    def pop_impu(self, impu: str) -> list[RegSubscription]:
        """Every subscription to `impu`, removed with its expiry (the registration ended)."""
        subs = []
        s = self._by_impu.pop(impu, None)
        while s is not None:
            subs.append(s)
            s = s._next
        self._count -= len(subs)
        for sub in subs:
            sub._next = None
            self.disarm(sub)
        return subs

    # expiries ---------------------------------------------------------------------------

    def arm(self, sub: RegSubscription) -> None:
        """Make sure `sub` surfaces from `pop_due` by its `expires_at`."""
        self.arms += 1
        deadline = sub.expires_at
        live = sub.timer
        if live is not None:
            if live <= deadline:
                return
        else:
            self.armed += 1
            queued = sub._queued
            if queued is None:
                sub.timer = sub._queued = deadline
                heapq.heappush(self._heap, sub)
                return
            self._stale -= 1  # its stale entry is live again
            if queued <= deadline:
                sub.timer = queued
                return
        # Due earlier than its entry (a refresh to a shorter expiry, rare): the entry,
        # found by an identity scan of the heap, moves up.
        sub.timer = sub._queued = deadline
        heap = self._heap
        i = heap.index(sub)  # by identity
        while i:
            parent = (i - 1) >> 1
            if not deadline < heap[parent]._queued:  # type: ignore[operator]
                break
            heap[i] = heap[parent]
            i = parent
        heap[i] = sub

    def disarm(self, sub: RegSubscription) -> None:
        if sub.timer is not None:
            sub.timer = None
            self._stale += 1
            self.armed -= 1
            self._compact()

    def _compact(self) -> None:
        # Stale entries would otherwise wait for their deadline, up to max_expires: drop
        # them once they are the majority (amortised O(1) per cancel), so the heap holds
        # at most twice the live ones.
        if self._stale * 2 > len(self._heap):
            live = []
            for s in self._heap:
                if s.timer is None:
                    s._queued = None
                else:
                    live.append(s)
            heapq.heapify(live)
            self._heap = live
            self._stale = 0

    def next_deadline(self) -> float | None:
        """When the earliest entry is due (it may be stale: then nothing happens then)."""
        return self._heap[0]._queued if self._heap else None

    def pop_due(self, now: float) -> list[RegSubscription]:
        """The subscriptions whose live entry is due at `now`, disarmed. One refreshed
        since its entry was pushed is among them: the caller arms it again."""
        heap = self._heap
        due = []
        while heap and heap[0]._queued <= now:  # type: ignore[operator]
            sub = heapq.heappop(heap)
            sub._queued = None
            if sub.timer is None:
                self._stale -= 1
                continue
            sub.timer = None
            self.armed -= 1
            due.append(sub)
        return due

    @property
    def expiry_entries(self) -> int:
        """Entries in the expiry heap, live and stale (at most about twice `armed`)."""
        return len(self._heap)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[RegSubscription]:
        for s in self._by_impu.values():
            while s is not None:
                yield s
                s = s._next

    def __contains__(self, sub: object) -> bool:
        if not isinstance(sub, RegSubscription):
            return False
        s = self._by_impu.get(sub.impu)
        while s is not None:
            if s is sub:
                return True
            s = s._next
        return False


def reginfo_body(
    impu: str,
    registration: Registration | None,
    *,
    version: int,
    now: float,
    terminated_event: str | None = None,
    associated: tuple[str, ...] = (),
    ended: tuple[tuple[ContactBinding, str], ...] = (),
    created: tuple[str, ...] = (),
    gone: tuple[str, ...] = (),
) -> bytes:
    """RFC 3680 §5.3 reginfo: one <registration> per IMPU of the implicit set (TS 24.229
    §5.4.2.1.2), with the contacts active, or all terminated with `terminated_event`.
    `ended`: bindings just removed from a registration that stays, listed terminated
    with their event after the active ones. `created`: IMPUs a pushed profile just
    added to the set (their contacts' event `created`); `gone`: IMPUs it took out of
    it or barred, listed after the set as terminated registrations."""
    impus = associated or (registration.associated if registration is not None else ()) or (impu,)
    contacts = registration.contacts.values() if registration is not None else ()
    # Each contact's element is the same under every IMPU of the set but for its id:
    # its attributes and escaped URI are made once.
    # A terminated contact says expires="0": RFC 3680 leaves it out there, but
    # Kamailio's P-CSCF (5.6) skips a contact without it and keeps the binding.
    if terminated_event:
        state = "terminated"
        tails = [
            f' state="terminated" event="{terminated_event}" expires="0">\n'
            f"      <uri>{_text(c.uri)}</uri>\n    </contact>"
            for c in contacts
        ]
    else:
        state = "active"
        tails = [
            f' state="active" event="registered" expires="{max(0, round(c.expires_at - now))}">\n'
            f"      <uri>{_text(c.uri)}</uri>\n    </contact>"
            for c in contacts
        ]
        tails += [
            f' state="terminated" event="{event}" expires="0">\n'
            f"      <uri>{_text(c.uri)}</uri>\n    </contact>"
            for c, event in ended
        ]
    lines = [
        '<?xml version="1.0"?>',
        f'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="{version}" state="full">',
    ]
    if created:
        new = [t.replace(' event="registered"', ' event="created"', 1) for t in tails]
        fresh = {a.lower() for a in created}
    for n, aor in enumerate(impus):
        lines.append(f'  <registration aor={_attr(aor)} id="r{n}" state="{state}">')
        for m, tail in enumerate(new if created and aor.lower() in fresh else tails):
            lines.append(f'    <contact id="c{n}.{m}"{tail}')
        lines.append("  </registration>")
    for n, aor in enumerate(gone, len(impus)):
        # (no contact: a terminated contact of the UE's would read, at a P-CSCF that
        # looks at contacts, as the end of the UE's registration, which stays)
        lines.append(f'  <registration aor={_attr(aor)} id="r{n}" state="terminated"/>')
    lines.append("</reginfo>\n")
    return "\n".join(lines).encode()


def reginfo_unchanged(version: int) -> bytes:
    """RFC 3680 §5.3 reginfo telling no change (a partial document without a
    <registration>): the final NOTIFY of a subscription the S-CSCF gives up while the
    registration lives on elsewhere (RTR NEW_SERVER_ASSIGNED). A terminated or empty
    full document would read as the end of the registration."""
    return (
        '<?xml version="1.0"?>\n'
        f'<reginfo xmlns="urn:ietf:params:xml:ns:reginfo" version="{version}" state="partial"/>\n'
    ).encode()


def notify_request(
    sub: RegSubscription,
    body: bytes,
    *,
    contact: str,
    now: float,
    terminated_reason: str | None = None,
) -> Request:
    """The next in-dialog NOTIFY of `sub` (RFC 6665 §4.2.2; RFC 3261 §12.2.1.1)."""
    sub.cseq += 1
    sub.version += 1
    if terminated_reason is None:
        state = f"active;expires={max(0, round(sub.expires_at - now))}"
    else:
        state = f"terminated;reason={terminated_reason}"
    call_id, remote_tag, local_tag = sub._dialog.split("\0")
    headers = [("Max-Forwards", "70")]
    headers += [("Route", r) for r in sub.route_set]
    headers += [
        ("From", f"<{sub.impu}>;tag={local_tag}"),
        ("To", f"<{sub.remote_uri}>;tag={remote_tag}"),
        ("Call-ID", call_id),
        ("CSeq", f"{sub.cseq} NOTIFY"),
        ("Contact", contact),
        ("Event", "reg"),
        ("Subscription-State", state),
        ("Content-Type", CONTENT_TYPE),
        ("Content-Length", str(len(body))),
    ]
    return Request("NOTIFY", sub.remote_target, headers, body)
