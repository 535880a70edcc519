"""Registrar bindings of the S-CSCF and where they are kept (TS 24.229 §5.4.1.2, RFC 3261 §10.3).

A `Registration` is the S-CSCF's record for one registered public user identity (IMPU):
the private identity (IMPI) that authenticated it, its contacts with their absolute
expiry, the Path of each contact (RFC 3327: how to reach the UE through its P-CSCF), the
implicit registration set (P-Associated-URI, TS 24.229 §5.4.1.2.2) and the user profile
(TS 29.228 User-Data XML) received in the SAA.

`BindingStore` is the one interface the S-CSCF edge writes through:
- `MemoryBindingStore` (default) keeps them in this process;
- `RedisBindingStore` (``redis://HOST:PORT/DB``) keeps them in Redis, so they survive an
  S-CSCF restart and several S-CSCFs can share them (issue 6 item 4).

Times are wall-clock seconds (`time.time()`): a record outlives the process that wrote
it, so a monotonic clock would be meaningless to the next reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from collections.abc import Callable, Collection, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from imsaka.sip.compact import PackedWire, WirePacker

log = logging.getLogger("imsaka.cscf.registrar")

__all__ = [
    "BindingStore",
    "Claim",
    "ContactBinding",
    "ContactMap",
    "MemoryBindingStore",
    "RedisBindingStore",
    "Registration",
    "open_binding_store",
    "plain_contact",
    "plain_name_addr",
]


# A To or Contact value as a P-CSCF sends it: <a plain sip:/sips: URI> (user part of
# unreserved characters, hostname or IPv4 address, port 1-65535) and at most an expires
# param, no blanks. NameAddr.parse (Contact.parse) accepts every such text with the
# same URI and expires (tested): read this way, the I-CSCF builds no view of To or
# Contact that it would drop with the request, the S-CSCF none of a Contact it reads
# once. Anything else takes the parse.
PLAIN_NAME_ADDR_RE = re.compile(
    r"<([Ss][Ii][Pp][Ss]?:(?:[A-Za-z0-9\-_.!~*'()&=+$,/]+@)?"
    r"[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-_]*[A-Za-z0-9_])?)*"
    r"(?::([1-9][0-9]{0,4}))?)>(?:;expires=([0-9]{1,10}))?"
)
# The same language and groups without backtracking (a third of the matching work): no
# run here can give back a character for what follows it to match (a label ends where
# '.', ':' or '>' starts; a label ending in '-' fails either way), so every repeat is
# possessive and "a label does not end in '-'" is a look-behind. PLAIN_NAME_ADDR_RE stays
# the grammar (tests generate from it and check that both read every text alike).
_PLAIN_NAME_ADDR = re.compile(
    r"<([Ss][Ii][Pp][Ss]?+:(?:[A-Za-z0-9\-_.!~*'()&=+$,/]++@)?+"
    r"[A-Za-z0-9][A-Za-z0-9\-_]*+(?<!-)(?:\.[A-Za-z0-9][A-Za-z0-9\-_]*+(?<!-))*+"
    r"(?::([1-9][0-9]{0,4}+))?+)>(?:;expires=([0-9]{1,10}+))?+"
).fullmatch


def plain_name_addr(text: str | None) -> re.Match[str] | None:
    """`text` matched by PLAIN_NAME_ADDR_RE with a port below 65536, else None."""
    m = _PLAIN_NAME_ADDR(text) if text else None
    if m is None:
        return None
    port = m.group(2)
    return m if port is None or int(port) < 65536 else None


def plain_contact(request: Any) -> re.Match[str] | None:
    """The REGISTER's (SUBSCRIBE's) Contact when it has exactly one and that one is
    plain (`plain_name_addr`): group 1 its URI, group 3 its expires param or None."""
    values = request.get_all("contact")
    return plain_name_addr(values[0]) if len(values) == 1 else None


# a tag param's value: RFC 3261 §25.1 token characters the parameter parser also takes
_TAG = re.compile(r"[A-Za-z0-9\-.!%*_+'~]+").fullmatch


def plain_tagged(text: str | None) -> tuple[str, str] | None:
    """(URI, tag) of a From or To written ``<plain URI>;tag=token`` (`plain_name_addr`
    without expires), as NameAddr.parse reads it (tested); else None (take the view)."""
    if not text:
        return None
    head, sep, tag = text.partition(";tag=")
    if not sep or not _TAG(tag):
        return None
    m = plain_name_addr(head)
    if m is None or m.group(3) is not None:
        return None
    return m.group(1), tag


@dataclass(frozen=True, slots=True)
class ContactBinding:
    """One registered contact of an IMPU (RFC 3261 §10.3 step 7). Immutable: a refresh
    makes a new binding, so records and the memory store share bindings safely."""

    uri: str
    """The contact URI without angle brackets."""
    expires_at: float
    """Wall-clock second at which this binding lapses."""
    params: str = ""
    """Contact header parameters other than ``expires`` (``;+sip.instance=…``), echoed in the 200."""
    path: tuple[str, ...] = ()
    """Path header values recorded with this contact (RFC 3327 §5.3)."""
    call_id: str = ""
    """Call-ID of the REGISTER that last refreshed it."""
    cseq: int = 0
    """CSeq number of that REGISTER."""
    branch: str = ""
    """The branch of that REGISTER's bottom Via (the UE's, which no proxy changes), kept
    with a shared store only: a retransmission of it, or a copy a proxy moved, that
    reaches another S-CSCF (or this one restarted, its transactions gone) is known as
    one (RFC 3261 §17.2.3), not refused as out of order."""
    impi: str = ""
    """The IMPI that registered it, when not the record's (`Registration.impi`): the
    IMPIs of one subscription share its IMPUs (TS 23.228 §4.3.3.4), each device with
    a contact of its own; "" for the record's own IMPI (almost always)."""

    def owner(self, record_impi: str) -> str:
        """The IMPI this binding belongs to in a record of `record_impi`."""
        return self.impi or record_impi

    def to_dict(self) -> dict:
        d = {
            "uri": self.uri,
            "expires_at": self.expires_at,
            "params": self.params,
            "path": list(self.path),
            "call_id": self.call_id,
            "cseq": self.cseq,
        }
        if self.branch:
            d["branch"] = self.branch
        if self.impi:
            d["impi"] = self.impi
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ContactBinding:
        return cls(
            uri=str(d["uri"]),
            expires_at=float(d["expires_at"]),
            params=str(d.get("params", "")),
            path=tuple(d.get("path", ())),
            call_id=str(d.get("call_id", "")),
            cseq=int(d.get("cseq", 0)),
            branch=str(d.get("branch", "")),
            impi=str(d.get("impi", "")),
        )


class ContactMap(MutableMapping):
    """Contact URI → `ContactBinding`, the `contacts` of a `Registration`: one binding
    is held without a dict (a registration has one contact almost always, and a dict
    of one entry costs 224 octets); more go into a dict."""

    __slots__ = ("_dict", "_key", "_value")

    def __init__(self, items: Any = ()) -> None:
        self._key: str | None = None
        self._value: ContactBinding | None = None
        self._dict: dict[str, ContactBinding] | None = None
        if items:  # (the core makes empty ones, to fill)
            for k, v in items.items() if hasattr(items, "items") else items:
                self[k] = v

    def __getitem__(self, key: str) -> ContactBinding:
        d = self._dict
        if d is not None:
            return d[key]
        if self._key is not None and key == self._key:
            return self._value  # type: ignore[return-value]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        d = self._dict
        if d is not None:
            return d.get(key, default)
        return self._value if self._key is not None and key == self._key else default

    def __contains__(self, key: object) -> bool:
        d = self._dict
        if d is not None:
            return key in d
        return self._key is not None and key == self._key

    def __setitem__(self, key: str, value: ContactBinding) -> None:
        d = self._dict
        if d is not None:
            d[key] = value
        elif self._key is None or key == self._key:
            self._key, self._value = key, value
        else:
            self._dict = {self._key: self._value, key: value}  # type: ignore[dict-item]
            self._key = self._value = None

    def __delitem__(self, key: str) -> None:
        d = self._dict
        if d is not None:
            del d[key]
            if len(d) == 1:
                ((self._key, self._value),) = d.items()
                self._dict = None
            return
        if self._key is None or key != self._key:
            raise KeyError(key)
        self._key = self._value = None

    def __iter__(self) -> Iterator[str]:
        d = self._dict
        if d is not None:
            return iter(d)
        return iter(() if self._key is None else (self._key,))

    def __len__(self) -> int:
        d = self._dict
        if d is not None:
            return len(d)
        return 0 if self._key is None else 1

    def values(self):  # type: ignore[override]
        d = self._dict
        if d is not None:
            return d.values()
        return () if self._key is None else (self._value,)

    def items(self):  # type: ignore[override]
        d = self._dict
        if d is not None:
            return d.items()
        return () if self._key is None else ((self._key, self._value),)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


# The User-Data documents of one S-CSCF differ mostly in the identities: they are kept
# compressed against a dictionary of the first few (a third of their size or less).
_USER_DATA = WirePacker()


def _pack_user_data(xml: str | bytes) -> str | bytes:
    if type(xml) is PackedWire or not xml:
        return xml
    packed = _USER_DATA.pack(xml.encode() if isinstance(xml, str) else xml)
    return packed if type(packed) is PackedWire else xml


@dataclass(slots=True, eq=False)
class Registration:
    """The S-CSCF's registration record for one IMPU.

    `user_data` (the TS 29.228 IMS subscription XML from the SAA) is given and read as
    text; the record keeps it compressed (`_user_data`), and a store may hand the
    compressed form from one record to the next as it is."""

    impu: str
    """The registered public user identity (To of the REGISTER)."""
    impi: str
    """The private user identity that authenticated it."""
    contacts: MutableMapping[str, ContactBinding] = field(default_factory=ContactMap)
    """Contact URI → binding (a `ContactMap`; a dict given is turned into one)."""
    associated: tuple[str, ...] = ()
    """Non-barred identities of the implicit registration set, registered IMPU first."""
    _user_data: str | bytes = field(default="", repr=False)
    """TS 29.228 IMS subscription XML from the SAA (`user_data`), as kept."""
    registered_at: float = 0.0
    """When it was first registered (wall clock)."""
    version: int = field(default=0, compare=False)
    """Stamp of the stored copy this record was last read as or written to (0: never).
    A store's `put` gives the record a new one; `put_if_unchanged` writes only while the
    stored copy still has this one (compare-and-set, shared store)."""

    def __post_init__(self) -> None:
        if type(self._user_data) is not PackedWire:  # (a refresh hands it on packed)
            self._user_data = _pack_user_data(self._user_data)
        if type(self.contacts) is not ContactMap:
            self.contacts = ContactMap(self.contacts)

    @property
    def user_data(self) -> str:
        kept = self._user_data
        if type(kept) is PackedWire:
            return _USER_DATA.unpack(kept).decode()
        return kept.decode() if isinstance(kept, bytes) else kept

    @user_data.setter
    def user_data(self, xml: str) -> None:
        self._user_data = _pack_user_data(xml)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Registration):
            return NotImplemented
        return (
            self.impu == other.impu
            and self.impi == other.impi
            and self.contacts == other.contacts
            and self.associated == other.associated
            and self.user_data == other.user_data
            and self.registered_at == other.registered_at
        )

    __hash__ = None  # type: ignore[assignment]

    # The registrar's timer asks these after every message; a record has one contact
    # almost always, read without a generator.

    def earliest_expiry(self) -> float | None:
        contacts = self.contacts
        if type(contacts) is ContactMap and contacts._dict is None:  # one binding or none
            one = contacts._value
            return None if one is None else one.expires_at
        return min((c.expires_at for c in contacts.values()), default=None)

    def live_contacts(self, now: float) -> list[ContactBinding]:
        return [c for c in self.contacts.values() if c.expires_at > now]

    def is_live(self, now: float) -> bool:
        contacts = self.contacts
        if type(contacts) is ContactMap and contacts._dict is None:  # one binding or none
            one = contacts._value
            return one is not None and one.expires_at > now
        for c in contacts.values():  # noqa: SIM110 - a plain loop: no generator
            if c.expires_at > now:
                return True
        return False

    def to_json(self) -> str:
        return json.dumps(
            {
                "impu": self.impu,
                "impi": self.impi,
                "contacts": [c.to_dict() for c in self.contacts.values()],
                "associated": list(self.associated),
                "user_data": self.user_data,
                "registered_at": self.registered_at,
                "v": self.version,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Registration:
        d = json.loads(text)
        contacts = [ContactBinding.from_dict(c) for c in d.get("contacts", ())]
        return cls(
            impu=str(d["impu"]),
            impi=str(d["impi"]),
            contacts={c.uri: c for c in contacts},
            associated=tuple(d.get("associated", ())),
            _user_data=str(d.get("user_data", "")),
            registered_at=float(d.get("registered_at", 0.0)),
            version=int(d.get("v", 0)),
        )


Claim = Literal["removed", "gone", "live"]


class BindingStore(Protocol):
    """Where registrations live. Every method is a coroutine (Redis is I/O)."""

    async def get(self, impu: str) -> Registration | None: ...

    async def put(self, registration: Registration) -> None: ...

    async def put_if_unchanged(self, registration: Registration) -> bool:
        """Write `registration` only if the stored copy is still the one it was read as or
        last written to (same `version`), atomically; ``False`` (nothing written) if another
        S-CSCF sharing the store wrote or removed it meanwhile: the caller re-reads it."""
        ...

    async def delete(self, impu: str) -> None: ...

    async def delete_if_unchanged(self, registration: Registration) -> bool:
        """Remove `registration`'s record only if the stored copy is still the one it was
        read as or last written to (same `version`), atomically; ``False`` (nothing
        removed) if it is gone, or another S-CSCF sharing the store wrote it since."""
        ...

    async def claim_lapsed(self, impu: str, now: float) -> Claim:
        """Remove `impu`'s record if none of its contacts is live at `now`, atomically:
        ``"removed"`` (by this call: the caller sends the TIMEOUT_DEREGISTRATION SAR),
        ``"gone"`` (already removed, by another S-CSCF sharing the store) or ``"live"``
        (refreshed meanwhile through another S-CSCF: kept)."""
        ...

    async def all(self) -> list[Registration]: ...

    async def of_impis(self, impis: Collection[str]) -> list[Registration]:
        """The records registered by any of `impis`: an RTR naming no IMPU ends all of
        its IMPIs' (TS 29.228 §6.1.3). A scan of the store: rare, and not on any
        registration's path."""
        ...

    async def put_subscriptions(self, notifier: str, impu: str, subscriptions: list[dict]) -> bool:
        """Keep the reg-event subscriptions to `impu` (`RegSubscription.to_dict`) that the
        S-CSCF `notifier` (its Contact: where their in-dialog requests go) serves, so
        that it still has its watchers to NOTIFY once restarted; none: they go. Only
        while `notifier`'s heartbeat stands, atomically with the check (``False``:
        nothing written): one the others may see stopped, and take from, writes
        nothing over what they took."""
        ...

    async def all_subscriptions(self, notifier: str) -> list[dict]:
        """Every subscription kept by `put_subscriptions` for `notifier`."""
        ...

    async def put_challenges(self, notifier: str, challenges: list[dict], ttl: float) -> None:
        """Keep the open challenges of the stopping S-CSCF `notifier`
        (`RegistrarCore.challenges_to_keep`, with the wall-clock time they were written) for
        the next one, at most `ttl` seconds."""
        ...

    async def take_challenges(self, notifier: str) -> list[dict]:
        """The challenges `put_challenges` kept for `notifier`, removed as they are read
        (one S-CSCF takes them, once)."""
        ...

    async def share_challenge(self, record: dict, ttl: float) -> None:
        """Keep one open challenge (`RegistrarCore.challenge_record`, with the wall-clock
        time it was written) under its nonce for at most `ttl` seconds, for whichever
        S-CSCF sharing the store gets its answer."""
        ...

    async def take_challenge(self, nonce: str) -> dict | None:
        """The challenge `share_challenge` kept under `nonce`, removed as it is read (one
        S-CSCF verifies an answer, once); None if there is none."""
        ...

    async def drop_challenges(self, nonces: list[str]) -> None:
        """Remove the challenges kept under `nonces` (answered or replaced where made)."""
        ...

    async def publish_change(self, record: dict) -> None:
        """Tell every S-CSCF sharing the store that a registration ended here or that a
        contact of it came or went (`record`: notifier, kind `ended` or `changed`, IMPU,
        the registration's JSON, …), so that the one holding reg-event subscriptions to
        it NOTIFYs them."""
        ...

    async def follow_changes(
        self, on_record: Callable[[dict], None], on_gap: Callable[[], None] | None = None
    ) -> None:
        """Until cancelled: `on_record` for every record `publish_change` sends (its own
        too); `on_gap` each time it listens again after its connection broke (what was
        sent meanwhile is lost: the caller reads what it must again); returns at once
        where there is nobody else to hear from."""
        ...

    async def ended_record(self, impu: str) -> dict | None:
        """The record `publish_change` sent when the registration of `impu` ended, for
        an hour (for an S-CSCF that was down then and holds subscriptions to it); None
        if there is none."""
        ...

    async def heartbeat(self, notifier: str, ttl: float) -> list[str]:
        """Say that the S-CSCF `notifier` runs, for `ttl` seconds; the other notifiers
        that keep subscriptions (`put_subscriptions` lists them) and no longer say so
        (stopped, or crashed: their subscriptions' ends are then told by the others:
        `take_subscriptions`)."""
        ...

    async def leave(self, notifier: str) -> None:
        """`notifier` stops (a stop asked for): no longer running from now on."""
        ...

    async def forget_notifier(self, notifier: str) -> None:
        """`notifier` stopped and left no subscription: no longer listed."""
        ...

    async def take_subscriptions(self, notifier: str, impu: str) -> list[dict]:
        """The subscriptions `put_subscriptions` kept for `notifier` to `impu`, removed
        as they are read (one S-CSCF takes them, once), and only while `notifier`'s
        heartbeat has lapsed, atomically with the check (back: none taken); what was
        taken is noted for `notifier` (`taken_from`)."""
        ...

    async def taken_from(self, notifier: str) -> list[dict]:
        """The subscriptions others took from `notifier` (`take_subscriptions`) since
        it last asked, removed as they are read: what it must no longer serve once it
        reaches the store again after its heartbeat lapsed."""
        ...

    async def close(self) -> None: ...


class MemoryBindingStore:
    """Bindings in this process only (lost on restart)."""

    __slots__ = ("_regs", "_version")

    def __init__(self) -> None:
        self._regs: dict[str, tuple] = {}
        self._version = 0

    # Stored as a snapshot of immutable values (a tuple of str, float, int, immutable
    # ContactBindings and tuples of them), so a caller mutating its Registration
    # afterwards cannot change the stored one behind the store's back (the semantics
    # of Redis), while the strings, the bindings and the packed User-Data are shared
    # with the registrar core's record instead of copied (memory per registered UE).
    async def get(self, impu: str) -> Registration | None:
        entry = self._regs.get(impu)
        return None if entry is None else self._load(entry)

    async def put(self, registration: Registration) -> None:
        self.put_now(registration)

    def put_now(self, registration: Registration) -> None:
        """`put` without a coroutine: nothing here waits (the S-CSCF writes so inline)."""
        r = registration
        contacts = tuple(r.contacts.values())
        self._version += 1
        r.version = self._version
        self._regs[r.impu] = (
            r.impu, r.impi, contacts, tuple(r.associated), r._user_data, r.registered_at,
            r.version,
        )  # fmt: skip

    async def put_if_unchanged(self, registration: Registration) -> bool:
        entry = self._regs.get(registration.impu)
        if entry is None or entry[6] != registration.version:
            return False
        self.put_now(registration)
        return True

    async def delete(self, impu: str) -> None:
        self.delete_now(impu)

    async def delete_if_unchanged(self, registration: Registration) -> bool:
        entry = self._regs.get(registration.impu)
        if entry is None or entry[6] != registration.version:
            return False
        del self._regs[registration.impu]
        return True

    def delete_now(self, impu: str) -> None:
        """`delete` without a coroutine."""
        self._regs.pop(impu, None)

    async def claim_lapsed(self, impu: str, now: float) -> Claim:
        entry = self._regs.get(impu)
        if entry is None:
            return "gone"
        if any(c.expires_at > now for c in entry[2]):
            return "live"
        del self._regs[impu]
        return "removed"

    async def all(self) -> list[Registration]:
        return [self._load(e) for e in self._regs.values()]

    async def of_impis(self, impis: Collection[str]) -> list[Registration]:
        return [self._load(e) for e in self._regs.values() if e[1] in impis]

    @staticmethod
    def _load(entry: tuple) -> Registration:
        impu, impi, contacts, associated, user_data, registered_at, version = entry
        return Registration(
            impu=impu,
            impi=impi,
            contacts=ContactMap((c.uri, c) for c in contacts),
            associated=associated,
            _user_data=user_data,  # as kept: packed once, shared
            registered_at=registered_at,
            version=version,
        )

    # Subscriptions are not kept: this store ends with the process that holds them.
    async def put_subscriptions(self, notifier: str, impu: str, subscriptions: list[dict]) -> bool:
        return True

    async def all_subscriptions(self, notifier: str) -> list[dict]:
        return []

    async def put_challenges(self, notifier: str, challenges: list[dict], ttl: float) -> None:
        return None  # (a restart loses the bindings they are for too)

    async def take_challenges(self, notifier: str) -> list[dict]:
        return []

    async def share_challenge(self, record: dict, ttl: float) -> None:
        return None  # one process: the challenge is where its answer comes

    async def take_challenge(self, nonce: str) -> dict | None:
        return None

    async def drop_challenges(self, nonces: list[str]) -> None:
        return None

    async def publish_change(self, record: dict) -> None:
        return None  # one process: nobody else holds subscriptions to its registrations

    async def follow_changes(
        self, on_record: Callable[[dict], None], on_gap: Callable[[], None] | None = None
    ) -> None:
        return None

    async def ended_record(self, impu: str) -> dict | None:
        return None

    async def heartbeat(self, notifier: str, ttl: float) -> list[str]:
        return []  # one process: no other notifier

    async def leave(self, notifier: str) -> None:
        return None

    async def forget_notifier(self, notifier: str) -> None:
        return None

    async def take_subscriptions(self, notifier: str, impu: str) -> list[dict]:
        return []

    async def taken_from(self, notifier: str) -> list[dict]:
        return []

    async def close(self) -> None:
        return None

    def __len__(self) -> int:
        return len(self._regs)


# KEYS[1] the record, ARGV[1] now → 1 removed, 0 no record, -1 a contact is live (kept).
_CLAIM_LAPSED = """
local text = redis.call('GET', KEYS[1])
if not text then return 0 end
local ok, record = pcall(cjson.decode, text)
if ok and type(record) == 'table' and type(record.contacts) == 'table' then
  local now = tonumber(ARGV[1])
  for _, c in ipairs(record.contacts) do
    local at = tonumber(c.expires_at)
    if at and at > now then return -1 end
  end
end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS[1] the record, ARGV[1] the version the writer read, ARGV[2] the new JSON ("":
# remove the record), ARGV[3] its TTL (s) → 1 written (or removed), 0 no record, -1 the
# stored version differs (nothing written).
_WRITE_IF_UNCHANGED = """
local text = redis.call('GET', KEYS[1])
if not text then return 0 end
local ok, record = pcall(cjson.decode, text)
if not ok or type(record) ~= 'table' or type(record.v or 0) ~= 'number'
   or string.format('%.0f', record.v or 0) ~= ARGV[1] then
  return -1
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
end
return 1
"""

# KEYS[1] the subscriptions of a notifier to an IMPU, KEYS[2] its heartbeat, KEYS[3]
# the list of notifiers; ARGV[1] the JSON ("": none left), ARGV[2] its TTL (s), ARGV[3]
# the notifier → 1 written, 0 its heartbeat lapsed (nothing written: the others may
# have taken these already, `_TAKE_SUBSCRIPTIONS`).
_PUT_SUBSCRIPTIONS = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1])
  return 1
end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], ttl, 'NX')
redis.call('EXPIRE', KEYS[3], ttl, 'GT')
return 1
"""

# KEYS[1] the subscriptions of a notifier to an IMPU, KEYS[2] its heartbeat, KEYS[3]
# where what is taken is noted for it → the JSON taken; nil if none, or if its
# heartbeat stands again (back: it serves them itself).
_TAKE_SUBSCRIPTIONS = """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local ttl = redis.call('PTTL', KEYS[1])
local text = redis.call('GETDEL', KEYS[1])
if not text then return false end
if ttl < 1000 then ttl = 3600000 end
redis.call('SET', KEYS[3], text, 'PX', ttl)
return text
"""

# Seconds the record of an ended registration is kept (`RedisBindingStore.ended_record`).
ENDED_KEPT = 3600


def _glob_literal(text: str) -> str:
    """`text` as a Redis glob pattern that matches itself only (an IPv6 host in an
    S-CSCF's Contact has brackets)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def _records(text: str | bytes | None) -> list[dict]:
    """The subscription records of a stored JSON list; none of what is not one."""
    try:
        items = json.loads(text) if text is not None else []
    except ValueError:
        return []
    return [d for d in items if type(d) is dict] if type(items) is list else []


def _log_write(what: str, registration: Registration) -> None:
    """One debug line per binding write of the shared store (which instance wrote
    what, when: how cross-instance races are read off a run). Identities, contact
    URIs, their expiry and the record's version only: no user data, no keys."""
    log.debug(
        "store: %s %s (IMPI %s) version %d contacts %s",
        what,
        registration.impu,
        registration.impi,
        registration.version,
        [(c.uri, round(c.expires_at, 1)) for c in registration.contacts.values()],
    )


class RedisBindingStore:
    """Bindings in Redis: one key per IMPU, expiring with its last contact.

    Keys are ``<prefix>reg:<IMPU>`` holding the JSON of a `Registration`, and
    ``<prefix>sub:<notifier>|<IMPU>`` the JSON list of its reg-event subscriptions that
    one S-CSCF serves (``<prefix>notifiers`` lists the S-CSCFs that keep some,
    ``<prefix>alive:<notifier>`` says for a few seconds at a time that one runs,
    ``<prefix>taken:<notifier>|<IMPU>`` what the others took from one whose heartbeat
    lapsed, until it reads it); Redis drops a key by itself some time after its last
    contact lapsed (or its last subscription), so a crashed S-CSCF leaves nothing
    behind forever.
    """

    __slots__ = (
        "_claim", "_prefix", "_put_subs", "_redis", "_take_subs", "_write_if", "url",
    )  # fmt: skip

    def __init__(self, url: str, *, prefix: str = "imsaka:scscf:") -> None:
        import redis.asyncio as aioredis

        self.url = url
        self._prefix = prefix
        # bounded: a Redis that stops answering without closing its connection must
        # not hold a REGISTER (nor a close) for ever; the store's callers take the
        # timeout for an outage (503 with Retry-After, held changes tried again)
        self._redis = aioredis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
        self._claim: Any = None
        self._write_if: Any = None
        self._put_subs: Any = None
        self._take_subs: Any = None

    def _key(self, impu: str) -> str:
        return f"{self._prefix}reg:{impu}"

    def _sub_key(self, kind: str, notifier: str, impu: str = "") -> str:
        """``<prefix>sub:`` (kept) or ``<prefix>taken:`` (taken from it) subscriptions
        of `notifier` to `impu`; without `impu`, the prefix of all of them."""
        return f"{self._prefix}{kind}:{notifier}|{impu}"

    def _alive_key(self, notifier: str) -> str:
        return f"{self._prefix}alive:{notifier}"

    async def get(self, impu: str) -> Registration | None:
        text = await self._redis.get(self._key(impu))
        return None if text is None else Registration.from_json(text)

    @staticmethod
    def _ttl(registration: Registration) -> int:
        import time

        expiry = registration.earliest_expiry()
        latest = max((c.expires_at for c in registration.contacts.values()), default=expiry)
        # Keep the key a little past the last contact so the S-CSCF that owns the expiry
        # timer still finds it when the timer fires (it then sends the SAR).
        return max(1, int((latest or 0) - time.time()) + 60)

    @staticmethod
    def _new_version() -> int:
        # Random, not a counter: S-CSCFs sharing the store draw them independently. 52
        # bits, so that Lua (whose numbers are doubles) reads it back exactly.
        return random.getrandbits(52) | 1

    async def put(self, registration: Registration) -> None:
        registration.version = self._new_version()
        ttl = self._ttl(registration)
        await self._redis.set(self._key(registration.impu), registration.to_json(), ex=ttl)
        if log.isEnabledFor(logging.DEBUG):
            _log_write("put", registration)

    async def _write_if_unchanged(self, impu: str, expected: int, text: str, ttl: int) -> int:
        """`_WRITE_IF_UNCHANGED` (`text` "": remove the record)."""
        if self._write_if is None:
            self._write_if = self._redis.register_script(_WRITE_IF_UNCHANGED)
        return int(await self._write_if(keys=[self._key(impu)], args=[str(expected), text, ttl]))

    async def put_if_unchanged(self, registration: Registration) -> bool:
        expected = registration.version
        registration.version = self._new_version()
        result = await self._write_if_unchanged(
            registration.impu, expected, registration.to_json(), self._ttl(registration)
        )
        if result != 1:
            registration.version = expected
        if log.isEnabledFor(logging.DEBUG):
            _log_write("put-if-unchanged" if result == 1 else "put refused (changed)", registration)
        return result == 1

    async def delete(self, impu: str) -> None:
        await self._redis.delete(self._key(impu))
        log.debug("store: delete %s", impu)

    async def delete_if_unchanged(self, registration: Registration) -> bool:
        result = await self._write_if_unchanged(registration.impu, registration.version, "", 0)
        log.debug("store: delete-if-unchanged %s: %s", registration.impu, result == 1)
        return result == 1

    async def claim_lapsed(self, impu: str, now: float) -> Claim:
        # One script, so that of the S-CSCFs whose timers saw the binding lapse exactly
        # one removes the key (and sends the SAR), and none removes a refreshed record.
        if self._claim is None:
            self._claim = self._redis.register_script(_CLAIM_LAPSED)
        result = int(await self._claim(keys=[self._key(impu)], args=[repr(float(now))]))
        claim: Claim = "removed" if result == 1 else "live" if result < 0 else "gone"
        log.debug("store: claim lapsed %s: %s", impu, claim)
        return claim

    async def all(self) -> list[Registration]:
        return await self._scan(lambda text: True)

    async def of_impis(self, impis: Collection[str]) -> list[Registration]:
        wanted = set(impis)
        # (each IMPI as its JSON text reads in a record: most records are passed over
        # without being parsed)
        marks = [json.dumps(impi).encode() for impi in wanted]
        found = await self._scan(lambda text: any(mark in text for mark in marks))
        return [reg for reg in found if reg.impi in wanted]

    async def _scan(self, keep: Callable[[bytes], bool]) -> list[Registration]:
        """Every record whose stored text `keep` accepts, read 1,000 keys to an MGET."""
        out: list[Registration] = []
        keys: list[bytes] = []

        async def take() -> None:
            for text in await self._redis.mget(keys):
                if text is not None and keep(text):
                    out.append(Registration.from_json(text))
            keys.clear()

        match = _glob_literal(f"{self._prefix}reg:") + "*"
        async for key in self._redis.scan_iter(match=match, count=1000):
            keys.append(key)
            if len(keys) >= 1000:
                await take()
        if keys:
            await take()
        return out

    async def put_subscriptions(self, notifier: str, impu: str, subscriptions: list[dict]) -> bool:
        import time

        text, ttl = "", 1
        if subscriptions:
            latest = max(float(d["expires_at"]) for d in subscriptions)
            ttl = max(1, int(latest - time.time()) + 60)
            text = json.dumps(subscriptions, separators=(",", ":"))
        if self._put_subs is None:
            self._put_subs = self._redis.register_script(_PUT_SUBSCRIPTIONS)
        # (listed in `notifiers` for as long as any of its subscriptions is kept)
        keys = [
            self._sub_key("sub", notifier, impu),
            self._alive_key(notifier),
            f"{self._prefix}notifiers",
        ]
        return int(await self._put_subs(keys=keys, args=[text, ttl, notifier])) == 1

    async def all_subscriptions(self, notifier: str) -> list[dict]:
        out: list[dict] = []
        match = _glob_literal(self._sub_key("sub", notifier)) + "*"
        async for key in self._redis.scan_iter(match=match, count=500):
            text = await self._redis.get(key)
            if text is None:
                continue
            try:
                items = json.loads(text)
            except ValueError:
                items = None
            if type(items) is not list:
                continue  # not ours to read: the caller gets only what can be one
            out += [d for d in items if type(d) is dict]
        return out

    async def put_challenges(self, notifier: str, challenges: list[dict], ttl: float) -> None:
        key = f"{self._prefix}challenges:{notifier}"
        if challenges:
            text = json.dumps(challenges, separators=(",", ":"))
            await self._redis.set(key, text, ex=max(1, int(ttl) + 1))

    async def take_challenges(self, notifier: str) -> list[dict]:
        text = await self._redis.getdel(f"{self._prefix}challenges:{notifier}")
        try:
            items = json.loads(text) if text is not None else []
        except ValueError:
            items = []
        out: list[dict] = []
        if type(items) is list:
            out = [d for d in items if type(d) is dict]
        return out

    def _challenge_key(self, nonce: str) -> str:
        return f"{self._prefix}challenge:{nonce}"

    async def share_challenge(self, record: dict, ttl: float) -> None:
        text = json.dumps(record, separators=(",", ":"))
        await self._redis.set(self._challenge_key(record["nonce"]), text, ex=max(1, int(ttl) + 1))

    async def take_challenge(self, nonce: str) -> dict | None:
        text = await self._redis.getdel(self._challenge_key(nonce))
        if text is None:
            return None
        try:
            record = json.loads(text)
        except ValueError:
            return None
        return record if type(record) is dict else None

    async def drop_challenges(self, nonces: list[str]) -> None:
        if nonces:
            await self._redis.delete(*(self._challenge_key(n) for n in nonces))

    async def publish_change(self, record: dict) -> None:
        text = json.dumps(record, separators=(",", ":"))
        if record.get("kind") == "ended":
            # kept too, for an S-CSCF that is down now (`ended_record`): one round trip
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(f"{self._prefix}ended:{record['impu']}", text, ex=ENDED_KEPT)
                pipe.publish(f"{self._prefix}changes", text)
                await pipe.execute()
            return
        await self._redis.publish(f"{self._prefix}changes", text)

    async def ended_record(self, impu: str) -> dict | None:
        text = await self._redis.get(f"{self._prefix}ended:{impu}")
        try:
            record = json.loads(text) if text is not None else None
        except ValueError:
            return None
        return record if type(record) is dict else None

    async def follow_changes(
        self, on_record: Callable[[dict], None], on_gap: Callable[[], None] | None = None
    ) -> None:
        channel = f"{self._prefix}changes"
        broken = False
        me = asyncio.current_task()
        # (redis-py's reads can swallow a cancellation: the loop looks for one itself,
        # reading with a timeout so that it gets to look)
        while me is None or not me.cancelling():
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                if broken:
                    broken = False
                    if on_gap is not None:
                        on_gap()
                while me is None or not me.cancelling():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        record = json.loads(message["data"])
                    except (TypeError, ValueError):
                        continue
                    if type(record) is dict:
                        on_record(record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis gone for a while: listen again when back
                broken = True
                log.warning("binding store: following registration changes: %s", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def heartbeat(self, notifier: str, ttl: float) -> list[str]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._alive_key(notifier), b"1", px=max(1, int(ttl * 1000)))
            pipe.smembers(f"{self._prefix}notifiers")
            _, members = await pipe.execute()
        others = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        others = [n for n in others if n != notifier]
        if not others:
            return []
        alive = await self._redis.mget([self._alive_key(n) for n in others])
        return [n for n, a in zip(others, alive, strict=True) if a is None]

    async def leave(self, notifier: str) -> None:
        await self._redis.delete(self._alive_key(notifier))

    async def forget_notifier(self, notifier: str) -> None:
        await self._redis.srem(f"{self._prefix}notifiers", notifier)

    async def take_subscriptions(self, notifier: str, impu: str) -> list[dict]:
        if self._take_subs is None:
            self._take_subs = self._redis.register_script(_TAKE_SUBSCRIPTIONS)
        keys = [
            self._sub_key("sub", notifier, impu),
            self._alive_key(notifier),
            self._sub_key("taken", notifier, impu),
        ]
        return _records(await self._take_subs(keys=keys))

    async def taken_from(self, notifier: str) -> list[dict]:
        out: list[dict] = []
        match = _glob_literal(self._sub_key("taken", notifier)) + "*"
        async for key in self._redis.scan_iter(match=match, count=500):
            out += _records(await self._redis.getdel(key))
        return out

    async def clear(self) -> None:
        """Remove every key under this store's prefix (tests, lab reset)."""
        keys = [k async for k in self._redis.scan_iter(match=f"{self._prefix}*", count=500)]
        if keys:
            await self._redis.delete(*keys)

    async def close(self) -> None:
        await self._redis.aclose()


def open_binding_store(url: str, *, prefix: str = "imsaka:scscf:") -> BindingStore:
    """``memory://`` → `MemoryBindingStore`; ``redis://…`` → `RedisBindingStore`."""
    if url in ("", "memory://", "memory:"):
        return MemoryBindingStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBindingStore(url, prefix=prefix)
    raise ValueError(f"binding_store: unsupported URL scheme in {url!r}")
