"""UE registration, sans-I/O: TS 24.229 §5.1.1 (registration, re-registration,
de-registration, authentication), TS 33.203 §6.1 and §7 (AKA and the SA set), RFC 3329;
the reg-event subscription (§5.1.1.3) and network-initiated de-registration (§5.1.1.7).

The core builds the REGISTER requests and reads the responses; it opens no socket and
reads no clock. The asyncio edge (`imsaka.ue.client`) sends what the core asks for,
sets up the SAs it announces and feeds back the responses and `now`.

Two phases (seed §3, Appendix 1 packets 1, 7, 8, 13):

1. REGISTER in the clear to the P-CSCF's unprotected port with Security-Client (our
   spi-c, spi-s, port-c, port-s per offered algorithm), an Authorization with the IMPI
   and an empty response, `Require`/`Proxy-Require: sec-agree`, `Supported: path`.
2. On the 401: the ISIM checks AUTN (MAC → "network authentication failed", SQN out
   of range → AUTS), gives RES, CK, IK; the UE picks the Security-Server mechanism,
   sets up the temporary SA set, and sends the second REGISTER (same Call-ID, CSeq+1)
   from port-c to the P-CSCF's port-s with Security-Verify = Security-Server and the
   digest response. The 200 OK makes the SA set established; Service-Route and
   P-Associated-URI are kept.

After the 200 OK to an initial registration the UE SUBSCRIBEs to the reg event of its
IMPU (§5.1.1.3, RFC 3680) over the new SA set, refreshes that subscription in-dialog
before it expires, and answers the S-CSCF's NOTIFYs (`receive_request`). A NOTIFY saying
its registration is terminated (contact event ``rejected``, ``deactivated``, ...) removes
the registration and its SAs; after ``deactivated`` a new initial registration starts
(§5.1.1.7). A ``shortened`` contact moves the re-registration before the new expiry.

An answer to a challenge that gets no reply before its transaction ends starts a new
registration procedure at once (TS 33.203 O.3.1.4), `max_retries` times in a row at
most; so does a re-registration that fails (§5.1.1.4.1), and a first reg-event
SUBSCRIBE answered 480 (the S-CSCF holds no registration of the IMPU).

With `UeConfig.recovery_base_time` set, an attempt that failed for a reason that may
pass (no answer, 408, 480, 5xx, 600) is followed, after RFC 5626 §4.5's randomised
exponential back-off, by a new initial registration, as a phone keeps itself
registered; a refusal of the UE itself (403, 404, a bad AUTN) ends it for good. The
same setting keeps the reg-event subscription up while the UE stays registered: one that
could not be made or refreshed for a reason that may pass, that lapsed, or that the
network ended without ending the registration (RFC 6665 §4.2.2: deactivated, timeout,
probation, giveup) is made anew after its Retry-After or the same back-off.

States and inputs are a table (`_TRANSITIONS`); a response in a state that does not
expect it is a counted drop, not a silent ignore.
"""

from __future__ import annotations

import base64
import enum
import functools
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from imsaka.aka import digest
from imsaka.sip import Request, Response, SipParseError, make_response
from imsaka.sip.headers import SecurityMechanism
from imsaka.ue.config import UeConfig
from imsaka.ue.regevent import CONTENT_TYPE as REGINFO
from imsaka.ue.regevent import (
    REG_SUBSCRIBE_EXPIRES,
    Reginfo,
    ReginfoError,
    RegSubscription,
    SubState,
    parse_reginfo,
    parse_subscription_state,
    uri_key,
)

log = logging.getLogger(__name__)

__all__ = [
    "NETWORK_DEREGISTERED",
    "NOT_HELD",
    "REREGISTRATION_FAILED",
    "UNANSWERED",
    "Deregistered",
    "Event",
    "NetworkDeregistered",
    "RecoveryScheduled",
    "RegStateNotified",
    "Registered",
    "RegisteringAnew",
    "RegistrationFailed",
    "RetryScheduled",
    "SaParameters",
    "SecurityAssociationsEstablished",
    "SecurityAssociationsReleased",
    "SendRequest",
    "SendResponse",
    "SetUpSecurityAssociations",
    "Subscribed",
    "SubscriptionEnded",
    "UeRegistration",
    "UeState",
]

NETWORK_AUTH_FAILED = "network authentication failed"


# A re-registration answered so, or timed out, is followed by an initial registration
# (TS 24.229 §5.1.1.4.1); with a usable Retry-After the UE waits and refreshes instead.
# A 494 to a REGISTER over the SAs says the P-CSCF holds no agreement it accepts for
# them (RFC 3329 §2.3.1: it lost its state, or compares Security-Verify with another
# Security-Server): the agreement is made anew from phase 1. A 494 to that initial
# REGISTER (no set any more) refuses the offer itself and ends the attempt.
_REGISTER_ANEW_AFTER = frozenset({408, 494, 500, 504})

# What the UE reports, and gives as the reason its SAs go, when the network ends its
# registration (the reg-event NOTIFY, §5.1.1.7): "… (<event>)".
NETWORK_DEREGISTERED = "network-initiated de-registration"


class UeState(enum.Enum):
    IDLE = "idle"
    UNPROTECTED_SENT = "unprotected-sent"  # phase 1 REGISTER out, waiting for the 401
    RESPONSE_SENT = "response-sent"  # challenge answered, waiting for 200/403
    REGISTERED = "registered"
    REREGISTERING = "reregistering"  # protected re-REGISTER out
    DEREGISTERING = "deregistering"
    DEREGISTERED = "deregistered"
    WAITING_RETRY = "waiting-retry"  # a 5xx/480 with Retry-After: try again when it ends
    FAILED = "failed"


# A REGISTER that registers is out (a de-REGISTER is out in DEREGISTERING).
_REGISTERING_STATES = frozenset(
    (UeState.UNPROTECTED_SENT, UeState.RESPONSE_SENT, UeState.REREGISTERING)
)


class _Input(enum.Enum):
    REGISTER = "register"
    CHALLENGE = "401"
    OK = "2xx"
    REJECT = "error"
    TIMEOUT = "timeout"
    REFRESH = "refresh"
    DEREGISTER = "deregister"
    RETRY = "retry"


S, In = UeState, _Input
# (state, input) -> handler name; anything else is a protocol error of the peer (dropped).
_TRANSITIONS: dict[tuple[UeState, _Input], str] = {
    (S.IDLE, In.REGISTER): "_start_initial",
    (S.DEREGISTERED, In.REGISTER): "_start_initial",
    (S.FAILED, In.REGISTER): "_start_initial",
    (S.UNPROTECTED_SENT, In.CHALLENGE): "_on_challenge",
    (S.UNPROTECTED_SENT, In.OK): "_on_ok",  # sec-agree off and no challenge (rare)
    (S.UNPROTECTED_SENT, In.REJECT): "_on_reject",
    (S.UNPROTECTED_SENT, In.TIMEOUT): "_on_timeout",
    (S.RESPONSE_SENT, In.OK): "_on_ok",
    (S.RESPONSE_SENT, In.CHALLENGE): "_on_challenge",  # resync: a fresh challenge after AUTS
    (S.RESPONSE_SENT, In.REJECT): "_on_reject",
    (S.RESPONSE_SENT, In.TIMEOUT): "_on_timeout",
    (S.REGISTERED, In.REFRESH): "_start_refresh",
    (S.REGISTERED, In.DEREGISTER): "_start_deregister",
    (S.REGISTERED, In.REGISTER): "_start_refresh",
    (S.REREGISTERING, In.OK): "_on_ok",
    (S.REREGISTERING, In.CHALLENGE): "_on_challenge",
    (S.REREGISTERING, In.REJECT): "_on_reject",
    (S.REREGISTERING, In.TIMEOUT): "_on_timeout",
    (S.DEREGISTERING, In.OK): "_on_dereg_ok",
    (S.DEREGISTERING, In.CHALLENGE): "_on_challenge",
    (S.DEREGISTERING, In.REJECT): "_on_dereg_reject",
    (S.DEREGISTERING, In.TIMEOUT): "_on_dereg_ok",
    (S.WAITING_RETRY, In.RETRY): "_retry",
    (S.WAITING_RETRY, In.REGISTER): "_retry_register",
    (S.WAITING_RETRY, In.DEREGISTER): "_deregister_unregistered",
    (S.FAILED, In.DEREGISTER): "_deregister_unregistered",
}
del S, In


# ------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SaParameters:
    """The four SAs between UE and P-CSCF (TS 33.203 §7.1), keys from IK/CK (Annex I).

    UE port-c → P-CSCF port-s uses spi_ps; P-CSCF port-s → UE port-c uses spi_uc;
    P-CSCF port-c → UE port-s uses spi_us; UE port-s → P-CSCF port-c uses spi_pc.
    """

    alg: str
    ealg: str
    ue_host: str
    pcscf_host: str
    spi_uc: int
    spi_us: int
    port_uc: int
    port_us: int
    spi_pc: int
    spi_ps: int
    port_pc: int
    port_ps: int
    ck: bytes = field(repr=False)
    ik: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send `request`; `protected` over the current (or temporary) SA set from port-c to
    the P-CSCF's port-s, else in the clear to the P-CSCF's unprotected port."""

    request: Request
    protected: bool


@dataclass(frozen=True, slots=True)
class SetUpSecurityAssociations:
    """Install a temporary SA set (lifetime = reg-await-auth, TS 24.229 §5.1.1.5.1)."""

    sa: SaParameters
    lifetime: float


@dataclass(frozen=True, slots=True)
class SecurityAssociationsEstablished:
    """The temporary set became the established one (200 OK to the protected REGISTER),
    or the established one's lifetime moves (200 OK to an unchallenged re-REGISTER):
    it lasts at least `lifetime` s from now."""

    sa: SaParameters
    lifetime: float


@dataclass(frozen=True, slots=True)
class SecurityAssociationsReleased:
    """Delete this SA set (after the transactions on it completed)."""

    sa: SaParameters
    reason: str


@dataclass(frozen=True, slots=True)
class Registered:
    expires: int
    service_route: tuple[str, ...]
    associated_uris: tuple[str, ...]
    protected: bool


@dataclass(frozen=True, slots=True)
class Deregistered:
    """The UE is de-registered: `status` answered its de-REGISTER (408: none came, 0:
    none awaited); `notified` when the reg-event NOTIFY had already told it that its
    contact ended, so the de-registration took effect whatever `status` is."""

    status: int
    notified: bool = False


@dataclass(frozen=True, slots=True)
class RegistrationFailed:
    reason: str
    status: int = 0


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """The network answered `status` with Retry-After: the REGISTER goes again at `at`
    (attempt number `attempt` of the configured `max_retries`)."""

    status: int
    after: float
    at: float
    attempt: int


@dataclass(frozen=True, slots=True)
class RecoveryScheduled:
    """The attempt failed (`status`, 408 for no answer) for a reason that may pass: a
    new initial registration starts at `at`, `after` seconds from the failure
    (RFC 5626 §4.5 back-off; the `failures`-th in a row)."""

    status: int
    after: float
    at: float
    failures: int


# `RegisteringAnew.what`: why the UE registers anew, for people. A re-registration
# failed (TS 24.229 §5.1.1.4.1); the answer to the challenge of an initial one got no
# reply (TS 33.203 O.3.1.4); a new reg-event subscription was refused "not registered"
# (the S-CSCF answers 480 for an IMPU it holds none of).
REREGISTRATION_FAILED = "re-registration failed"
UNANSWERED = "no reply to the answer to the challenge"
NOT_HELD = "the network no longer holds the registration"


@dataclass(frozen=True, slots=True)
class RegisteringAnew:
    """The UE registers anew (`what`, one of the three above; `reason` the failure):
    an initial registration follows at once, its events after this one."""

    reason: str
    what: str = REREGISTRATION_FAILED

    @property
    def unanswered(self) -> bool:
        """Whether the answer to a challenge got no reply (TS 33.203 O.3.1.4)."""
        return self.what == UNANSWERED


@dataclass(frozen=True, slots=True)
class SendResponse:
    """Answer the request given to `UeRegistration.receive_request` with `response`
    (the edge sends it back the way the request came: over the same SA pair)."""

    response: Response


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The reg-event SUBSCRIBE (or its refresh) was answered 2xx for `expires` seconds."""

    expires: int
    refreshed: bool = False


@dataclass(frozen=True, slots=True)
class RegStateNotified:
    """A NOTIFY of the reg event was taken: its Subscription-State value and the
    version of its reginfo (None: no body, or one not newer than the last)."""

    subscription_state: str
    version: int | None


@dataclass(frozen=True, slots=True)
class SubscriptionEnded:
    """The reg-event subscription is over (Subscription-State terminated, its refresh
    refused, or it expired); not sent when it ends with our own de-registration."""

    reason: str


@dataclass(frozen=True, slots=True)
class NetworkDeregistered:
    """The network ended the registration (TS 24.229 §5.1.1.7): the reginfo `event` of
    our contact (``rejected``, ``deactivated``, ``expired``...). Its state and SAs are
    gone; `reregistering`: a new initial registration has started (``deactivated``)."""

    event: str
    reregistering: bool = False

    def __str__(self) -> str:
        return f"{NETWORK_DEREGISTERED} ({self.event})"


Event = (
    SendRequest
    | SetUpSecurityAssociations
    | SecurityAssociationsEstablished
    | SecurityAssociationsReleased
    | Registered
    | Deregistered
    | RegistrationFailed
    | RetryScheduled
    | RecoveryScheduled
    | RegisteringAnew
    | SendResponse
    | Subscribed
    | RegStateNotified
    | SubscriptionEnded
    | NetworkDeregistered
)

# Answers after which a REGISTER is worth repeating when the network says when
# (RFC 3261 §21.4.18 480, §21.5.1 500, §21.5.4 503, §21.5.5 504 with Retry-After §20.33):
# the S-CSCF answers 504/500 and the I-CSCF 480 while the HSS is unreachable.
RETRYABLE_STATUSES = frozenset({480, 500, 503, 504})

# Failures after which a UE with `recovery_base_time` tries again by itself (when no
# usable Retry-After said when): no answer (408), the user busy or unavailable for now
# (480), a server error (5xx), no S-CSCF found (600 from the I-CSCF). Anything else
# (403, 404, 420, a 494 to an initial REGISTER, a bad AUTN) is about the UE itself
# and ends it for good.
# 401 here: the bound on challenges in one attempt, or a 401 without a usable challenge
# (the network's doing, as a move between S-CSCFs that each challenge anew can be).
_RECOVERABLE = frozenset({401, 408, 480, 600, *range(500, 600)})
# Exponent bound: 2^16 · base-time is past any max-time worth configuring.
_MAX_DOUBLINGS = 16
# Answers to a reg-event SUBSCRIBE after which a UE with `recovery_base_time` that is
# still registered subscribes again later: the notifier lost the dialog (404, 481) or
# cannot answer now (408, 480, 5xx). 403 and 489 are final. (A 480 to a new
# subscription says the registration is gone: the UE registers anew instead,
# `_subscribe_failed`.)
_RESUBSCRIBE_AFTER = frozenset({404, 408, 480, 481, *range(500, 600)})
# Subscription-State reasons of a terminated NOTIFY that invite a new subscription
# (RFC 6665 §4.2.2); "rejected" and "noresource" do not.
_RESUBSCRIBE_REASONS = frozenset({"deactivated", "timeout", "probation", "giveup"})


# reg-await-auth: 4 minutes (TS 24.229 Table 7.8.1); the UE uses it for the temporary set.
REG_AWAIT_AUTH = 240.0


# ------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=64)
def _checked_mechanism(head: str) -> str:
    # The part that comes from the configuration, checked by the SIP stack's grammar
    # once per spelling (with placeholder numbers, so the whole mechanism is parsed).
    SecurityMechanism.parse(f"{head}; spi-c=1; spi-s=1; port-c=1; port-s=1")
    return head


def _mechanism_head(params: list[tuple[str, str | None]]) -> str:
    parts = ["ipsec-3gpp"]
    for name, value in params:
        parts.append(name if value is None else f"{name}={value}")
    return _checked_mechanism("; ".join(parts))


def _mechanism_text(
    params: list[tuple[str, str | None]], spi_c: int, spi_s: int, port_c: int, port_s: int
) -> str:
    """The seed's spelling ("ipsec-3gpp; alg=…; spi-c=…"): the grammar check of the
    configured part is made once; the numbers are checked for range here."""
    return _with_numbers(_mechanism_head(params), spi_c, spi_s, port_c, port_s)


@dataclass(frozen=True, slots=True)
class _Offer:
    """What a configuration offers in Security-Client (RFC 3329 §2.3.1): each offered
    mechanism's checked text without the numbers, in preference order, and the
    (alg, ealg) pairs a Security-Server may choose from. The same for every UE of a
    configuration: built once per process."""

    heads: tuple[str, ...]
    accepted: frozenset[tuple[str, str]]


@functools.lru_cache(maxsize=64)
def _offer(algorithms: tuple[str, ...], encryption: tuple[str, ...]) -> _Offer:
    pairs = tuple((alg, ealg) for alg in algorithms for ealg in encryption)
    heads = []
    for alg, ealg in pairs:
        params: list[tuple[str, str | None]] = [("alg", alg)]
        # ealg=null is the default (TS 33.203 §7.1): written only when there is a choice
        if ealg != "null" or len(encryption) > 1:
            params.append(("ealg", ealg))
        heads.append(_mechanism_head(params))
    return _Offer(tuple(heads), frozenset(pairs))


def _with_numbers(head: str, spi_c: int, spi_s: int, port_c: int, port_s: int) -> str:
    for name, spi in (("spi-c", spi_c), ("spi-s", spi_s)):
        if not 0 <= spi <= 0xFFFFFFFF:
            raise SipParseError(f"invalid {name} {spi}")
    for name, port in (("port-c", port_c), ("port-s", port_s)):
        if not 0 < port <= 65535:
            raise SipParseError(f"invalid {name} {port}")
    return f"{head}; spi-c={spi_c}; spi-s={spi_s}; port-c={port_c}; port-s={port_s}"


def _addr_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _contact_expires(resp: Response, our_contact: str) -> int | None:
    """Expiry granted for our contact: its `expires` param, else the Expires header."""
    ours = our_contact.split(">")[0].lstrip("<").lower()
    for value in resp.get_all("Contact"):
        uri = value.split(">")[0].strip().lstrip("<").lower()
        if uri != ours:
            continue
        for p in value.split(">", 1)[-1].split(";"):
            k, _, v = p.strip().partition("=")
            if k.lower() == "expires" and v.strip().isdigit():
                return int(v.strip())
    exp = resp.get("Expires")
    if exp is not None and exp.strip().isdigit():
        return int(exp.strip())
    return None


def refresh_interval(expires: int) -> float:
    """When to re-register (TS 24.229 §5.1.1.4.1): 600 s before expiry when granted more
    than 1200 s, else at half the granted time."""
    return float(expires - 600) if expires > 1200 else expires / 2.0


# ------------------------------------------------------------------------- the core


class UeRegistration:
    """Registration state of one UE (one IMPI, one contact) towards one P-CSCF.

    `local` is the unprotected (host, port) of the UE; `protected_ports` a callable
    returning a (port_c, port_s) pair for each new SA set (the edge binds them; port-c
    is fresh each time, port-s stays the same over re-registrations, TS 24.229
    §5.1.1.4.2, and the edge keeps it for the UE's life); `spi_allocator` a callable
    returning fresh (spi-c, spi-s) unique among the UE's live inbound SAs (the SA
    table's; without it SPIs come from `rng`). `isim` answers `authenticate(rand,
    autn)` (imsaka.aka.isim.Isim).
    """

    def __init__(
        self,
        config: UeConfig,
        isim: Any,
        *,
        local: tuple[str, int],
        protected_ports: Any = None,
        spi_allocator: Any = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.isim = isim
        self.local = local
        self._ports = protected_ports
        self._spi_allocator = spi_allocator
        self._rng = rng or random.Random()
        self.state = UeState.IDLE
        self.call_id = ""
        self.from_tag = ""
        self.cseq = 0
        self._pending: Request | None = None  # the REGISTER awaiting its final response
        self._pending_cseq = ""  # its CSeq value
        self._pending_protected = False
        # sec-agree
        self._client_offer: _Offer | None = None  # our Security-Client entries
        # Their header values, built (and checked against the grammar) once per offer:
        # both REGISTERs of a registration carry the same offer.
        self._client_values: list[str] | None = None
        self._port_c = 0
        self._port_s = 0
        self._spi_c = 0
        self._spi_s = 0
        self.security_server: list[str] = []  # of the last successful authentication
        self._pending_security_server: list[str] = []
        self.temporary_sa: SaParameters | None = None
        self.sa: SaParameters | None = None  # established set
        # digest state for protected re-REGISTERs (TS 24.229 §5.1.1.4.2)
        self.last_nonce = ""
        self.last_response = ""
        self.last_algorithm = digest.AKAV1_MD5
        self.realm = config.realm
        # The fixed parts of every REGISTER of this UE, spelled once.
        host = _addr_host(local[0])
        self._via_head = f"SIP/2.0/{config.transport.upper()} {host}:"
        self._contact_head = f"<sip:{host}:"
        self._to = f"<{config.impu}>"
        self._request_uri = f"sip:{config.registrar}"
        # results
        self.expires = 0
        self.registered_at = 0.0
        self.service_route: tuple[str, ...] = ()
        self.associated_uris: tuple[str, ...] = ()
        self.failure: str = ""
        self._deadline: float | None = None
        # When the REGISTER now open was sent: the registrar's grant runs from no
        # earlier than this (`_on_ok`)
        self._register_sent_at = 0.0
        self.drops: Counter[str] = Counter()
        self.auth_rounds = 0
        self.retries = 0  # Retry-After waits of the current attempt
        self.recoveries = 0  # failed attempts in a row (RFC 5626 §4.5 consecutive-failures)
        self._unanswered = 0  # challenge answers in a row that got no reply
        self._retrying_deregister = False  # the wait is for a de-REGISTER
        # The reg-event NOTIFY ended our contact while our de-REGISTER was open: the
        # de-registration took effect, whatever answer the de-REGISTER itself gets.
        self._dereg_notified = False
        # reg event (§5.1.1.3): SUBSCRIBE after the 200 OK of the initial registration
        self.subscription: RegSubscription | None = None
        self._subscribe_after_ok = False
        self._sub_deadline: float | None = None
        # a new reg-event subscription planned at this time (`recovery_base_time`)
        self._resubscribe_at: float | None = None
        self._sub_failures = 0  # subscriptions in a row that could not be made or kept
        # a "deactivated" subscription made anew at once since the last 200 to a REGISTER
        self._deactivated_since_registered = False
        self.network_event = ""  # of the last network-initiated de-registration

    # ---------------------------------------------------------------- public inputs

    def register(self, now: float) -> list[Event]:
        """Start the initial registration (or a refresh when registered)."""
        if self.state is not UeState.WAITING_RETRY:
            self.retries = 0
        self._unanswered = 0
        return self._dispatch(_Input.REGISTER, None, now)

    def deregister(self, now: float) -> list[Event]:
        """De-register the contact: REGISTER with expires=0 over the SAs (§5.1.1.6)."""
        if self.state is not UeState.WAITING_RETRY:
            self.retries = 0
        return self._dispatch(_Input.DEREGISTER, None, now)

    def receive(self, response: Response, now: float) -> list[Event]:
        """A response to one of our REGISTERs or reg-event SUBSCRIBEs (the edge matched
        transport and SA)."""
        # The texts the pending REGISTER was built with (not read back from it).
        if (
            self._pending is None
            or response.get("Call-ID") != self.call_id
            or response.get("CSeq") != self._pending_cseq
        ):
            sub = self.subscription
            if (
                sub is not None
                and sub.pending_cseq
                and response.get("CSeq") == sub.pending_cseq
                and response.get("Call-ID") == sub.call_id
            ):
                return self._on_subscribe_response(sub, response, now)
            if self._pending is None:
                return self._drop("response-without-request")
            return self._drop("response-not-matching-pending-register")
        if response.status < 200:
            return []
        if response.status == 401:
            inp = _Input.CHALLENGE
        elif 200 <= response.status < 300:
            inp = _Input.OK
        else:
            inp = _Input.REJECT
        return self._dispatch(inp, response, now)

    def transaction_timeout(
        self, now: float, method: str = "REGISTER", branch: str | None = None
    ) -> list[Event]:
        """The client transaction of the pending REGISTER (or SUBSCRIBE) timed out (Timer
        F). `branch` (its top Via branch, the transaction's key) tells it from one of an
        earlier attempt that the UE left (it registered anew) and whose transaction runs
        out later: that one's Timer F ends nothing now. Before the twelfth session
        (2026-11-29) it failed whichever REGISTER was pending (chaos seed 11168)."""
        if method == "SUBSCRIBE":
            sub = self.subscription
            if sub is None or not sub.pending_cseq:
                return []
            if branch is not None and branch != sub.pending_branch:
                return self._drop("timeout-of-an-earlier-subscribe")
            return self._subscribe_failed(sub, 408, "no answer to the SUBSCRIBE", now)
        if self._pending is None:
            return []
        if branch is not None and branch != self._pending.top_via.branch:
            return self._drop("timeout-of-an-earlier-register")
        return self._dispatch(_Input.TIMEOUT, None, now)

    def next_deadline(self) -> float | None:
        at, sub_at = self._deadline, self._sub_deadline
        if sub_at is None:
            return at
        return sub_at if at is None or sub_at < at else at

    def handle_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        if self._sub_deadline is not None and now >= self._sub_deadline:
            events = self._subscription_timer(now)
        if self._deadline is None or now < self._deadline:
            return events
        self._deadline = None
        if self.state is UeState.WAITING_RETRY:
            return events + self._dispatch(_Input.RETRY, None, now)
        self.retries = 0  # a refresh is a new attempt
        return events + self._dispatch(_Input.REFRESH, None, now)

    def receive_request(self, request: Request, now: float) -> list[Event]:
        """A request to the UE (the edge holds its server transaction). The UE serves
        the NOTIFYs of its reg-event subscription (RFC 6665 §4.1.3, RFC 3680); the first
        event is always the `SendResponse` with the answer, before any SA goes."""
        if request.method != "NOTIFY":
            return [SendResponse(make_response(request, 501, "Not Implemented"))]
        return self._on_notify(request, now)

    def detach(self) -> None:
        """Forget the edge's port and SPI callbacks (the edge closed); a new offer
        then takes SPIs from `rng` and keeps the ports it has."""
        self._ports = None
        self._spi_allocator = None

    @property
    def pending(self) -> Request | None:
        return self._pending

    @property
    def pending_protected(self) -> bool:
        return self._pending_protected

    @property
    def registering(self) -> bool:
        """A REGISTER that registers (not one that de-registers) is out, or waits to go
        again after a Retry-After or the recovery back-off: its 2xx brings a new
        reg-event subscription."""
        state = self.state
        if state is UeState.WAITING_RETRY:
            return not self._retrying_deregister
        return state in _REGISTERING_STATES

    @property
    def resubscribe_at(self) -> float | None:
        """When a new reg-event subscription is due (`recovery_base_time`), or None."""
        return self._resubscribe_at

    # ---------------------------------------------------------------- dispatch

    def _dispatch(self, inp: _Input, response: Response | None, now: float) -> list[Event]:
        handler = _TRANSITIONS.get((self.state, inp))
        if handler is None:
            return self._drop(f"{inp.value}-in-{self.state.value}")
        return getattr(self, handler)(response, now)

    def _drop(self, reason: str) -> list[Event]:
        self.drops[reason] += 1
        log.info("ue %s: dropped input: %s", self.config.impi, reason)
        return []

    # ---------------------------------------------------------------- builders

    def _hex(self, nbytes: int) -> str:
        return f"{self._rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"

    def _new_spi(self) -> int:
        # SPIs 1..255 are reserved by IANA (RFC 4303 §2.1).
        return self._rng.randrange(256, 2**32)

    def _new_offer(self) -> None:
        """Fresh spi-c, spi-s and port-c (TS 24.229 §5.1.1.4.2); port-s as the edge keeps it."""
        if self._ports is not None:
            self._port_c, self._port_s = self._ports()
        if self._spi_allocator is not None:
            # The SA table hands out SPIs unique among its live inbound SAs.
            self._spi_c, self._spi_s = self._spi_allocator()
        else:
            self._spi_c = self._new_spi()
            self._spi_s = self._new_spi()
            while self._spi_s == self._spi_c:
                self._spi_s = self._new_spi()
        self._client_offer = _offer(tuple(self.config.algorithms), tuple(self.config.encryption))
        self._client_values = None

    def _security_client_values(self) -> list[str]:
        if self._client_values is not None:
            return self._client_values
        heads = self._client_offer.heads if self._client_offer is not None else ()
        spi_c, spi_s, port_c, port_s = self._spi_c, self._spi_s, self._port_c, self._port_s
        out = [_with_numbers(head, spi_c, spi_s, port_c, port_s) for head in heads]
        self._client_values = out
        return out

    def contact_uri(self, protected: bool) -> str:
        port = self._port_s if protected else self.local[1]
        return f"{self._contact_head}{port}>"

    def _authorization(
        self, *, nonce: str = "", response: str = "", extra: str = "", algorithm: str = ""
    ) -> str:
        cfg = self.config
        parts = [
            f'Digest username="{cfg.impi}"',
            f'realm="{self.realm}"',
            f'nonce="{nonce}"',
        ]
        if algorithm:
            parts.append(f"algorithm={algorithm}")
        parts += [f'uri="{self._request_uri}"', f'response="{response}"']
        if extra:
            parts.append(extra)
        return ", ".join(parts)

    def _build_register(
        self,
        *,
        protected: bool,
        authorization: str,
        now: float,
        expires: int | None = None,
        security_verify: list[str] | None = None,
    ) -> Request:
        cfg = self.config
        self.cseq += 1
        self._register_sent_at = now
        port = self._port_s if protected else self.local[1]
        headers: list[tuple[str, str]] = [
            ("Via", f"{self._via_head}{port};branch=z9hG4bK{self._hex(8)}"),
            ("Max-Forwards", "70"),
            ("P-Access-Network-Info", cfg.access_network_info),
            ("From", f"{self._to};tag={self.from_tag}"),
            ("To", self._to),
            (
                "Contact",
                f"{self.contact_uri(protected)};expires={cfg.expires if expires is None else expires}",
            ),
            ("Call-ID", self.call_id),
            ("Authorization", authorization),
        ]
        if cfg.sec_agree:
            for value in self._security_client_values():
                headers.append(("Security-Client", value))
            for value in security_verify or ():
                headers.append(("Security-Verify", value))
            headers.append(("Require", "sec-agree"))
            headers.append(("Proxy-Require", "sec-agree"))
        cseq = self._pending_cseq = f"{self.cseq} REGISTER"
        headers += [
            ("CSeq", cseq),
            ("Supported", "path"),
            ("Content-Length", "0"),
        ]
        request = Request("REGISTER", self._request_uri, headers)
        self._pending = request
        self._pending_protected = protected
        return request

    # ---------------------------------------------------------------- handlers

    def _start_initial(self, _resp: Response | None, now: float) -> list[Event]:
        """Phase 1 (packet 1): in the clear, empty response, Security-Client."""
        self.call_id = f"{self._hex(12)}@{self.local[0]}"
        self.from_tag = self._hex(4)
        self.cseq = 0
        self.failure = ""
        self.auth_rounds = 0
        self.realm = self.config.realm
        events: list[Event] = []
        for old in (self.temporary_sa, self.sa):
            if old is not None:
                events.append(SecurityAssociationsReleased(old, "new initial registration"))
        self.temporary_sa = self.sa = None
        self.security_server = []
        # A new registration gets a new subscription after its 200 OK (§5.1.1.3).
        self._drop_subscription()
        self._subscribe_after_ok = self.config.subscribe_reg_event
        if self.config.sec_agree:
            self._new_offer()
        request = self._build_register(
            protected=False, authorization=self._authorization(), now=now
        )
        self.state = UeState.UNPROTECTED_SENT
        events.append(SendRequest(request, protected=False))
        return events

    def _start_refresh(self, _resp: Response | None, now: float) -> list[Event]:
        """Protected re-REGISTER (§5.1.1.4.2): last nonce and response, a new
        Security-Client (new spi-c/spi-s/port-c) and Security-Verify of the last 401."""
        # The bound on 401s is per attempt: a network that challenges every REGISTER
        # (TS 24.229 §5.4.1.2.2) would otherwise fail the UE's third refresh.
        self.auth_rounds = 0
        protected = self.sa is not None
        if protected:
            self._new_offer()
        auth = self._authorization(
            nonce=self.last_nonce, response=self.last_response, algorithm=self.last_algorithm
        )
        request = self._build_register(
            protected=protected,
            authorization=auth,
            now=now,
            security_verify=self.security_server if protected else None,
        )
        self.state = UeState.REREGISTERING
        return [SendRequest(request, protected=protected)]

    def _start_deregister(self, _resp: Response | None, now: float) -> list[Event]:
        self.auth_rounds = 0  # a new attempt, as in _start_refresh
        protected = self.sa is not None
        if protected:
            # Fresh spi-c/spi-s/port-c: a network that challenges the de-REGISTER gets a
            # usable Security-Client for a new temporary set (TS 33.203 §7.4).
            self._new_offer()
        auth = self._authorization(
            nonce=self.last_nonce, response=self.last_response, algorithm=self.last_algorithm
        )
        request = self._build_register(
            protected=protected,
            authorization=auth,
            now=now,
            expires=0,
            security_verify=self.security_server if protected else None,
        )
        self._deadline = None
        self.state = UeState.DEREGISTERING
        self._dereg_notified = False
        return [SendRequest(request, protected=protected)]

    def _fail(self, reason: str, status: int = 0) -> list[Event]:
        events: list[Event] = []
        if self.temporary_sa is not None:
            events.append(SecurityAssociationsReleased(self.temporary_sa, reason))
            self.temporary_sa = None
        self.state = UeState.FAILED
        self.failure = reason
        self._pending = None
        self._deadline = None
        log.warning("ue %s: registration failed: %s", self.config.impi, reason)
        events.append(RegistrationFailed(reason, status))
        return events

    def _on_timeout(self, _resp: Response | None, now: float) -> list[Event]:
        reason = "no response from the network (transaction timeout)"
        if self.sa is not None:
            return self._register_anew(reason, now)
        if self.state is UeState.RESPONSE_SENT and self._unanswered < self.config.max_retries:
            return self._register_again_unanswered(reason, now)
        return self._fail(reason, 408) + self._recover(408, now)

    def _register_again_unanswered(self, reason: str, now: float) -> list[Event]:
        """The answer to the challenge of an initial registration got no reply: a new
        registration procedure starts at once, as TS 33.203 O.3.1.4 asks of a UE that
        still wants IM services (its words are the TLS annex's; the IPsec clause was
        not retrievable here), at most `max_retries` times in a row. The registration
        may well have been made and its 200 OK lost, then ended by the network before
        the UE could hear of it (the P-CSCF let the set go, and the REGISTER's
        retransmissions over it went unanswered): before, such a UE gave up with 408
        (chaos seed 11102)."""
        self._unanswered += 1
        return self._register_anew(reason, now, what=UNANSWERED)

    def _on_reject(self, resp: Response | None, now: float) -> list[Event]:
        assert resp is not None
        after = self._retry_after(resp)
        if after is not None:
            return self._schedule_retry(resp.status, after, now)
        if self.sa is not None and resp.status in _REGISTER_ANEW_AFTER:
            return self._register_anew(f"{resp.status} {resp.reason}", now)
        return self._fail(f"{resp.status} {resp.reason}", resp.status) + self._recover(
            resp.status, now
        )

    def _back_off(self, base_time: int, failures: int) -> float:
        """RFC 5626 §4.5: rand(½…1) · min(max-time, base-time · 2^failures) seconds."""
        ceiling = min(
            float(self.config.recovery_max_time),
            float(base_time) * 2 ** min(failures, _MAX_DOUBLINGS),
        )
        return ceiling * self._rng.uniform(0.5, 1.0)

    def _recover(self, status: int, now: float) -> list[Event]:
        """After a failure that may pass, with `recovery_base_time` set: a new attempt
        after W·rand(½…1) s, W = min(max-time, base-time · 2^failures in a row) (RFC 5626
        §4.5, the flow-recovery back-off TS 24.229 points UEs to; its text was not
        retrievable here). The wait is `WAITING_RETRY` with a deadline, as for a
        Retry-After, so `register()` meanwhile starts at once."""
        base = self.config.recovery_base_time
        if not base or status not in _RECOVERABLE:
            return []
        self.recoveries += 1
        after = self._back_off(base, self.recoveries)
        self.retries = 0
        self._wait_to_retry(now + after)
        log.info(
            "ue %s: registering again in %.0f s (failure %d in a row)",
            self.config.impi,
            after,
            self.recoveries,
        )
        return [RecoveryScheduled(status, after, now + after, self.recoveries)]

    def _register_anew(
        self, reason: str, now: float, *, what: str = REREGISTRATION_FAILED
    ) -> list[Event]:
        """A re-registration (an established set is in force: this attempt refreshes
        it, challenged or not) that timed out or was answered 408, 494, 500 or 504 is
        followed by an initial registration (TS 24.229 §5.1.1.4.1): the P-CSCF may
        have lost the SAs (a restart) or the registration may be gone, and the old set
        is not to be trusted again. The initial registration's own failure ends it.
        `what` (logged, and in `RegisteringAnew`) for the other ways here."""
        log.warning("ue %s: %s (%s): registering anew", self.config.impi, what, reason)
        self.retries = 0
        return [RegisteringAnew(reason, what), *self._start_initial(None, now)]

    def _retry_after(self, resp: Response) -> int | None:
        """The wait a refusal for now asks for (480/500/503/504 with Retry-After), when
        within our bounds (`max_retry_after`, `max_retries`); None: not to be retried."""
        after = resp.retry_after if resp.status in RETRYABLE_STATUSES else None
        if after is None or after > self.config.max_retry_after:
            return None
        return after if self.retries < self.config.max_retries else None

    def _schedule_retry(self, status: int, after: int, now: float) -> list[Event]:
        """The network is temporarily unable (HSS down, overload): wait the time it
        asked for, then send the REGISTER again; a registration still in force keeps
        its SA set and refreshes over it, otherwise the attempt starts from phase 1."""
        events: list[Event] = []
        if self.temporary_sa is not None:
            events.append(SecurityAssociationsReleased(self.temporary_sa, f"{status} answered"))
            self.temporary_sa = None
        self.retries += 1
        self._pending = None
        self._wait_to_retry(now + after)
        log.info(
            "ue %s: %d with Retry-After %d s: retry %d of %d",
            self.config.impi,
            status,
            after,
            self.retries,
            self.config.max_retries,
        )
        events.append(RetryScheduled(status, float(after), now + after, self.retries))
        return events

    def _wait_to_retry(self, at: float) -> None:
        """`WAITING_RETRY` until `at` (a Retry-After, or the recovery back-off), when
        `handle_timer` sends the REGISTER again (`_retry`)."""
        self.state = UeState.WAITING_RETRY
        self._deadline = at

    def _retry(self, _resp: Response | None, now: float) -> list[Event]:
        self._deadline = None
        if self._retrying_deregister:
            self._retrying_deregister = False
            return self._start_deregister(None, now)
        if self.sa is not None and self.expires and now < self.registered_at + self.expires:
            return self._start_refresh(None, now)
        return self._start_initial(None, now)

    def _on_challenge(self, resp: Response | None, now: float) -> list[Event]:
        assert resp is not None
        cfg = self.config
        self.auth_rounds += 1
        if self.auth_rounds > 3:
            return self._fail("too many authentication challenges", 401) + self._recover(401, now)
        try:
            www = resp.www_authenticate
        except SipParseError:
            www = None
        if www is None or (www.scheme or "").lower() != "digest" or not www.nonce:
            return self._fail("401 without a usable WWW-Authenticate", 401) + self._recover(
                401, now
            )
        nonce = www.nonce
        realm = www.realm or self.realm
        algorithm = www.algorithm or "MD5"
        qop_offer = [q.strip() for q in (www.qop or "").split(",") if q.strip()]
        qop = "auth" if "auth" in qop_offer else None
        opaque = www.opaque
        self.realm = realm
        events: list[Event] = []
        replaced = self.temporary_sa
        if replaced is not None:  # a fresh 401 replaces an unused temporary set
            events.append(SecurityAssociationsReleased(replaced, "replaced by a new challenge"))
            self.temporary_sa = None

        ck = ik = b""
        if algorithm.upper() == "MD5":
            if cfg.password is None:
                return events + self._fail(
                    "network challenged with MD5 and no password is configured", 401
                )
            password = digest.password_for("MD5", password=cfg.password)
        else:
            try:
                rand, autn, _server = digest.split_nonce(nonce)
            except Exception:
                return events + self._fail("401 nonce is not base64(RAND‖AUTN)", 401)
            result = self.isim.authenticate(rand, autn)
            kind = type(result).__name__
            if kind == "AkaMacFailure":
                # TS 24.229 §5.1.1.5.3: tell the S-CSCF the challenge is invalid (empty
                # response, no auts) and stop; no SAs are created.
                return events + self._answer_invalid_challenge(nonce, realm, algorithm, now)
            if kind == "AkaSyncFailure":
                return events + self._answer_sync_failure(result.auts, nonce, realm, algorithm, now)
            res, ck, ik = result.res, result.ck, result.ik
            try:
                password = digest.password_for(algorithm, res=res, ik=ik, ck=ck)
            except digest.DigestError as exc:
                return events + self._fail(f"unsupported challenge: {exc}", 401)

        cnonce = self._hex(8) if qop else None
        nc = "00000001" if qop else None
        response = digest.compute_response(
            algorithm=algorithm,
            username=cfg.impi,
            realm=realm,
            password=password,
            method="REGISTER",
            uri=self._request_uri,
            nonce=nonce,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
        )
        extra = []
        if qop:
            extra.append(f'qop={qop}, nc={nc}, cnonce="{cnonce}"')
        if opaque is not None:
            extra.append(f'opaque="{opaque}"')
        auth = self._authorization(
            nonce=nonce, response=response, algorithm=algorithm, extra=", ".join(extra)
        )

        protect = cfg.sec_agree
        verify: list[str] = []
        if protect:
            servers = resp.get_all("Security-Server")
            chosen = self._choose_server(servers)
            if chosen is None:
                # §5.1.1.5.1 step 3: abandon; a new attempt starts with a new Call-ID.
                return events + self._fail("401 without a usable Security-Server", 401)
            sa = SaParameters(
                alg=chosen["alg"],
                ealg=chosen.get("ealg", "null"),
                ue_host=self.local[0],
                pcscf_host=cfg.pcscf[0],
                spi_uc=self._spi_c,
                spi_us=self._spi_s,
                port_uc=self._port_c,
                port_us=self._port_s,
                spi_pc=int(chosen["spi-c"]),
                spi_ps=int(chosen["spi-s"]),
                port_pc=int(chosen["port-c"]),
                port_ps=int(chosen["port-s"]),
                ck=ck,
                ik=ik,
            )
            self.temporary_sa = sa
            verify = servers
            self._pending_security_server = servers
            if replaced is not None:
                # The new set replaces it instead (the SA table discards it and hands
                # on its SPIs: our Security-Client, hence our SPIs, are the same).
                events = [e for e in events if not isinstance(e, SecurityAssociationsReleased)]
            events.append(SetUpSecurityAssociations(sa, REG_AWAIT_AUTH))
        self.last_nonce = nonce
        self.last_response = response
        self.last_algorithm = algorithm
        expires = 0 if self.state is UeState.DEREGISTERING else None
        request = self._build_register(
            protected=protect, authorization=auth, now=now, security_verify=verify, expires=expires
        )
        if self.state is not UeState.DEREGISTERING:
            self.state = UeState.RESPONSE_SENT
        events.append(SendRequest(request, protected=protect))
        return events

    def _choose_server(self, servers: list[str]) -> dict[str, str] | None:
        """The Security-Server mechanism we use: highest q among those we offered (RFC 3329 §2.3.1)."""
        best: tuple[float, int, dict[str, str]] | None = None
        offered = self._client_offer.accepted if self._client_offer is not None else frozenset()
        for index, text in enumerate(servers):
            try:
                mech = SecurityMechanism.parse(text)
                q = mech.q
            except SipParseError:
                continue
            if mech.mechanism.lower() != "ipsec-3gpp":
                continue
            # Each parameter read once (every read is a lookup in the parameter list).
            get = mech.params.get
            alg = get("alg")
            spi_c, spi_s, port_c, port_s = get("spi-c"), get("spi-s"), get("port-c"), get("port-s")
            if alg is None or None in (spi_c, spi_s, port_c, port_s):
                continue
            prot, mod = get("prot"), get("mod")
            if (prot or "esp").lower() != "esp" or (mod or "trans").lower() != "trans":
                continue
            ealg = get("ealg") or "null"
            if (alg, ealg) not in offered:
                continue
            key = (0.1 if q is None else q, -index)
            if best is None or key > best[:2]:
                # str(int(v)): validate() checked the digits; the text is normalised.
                params = {
                    "alg": alg,
                    "ealg": ealg,
                    "spi-c": str(int(spi_c)),
                    "spi-s": str(int(spi_s)),
                    "port-c": str(int(port_c)),
                    "port-s": str(int(port_s)),
                }
                best = (key[0], key[1], params)
        return None if best is None else best[2]

    def _answer_invalid_challenge(
        self, nonce: str, realm: str, algorithm: str, now: float
    ) -> list[Event]:
        """Bad MAC: REGISTER with an empty response and no auts, in the clear, then stop."""
        if self.config.sec_agree:
            self._new_offer()
        auth = self._authorization(nonce=nonce, response="", algorithm=algorithm)
        request = self._build_register(protected=self.sa is not None, authorization=auth, now=now)
        events: list[Event] = [SendRequest(request, protected=self.sa is not None)]
        events += self._fail(NETWORK_AUTH_FAILED, 0)
        return events

    def _answer_sync_failure(
        self, auts: bytes, nonce: str, realm: str, algorithm: str, now: float
    ) -> list[Event]:
        """SQN out of range: REGISTER with auts and the response over the empty password
        (RFC 3310 §3.4), new spi/port-c, no temporary SA set (§5.1.1.5.3)."""
        cfg = self.config
        if cfg.sec_agree:
            self._new_offer()
        response = digest.compute_response(
            algorithm=algorithm,
            username=cfg.impi,
            realm=realm,
            password=b"",
            method="REGISTER",
            uri=self._request_uri,
            nonce=nonce,
        )
        auts_b64 = base64.b64encode(auts).decode()
        auth = self._authorization(
            nonce=nonce, response=response, algorithm=algorithm, extra=f'auts="{auts_b64}"'
        )
        protected = self.sa is not None
        request = self._build_register(
            protected=protected,
            authorization=auth,
            now=now,
            security_verify=self.security_server if protected else None,
        )
        if self.state is UeState.UNPROTECTED_SENT:
            self.state = UeState.RESPONSE_SENT
        return [SendRequest(request, protected=protected)]

    def _on_ok(self, resp: Response | None, now: float) -> list[Event]:
        assert resp is not None
        events: list[Event] = []
        our_contact = self.contact_uri(self._pending_protected)
        expires = _contact_expires(resp, our_contact)
        if expires is None:
            expires = self.config.expires
        self.expires = expires
        self.registered_at = now
        self.service_route = tuple(resp.get_all("Service-Route"))
        self.associated_uris = tuple(resp.get_all("P-Associated-URI"))
        protected = self._pending_protected
        if self.temporary_sa is not None:
            lifetime = max(expires + 30.0, 0.0)
            old = self.sa
            self.sa = self.temporary_sa
            self.temporary_sa = None
            self.security_server = self._pending_security_server
            events.append(SecurityAssociationsEstablished(self.sa, lifetime))
            if old is not None:
                events.append(SecurityAssociationsReleased(old, "replaced by a newer set"))
        elif self.sa is not None and protected and expires > 0:
            # TS 24.229 §5.1.1.4.1: a refresh without a new AKA run keeps the set, whose
            # lifetime becomes the longer of its own and this registration's + 30 s.
            events.append(SecurityAssociationsEstablished(self.sa, expires + 30.0))
        self.retries = 0
        self.recoveries = 0
        self._unanswered = 0
        self._pending = None
        self.state = UeState.REGISTERED
        self._deactivated_since_registered = False
        # TS 24.229 §5.1.1.4.1 times the refresh from the expiry; the S-CSCF granted
        # it when the REGISTER reached it, which may be well before its 200 got here
        # (lost, and sent again on a retransmission): counted from the sending, the
        # refresh never comes after the registration lapsed at the network.
        start = min(now, self._register_sent_at or now)
        self._deadline = start + refresh_interval(expires) if expires > 0 else None
        events.append(Registered(expires, self.service_route, self.associated_uris, protected))
        if self._subscribe_after_ok:
            # Only after the initial registration, not after each re-registration (but
            # for one whose subscription ended "deactivated" while it was under way).
            self._subscribe_after_ok = False
            if expires > 0:
                events.append(self._subscribe(now))
        return events

    def _deregister_unregistered(self, _resp: Response | None, now: float) -> list[Event]:
        """`deregister()` while a retry or a recovery waits, or after a failed attempt:
        with an SA set (its registration may still stand at the network) the de-REGISTER
        goes over it now; without one there is nothing to de-register at the network, so
        the wait ends (no more attempts) and the UE is de-registered at once (status 0),
        instead of the caller waiting out its timeout."""
        self._retrying_deregister = False
        self._deadline = None
        if self.sa is not None:
            return self._start_deregister(None, now)
        self.state = UeState.DEREGISTERED
        self._pending = None
        self._drop_subscription()
        return [Deregistered(0)]

    def _retry_register(self, resp: Response | None, now: float) -> list[Event]:
        """`register()` while a retry waits: a waiting de-REGISTER gives way to it."""
        self._retrying_deregister = False
        return self._retry(resp, now)

    def _on_dereg_reject(self, resp: Response | None, now: float) -> list[Event]:
        """A de-REGISTER refused for now (HSS down, overload) with a Retry-After within
        our bounds: sent again then, the registration and its SAs kept meanwhile (RFC
        3261 §20.33, as for a REGISTER). Any other answer ends it here as a 200 would:
        the UE goes, the network's registration lapses by itself. So does any answer
        after the reg-event NOTIFY ended our contact: an S-CSCF did de-register us, and
        the refusal came from another (a failover after its 200 was lost), so a retry
        would only go over SAs the P-CSCF has let go with that NOTIFY."""
        assert resp is not None
        if self._dereg_notified:
            return self._on_dereg_ok(resp, now)
        after = self._retry_after(resp) if self.sa is not None else None
        if after is not None:
            self._retrying_deregister = True
            return self._schedule_retry(resp.status, after, now)
        return self._on_dereg_ok(resp, now)

    def _on_dereg_ok(self, resp: Response | None, now: float) -> list[Event]:
        return self._dereg_done(resp.status if resp is not None else 408)

    def _dereg_done(self, status: int) -> list[Event]:
        events: list[Event] = []
        notified = self._dereg_notified
        self._dereg_notified = False
        # The 200 has arrived over the SAs: only now may they go (issue 7, PITFALLS).
        for old in (self.temporary_sa, self.sa):
            if old is not None:
                events.append(SecurityAssociationsReleased(old, "de-registered"))
        self.temporary_sa = self.sa = None
        self._pending = None
        self.state = UeState.DEREGISTERED
        self._deadline = None
        # The subscription ends with the registration: the S-CSCF's final NOTIFY may
        # still come (answered if the SAs let it through) or not (nothing waits for it).
        self._drop_subscription()
        events.append(Deregistered(status, notified))
        return events

    # ---------------------------------------------------------------- reg event

    def _drop_subscription(self) -> None:
        self.subscription = None
        self._sub_deadline = None
        self._resubscribe_at = None

    def _rearm_subscription(self) -> None:
        sub = self.subscription
        self._sub_deadline = sub.deadline() if sub is not None else self._resubscribe_at

    def _plan_resubscribe(self, now: float, retry_after: int | None = None) -> None:
        """The subscription is gone while the registration stays: with
        `recovery_base_time`, a new one after `retry_after` (the network's Retry-After
        or retry-after parameter) or the RFC 5626 §4.5 back-off (`_back_off`), so the
        UE keeps hearing of a network-initiated de-registration (§5.1.1.7). Without it,
        only when the network said when (RFC 3261 §20.33; RFC 6665 §4.1.3 retry-after,
        0 for a refresh's 481 the first time), within `max_retry_after` and at most
        `max_retries` times in a row: an instance of the S-CSCF that cannot serve now
        answers 503 (500 past a proxy) with Retry-After, and before 2026-11-28 such a
        UE stayed without a subscription (chaos seed 10163)."""
        base = self.config.recovery_base_time
        if self.state not in (UeState.REGISTERED, UeState.REREGISTERING):
            return
        if not base and (
            retry_after is None
            or retry_after > self.config.max_retry_after
            or self._sub_failures >= self.config.max_retries
        ):
            return
        self._sub_failures += 1
        after = self._back_off(base, self._sub_failures) if retry_after is None else retry_after
        self._resubscribe_at = now + after
        self._rearm_subscription()
        log.info("ue %s: reg-event subscription again in %.0f s", self.config.impi, after)

    def _subscribe(self, now: float) -> SendRequest:
        """SUBSCRIBE to the reg event of our IMPU (§5.1.1.3) over the new SA set: the
        Request-URI and To are the IMPU, Route is the P-CSCF's protected server port
        then the Service-Route (the preloaded route of §5.1.2A.1.1)."""
        sub = RegSubscription(f"{self._hex(12)}@{self.local[0]}", self._hex(4))
        self.subscription = sub
        return self._build_subscribe(sub, now)

    def _build_subscribe(self, sub: RegSubscription, now: float) -> SendRequest:
        cfg = self.config
        sa = self.sa
        protected = sa is not None
        port = self._port_s if protected else self.local[1]
        sub.local_cseq += 1
        if sub.remote_tag:  # in-dialog refresh (RFC 6665 §4.1.2.1; RFC 3261 §12.2.1.1)
            uri = sub.remote_target or cfg.impu
            routes: tuple[str, ...] = sub.route_set
            to = f"{self._to};tag={sub.remote_tag}"
        else:
            pcscf_port = sa.port_ps if sa is not None else cfg.pcscf[1]
            uri = cfg.impu
            routes = (f"<sip:{_addr_host(cfg.pcscf[0])}:{pcscf_port};lr>", *self.service_route)
            to = self._to
        branch = sub.pending_branch = f"z9hG4bK{self._hex(8)}"
        headers: list[tuple[str, str]] = [
            ("Via", f"{self._via_head}{port};branch={branch}"),
            ("Max-Forwards", "70"),
        ]
        headers += [("Route", r) for r in routes]
        cseq = sub.pending_cseq = f"{sub.local_cseq} SUBSCRIBE"
        headers += [
            ("P-Access-Network-Info", cfg.access_network_info),
            ("From", f"{self._to};tag={sub.local_tag}"),
            ("To", to),
            ("Call-ID", sub.call_id),
            ("CSeq", cseq),
            ("Event", "reg"),
            ("Expires", str(REG_SUBSCRIBE_EXPIRES)),
            ("Accept", REGINFO),
            ("Contact", self.contact_uri(protected)),
            ("Content-Length", "0"),
        ]
        # The answer comes through the transaction (Timer F); the expiry stays a deadline.
        self._rearm_subscription()
        return SendRequest(Request("SUBSCRIBE", uri, headers), protected=protected)

    def _on_subscribe_response(
        self, sub: RegSubscription, resp: Response, now: float
    ) -> list[Event]:
        if resp.status < 200:
            return []
        refreshed = sub.state is SubState.ACTIVE and sub.local_cseq > 1
        if resp.status >= 300:
            return self._subscribe_failed(
                sub, resp.status, f"{resp.status} {resp.reason}", now, resp.retry_after
            )
        sub.pending_cseq = ""
        try:
            tag = resp.to.tag or ""
            contacts = resp.contacts
            granted = resp.expires
        except SipParseError as exc:
            self._drop_subscription()
            log.info("ue %s: unusable 2xx to the reg SUBSCRIBE: %s", self.config.impi, exc)
            return [SubscriptionEnded("unusable 2xx to the SUBSCRIBE")]
        if tag and not sub.route_from_2xx and sub.remote_tag in ("", tag):
            # The dialog as the 2xx sets it up (RFC 3261 §12.1.2), also when a NOTIFY came
            # first: the P-CSCF rewrites its own Record-Route entry in this 2xx to its
            # protected server port, the one our requests go to. (A 2xx of another
            # dialog than the NOTIFY's, a fork, sets nothing: RFC 6665 §4.1.2.4.)
            sub.remote_tag = tag
            sub.route_set = tuple(reversed(resp.get_all("Record-Route")))
            sub.route_from_2xx = True
            if contacts and not contacts[0].star:
                sub.remote_target = contacts[0].uri
        if granted is None:
            granted = REG_SUBSCRIBE_EXPIRES
        if granted == 0:
            self._drop_subscription()
            return [SubscriptionEnded("granted for 0 s")]
        sub.state = SubState.ACTIVE
        self._sub_failures = 0
        self._set_subscription_expiry(sub, granted, now)
        return [Subscribed(granted, refreshed)]

    def _set_subscription_expiry(self, sub: RegSubscription, expires: int, now: float) -> None:
        # The refresh rule of the registration (§5.1.1.3 refers to §5.1.1.4.1's).
        sub.expires_at = now + expires
        sub.refresh_at = now + refresh_interval(expires)
        self._rearm_subscription()

    def _subscribe_failed(
        self,
        sub: RegSubscription,
        status: int,
        reason: str,
        now: float,
        retry_after: int | None = None,
    ) -> list[Event]:
        sub.pending_cseq = ""
        if (
            sub.state is SubState.ACTIVE
            and status not in (404, 408, 481)
            and sub.expires_at is not None
            and now < sub.expires_at
        ):
            # A refused refresh: the subscription stands until its expiry (RFC 6665
            # §4.1.2.2), no second refresh before then.
            sub.refresh_at = None
            self._rearm_subscription()
            log.info("ue %s: reg SUBSCRIBE refresh answered %s", self.config.impi, reason)
            return []
        lost = status == 481 and bool(sub.remote_tag) and not self._sub_failures
        self._drop_subscription()
        log.info("ue %s: reg-event subscription ended: %s", self.config.impi, reason)
        if status == 480 and not sub.remote_tag and self.sa is not None and self.registering:
            # The same refusal while a REGISTER of ours is under way (a refresh the
            # I-CSCF took to the S-CSCF the user moved to, say): its answer tells
            # whether the network holds the registration. A 2xx brings the new
            # subscription, along the Service-Route it carries; a failure registers
            # anew, which subscribes too. Before the twelfth session (2026-11-29) the UE
            # stayed without a subscription after that 2xx, and an RTR went unheard
            # (lifecycle chaos --devices 2 --scscf-moves, seed 11196).
            self._subscribe_after_ok = self.config.subscribe_reg_event
            return [SubscriptionEnded(reason)]
        if (
            status == 480
            and not sub.remote_tag
            and self.state is UeState.REGISTERED
            and self.sa is not None
            and self._sub_failures < self.config.max_retries
        ):
            # A new subscription refused "not registered" (the S-CSCF answers 480 for an
            # IMPU it holds no registration of): the network ended this registration
            # before the UE could be told over a subscription (its other device moved
            # the user to another S-CSCF, and the one it left, which this SUBSCRIBE
            # reached, told this device to register again). The UE registers anew at
            # once, as after a refresh that fails (§5.1.1.4.1); before 2026-11-29 it
            # stayed without a subscription until its refresh ran out over the set the
            # P-CSCF had let go (lifecycle chaos --devices 2 --scscf-moves, seed 11101).
            self._sub_failures += 1
            why = f"reg-event SUBSCRIBE answered {reason}"
            return [
                SubscriptionEnded(reason),
                *self._register_anew(why, now, what=NOT_HELD),
            ]
        if status in _RESUBSCRIBE_AFTER:
            # The notifier no longer holds the dialog of a refresh (RFC 6665 §4.1.2.2:
            # restarted, or another instance of it got the refresh): a new one at
            # once, the first time in a row; the back-off after that.
            self._plan_resubscribe(now, 0 if lost and retry_after is None else retry_after)
        return [SubscriptionEnded(reason)]

    def _subscription_timer(self, now: float) -> list[Event]:
        sub = self.subscription
        self._sub_deadline = None
        if sub is None:
            at = self._resubscribe_at
            if at is None:
                return []
            if now < at:
                self._sub_deadline = at
                return []
            self._resubscribe_at = None
            if self.state not in (UeState.REGISTERED, UeState.REREGISTERING) or (
                self.sa is None and self.config.sec_agree
            ):
                return []  # a registration made anew subscribes after its own 200
            return [self._subscribe(now)]
        if sub.expires_at is not None and now >= sub.expires_at:
            self._drop_subscription()
            self._plan_resubscribe(now)
            return [SubscriptionEnded("expired")]
        if sub.refresh_at is not None and now >= sub.refresh_at and not sub.pending_cseq:
            sub.refresh_at = None
            if self.sa is None and self.config.sec_agree:
                self._rearm_subscription()  # no SA set to send it over: wait for the expiry
                return []
            return [self._build_subscribe(sub, now)]
        self._rearm_subscription()
        return []

    def _on_notify(self, request: Request, now: float) -> list[Event]:
        """RFC 6665 §4.1.3 with the checks of RFC 3261 §12.2.2; the reginfo per §5.1.1.7."""
        sub = self.subscription
        try:
            call_id = request.call_id
            local_tag = request.to.tag
            remote_tag = request.from_.tag or ""
            cseq = request.cseq.seq
            contacts = request.contacts
        except SipParseError as exc:
            return [self._answer(request, 400, f"Bad Request ({exc.reason})"[:80])]
        if (
            sub is None
            or call_id != sub.call_id
            or local_tag != sub.local_tag
            or (sub.remote_tag and remote_tag != sub.remote_tag)
        ):
            self.drops["notify-without-subscription"] += 1
            return [self._answer(request, 481, "Subscription Does Not Exist")]
        event = (request.get("Event") or "").split(";", 1)[0].strip().lower()
        if event != "reg":
            return [self._answer(request, 489, "Bad Event")]
        if sub.remote_cseq >= 0 and cseq <= sub.remote_cseq:
            return [self._answer(request, 500, "Server Internal Error (CSeq out of order)")]
        try:
            state = parse_subscription_state(request.get("Subscription-State"))
            info = self._notify_body(request)
        except ReginfoError as exc:
            # The state stays as it was: a broken document changes nothing.
            self.drops["bad-notify"] += 1
            log.info("ue %s: NOTIFY refused: %s", self.config.impi, exc)
            return [self._answer(request, 400, f"Bad Request ({exc})"[:100])]
        except _UnsupportedType:
            return [
                SendResponse(
                    make_response(
                        request, 415, "Unsupported Media Type", headers=[("Accept", REGINFO)]
                    )
                )
            ]
        sub.remote_cseq = cseq
        if not sub.remote_tag:
            # The NOTIFY overtook the 2xx (RFC 6665 §4.1.2.4): it makes the dialog; the
            # 2xx, when it comes, sets the route set of our requests.
            sub.remote_tag = remote_tag
            sub.route_set = tuple(request.get_all("Record-Route"))
            if contacts and not contacts[0].star:
                sub.remote_target = contacts[0].uri
        elif contacts and not contacts[0].star and contacts[0].uri != sub.remote_target:
            # A NOTIFY is a target refresh (RFC 6665; RFC 3261 §12.2.1.2): an instance
            # of the S-CSCF that took the subscription over names itself here, and the
            # next refresh goes there (before 2026-11-28 it went to the stopped one).
            sub.remote_target = contacts[0].uri
        if sub.state is SubState.SUBSCRIBING:
            sub.state = SubState.ACTIVE
        events: list[Event] = [SendResponse(make_response(request, 200, "OK"))]
        version: int | None = None
        if info is not None and info.version > sub.version:
            sub.version = version = info.version
        events.append(RegStateNotified(state.state, version))
        if state.state == "terminated":
            self._drop_subscription()
            events.append(SubscriptionEnded(state.reason or "terminated"))
        elif state.expires is not None and not sub.pending_cseq:
            self._set_subscription_expiry(sub, state.expires, now)
        if version is not None:
            assert info is not None
            events += self._take_reginfo(info, now)
        if (
            state.state == "terminated"
            and state.reason in _RESUBSCRIBE_REASONS
            and self.subscription is None
        ):
            # The subscription ended, the registration did not (the reginfo left it, and
            # so the UE, registered): RFC 6665 §4.2.2 asks for a new one, after
            # retry-after when given. Otherwise after the back-off, not at once as it
            # allows for "deactivated" and "timeout": a notifier that ends each new
            # subscription at once would otherwise get a SUBSCRIBE storm. But the first
            # "deactivated" since the last registration is taken at once, with or
            # without `recovery_base_time` (RFC 6665 §4.1.3: retry immediately; its
            # use is a subscription moving between nodes, as when the user moved to
            # another S-CSCF, whose 200 OK brought the Service-Route the new one
            # takes). Before 2026-11-29 a UE without the back-off stayed without one.
            retry_after = state.retry_after
            if (
                state.reason == "deactivated"
                and retry_after is None
                and not self._deactivated_since_registered
            ):
                self._deactivated_since_registered = True
                if self.state in (UeState.REREGISTERING, UeState.RESPONSE_SENT):
                    # (the REGISTER that moved it is under way, its 200 not yet here:
                    # the new subscription goes along the Service-Route that 200 brings)
                    self._subscribe_after_ok = self.config.subscribe_reg_event
                    return events
                retry_after = 0
            self._plan_resubscribe(now, retry_after)
        return events

    def _answer(self, request: Request, status: int, reason: str) -> SendResponse:
        return SendResponse(make_response(request, status, reason))

    def _notify_body(self, request: Request) -> Reginfo | None:
        body = request.body
        if not body:
            return None  # a NOTIFY may carry no document (e.g. a pending subscription)
        ctype = (request.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != REGINFO:
            raise _UnsupportedType
        return parse_reginfo(body)

    def _take_reginfo(self, info: Reginfo, now: float) -> list[Event]:
        """Act on the registration state of our IMPU and our contact (§5.1.1.7)."""
        impu = uri_key(self.config.impu)
        mine = next((r for r in info.registrations if uri_key(r.aor) == impu), None)
        if mine is None:
            return []
        ours = uri_key(self.contact_uri(self.sa is not None or self._pending_protected))
        contact = next((c for c in mine.contacts if uri_key(c.uri) == ours), None)
        if contact is None and mine.contacts:
            # Only other devices' contacts (sharing the IMPU): their change, not ours
            # (§5.1.1.7 acts on the contact belonging to this UE), even when the
            # registration there ended: the S-CSCF we moved away from ends it so, telling
            # the device that stayed to register again (RTR NEW_SERVER_ASSIGNED). Before
            # 2026-11-29 (ninth session) this UE took the other device's event as its own.
            return []
        if mine.state == "terminated" or (contact is not None and contact.state == "terminated"):
            event = contact.event if contact is not None else "terminated"
            return self._network_deregistered(event, now)
        if (
            contact is not None
            and contact.event == "shortened"
            and contact.expires is not None
            and self.state is UeState.REGISTERED
        ):
            # Re-register before the new, earlier expiry (§5.1.1.4.1 timing).
            self.expires = contact.expires
            self.registered_at = now
            at = now + refresh_interval(contact.expires)
            if self._deadline is None or at < self._deadline:
                self._deadline = at
        return []

    def _network_deregistered(self, event: str, now: float) -> list[Event]:
        if self.state is UeState.DEREGISTERED:
            self._drop_subscription()
            return []
        if self.state is UeState.DEREGISTERING or self._retrying_deregister:
            # The final NOTIFY of our own de-registration: the subscription ends, and
            # the de-REGISTER's answer, when it comes, only closes the transaction.
            self._drop_subscription()
            self._dereg_notified = True
            if self.state is UeState.DEREGISTERING:
                return []
            # A retry was waiting (a refusal came first): nothing is left to send, and
            # no answer is awaited (status 0, as for `_deregister_unregistered`).
            self._retrying_deregister = False
            return self._dereg_done(0)
        events: list[Event] = []
        reason = f"{NETWORK_DEREGISTERED} ({event})"
        for old in (self.temporary_sa, self.sa):
            if old is not None:
                events.append(SecurityAssociationsReleased(old, reason))
        self.temporary_sa = self.sa = None
        self._pending = None
        self._deadline = None
        self._drop_subscription()
        self.expires = 0
        self.service_route = ()
        self.associated_uris = ()
        self.network_event = event
        self.state = UeState.DEREGISTERED
        log.warning("ue %s: %s", self.config.impi, reason)
        # §5.1.1.7: after "deactivated" the UE registers anew; after "rejected" it does
        # not (nor after the other events, which §5.1.1.7 does not ask to re-register).
        again = event == "deactivated"
        events.append(NetworkDeregistered(event, again))
        if again:
            self.retries = 0
            events += self._start_initial(None, now)
        return events


class _UnsupportedType(Exception):
    """A NOTIFY body that is not application/reginfo+xml (answered 415)."""
