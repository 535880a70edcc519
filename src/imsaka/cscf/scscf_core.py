"""S-CSCF registrar and authenticator, sans-I/O (TS 24.229 §5.4.1; TS 33.203 §6.1; RFC 3310).

The core decides; the asyncio edge (imsaka.cscf.scscf) moves bytes. It is fed a
`RegisterRequest` (what the edge read from a REGISTER), Cx outcomes and the time, and
answers with actions: a SIP reply to give, a Cx request to make (MAR/SAR, phrased in
registrar terms so this module does not depend on the Diameter encoding), a binding to
store or delete. No sockets, no clock reads, randomness injected.

Procedure selection (TS 24.229 §5.4.1.1, §5.4.1.2):
- a REGISTER whose Authorization answers a pending challenge (same IMPI and nonce) is
  verified against that challenge's XRES (RFC 3310: RES is the digest password; the
  algorithm is the one *we* challenged with, never the one the UE names). ``auts``
  present → resynchronisation: MAR with RAND‖AUTS, then a fresh 401 (§5.4.1.2.3). An
  empty response without auts is the UE saying the network failed authentication
  (TS 24.229 §5.1.1.5.3) → 403;
- integrity-protected="yes" for a live registration of that IMPI/IMPU and no pending
  challenge → accepted without a new AKA run unless ``reauthenticate = "always"``
  or it adds a contact not registered before (§5.4.1.2.2: then a new challenge, not
  the 403 that skipping authentication would require); Expires 0 there is a
  de-registration (§5.4.1.4), and with no live registration left to remove is
  answered 200 at once. The very REGISTER that made the bindings, retransmitted past
  its transaction (shared store), is answered 200 from the record. Such a re-REGISTER
  sends SAR RE_REGISTRATION, or with ``reregistration_sar = "when-needed"`` and only
  live bindings refreshed is answered from the stored profile (TS 23.228 §5.2.2.4);
- anything else (integrity-protected="no", absent, unknown nonce, lapsed challenge) →
  a challenge: one vector per 401, taken from the per-IMPI cache or fetched by MAR
  (several at once), never reused; reg-await-auth (4 min) per challenge.

Initial and re-registration are told apart by the registrar's state (a live
registration for the IMPU), never by ports (PITFALLS).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import heapq
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import formatdate

from imsaka.aka.digest import (
    AKAV1_MD5,
    AKAV2_MD5,
    MD5,
    DigestError,
    make_nonce,
    password_for,
    split_nonce,
    verify_response,
)
from imsaka.cscf.registrar import ContactBinding, ContactMap, Registration
from imsaka.cscf.userdata import (
    PublicIdentity,
    UserDataError,
    associated_uris,
    parse_user_data,
)
from imsaka.sip.compact import SharedTuples

__all__ = [
    "AskAssignment",
    "AskVectors",
    "AssignmentType",
    "AuthVectorItem",
    "ContactSpec",
    "CxOutcome",
    "DigestParams",
    "RegisterRequest",
    "RegistrarCore",
    "RegistrarPolicy",
    "RemoveRegistration",
    "Reply",
    "StoreRegistration",
]

log = logging.getLogger("imsaka.cscf.scscf")


class AssignmentType(enum.IntEnum):
    """Server-Assignment-Type (TS 29.229 §6.3.15)."""

    NO_ASSIGNMENT = 0
    REGISTRATION = 1
    RE_REGISTRATION = 2
    UNREGISTERED_USER = 3
    TIMEOUT_DEREGISTRATION = 4
    USER_DEREGISTRATION = 5
    ADMINISTRATIVE_DEREGISTRATION = 8
    AUTHENTICATION_FAILURE = 9
    AUTHENTICATION_TIMEOUT = 10


class CxOutcome(enum.Enum):
    """How a Cx request ended when it did not bring what was asked."""

    USER_UNKNOWN = "user-unknown"  # 5001
    IDENTITIES_DONT_MATCH = "identities-dont-match"  # 5002
    AUTH_SCHEME_NOT_SUPPORTED = "auth-scheme-not-supported"  # 5006
    REFUSED = "refused"  # any other permanent refusal of this user
    HSS_ERROR = "hss-error"  # the HSS failed the request (e.g. 5012 UNABLE_TO_COMPLY)
    UNAVAILABLE = "unavailable"  # timeout, no peer, transient error (HSS down)


_date_cache: tuple[int, str] = (-1, "")


def http_date(now: float) -> str:
    """RFC 3261 §20.17 Date (RFC 1123 form, GMT) of `now`; one formatting per second."""
    global _date_cache
    second = int(now)  # formatdate truncates to the second too (time.gmtime)
    if _date_cache[0] != second or now < 0:
        _date_cache = (second, formatdate(now, usegmt=True))
    return _date_cache[1]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class DigestParams:
    """The Authorization header of a REGISTER (RFC 2617 §3.2.2, RFC 3310, TS 24.229 §7.2A.2)."""

    username: str = ""
    realm: str = ""
    nonce: str = ""
    uri: str = ""
    response: str | None = None
    algorithm: str | None = None
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    auts: str | None = None
    integrity_protected: str | None = None


@dataclass(frozen=True, slots=True)
class ContactSpec:
    """One Contact of the REGISTER."""

    uri: str
    expires: int | None = None
    params: str = ""


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """What the registrar needs from a REGISTER (the edge reads it from the SIP message)."""

    impu: str
    call_id: str
    cseq: int
    auth: DigestParams | None = None
    contacts: tuple[ContactSpec, ...] = ()
    star: bool = False
    expires: int | None = None
    path: tuple[str, ...] = ()
    method: str = "REGISTER"
    body: bytes = b""
    branch: str = ""
    """Its bottom Via's branch (the UE's), when the bindings keep it (a shared store:
    `ContactBinding`)."""


@dataclass(frozen=True, slots=True)
class AuthVectorItem:
    """One SIP-Auth-Data-Item of an MAA, in registrar terms."""

    algorithm: str
    """AKAv1-MD5, AKAv2-MD5 or MD5 (from SIP-Authentication-Scheme)."""
    rand: bytes = b""
    autn: bytes = b""
    xres: bytes = field(default=b"", repr=False)
    ck: bytes = field(default=b"", repr=False)
    ik: bytes = field(default=b"", repr=False)
    password: bytes = field(default=b"", repr=False)
    """MD5: the password (SIP-Authorization of the item); AKAv2-MD5 taken from another
    S-CSCF (`adopt_challenges`): the digest password made there, with no IK or CK."""


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer the REGISTER `token` with this status and these extra headers."""

    token: int
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class AskVectors:
    """Send an MAR; feed the answer to `vectors_received` / `cx_failed` with `token`."""

    token: int
    impi: str
    impu: str
    count: int
    resync: bytes | None = None
    """RAND‖AUTS for a resynchronisation MAR (SIP-Authorization), else None."""
    algorithm: str | None = None
    """The algorithm being resynchronised (AKAv1-MD5 / AKAv2-MD5); None: the HSS chooses."""


@dataclass(frozen=True, slots=True)
class AskAssignment:
    """Send an SAR; feed the answer to `assignment_done` / `cx_failed` with `token`."""

    token: int
    impi: str
    impu: str
    assignment_type: AssignmentType
    user_data_available: bool


@dataclass(frozen=True, slots=True)
class StoreRegistration:
    registration: Registration
    if_unchanged: bool = False
    """A partial expiry: with a shared store, write it only over the copy it was read as
    (`BindingStore.put_if_unchanged`), never over another S-CSCF's refresh."""
    ended: tuple[tuple[ContactBinding, str], ...] = ()
    """Bindings this write removes from a registration that stays, each with its RFC 3680
    event (`unregistered`, `expired`): the reg-event subscribers are told (TS 24.229
    §5.4.2.1.2)."""
    added: bool = False
    """Whether it adds a contact to the registration, or binds one anew under another
    Call-ID (the subscribers are told)."""
    created: tuple[str, ...] = ()
    """IMPUs a pushed profile adds to the implicit registration set (the subscribers
    are told, their contacts `created`)."""
    gone: tuple[str, ...] = ()
    """IMPUs a pushed profile takes out of it, or bars (told terminated)."""

    @property
    def tells(self) -> bool:
        """Whether the reg-event subscribers hear of this write."""
        return bool(self.ended or self.added or self.created or self.gone)


@dataclass(frozen=True, slots=True)
class RemoveRegistration:
    impu: str
    impi: str
    reason: str
    registration: Registration | None = field(default=None, repr=False, compare=False)
    """The record as it was (contacts, implicit set), for the reg-event NOTIFY."""


Action = Reply | AskVectors | AskAssignment | StoreRegistration | RemoveRegistration


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    """The S-CSCF settings the core uses (built from `imsaka.config.ScscfConfig`)."""

    realm: str
    service_route: str
    reauthenticate: str = "never"
    reregistration_sar: str = "always"
    vectors_per_request: int = 3
    max_failed_attempts: int = 3
    lockout: float = 300.0
    min_expires: int = 60
    max_expires: int = 600000
    default_expires: int = 600000
    reg_await_auth: float = 240.0
    vector_lifetime: float = 3600.0
    max_pending_per_impi: int = 4
    max_contacts: int = 16
    """Bindings one IMPU may hold (a flood of Contacts must not grow the registrar)."""
    retry_after: int = 30
    nonce_tag: bytes = b""
    """The first octets of the server data of our AKA nonces (RFC 3310 §3.2), the same
    for every instance of one S-CSCF (`nonce_tag_for` its Server-Name): a nonce without
    them is another S-CSCF's. Empty: every nonce counts as ours."""

    @classmethod
    def from_config(cls, cfg) -> RegistrarPolicy:
        return cls(
            nonce_tag=nonce_tag_for(cfg.server_name),
            realm=cfg.realm,
            service_route=cfg.service_route,
            reauthenticate=cfg.reauthenticate,
            reregistration_sar=cfg.reregistration_sar,
            vectors_per_request=cfg.vectors_per_request,
            max_failed_attempts=cfg.max_failed_attempts,
            lockout=float(cfg.lockout),
            min_expires=cfg.min_expires,
            max_expires=cfg.max_expires,
            default_expires=cfg.default_expires,
            reg_await_auth=float(cfg.reg_await_auth),
            vector_lifetime=float(cfg.vector_lifetime),
            retry_after=cfg.retry_after,
        )


def nonce_tag_for(server_name: str) -> bytes:
    """Four octets that tell this S-CSCF's nonces from other S-CSCFs' (a hash of its
    Server-Name, not a secret: the nonce travels in the clear anyway). Two until the
    twelfth session (2026-11-29): two S-CSCF names in 65,536 shared a tag, now one pair
    in about 4.3 billion; the four random octets left keep a repeated vector's nonces
    apart."""
    if not server_name:
        return b""
    return hashlib.sha256(server_name.lower().encode()).digest()[:4]


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Challenge:
    impi: str
    impu: str
    nonce: str
    vector: AuthVectorItem = field(repr=False)
    deadline: float
    call_id: str


def _challenge_record(ch: _Challenge, now: float) -> dict | None:
    v, left = ch.vector, ch.deadline - now
    if left <= 0:
        return None
    xres, password = v.xres, v.password
    if v.algorithm == AKAV2_MD5 and not password:
        # the digest password itself (RFC 4169 §3), made here: IK and CK stay here
        try:
            password = password_for(AKAV2_MD5, res=xres, ik=v.ik, ck=v.ck)
        except DigestError:
            return None
        xres = b""
    elif v.algorithm not in (AKAV1_MD5, MD5):
        return None
    return {
        "impi": ch.impi,
        "impu": ch.impu,
        "nonce": ch.nonce,
        "call_id": ch.call_id,
        "algorithm": v.algorithm,
        "rand": v.rand.hex(),
        "autn": v.autn.hex(),
        "xres": xres.hex(),
        "password": password.hex(),
        "left": left,
    }


class _OpKind(enum.Enum):
    CHALLENGE = "challenge"  # waiting for an MAA to send a 401
    RESYNC = "resync"  # waiting for a resync MAA
    ASSIGN = "assign"  # waiting for an SAA to send a 200
    DEREGISTER = "deregister"  # waiting for an SAA to send the 200 of a de-REGISTER
    BACKGROUND = "background"  # an SAR nobody waits for (expiry)


@dataclass(slots=True)
class _Op:
    kind: _OpKind
    impi: str
    impu: str
    request: RegisterRequest | None = None
    assignment: AssignmentType | None = None
    reply: bool = True


@dataclass(slots=True)
class _Failures:
    count: int = 0
    locked_until: float = 0.0
    last: float = 0.0
    """When the latest failure was: the count covers failures within `lockout` of it."""


_AKA_ALGORITHMS = (AKAV1_MD5, AKAV2_MD5)


def _contact_changes(
    old: Registration | None, contacts: Mapping[str, ContactBinding], now: float
) -> tuple[tuple[tuple[ContactBinding, str], ...], bool]:
    """What a REGISTER changes in an IMPU's contacts, for its reg-event subscribers
    (TS 24.229 §5.4.2.1.2): the live bindings of `old` it removes (`unregistered`), and
    whether it adds one or makes one anew. A refresh of the same contacts changes
    neither. A contact bound again by another registration (another Call-ID: the UE
    registered from scratch after a P-CSCF restart or a failed refresh, §5.1.1.4.1) is
    made anew: the subscriptions of the old one may be dead (those of the P-CSCF that
    restarted, and the UE's through it), and the NOTIFY ends them with its 481."""
    if old is None:
        return (), bool(contacts)
    before = old.contacts
    if len(before) == len(contacts) and all(uri in before for uri in contacts):
        for uri, c in contacts.items():  # (a loop: no generator on every re-REGISTER)
            if before[uri].call_id != c.call_id:
                return (), True
        return (), False
    ended = tuple(
        (c, "unregistered")
        for uri, c in before.items()
        if uri not in contacts and c.expires_at > now
    )
    return ended, any(uri not in before for uri in contacts)


def _holds(reg: Registration, impi: str) -> bool:
    """Whether `impi` registered `reg` or a binding of it (another device of the
    subscription sharing the IMPU, TS 23.228 §4.3.3.4)."""
    return reg.impi == impi or any(c.impi == impi for c in reg.contacts.values())


def _made(req: RegisterRequest, binding: ContactBinding | None) -> bool:
    """Whether `req` is the very REGISTER that last refreshed `binding`: same Call-ID,
    CSeq and UE's Via branch (kept with the binding by a shared store), so a
    retransmission that outlived its transaction (RFC 3261 §17.2.3)."""
    return (
        binding is not None
        and bool(req.branch)
        and (binding.call_id, binding.cseq, binding.branch) == (req.call_id, req.cseq, req.branch)
    )


def _older(req: RegisterRequest, binding: ContactBinding) -> bool:
    """RFC 3261 §10.3 step 7: `req` has the Call-ID that last refreshed `binding` and not
    a higher CSeq: a delayed older REGISTER, unless it is the very one that did (`_made`:
    at an S-CSCF restarted since, or another one sharing the store)."""
    if binding.call_id != req.call_id or binding.cseq < req.cseq:
        return False
    return not _made(req, binding)


def _impi_from_impu(impu: str) -> str:
    """TS 24.229 §5.4.1.1 item 4 / TS 23.003: without Authorization the user is
    identified by the IMPU; the IMPI is its user@domain form."""
    text = impu.strip("<>")
    for scheme in ("sip:", "sips:", "tel:"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
            break
    return text.split(";", 1)[0]


class RegistrarCore:
    """The S-CSCF's registration state machine (one per S-CSCF)."""

    def __init__(
        self,
        policy: RegistrarPolicy,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.policy = policy
        self._random = random_bytes
        self.registrations: dict[str, Registration] = {}
        # IMPI → its registered IMPU, or a tuple of them when several (`_impus_of`)
        self._by_impi: dict[str, str | tuple[str, ...]] = {}
        # Implicitly registered IMPUs (P-Associated-URI) → the IMPU whose record holds them.
        self._aliases: dict[str, str] = {}
        # IMPI → spare vectors with the time they stop being offered (oldest first).
        # (short lists: a deque's first block alone is 600 octets, per IMPI)
        self._vectors: dict[str, list[tuple[float, AuthVectorItem]]] = {}
        # nonce → challenge, oldest first: every challenge lives reg-await-auth, so
        # insertion order is expiry order and they need no timer entries of their own
        # (an answered challenge leaves nothing behind for its 4 minutes)
        self._challenges: dict[str, _Challenge] = {}
        self._challenges_by_impi: dict[str, list[str]] = {}
        # IMPI → its recent failed authentications, in order of the latest failure: an
        # entry `lockout` seconds past its last failure (and so past any lock) counts for
        # nothing and is dropped from the front (issue 7: no state left behind)
        self._failures: dict[str, _Failures] = {}
        self._ops: dict[int, _Op] = {}
        self._next_token = 1 << 32  # tokens for SARs the core starts by itself
        # Binding expiries: a heap of (deadline, IMPU), one live entry per record, the
        # one `_queued` names (others are stale: skipped when they surface). The live
        # entry is due at the record's earliest expiry or before: a re-registration,
        # which moves that expiry later, leaves the entry as it is, and it moves on to
        # the record's expiry when it surfaces (no push and no pop per refresh).
        self._timers: list[tuple[float, str]] = []
        self._queued: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        self.deadlines_added = 0
        """Counts the deadlines added (binding expiries, challenges): while it stays the
        same, `next_deadline()` can only have moved later (the edge skips its look)."""
        self._paths = SharedTuples()  # a P-CSCF's Path, the same for all its UEs
        # With a store shared by several S-CSCFs (the edge sets `share_challenges`): the
        # nonces of the challenges made and ended since the edge last looked, so that
        # it writes and removes their records (`challenge_record`) for an S-CSCF that
        # gets the answer instead of this one (another instance, or this one after a
        # crash) to verify it.
        self.share_challenges = False
        self.challenges_made: list[str] = []
        self.challenges_ended: list[str] = []
        # token → the nonce of the challenge its REGISTER answered, whose shared record
        # stays until the REGISTER is answered: a copy the I-CSCF gives another
        # instance meanwhile (this one awaiting the HSS's SAA) is verified there from
        # it, not challenged again.
        self._answering: dict[int, str] = {}

    # ----------------------------------------------------------------- public API

    def handle_register(self, token: int, req: RegisterRequest, now: float) -> list[Action]:
        """A REGISTER arrived; `token` names its server transaction."""
        self.counters["register"] += 1
        problem = self._check_request(req)
        if problem is not None:
            return [self._reply(token, 400, problem)]
        auth = req.auth
        impi = auth.username if auth is not None and auth.username else _impi_from_impu(req.impu)
        fail = self._failures.get(impi)
        if fail is not None and fail.locked_until > now:
            self.counters["refused_locked"] += 1
            return [self._reply(token, 403, "Forbidden (too many failed authentications)")]
        too_short = self._too_short(req)
        if too_short:
            return [
                self._reply(
                    token,
                    423,
                    "Interval Too Brief",
                    (("Min-Expires", str(self.policy.min_expires)),),
                )
            ]
        challenge = None
        if auth is not None and auth.nonce:
            challenge = self._challenges.get(auth.nonce)
            if challenge is not None and (challenge.impi != impi or challenge.deadline <= now):
                challenge = None
        if challenge is not None:
            assert auth is not None
            if auth.auts:
                return self._resync(token, req, challenge, auth, now)
            if auth.response:
                return self._verify(token, req, challenge, auth, now)
            # TS 24.229 §5.1.1.5.3: empty response, no auts: the UE rejected AUTN.
            self._drop_challenge(challenge)
            self.counters["ue_network_auth_failed"] += 1
            return [self._reply(token, 403, "Forbidden (network authentication failed at the UE)")]
        reg = self._live_registration(req.impu, now)
        if auth is not None and auth.response and auth.nonce:
            self._note_unknown_challenge(req, impi, reg)
        if (
            reg is not None
            and auth is not None
            and auth.integrity_protected == "yes"
            and _holds(reg, impi)
            and reg._user_data
            and self._made_by(reg, req)
        ):
            # The very REGISTER that made these bindings (a challenge response too),
            # retransmitted past its transaction (a restart between its 200 and the
            # I-CSCF): RFC 3261 §17.2.3 answers it as before. It was authenticated and
            # its SAR done; a new challenge (its nonce went with the restart) or SAR
            # (the HSS down: 504) could only fail it now while its registration stands,
            # and the UE would start over with a new contact, leaving this one behind.
            self.counters["retransmission_answered_from_store"] += 1
            kind = AssignmentType.RE_REGISTRATION
            return self._finish_register(token, req, impi, kind, None, now, reg)
        if (
            auth is not None
            and auth.integrity_protected == "yes"
            and reg is not None
            and _holds(reg, impi)
            and self.policy.reauthenticate != "always"
        ):
            if self._new_contact_without_reg_id(reg, req):
                # TS 24.229 §5.4.1.2.2: without a new AKA run a protected REGISTER may
                # refresh or remove the contacts registered before, not add one (step 2:
                # 403). Step 1 lets the S-CSCF re-authenticate any REGISTER first, and a
                # new contact is where it should: a UE that restarted and answered a
                # challenge this S-CSCF no longer holds (lost in a restart) comes here,
                # and a new challenge lets it register instead of failing until its old
                # contact lapses.
                self.counters["new_contact_reauthenticated"] += 1
                return self._challenge(token, req, impi, now)
            self.counters["reregister_without_aka"] += 1
            return self._authenticated(token, req, impi, now, reg)
        if (
            reg is not None
            and auth is not None
            and auth.integrity_protected == "yes"
            and _holds(reg, impi)
            and self._removes_only_unregistered(reg, req, now)
        ):
            # (`reauthenticate = "always"`) §5.4.1.4 over the UE's SAs for contacts no
            # longer registered while others stay: the copy of a de-REGISTER that
            # another S-CSCF sharing the store answered (its 200 lost; the I-CSCF moved
            # on), or one its binding's expiry crossed. It removes nothing, so nothing
            # is authenticated anew: a challenge would only make the UE set up SAs the
            # P-CSCF may already have let go with the contact (chaos seed 9960).
            self.counters["deregister_not_registered"] += 1
            return self._authenticated(token, req, impi, now, reg)
        if (
            reg is None
            and auth is not None
            and auth.integrity_protected == "yes"
            and self._contacts_left(None, req, now) == 0
        ):
            # §5.4.1.4 over the UE's SAs, with nothing registered to remove: the
            # registration ended already (the network's de-registration or its expiry
            # crossed it, or this is the retransmission of a de-REGISTER an S-CSCF
            # restarted since had answered). RFC 3261 §10.3: 200, no binding; a
            # challenge would only make the UE set up SAs to remove nothing.
            self.counters["deregister_not_registered"] += 1
            return self._authenticated(token, req, impi, now, None)
        return self._challenge(token, req, impi, now)

    def _note_unknown_challenge(
        self, req: RegisterRequest, impi: str, reg: Registration | None
    ) -> None:
        """Log an answer to a challenge not held here (run out, or made by an S-CSCF that
        did not share it) where it will be challenged again although it may not need to
        be: nothing registered, or the very REGISTER that made the bindings (Call-ID and
        CSeq) under another Via branch. (A UE's refresh carrying its last nonce, as TS
        24.229 §5.1.1.4.1 has it, is neither.)"""
        if reg is None:
            why = "nothing is registered"
        else:
            made = [
                b
                for spec in req.contacts
                if (b := reg.contacts.get(spec.uri)) is not None
                and (b.call_id, b.cseq) == (req.call_id, req.cseq)
                and b.branch != req.branch
            ]
            if not made:
                return
            why = (
                f"its bindings' REGISTER came with branch {made[0].branch}, this with {req.branch}"
            )
        self.counters["answer_to_unknown_challenge"] += 1
        log.info(
            "REGISTER of %s (%s, CSeq %d) answers a challenge not held here: %s",
            impi,
            req.impu,
            req.cseq,
            why,
        )

    def _new_contact_without_reg_id(self, reg: Registration, req: RegisterRequest) -> bool:
        for spec in req.contacts:
            if spec.uri in reg.contacts or self._expiry_of(req, spec) == 0:
                continue
            if ";reg-id=" not in spec.params.lower():
                return True
        return False

    def vectors_received(
        self, token: int, vectors: list[AuthVectorItem], now: float
    ) -> list[Action]:
        """The MAA for `token` brought these vectors (at least one)."""
        op = self._ops.pop(token, None)
        if op is None or op.kind not in (_OpKind.CHALLENGE, _OpKind.RESYNC):
            self.counters["stray_maa"] += 1
            return []
        usable = [v for v in vectors if self._usable(v)]
        if not usable:
            self.counters["maa_without_vectors"] += 1
            return [self._reply(token, 403, "Forbidden (authentication scheme not supported)")]
        if op.kind is _OpKind.RESYNC:
            # Vectors cached before the resync carry SQNs the ISIM has just rejected.
            self._vectors.pop(op.impi, None)
        if len(usable) > 1:
            until = now + self.policy.vector_lifetime
            cache = self._vectors.setdefault(op.impi, [])
            cache.extend((until, v) for v in usable[1:])
        assert op.request is not None
        return [self._send_challenge(token, op.request, op.impi, usable[0], now)]

    def assignment_done(self, token: int, user_data: str | None, now: float) -> list[Action]:
        """The SAA for `token` succeeded (`user_data`: the IMS subscription XML, if sent)."""
        op = self._ops.pop(token, None)
        if op is None:
            self.counters["stray_saa"] += 1
            return []
        if op.kind is _OpKind.BACKGROUND:
            return []
        assert op.request is not None
        if op.kind is _OpKind.DEREGISTER:
            return self._finish_deregister(token, op, now)
        old = self._live_registration(op.request.impu, now)
        return self._finish_register(token, op.request, op.impi, op.assignment, user_data, now, old)

    def cx_failed(self, token: int, outcome: CxOutcome, now: float) -> list[Action]:
        """The MAR/SAR for `token` failed (error answer, timeout or no HSS)."""
        op = self._ops.pop(token, None)
        if op is None:
            self.counters["stray_cx_failure"] += 1
            return []
        self.counters[f"cx_{outcome.value}"] += 1
        if op.kind is _OpKind.BACKGROUND:
            return []
        if op.kind is _OpKind.DEREGISTER:
            # The binding is gone locally whatever the HSS says; the UE gets its 200.
            return self._finish_deregister(token, op, now)
        if outcome is CxOutcome.UNAVAILABLE:
            # TS 24.229 §5.4.1.2.1: HSS unreachable → 504 (Server Time-out) with Retry-After.
            return [
                self._reply(
                    token,
                    504,
                    "Server Time-out (HSS unavailable)",
                    (("Retry-After", str(self.policy.retry_after)),),
                )
            ]
        if outcome is CxOutcome.HSS_ERROR:
            # 5012 and friends: the exchange failed (an overloaded HSS answers so too);
            # Retry-After (RFC 3261 §21.5.1) lets the UE come back later.
            return [
                self._reply(
                    token,
                    500,
                    "Server Internal Error (HSS error)",
                    (("Retry-After", str(self.policy.retry_after)),),
                )
            ]
        reason = {
            CxOutcome.USER_UNKNOWN: "Forbidden (user unknown)",
            CxOutcome.IDENTITIES_DONT_MATCH: "Forbidden (identities don't match)",
            CxOutcome.AUTH_SCHEME_NOT_SUPPORTED: "Forbidden (authentication scheme not supported)",
        }.get(outcome, "Forbidden")
        return [self._reply(token, 403, reason)]

    def load(self, registration: Registration) -> None:
        """Adopt a registration read from the binding store (start-up, shared store)."""
        old = self.registrations.get(registration.impu)
        self.registrations[registration.impu] = registration
        # A refresh of the same record (a re-registration) is indexed as it is already.
        if old is not None and (
            old.impi != registration.impi or old.associated != registration.associated
        ):
            self._unindex(old)
            old = None
        if old is None:
            impus = self._impus_of(registration.impi)
            if registration.impu not in impus:
                # one IMPU per IMPI almost always: the string itself, no 1-tuple per UE
                self._by_impi[registration.impi] = (
                    (*impus, registration.impu) if impus else registration.impu
                )
        for alias in registration.associated:
            if alias != registration.impu:
                self._aliases[alias] = registration.impu
        expiry = registration.earliest_expiry()
        if expiry is not None:
            self._arm(expiry, registration.impu)

    def lookup(self, impu: str, now: float) -> Registration | None:
        """The live registration serving `impu`, registered explicitly or implicitly
        (TS 24.229 §5.4.1.2.2: the implicit registration set); for routing to the UE."""
        reg = self.registrations.get(impu)
        if reg is None:
            key = self._aliases.get(impu)
            reg = self.registrations.get(key) if key is not None else None
        return reg if reg is not None and reg.is_live(now) else None

    def push_profile(
        self, impu: str, user_data: str, identities: list[PublicIdentity]
    ) -> StoreRegistration | None:
        """A PPR's User-Data for the registration of `impu` (TS 29.228 §6.1.4): the
        profile replaced, and the implicit registration set taken from it (an IMPU the
        operator added is registered with the set from now, one removed or barred is
        not, TS 24.229 §5.4.1.2.2); the write to make, None without a registration."""
        reg = self.registrations.get(impu)
        if reg is None:
            return None
        reg.user_data = user_data
        associated = associated_uris(reg.impu, identities)
        if associated == reg.associated:
            return StoreRegistration(reg)
        before = {a.lower() for a in reg.associated}
        after = {a.lower() for a in associated}
        created = tuple(a for a in associated if a.lower() not in before)
        gone = tuple(a for a in reg.associated if a.lower() not in after)
        aliases = self._aliases
        for alias in reg.associated:
            if aliases.get(alias) == reg.impu:
                del aliases[alias]
        reg.associated = associated
        for alias in associated:
            if alias != reg.impu:
                aliases[alias] = reg.impu
        self.counters["implicit_set_changed_by_profile"] += 1
        return StoreRegistration(reg, created=created, gone=gone)

    def forget(self, impu: str) -> None:
        """Drop a registration another S-CSCF removed from the shared store."""
        reg = self.registrations.pop(impu, None)
        if reg is not None:
            self._queued.pop(impu, None)
            self._unindex(reg)

    def network_deregister(
        self,
        impi: str,
        impus: list[str] | None,
        now: float,
        *,
        register_again: bool = False,
        moved: bool = False,
    ) -> tuple[int, list[Action]]:
        """RTR (TS 29.228 §6.1.3): remove the bindings of `impi` (all, or those `impus`).
        `register_again` (the RTR's Reason-Code SERVER_CHANGE): the UE is to register
        anew, so the removals' reason is "server-change" (reg event "deactivated",
        TS 24.229 §5.4.1.5) instead of "network-initiated" ("rejected"). `moved`
        (NEW_SERVER_ASSIGNED, TS 29.229 §6.3.17): the user registered at another S-CSCF,
        so the registration is not over: reason "moved", its subscribers are not told
        of an end (the edge moves them on), nor are a shared IMPU's other devices.

        Returns how many registrations were removed and the actions (removals)."""
        targets = set(self._impus_of(impi))
        registrations = self.registrations
        wanted: set[str] = set()
        if impus:
            # An RTR may name any IMPU of an implicit set: map it to the record holding it.
            wanted = {self._aliases.get(u, u).lower() for u in impus}
            targets = {u for u in targets if u.lower() in wanted}
            # and another IMPI's record may hold a device of `impi` (a shared IMPU)
            for u in impus:
                key = self._aliases.get(u, u)
                reg = registrations.get(key)
                if reg is not None and _holds(reg, impi):
                    targets.add(key)
        else:  # (rare: our HSS names them) a scan for the devices in others' records
            targets.update(
                u
                for u, reg in registrations.items()
                if any(c.impi == impi for c in reg.contacts.values())
            )
        actions: list[Action] = []
        why = "moved" if moved else "server-change" if register_again else "network-initiated"
        for impu in sorted(targets):
            reg = registrations[impu]
            staying = [c for c in reg.contacts.values() if c.owner(reg.impi) != impi]
            if staying:
                # Only `impi`'s devices go; the others' registration stays (told so).
                gone = [c for c in reg.contacts.values() if c.owner(reg.impi) == impi]
                if reg.impi == impi:
                    # The record is named after a device that stays (and indexed so).
                    owner = staying[0].impi
                    staying = [replace(c, impi="") if c.impi == owner else c for c in staying]
                    reg = replace(reg, impi=owner, contacts=ContactMap())
                reg.contacts = ContactMap((c.uri, c) for c in staying)
                self.load(reg)  # (re-indexed if renamed; its expiry armed)
                event = "deactivated" if register_again else "rejected"  # (RFC 3680)
                ended = () if moved else tuple((c, event) for c in gone)
                actions.append(StoreRegistration(reg, ended=ended))
                continue
            registrations.pop(impu)
            self._queued.pop(impu, None)
            self._unindex(reg)
            actions.append(RemoveRegistration(impu, impi, why, reg))
        # Only the named implicit sets end (`named`, empty: all): the IMPI's challenges
        # of other IMPUs stay, and so do its spare vectors while it holds another
        # registration.
        named = wanted | {u.lower() for u in impus or ()}
        if named:
            self._drop_spare_vectors(impi)
        else:
            self._vectors.pop(impi, None)
        for nonce in list(self._challenges_by_impi.get(impi, ())):
            ch = self._challenges.get(nonce)
            if ch is not None and (
                not named
                or ch.impu.lower() in named
                or self._aliases.get(ch.impu, ch.impu).lower() in named
            ):
                self._drop_challenge(ch)
        self.counters["rtr_removed"] += len(targets)
        return len(targets), actions

    def next_deadline(self) -> float | None:
        deadline = None
        timers = self._timers
        while timers:
            when, impu = timers[0]
            if self._surfaced(when, impu):
                deadline = when
                break
        ch = next(iter(self._challenges.values()), None)
        if ch is not None and (deadline is None or ch.deadline < deadline):
            deadline = ch.deadline
        fail = next(iter(self._failures.values()), None)
        if fail is not None:
            stale = fail.last + self.policy.lockout
            if deadline is None or stale < deadline:
                deadline = stale
        return deadline

    def handle_timer(self, now: float) -> list[Action]:
        """Expire challenges (reg-await-auth), bindings and failure counts due at `now`."""
        actions: list[Action] = []
        self._forget_failures(now)
        while self._challenges:
            ch = next(iter(self._challenges.values()))
            if ch.deadline > now:
                break
            self._drop_challenge(ch, shared_too=False)  # (its stored record runs out too)
            self.counters["reg_await_auth_expired"] += 1
            # TS 24.229 §5.4.1.2.1 / TS 29.228 §6.1.2: the HSS forgets the pending
            # S-CSCF of a user that never answered, unless it is registered anyway.
            if self._live_registration(ch.impu, now) is None:
                actions.append(
                    self._background(ch.impi, ch.impu, AssignmentType.AUTHENTICATION_TIMEOUT)
                )
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, impu = timers[0]
            if self._surfaced(when, impu):
                heapq.heappop(timers)
                del self._queued[impu]
                actions.extend(self._expire_binding(impu, now))
        return actions

    def _surfaced(self, when: float, impu: str) -> bool:
        """The heap's first entry (`when`, `impu`): whether it is its record's earliest
        expiry. If not, it leaves the top: popped when stale or its record is gone,
        else moved on to the record's earliest expiry (refreshed since it was pushed)."""
        timers = self._timers
        if self._queued.get(impu) != when:
            heapq.heappop(timers)
            return False
        reg = self.registrations.get(impu)
        expiry = reg.earliest_expiry() if reg is not None else None
        if expiry is None:
            heapq.heappop(timers)
            del self._queued[impu]
            return False
        if expiry != when:
            heapq.heapreplace(timers, (expiry, impu))
            self._queued[impu] = expiry
            return False
        return True

    def challenges_to_keep(self, now: float) -> list[dict]:
        """The open challenges, for the S-CSCF that follows this one to verify their
        answers (a restart asked for: the UE's challenge response then gets its 200
        instead of a second challenge, one more MAR and AKA run). Each as JSON-ready data
        with the seconds it has `left`: the IMPI, IMPU, nonce, Call-ID, algorithm, and
        what verifying needs: for AKAv1-MD5 RAND, AUTN and XRES (RES is the digest
        password, RFC 3310 §3.3; RAND for an AUTS, TS 33.203 §6.1.2), for AKAv2-MD5 RAND,
        AUTN and the digest password made from XRES, IK and CK (RFC 4169 §3: one-way, so
        IK and CK are never written out), for MD5 the password."""
        out = []
        for ch in self._challenges.values():
            record = _challenge_record(ch, now)
            if record is not None:
                out.append(record)
        return out

    def challenge_record(self, nonce: str, now: float) -> dict | None:
        """One open challenge as `challenges_to_keep` writes it; None when there is no
        such challenge (or it has run out)."""
        ch = self._challenges.get(nonce)
        return _challenge_record(ch, now) if ch is not None else None

    def has_challenge(self, nonce: str) -> bool:
        return nonce in self._challenges

    def adopt_challenges(self, records: Iterable[object], now: float) -> int:
        """Take challenges another S-CSCF made (`challenges_to_keep`, their `left`
        counted from now) as made here; one unreadable, run out, already held or beyond
        the per-IMPI bound is skipped. At start, before any challenge of this one's own,
        their order is their expiry order; one taken later may have less left than
        those before it and is then removed up to reg-await-auth late, never answered
        late (its own deadline is checked). Returns how many were taken."""
        taken = []
        for r in records:
            try:
                if not isinstance(r, dict) or r["algorithm"] not in (AKAV1_MD5, AKAV2_MD5, MD5):
                    continue
                if r["algorithm"] == AKAV2_MD5 and not r["password"]:
                    continue
                left = min(float(r["left"]), self.policy.reg_await_auth)
                ch = _Challenge(
                    str(r["impi"]),
                    str(r["impu"]),
                    str(r["nonce"]),
                    AuthVectorItem(
                        r["algorithm"],
                        rand=bytes.fromhex(r["rand"]),
                        autn=bytes.fromhex(r["autn"]),
                        xres=bytes.fromhex(r["xres"]),
                        password=bytes.fromhex(r["password"]),
                    ),
                    now + left,
                    str(r["call_id"]),
                )
            except (KeyError, TypeError, ValueError):
                continue
            if left > 0:
                taken.append(ch)
        n = 0
        for ch in sorted(taken, key=lambda c: c.deadline):
            pending = self._challenges_by_impi.setdefault(ch.impi, [])
            if ch.nonce in self._challenges or len(pending) >= self.policy.max_pending_per_impi:
                continue
            pending.append(ch.nonce)
            self._challenges[ch.nonce] = ch
            n += 1
        if n:
            self.deadlines_added += 1
            self.counters["challenge_restored"] += n
        return n

    def pending_counts(self) -> dict[str, int]:
        """Sizes of the state, for leak checks (issue 7: nothing left behind)."""
        return {
            "registrations": len(self.registrations),
            "challenges": len(self._challenges),
            "cached_vectors": sum(len(v) for v in self._vectors.values()),
            "operations": len(self._ops),
            "aliases": len(self._aliases),
            "failure_records": len(self._failures),
            "answered_challenges": len(self._answering),
        }

    # ----------------------------------------------------------------- checks

    def _check_request(self, req: RegisterRequest) -> str | None:
        if not req.impu:
            return "Bad Request (no To URI)"
        if len(req.contacts) > self.policy.max_contacts:
            return "Bad Request (too many Contact values)"
        if req.star:
            if req.contacts:
                return "Bad Request (Contact: * with other contacts)"
            if req.expires != 0:
                return "Bad Request (Contact: * needs Expires: 0)"
        return None

    def _expiry_of(self, req: RegisterRequest, spec: ContactSpec) -> int:
        if spec.expires is not None:
            return spec.expires
        if req.expires is not None:
            return req.expires
        return self.policy.default_expires

    def _too_short(self, req: RegisterRequest) -> bool:
        least = self.policy.min_expires
        for c in req.contacts:  # noqa: SIM110 - a plain loop: no generator per REGISTER
            if 0 < self._expiry_of(req, c) < least:
                return True
        return False

    def _usable(self, v: AuthVectorItem) -> bool:
        if v.algorithm in _AKA_ALGORITHMS:
            return len(v.rand) == 16 and len(v.autn) == 16 and 4 <= len(v.xres) <= 16
        return v.algorithm == MD5 and bool(v.password)

    def _live_registration(self, impu: str, now: float) -> Registration | None:
        reg = self.registrations.get(impu)
        if reg is not None and reg.is_live(now):
            return reg
        return None

    # ----------------------------------------------------------------- challenge

    def _challenge(self, token: int, req: RegisterRequest, impi: str, now: float) -> list[Action]:
        cache = self._vectors.get(impi)
        auth = req.auth
        if cache and auth is not None and auth.nonce and self._foreign(auth.nonce):
            # It answers another S-CSCF's challenge (the I-CSCF moved it here). A MAR,
            # not a spare vector: the MAR tells the HSS that the authentication under
            # way is here, so that the answer to this challenge is sent here. Before
            # 2026-11-29 (ninth session) a spare vector left the HSS naming the other
            # one, which challenged the answer anew, and the UE gave up after three
            # challenges (lifecycle_chaos --devices 2 --scscf-moves, seed 11102).
            self.counters["vectors_fresh_for_foreign_nonce"] += 1
            del self._vectors[impi]
            cache = None
        while cache:
            until, vector = cache.pop(0)
            if not cache:
                del self._vectors[impi]
            if until <= now:
                # Kept too long: its SQN may have fallen out of the ISIM's window meanwhile.
                self.counters["vector_expired"] += 1
                continue
            self.counters["vector_from_cache"] += 1
            return [self._send_challenge(token, req, impi, vector, now)]
        self._ops[token] = _Op(_OpKind.CHALLENGE, impi, req.impu, req)
        return [AskVectors(token, impi, req.impu, self.policy.vectors_per_request)]

    def _resync(
        self, token: int, req: RegisterRequest, ch: _Challenge, auth: DigestParams, now: float
    ) -> list[Action]:
        try:
            auts = base64.b64decode(auth.auts or "", validate=True)
        except ValueError:
            auts = b""
        self._drop_challenge(ch)
        if len(auts) != 14 or ch.vector.algorithm not in _AKA_ALGORITHMS:
            self.counters["bad_auts"] += 1
            return [self._reply(token, 403, "Forbidden (malformed auts)")]
        self.counters["resync"] += 1
        self._vectors.pop(ch.impi, None)
        self._ops[token] = _Op(_OpKind.RESYNC, ch.impi, req.impu, req)
        return [
            AskVectors(
                token,
                ch.impi,
                req.impu,
                self.policy.vectors_per_request,
                resync=ch.vector.rand + auts,
                algorithm=ch.vector.algorithm,
            )
        ]

    def _foreign(self, nonce: str) -> bool:
        """Whether `nonce` is not one of ours (`RegistrarPolicy.nonce_tag`)."""
        tag = self.policy.nonce_tag
        if not tag:
            return False
        try:
            _rand, _autn, server_data = split_nonce(nonce)
        except DigestError:
            return True
        return not server_data.startswith(tag)

    def _send_challenge(
        self, token: int, req: RegisterRequest, impi: str, vector: AuthVectorItem, now: float
    ) -> Reply:
        if vector.algorithm in _AKA_ALGORITHMS:
            # RFC 3310 §3.2: server data after RAND‖AUTN keeps nonces unique even if a
            # (broken) HSS ever repeated a vector.
            tag = self.policy.nonce_tag
            nonce = make_nonce(vector.rand, vector.autn, tag + self._random(8 - len(tag)))
        else:
            nonce = base64.b64encode(self._random(24)).decode("ascii")
        pending = self._challenges_by_impi.setdefault(impi, [])
        while len(pending) >= self.policy.max_pending_per_impi:
            old = self._challenges.get(pending[0])
            if old is None:
                pending.pop(0)
            else:
                self._drop_challenge(old)
        deadline = now + self.policy.reg_await_auth
        self._challenges[nonce] = _Challenge(impi, req.impu, nonce, vector, deadline, req.call_id)
        self.deadlines_added += 1
        pending.append(nonce)
        if self.share_challenges:
            self.challenges_made.append(nonce)
        parts = [
            f'Digest realm="{self.policy.realm}"',
            f'nonce="{nonce}"',
            f"algorithm={vector.algorithm}",
        ]
        if vector.algorithm in _AKA_ALGORITHMS:
            # TS 24.229 §5.4.1.2.1: IK and CK travel to the P-CSCF, which strips them.
            parts.append(f'ik="{vector.ik.hex()}"')
            parts.append(f'ck="{vector.ck.hex()}"')
        self.counters["challenge"] += 1
        return self._reply(token, 401, "Unauthorized", (("WWW-Authenticate", ", ".join(parts)),))

    def _drop_challenge(self, ch: _Challenge, *, shared_too: bool = True) -> None:
        if (
            self._challenges.pop(ch.nonce, None) is not None
            and shared_too
            and self.share_challenges
        ):
            self.challenges_ended.append(ch.nonce)
        pending = self._challenges_by_impi.get(ch.impi)
        if pending is not None:
            try:
                pending.remove(ch.nonce)
            except ValueError:
                pass
            if not pending:
                del self._challenges_by_impi[ch.impi]

    # ----------------------------------------------------------------- verification

    def _verify(
        self, token: int, req: RegisterRequest, ch: _Challenge, auth: DigestParams, now: float
    ) -> list[Action]:
        v = ch.vector
        # A challenge answers once, right or wrong: a second try needs a new one.
        self._drop_challenge(ch, shared_too=False)
        if self.share_challenges:
            self._answering[token] = ch.nonce  # (`_reply` ends its shared record)
        ok = False
        if auth.realm == self.policy.realm:
            try:
                if v.algorithm == MD5 or v.password:
                    # MD5's, or an AKAv2-MD5 challenge's taken from another S-CSCF
                    # (its password made there: `_challenge_record`)
                    password = password_for(MD5, password=v.password)
                else:
                    password = password_for(v.algorithm, res=v.xres, ik=v.ik, ck=v.ck)
                ok = verify_response(
                    response=auth.response or "",
                    algorithm=v.algorithm,
                    username=auth.username,
                    realm=auth.realm,
                    password=password,
                    method=req.method,
                    uri=auth.uri,
                    nonce=auth.nonce,
                    qop=auth.qop,
                    nc=auth.nc,
                    cnonce=auth.cnonce,
                    body=req.body,
                )
            except DigestError:
                ok = False
        if not ok:
            actions = self._auth_failed(token, ch.impi, now)
            if self._live_registration(req.impu, now) is None:
                actions.append(
                    self._background(ch.impi, req.impu, AssignmentType.AUTHENTICATION_FAILURE)
                )
            return actions
        self._failures.pop(ch.impi, None)
        self.counters["auth_ok"] += 1
        reg = self._live_registration(req.impu, now)
        return self._authenticated(token, req, ch.impi, now, reg)

    def _background(self, impi: str, impu: str, kind: AssignmentType) -> AskAssignment:
        """An SAR nobody waits for (expiry, authentication failure or timeout)."""
        token = self._new_token()
        self._ops[token] = _Op(_OpKind.BACKGROUND, impi, impu, None, kind, False)
        return AskAssignment(token, impi, impu, kind, False)

    def abandon(self, token: int) -> None:
        """Forget the background SAR `token` unsent (another S-CSCF sharing the binding
        store removed the binding and sends it)."""
        op = self._ops.get(token)
        if op is not None and op.kind is _OpKind.BACKGROUND:
            del self._ops[token]

    def _auth_failed(self, token: int, impi: str, now: float) -> list[Action]:
        self.counters["auth_failed"] += 1
        self._forget_failures(now)
        fail = self._failures.pop(impi, None)
        if fail is None:
            fail = _Failures()
            if not self._failures:
                self.deadlines_added += 1  # the table's first entry: its expiry is new
        # re-inserted: the table stays in order of the latest failure
        self._failures[impi] = fail
        fail.count += 1
        fail.last = now
        if fail.count >= self.policy.max_failed_attempts:
            fail.locked_until = now + self.policy.lockout
            fail.count = 0
            self.counters["locked"] += 1
        return [self._reply(token, 403, "Forbidden (authentication failed)")]

    def _forget_failures(self, now: float) -> None:
        """Drop the failure counts whose latest failure is `lockout` seconds old: a lock
        set then has ended too, and older failures no longer count towards the limit."""
        failures = self._failures
        lockout = self.policy.lockout
        while failures:
            impi, fail = next(iter(failures.items()))
            if fail.last + lockout > now:
                break
            del failures[impi]

    # ----------------------------------------------------------------- registration

    def _authenticated(
        self,
        token: int,
        req: RegisterRequest,
        impi: str,
        now: float,
        reg: Registration | None,
    ) -> list[Action]:
        """`reg`: the live registration of the IMPU at `now` (`_live_registration`)."""
        if reg is not None and self._out_of_order(reg, req):
            # RFC 3261 §10.3 step 7: an older REGISTER of the same Call-ID must not undo
            # a newer one (a delayed copy arriving late).
            self.counters["out_of_order"] += 1
            return [self._reply(token, 500, "Server Internal Error (out-of-order REGISTER)")]
        remaining = self._contacts_left(reg, req, now)
        if not remaining:
            # De-registration (§5.4.1.4): no contact left for this IMPU.
            self._ops[token] = _Op(
                _OpKind.DEREGISTER, impi, req.impu, req, AssignmentType.USER_DEREGISTRATION
            )
            if reg is None:
                return self._finish_deregister(token, self._ops.pop(token), now)
            return [AskAssignment(token, impi, req.impu, AssignmentType.USER_DEREGISTRATION, False)]
        if remaining > self.policy.max_contacts:
            self.counters["too_many_contacts"] += 1
            return [self._reply(token, 403, "Forbidden (too many registered contacts)")]
        kind = AssignmentType.RE_REGISTRATION if reg is not None else AssignmentType.REGISTRATION
        available = reg is not None and bool(reg._user_data) and reg.impi == impi
        if available and self.policy.reregistration_sar == "when-needed":
            assert reg is not None
            if self._refresh_only(reg, req, now):
                # TS 23.228 §5.2.2.4: on re-registration the S-CSCF may omit the
                # Cx-Put/Cx-Pull; the HSS already names this S-CSCF for the IMPU and
                # the profile is the one it sent. (`reg` is the live record at `now`.)
                self.counters["reregister_without_sar"] += 1
                return self._finish_register(token, req, impi, kind, None, now, reg)
        self._ops[token] = _Op(_OpKind.ASSIGN, impi, req.impu, req, kind)
        return [AskAssignment(token, impi, req.impu, kind, available)]

    @staticmethod
    def _made_by(reg: Registration, req: RegisterRequest) -> bool:
        """Whether `req` is the REGISTER that last refreshed each of its contacts'
        bindings (`_made`)."""
        if not req.branch or req.star or not req.contacts:
            return False
        return all(_made(req, reg.contacts.get(spec.uri)) for spec in req.contacts)

    def _refresh_only(self, reg: Registration, req: RegisterRequest, now: float) -> bool:
        """Whether `req` only refreshes live bindings of `reg` (none added or removed)."""
        if req.star or not req.contacts:
            return False
        for spec in req.contacts:
            binding = reg.contacts.get(spec.uri)
            if binding is None or binding.expires_at <= now or self._expiry_of(req, spec) == 0:
                return False
        return True

    def _out_of_order(self, reg: Registration, req: RegisterRequest) -> bool:
        for spec in req.contacts:
            binding = reg.contacts.get(spec.uri)
            if binding is not None and _older(req, binding):
                return True
        if req.star:
            return any(_older(req, b) for b in reg.contacts.values())
        return False

    def _removes_only_unregistered(
        self, reg: Registration, req: RegisterRequest, now: float
    ) -> bool:
        """Whether `req` only removes contacts (expiry 0, no `*`) none of which is a live
        binding of `reg`."""
        if req.star or not req.contacts:
            return False
        for spec in req.contacts:
            if self._expiry_of(req, spec) != 0:
                return False
            binding = reg.contacts.get(spec.uri)
            if binding is not None and binding.expires_at > now:
                return False
        return True

    def _contacts_left(self, reg: Registration | None, req: RegisterRequest, now: float) -> int:
        """How many bindings `_apply_contacts` would leave, without making them (the SAA
        it waits for comes later: its bindings are made then, expiring from then)."""
        if req.star:
            return 0
        specs = req.contacts
        if len(specs) == 1:  # one contact, on no record or a record of one binding
            if reg is None:
                return 0 if self._expiry_of(req, specs[0]) == 0 else 1
            contacts = reg.contacts
            if type(contacts) is ContactMap and contacts._dict is None:
                held = contacts._value
                other = held is not None and held.expires_at > now and held.uri != specs[0].uri
                return other + (self._expiry_of(req, specs[0]) != 0)
        left = {c.uri for c in reg.contacts.values() if c.expires_at > now} if reg else set()
        for spec in specs:
            if self._expiry_of(req, spec) == 0:
                left.discard(spec.uri)
            else:
                left.add(spec.uri)
        return len(left)

    def _apply_contacts(
        self,
        reg: Registration | None,
        req: RegisterRequest,
        now: float,
        impi: str,
        record_impi: str,
    ) -> ContactMap:
        """The bindings this REGISTER of `impi` would leave (RFC 3261 §10.3 step 7) in a
        record of `record_impi`, as a new map (the record's own kind, taken as it is):
        the record itself is not touched. Each binding names its IMPI when it is not
        the record's (`ContactBinding.impi`)."""
        contacts = ContactMap()
        if reg is not None:
            moved = reg.impi != record_impi
            for c in reg.contacts.values():
                if c.expires_at > now:
                    if moved or c.impi:  # (another IMPI's device shares the IMPU)
                        owner = c.owner(reg.impi)
                        mark = "" if owner == record_impi else owner
                        if mark != c.impi:
                            c = replace(c, impi=mark)
                    contacts[c.uri] = c
        mine = "" if impi == record_impi else impi
        if req.star:
            contacts.clear()
            return contacts
        for spec in req.contacts:
            expires = self._expiry_of(req, spec)
            if expires == 0:
                contacts.pop(spec.uri, None)
                continue
            granted = min(max(expires, self.policy.min_expires), self.policy.max_expires)
            contacts[spec.uri] = ContactBinding(  # (positional: uri, expires_at, params, ...)
                spec.uri,
                now + granted,
                spec.params,
                self._paths.share(req.path),
                req.call_id,
                req.cseq,
                req.branch,
                mine,
            )
        return contacts

    def _finish_register(
        self,
        token: int,
        req: RegisterRequest,
        impi: str,
        assignment: AssignmentType | None,
        user_data: str | None,
        now: float,
        old: Registration | None,
    ) -> list[Action]:
        """`old`: the live registration of the IMPU at `now` (`_live_registration`)."""
        xml: str | bytes = user_data or ""
        identities = []
        if old is not None and old.associated and (not xml or xml == old.user_data):
            # The same subscription document as the live registration of this IMPU (every
            # re-registration, with or without User-Data-Already-Available): it passed the
            # barring check then and gives the same P-Associated-URI; no parse, and the
            # record keeps it as it was kept (compressed: not unpacked and packed again).
            associated = old.associated
            xml = old._user_data
        elif xml:
            try:
                _private, identities = parse_user_data(xml)
            except UserDataError as exc:
                self.counters["bad_user_data"] += 1
                log.warning("SAA for %s: %s", req.impu, exc)
                return [self._reply(token, 500, "Server Internal Error (bad User-Data)")]
            barred = {p.identity.lower() for p in identities if p.barred}
            if req.impu.lower() in barred:
                return [self._reply(token, 403, "Forbidden (identity barred)")]
            associated = associated_uris(req.impu, identities)
        else:
            associated = associated_uris(req.impu, identities)
        contacts = self._apply_contacts(old, req, now, impi, impi)
        ended, added = _contact_changes(old, contacts, now)
        reg = Registration(  # (positional, in field order)
            req.impu,
            impi,
            contacts,
            associated,
            xml,  # _user_data
            old.registered_at if old is not None else now,
        )
        if old is not None and old.impi != impi:
            self._unindex(old)
        self.load(reg)
        self.counters[
            "registered" if assignment is AssignmentType.REGISTRATION else "reregistered"
        ] += 1
        headers = [("Path", p) for p in req.path] if req.path else []
        headers.append(("Service-Route", self.policy.service_route))
        # RFC 3261 §10.3 step 8: every current binding, this request's contacts first.
        if len(contacts) == 1:
            bindings: Iterable[ContactBinding] = contacts.values()
        else:
            mine = [s.uri for s in req.contacts if s.uri in contacts]
            others = [u for u in contacts if u not in mine]  # a contact or two: no set
            bindings = [contacts[uri] for uri in mine + others]
        for binding in bindings:
            left = max(0, round(binding.expires_at - now))
            headers.append(("Contact", f"<{binding.uri}>{binding.params};expires={left}"))
        headers.append(("Date", http_date(now)))
        # (one join: no generator or f-string per URI)
        headers.append(("P-Associated-URI", f"<{'>, <'.join(associated)}>" if associated else ""))
        store = StoreRegistration(reg, ended=ended, added=added)
        return [store, self._reply(token, 200, "OK", tuple(headers))]

    def _finish_deregister(self, token: int, op: _Op, now: float) -> list[Action]:
        req = op.request
        assert req is not None
        actions: list[Action] = []
        reg = self.registrations.get(req.impu)
        staying: Mapping[str, ContactBinding] = {}
        if reg is not None and _holds(reg, op.impi):
            remaining = self._apply_contacts(reg, req, now, op.impi, reg.impi)
            if remaining:  # another contact was added meanwhile: keep it
                ended, _ = _contact_changes(reg, remaining, now)
                reg.contacts = staying = remaining
                # the removed binding may have been the earliest: its entry moves on to
                # the one left when it surfaces; one earlier than it gets its own
                # (§5.4.1.7 expiry)
                expiry = reg.earliest_expiry()
                if expiry is not None:
                    self._arm(expiry, req.impu)
                actions.append(StoreRegistration(reg, ended=ended))
            else:
                self.registrations.pop(req.impu, None)
                self._queued.pop(req.impu, None)
                self._unindex(reg)
                self._drop_spare_vectors(reg.impi)
                actions.append(RemoveRegistration(req.impu, op.impi, "user-deregistration", reg))
        self.counters["deregistered"] += 1
        headers: list[tuple[str, str]] = []
        for spec in req.contacts:
            headers.append(("Contact", f"<{spec.uri}>{spec.params};expires=0"))
        for binding in staying.values():  # RFC 3261 §10.3 step 8: and those that stay
            left = max(0, round(binding.expires_at - now))
            headers.append(("Contact", f"<{binding.uri}>{binding.params};expires={left}"))
        headers.append(("Date", http_date(now)))
        actions.append(self._reply(token, 200, "OK", tuple(headers)))
        return actions

    def _expire_binding(self, impu: str, now: float) -> list[Action]:
        reg = self.registrations.get(impu)
        if reg is None:
            return []
        before = dict(reg.contacts)
        lapsed = [c for c in reg.contacts.values() if c.expires_at <= now]
        for c in lapsed:
            del reg.contacts[c.uri]
            self.counters["contact_expired"] += 1
        if reg.contacts:
            expiry = reg.earliest_expiry()
            assert expiry is not None
            self._arm(expiry, impu)
            ended = tuple((c, "expired") for c in lapsed)
            return [StoreRegistration(reg, if_unchanged=True, ended=ended)]
        self.registrations.pop(impu, None)
        self._unindex(reg)
        self._drop_spare_vectors(reg.impi)
        self.counters["registration_expired"] += 1
        return [
            RemoveRegistration(
                impu,
                reg.impi,
                "timeout",
                Registration(
                    impu, reg.impi, before, reg.associated, registered_at=reg.registered_at
                ),
            ),
            self._background(reg.impi, impu, AssignmentType.TIMEOUT_DEREGISTRATION),
        ]

    # ----------------------------------------------------------------- plumbing

    def _new_token(self) -> int:
        self._next_token += 1
        return self._next_token

    def _impus_of(self, impi: str) -> tuple[str, ...]:
        impus = self._by_impi.get(impi, ())
        return (impus,) if type(impus) is str else impus

    def _drop_spare_vectors(self, impi: str) -> None:
        # The IMPI's last registration ended: its spare vectors go too, else they stay
        # cached for every IMPI that ever registered.
        if impi not in self._by_impi:
            self._vectors.pop(impi, None)

    def _unindex(self, reg: Registration) -> None:
        if reg.impi in self._by_impi:
            rest = tuple(u for u in self._impus_of(reg.impi) if u != reg.impu)
            if rest:
                self._by_impi[reg.impi] = rest if len(rest) > 1 else rest[0]
            else:
                del self._by_impi[reg.impi]
        for alias in reg.associated:
            if self._aliases.get(alias) == reg.impu:
                del self._aliases[alias]

    def _arm(self, deadline: float, impu: str) -> None:
        """`impu`'s record expires first at `deadline` (its binding expiry timer)."""
        queued = self._queued.get(impu)
        if queued is not None and queued <= deadline:
            return  # its entry surfaces first, and moves on to `deadline` then
        self._queued[impu] = deadline
        self.deadlines_added += 1
        heapq.heappush(self._timers, (deadline, impu))
        # Ended registrations and entries superseded by an earlier one leave stale
        # entries behind: compact now and then so the heap stays proportional to the
        # live state.
        if len(self._timers) > 1024 and len(self._timers) > 2 * len(self._queued):
            queued_at = self._queued.get
            self._timers = [t for t in self._timers if queued_at(t[1]) == t[0]]
            heapq.heapify(self._timers)

    def _reply(
        self, token: int, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> Reply:
        if status >= 300:
            self.counters[f"reply_{status}"] += 1
        if self._answering:
            nonce = self._answering.pop(token, None)
            if nonce is not None:
                self.challenges_ended.append(nonce)
        return Reply(token, status, reason, headers)
