"""P-CSCF REGISTER handling, sans-I/O: TS 24.229 §5.2.2, TS 33.203 §7, RFC 3329, RFC 3327.

The seed's packets 1→2, 7, 8→9 and 13: the P-CSCF is the UE's first hop. It

- decides home or visited (seed steps 2–3): the home domain of the Request-URI picks a
  static route; visited → the home network's I-CSCF, home → the route's S-CSCF where
  one is configured, else its I-CSCF;
- adds Path `<sip:term@NAME;lr>` and `Require: path`, P-Visited-Network-ID and a
  P-Charging-Vector with a fresh icid (packet 2); removes Security-Client,
  Security-Verify and the sec-agree option tags before forwarding (TS 24.228 R1-1c);
- sets `integrity-protected="no"` on a REGISTER received in the clear and `"yes"` on
  one received over an SA, overwriting any value the UE wrote (FACTS §3.1);
- on the 401 takes ck/ik out of WWW-Authenticate, chooses the transform by the
  operator's preference list (never "last offer wins"), allocates its SPIs, installs
  the temporary SA set and adds Security-Server (packet 7);
- on the protected REGISTER checks Security-Verify against the Security-Server it
  sent and Security-Client against the challenged REGISTER (a mismatch is a downgrade
  attempt: 494); the 494, like a failed challenge response's 4xx, goes out over the
  temporary SA it is due on, and the set is then held for that REGISTER's
  retransmissions as a de-REGISTER's is (below), then dropped; once a challenge
  response passed, a REGISTER over the temporary set with a higher CSeq (the UE's next
  one, RFC 3261 §10.2) or any other request over it shows the 200 went out, so the set
  is taken as established (a record written before that 200, read back after a crash;
  one written before the response counts it as the challenged REGISTER's CSeq + 1);
- drops a clear REGISTER that carries a challenge response where protection is due
  (seed step 6); an initial REGISTER arriving over ESP without an SA is dropped by the
  IPsec backend (unknown SPI, seed step 1);
- after the 200 OK keeps the registration (contact, SAs, Service-Route,
  P-Associated-URI); from then on accepts requests from that UE only over its SAs and
  replaces P-Preferred-Identity with a P-Asserted-Identity from the registered set;
- sends every response to the UE over the SA its request came on; on a de-REGISTER
  the SAs are removed only after the 200 OK has gone out over them (PITFALLS), and the
  set that 200 OK left over (UDP) stays for the de-REGISTER's retransmissions alone
  until its transaction ends (64·T1), so a UE whose 200 was lost gets it again
  (RFC 3261 §17.2.2; see `DEREGISTER_GRACE`);
- routes dialogs (TS 24.229 §5.2.6.3, §5.2.6.4; RFC 3261 §16): removes the Route
  entries naming it from the UE's requests, Record-Routes the dialog-forming ones
  (`<sip:NAME:PORT;lr>` towards the core, the same with port-s in the 1xx/2xx to the
  UE), takes requests from the core to a registered contact (the S-CSCF's NOTIFY to
  the UE's reg-event subscription) from port-c to the UE's port-s over its newest SA
  set and the UE's answer back upstream, and answers 404 for a contact without SAs;
  on a network de-registration it keeps the SAs until the UE's own terminated NOTIFY
  went through (§5.1.1.7), at most until that NOTIFY's transaction ends, and while a
  REGISTER of the UE is open, until its answer went out over them (then as after a
  de-REGISTER's 200: held over UDP for that REGISTER's retransmissions).
- after a challenged re-registration keeps the set it replaced for the transactions
  still open over it (TS 33.203 §7.4; `SUPERSEDED_DRAIN`): new requests take the new
  set, what comes over the old one is served and answered over it; a response whose
  set is gone is never sent in the clear (SPI 0: the edge sends nothing).

- subscribes to the reg event of each registered IMPU (TS 24.229 §5.2.3), refreshes
  that subscription in its dialog before the S-CSCF's grant runs out, makes it again
  when only the subscription ended, and ends it (Expires: 0) when a fresh registration
  replaced the one it was made for (`imsaka.cscf.pcscf_regsub`);

- is transaction stateful on every hop it serves (RFC 3261 §16, §17): a request it
  sends on over UDP it sends again itself until its answer (Timer E; to a UE only over
  a set it still has), and the retransmissions reaching it meanwhile are absorbed;
  after the answer they get it again from the context kept until Timer F.

`sec_agree = "required"` answers a REGISTER without sec-agree 421/494 (RFC 3329 §2.3.1);
`"optional"` admits a UE offering no Security-Client, without SAs.

The core takes parsed messages with their arrival (clear or which SA) and `now`, and
returns actions for the edge (`imsaka.cscf.pcscf_server`); it opens no socket.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import heapq
import logging
import math
import random
import re
import sys
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from imsaka.config import NetworkConfig, PcscfConfig, split_hostport
from imsaka.cscf.pcscf_regsub import (
    ASKED,
    RegEventSubscription,
    in_dialog_subscribe,
    on_2xx,
    on_notify,
)
from imsaka.cscf.probe import options_request
from imsaka.cscf.registrar import plain_name_addr
from imsaka.cscf.tracking import tracked
from imsaka.ipsec.errors import DowngradeError, SecAgreeParseError
from imsaka.ipsec.secagree import (
    SecAgreePolicy,
    SecurityMechanism,
    answer_headers,
    check_security_client_unchanged,
    check_security_verify,
    choose_mechanism,
    format_security_header,
    parse_security_header,
    sec_agree_decision,
    strip_sec_agree,
)
from imsaka.sip import (
    DigestCredentials,
    LocalProtocolError,
    Message,
    NameAddr,
    Request,
    Response,
    SipParseError,
    Via,
    make_response,
    parse_message,
)
from imsaka.sip.compact import PackedItem, SharedTuples, WirePacker
from imsaka.sip.proxy import no_503_upstream
from imsaka.sip.transaction import TimerConfig
from imsaka.sip.uri import quote

log = logging.getLogger(__name__)

__all__ = [
    "HELD",
    "Address",
    "Arrival",
    "DropInput",
    "Forward",
    "HoldSecurityAssociations",
    "InstallSecurityAssociations",
    "PcscfCore",
    "PcscfSa",
    "ReleaseSecurityAssociations",
    "Reply",
    "UpgradeSecurityAssociations",
]

Address = tuple[str, int]

# Timer F (64·T1) bounds how long a forwarded request's context is kept.
TRANSACTION_LIFETIME = 32.0
# How long a subscription detached from its ended registration waits for the S-CSCF's
# terminated NOTIFY (sent when the registration ends there, retransmitted for up to a
# transaction's lifetime) before it is ended from here and forgotten: an S-CSCF that
# restarted may never send it.
DETACHED_WAIT = TRANSACTION_LIFETIME + 8.0
# A P-CSCF that takes back registrations written before a crash (or a stop long enough
# for the S-CSCF's NOTIFYs to it to run out) may hold some the network ended meanwhile:
# each restored subscription is refreshed at once (RFC 6665 §4.1.2.2: the answer and
# the NOTIFY it brings tell the registration's state now), AUDIT_BATCH of them every
# AUDIT_PAUSE s (at most 500 SUBSCRIBEs a second to the S-CSCFs after a restart).
AUDIT_BATCH = 50
AUDIT_PAUSE = 0.1
# Contexts past their lifetime are looked for on the 2·T1 grid of the timers that end a
# transaction (`TimerConfig.end_at`): one wake-up a second for all of them, not one per
# T1/10 step (a P-CSCF at 100 requests/s woke 20 times a second for this alone).
_END_AT = TimerConfig().end_at
# After the 200 OK to a UE's de-REGISTER left over UDP, the SA set it left over carries
# that de-REGISTER's retransmissions (and nothing else) for this long: Timer J, 64·T1,
# the time a non-INVITE server transaction stays Completed to answer retransmissions
# (RFC 3261 §17.2.2; over TCP there are none and the set goes at once). Without it a
# lost 200 left the UE retransmitting into an SPI nobody knew (`esp-unknown-spi`) until
# its Timer F, and it ended with 408. TS 24.229 §5.2.2 / TS 33.203 §7.4 have the SAs go
# after the last message due over them; whether their text covers a retransmission of
# that message is UNCONFIRMED (FACTS §1.2 has no verbatim P-CSCF rule): this reads the
# cached answer re-sent to a retransmission as still that last message.
DEREGISTER_GRACE = TRANSACTION_LIFETIME

# A 200 to an OPTIONS asked of the P-CSCF itself: what it passes on.
_ALLOW = (("Allow", "REGISTER, SUBSCRIBE, NOTIFY, OPTIONS"),)

# After a challenged re-registration the set it replaced stays this long (Timer F,
# 64·T1): the UE may still have a transaction open over it, a request sent or a
# request of the core's being answered, when the 200 OK switches to the new set. TS
# 24.229 §5.1.1.5.1 has the UE delete its old set only "after all SIP transactions that
# use the old set ... are completed"; the P-CSCF mirrors it (FACTS §1.2, UNCONFIRMED
# verbatim). No new request goes over it; what arrives over it is served as over the
# registration's set, and its answers go back over it.
SUPERSEDED_DRAIN = TRANSACTION_LIFETIME
# A request the P-CSCF sends on over UDP (a UE's request upstream, the core's to the UE,
# its own reg-event SUBSCRIBE) is sent again by the P-CSCF itself until an answer comes:
# Timer E of its client transaction, T1 first, then doubling up to T2 (RFC 3261
# §17.1.2.2); retransmissions of the request reaching it meanwhile are absorbed (its
# server transaction in Trying, §17.2.2). Each hop so recovers its own losses: relaying
# the UE's retransmissions instead made a REGISTER's every try need all legs at once
# (under 20 % loss on each of six, 0.8⁶ = 26 %, and one in thirty ended in 408).
RETRANSMIT_T1 = TimerConfig().t1
RETRANSMIT_T2 = TimerConfig().t2
SUPERSEDED = "replaced by a newer set"
# A challenge response whose Security-Verify or Security-Client differs from what was
# agreed (RFC 3329 §2.3.1 bid-down): answered 494, its temporary set ends.
DOWNGRADE = "downgrade attempt"
# The reasons a de-registered UE's sets are released with: its own de-REGISTER, the
# network's (a terminated reg-event NOTIFY, RFC 3680).
DEREGISTERED = "de-registered"
NETWORK_TERMINATED = "registration terminated (reg event)"
# A registrar's expires value that is not delta-seconds (a 200 OK's Contact param or
# Expires header): "Malformed values SHOULD be treated as equivalent to 3600" (RFC 3261
# §10.2.1.1, §20.10); read as an error it cost the 200 OK, read as 0 the UE's SAs.
MALFORMED_EXPIRES = 3600
# Overload: requests forwarded upstream and not answered beyond which a new initial
# REGISTER is refused 503 (`PcscfConfig.max_in_flight`; 0: no bound), and the base of
# that 503's Retry-After in seconds (RFC 3261 §21.5.4, §20.33), randomised up to twice
# the base so the refused UEs do not all come back in the same second. With the delay
# bound below doing the machine-dependent part, the count is a cap for what arrives
# before any answer can show a queue: a burst of 1,000 UEs at once went into the core
# whole with a cap of 1,000 and left requests unanswered for over 15 s (test_load.py).
DEFAULT_MAX_IN_FLIGHT = 300
OVERLOAD_RETRY_AFTER = 5
# The delay side of the bound (`PcscfConfig.max_queue_delay`): a count fits one machine
# only (100 in flight is 200 ms of queue at 500 REGISTERs/s and 670 ms at 150/s), so new
# initial REGISTERs are also refused while a standing queue holds the core's answers
# back: when even the quickest answer of the last window (CoDel's measure of a
# standing queue, RFC 8289: one slow request or one lost datagram does not count) took
# longer than the target. The target is below the UE's T1 (500 ms), so a refused UE is
# told before it retransmits.
DEFAULT_MAX_QUEUE_DELAY = 0.4
QUEUE_DELAY_WINDOW = 0.1

# Requests from the served UE that start a dialog: the P-CSCF stays on its route
# (Record-Route, TS 24.229 §5.2.6.3) so the dialog's later requests from the core reach
# the UE over its SAs, and the UE's reach the P-CSCF at its protected server port.
DIALOG_FORMING = frozenset(("INVITE", "SUBSCRIBE", "REFER"))

# The UE's reg-event subscription as the P-CSCF sees it pass (Registration.ue_sub).
UE_SUB_NONE, UE_SUB_ACTIVE, UE_SUB_NOTIFIED = 0, 1, 2


# ----------------------------------------------------------------------- SA model


@dataclass(frozen=True, slots=True)
class PcscfSa:
    """One SA set as the P-CSCF sees it (TS 33.203 §7.1, FACTS §1.1).

    Inbound at the P-CSCF: spi_ps (UE port-c → our port-s) and spi_pc (UE port-s → our
    port-c); outbound: spi_uc (our port-s → UE port-c) and spi_us (our port-c → UE port-s).
    """

    impi: str
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
    ck: bytes = field(default=b"", repr=False)
    ik: bytes = field(default=b"", repr=False)
    """CK/IK travel in `InstallSecurityAssociations` only: the copy the registration
    keeps has them emptied (the table's SA set holds the derived ESP keys)."""

    @property
    def inbound_spis(self) -> tuple[int, int]:
        return (self.spi_ps, self.spi_pc)


@dataclass(frozen=True, slots=True)
class Arrival:
    """How a request reached the P-CSCF: its source, transport and the SA it came on."""

    source: Address
    transport: str = "udp"
    spi: int | None = None  # inbound SPI of the SA it arrived over; None = in the clear


# ----------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Forward:
    """Send `message` upstream (I-CSCF / S-CSCF) in the clear."""

    message: Request | Response
    destination: Address
    transport: str = "udp"


@dataclass(frozen=True, slots=True)
class Reply:
    """Send `message` to the UE: over the SA with outbound `spi` (from port-s to the UE's
    port-c, or from port-c to its port-s), or in the clear when `spi` is None. `over`:
    the spi-s of the set it must go over, when known (two sets can have the same
    outbound SPIs: the UE's Security-Client is the same for a new challenge of its
    challenge response, so the set that answer came over and the new one share them)."""

    message: Request | Response
    destination: Address
    transport: str = "udp"
    spi: int | None = None
    over: int | None = None


@dataclass(frozen=True, slots=True)
class InstallSecurityAssociations:
    sa: PcscfSa
    lifetime: float
    temporary: bool = True


@dataclass(frozen=True, slots=True)
class UpgradeSecurityAssociations:
    sa: PcscfSa
    lifetime: float


@dataclass(frozen=True, slots=True)
class ReleaseSecurityAssociations:
    sa: PcscfSa
    reason: str


@dataclass(frozen=True, slots=True)
class HoldSecurityAssociations:
    """The last answer due over this set (the Reply before this action: the 200 OK to
    a de-REGISTER, the 4xx to a failed challenge response) went out over it: it no
    longer routes anything, but stays for that REGISTER's retransmissions until `until`
    (`DEREGISTER_GRACE`), when the core sends a ReleaseSecurityAssociations for it."""

    sa: PcscfSa
    until: float


@dataclass(frozen=True, slots=True)
class DropInput:
    reason: str


Action = (
    Forward
    | Reply
    | InstallSecurityAssociations
    | UpgradeSecurityAssociations
    | ReleaseSecurityAssociations
    | HoldSecurityAssociations
    | DropInput
)


# ----------------------------------------------------------------------- state


class RegState(enum.Enum):
    CHALLENGED = "challenged"  # temporary SA set installed, protected REGISTER awaited
    REGISTERED = "registered"


@dataclass(slots=True)
class Registration:
    """What the P-CSCF keeps per registered contact (TS 24.229 §5.2.2, FACTS §3.2)."""

    impi: str
    impu: str
    ue_host: str
    state: RegState
    contact: str = ""
    sa: PcscfSa | None = None  # established set
    temporary: PcscfSa | None = None
    temporary_expires: float = 0.0
    # the set a challenged re-registration replaced, until `previous_until`
    # (`SUPERSEDED_DRAIN`): still routed, never chosen for a new request to the UE
    previous: PcscfSa | None = None
    previous_until: float = 0.0
    # Security-Server last sent (checked against Security-Verify on every REGISTER);
    # while a challenge is open, the one sent in its 401 and the challenged REGISTER's
    # Security-Client (both emptied once the set is established). Kept as the header
    # text: a UE echoes it byte for byte, so the check is a string comparison (parsed
    # only when the text differs), and text is a fifth of the parsed mechanisms' memory.
    security_server: Sequence[str] = ()
    security_client: Sequence[str] = ()
    pending_server: Sequence[str] = ()
    service_route: tuple[str, ...] = ()
    associated_uris: tuple[str, ...] = ()
    expires_at: float = 0.0
    clear_source: Address | None = None  # sec-agree-less registration (policy optional)
    network_terminated: bool = False  # reg-event said terminated while a REGISTER was open
    # `temporary` came from the 401 to an initial REGISTER (in the clear): a registration
    # the UE started afresh, which a termination of the registration before it spares
    started_over: bool = False
    # The CSeq number of the challenge response that passed the checks over `temporary`
    # (0: none yet). A later REGISTER over that set shows the UE had the 200 to it (RFC
    # 3261 §10.2: no new REGISTER before the final answer to the last) though this
    # record, written before that 200 and read back after a crash, says challenged.
    answered_cseq: int = 0
    # The CSeq number of the REGISTER the 401 that made `temporary` answered (0: not
    # known). A record taken back with no response seen counts that response as the
    # next number (`PcscfCore.adopt`; RFC 3261 §10.2: one more per REGISTER).
    challenged_cseq: int = 0
    # The UE's own reg-event subscription (TS 24.229 §5.1.1.3) as seen passing through:
    # UE_SUB_NONE, UE_SUB_ACTIVE (a 2xx to its SUBSCRIBE went back), or
    # UE_SUB_NOTIFIED (its terminated NOTIFY reached it and was answered).
    ue_sub: int = 0
    # The Call-ID of that subscription, when seen ("": not known): a NOTIFY of another
    # dialog (one of the registration before, the UE's answer to its retransmission
    # relayed over this one's set) tells nothing of this registration.
    ue_sub_call_id: str = ""
    # Network de-registration announced (our reg-event NOTIFY) while the UE's own
    # terminated NOTIFY is still to pass over the SAs: they go at this time at the
    # latest (0: not waiting).
    release_at: float = 0.0
    # due time of this registration's one entry in the core's deadline heap (None: none)
    scheduled: float | None = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class _Pending:
    """Context of one forwarded request until its final response (keyed by our branch)."""

    arrival: Arrival
    ue_branch: str
    kind: str  # "register-clear", "register-protected", "request"
    impi: str
    created: float
    # The offers of a REGISTER in the clear, parsed (for the sec-agree decision); a
    # protected one keeps only `security_client_text`, parsed if it is challenged.
    security_client: Sequence[SecurityMechanism] = ()
    expires_zero: bool = False
    # The final answer, cached for retransmitted requests for Timer F; kept serialized
    # because a parsed message costs about five times its bytes, for 32 s per REGISTER.
    final_data: bytes | None = None
    # The SPI the final answer left over (None: in the clear), so a retransmitted
    # request gets its copy over the same SA even after the registration was
    # forgotten (the 200 OK to a de-REGISTER whose first copy was lost).
    final_spi: int | None = None
    # The Security-Client header text of the request (kept by the registration after a
    # 401, for the protected REGISTER's check); emptied once the final is in.
    security_client_text: tuple[str, ...] = ()
    # What went upstream, sent again as it was by Timer E while no final answer is in
    # (RFC 3261 §16.6: the copy is the request forwarded, same branch and icid). A
    # request from the core to the UE keeps here the Reply that took it to the UE.
    forward: Forward | Reply | None = None
    # The SA set a request from the core went to the UE over: Timer E sends it again
    # only while the P-CSCF still has that set (routed, draining or held).
    sa: PcscfSa | None = None
    # When the request went to an S-CSCF instance it has moved to (`_failover`; 0:
    # it is at its first hop since `created`)
    moved_at: float = 0.0

    @property
    def final(self) -> Response | None:
        if self.final_data is None:
            return None
        msg = parse_message(self.final_data)
        return msg if isinstance(msg, Response) else None

    @final.setter
    def final(self, response: Response | None) -> None:
        self.final_data = None if response is None else response.to_bytes()


class _Answered:
    """A forwarded request's context once its final answer went to the UE: all that a
    retransmitted request still needs until Timer F (the answer's bytes, compressed,
    and the SPI it left over), in the `pending` slot its open context had (so the table
    stays in expiry order). Reads like a closed `_Pending` of no UE: `kind` and `impi`
    match no open-REGISTER or SUBSCRIBE check."""

    __slots__ = ("created", "final_data", "final_spi")
    kind = "answered"
    impi = ""

    def __init__(self, created: float, final_data: bytes, final_spi: int | None) -> None:
        self.created = created
        # its octets while they wait in `PcscfCore._to_pack`, then the `PackedItem` of
        # their group (`WirePacker.pack_group`); a de-REGISTER's 200 kept by a set in
        # grace past this context, packed alone (`WirePacker.pack`)
        self.final_data = final_data
        self.final_spi = final_spi


# What a held set's key starts with (`_Grace.key`): a NUL, which no IMPI holds, so the
# two share the deadline heap and a state store's records without meeting.
HELD = "\x00"


class _Grace:
    """An SA set after the last answer due over it went out (the 200 OK to its UE's
    de-REGISTER, the 4xx to a failed challenge response), until `release_at`
    (`DEREGISTER_GRACE`): out of every routing table (`by_spi`, `_by_contact`),
    answering only a retransmission of the REGISTER so answered (our branch for it,
    `branch`) with its cached answer (`final_data`, packed, as `_Answered` keeps it);
    then released with `reason`. `key` is its entry in the core's deadline heap (a NUL
    then our inbound spi-s: no IMPI holds a NUL, so it is never a registration's key);
    `scheduled` as in `Registration`."""

    __slots__ = (
        "branch",
        "contact",
        "final_data",
        "impi",
        "key",
        "reason",
        "release_at",
        "sa",
        "scheduled",
    )

    def __init__(self, sa: PcscfSa, branch: str, release_at: float, reason: str) -> None:
        self.sa = sa
        self.impi = sa.impi
        self.branch = branch
        self.final_data: bytes | None = None
        self.release_at = release_at
        self.reason = reason
        self.key = f"{HELD}{sa.spi_ps}"
        self.scheduled: float | None = None
        # the Contact its registration had, when the network ended it ("": not known)
        self.contact = ""


# What follows `branch=` in our own Via as it comes back in a response: the branch we
# wrote (`_branch_for`, or a SUBSCRIBE's; the context's key), the `x<n>` of a copy
# moved to the n-th instance of an S-CSCF (`_moved_copy`), and at most the IPv4
# `received` of the hop.
_OWN_VIA_REST = re.compile(r"(z9hG4bK[0-9a-f]+)(?:x[0-9]{1,2})?(?:;received=[0-9.]{7,15})?")
# A branch of ours moved to another instance (the context's key, then `x<n>`).
_MOVED_BRANCH = re.compile(r"(z9hG4bK[0-9a-f]+)x[0-9]{1,2}")


# A Contact value `<URI>;expires=N` with N from 1 to 999999999 (RFC 3261 §20.10): its
# expiry is N, not 0 (the URI holds no `>`, so the param is the header's).
_CONTACT_EXPIRING = re.compile(r"<[^<>]*>;expires=[1-9][0-9]{0,8}")


# Contexts the overload bound does not count: our own SUBSCRIBE, and requests from the
# core to a UE (how long those wait depends on the UE, not on the core's load).
_TO_UE = frozenset(("terminating", "terminating-rr", "terminating-end"))
_NOT_IN_FLIGHT = _TO_UE | {"subscribe", "probe"}
# A UE's own requests other than REGISTER (`_other_request`).
_FROM_UE = frozenset(("request", "request-rr", "request-reg", "request-rr-reg"))
# Contexts a UE's end of registration looks for while they are open (`_open_by_impi`):
# its REGISTERs (a terminated NOTIFY waits for their answers), requests taken to it
# (`_end_to_ue` answers them upstream) and its own requests (their answers still go
# over the set they came over: `_sets_go` holds it).
_PER_UE = _TO_UE | _FROM_UE | {"register-clear", "register-protected"}


def _in_flight(p: _Pending | _Answered) -> bool:
    """Whether a `pending` entry is a UE's request forwarded and not answered yet."""
    return p.final_data is None and p.kind not in _NOT_IN_FLIGHT


def _addr_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# Credentials exactly as DigestCredentials renders them (RFC 2617 §3.2.2 / RFC 3261
# §25.1: scheme SP auth-param *(", " auth-param), quoted values without escapes): such
# a text is its own rendering, so a parameter can be appended to the text itself.
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_VALUE = r"[A-Za-z0-9\-.!%*_+`'~/=]+"
_AUTH_PARAM = rf'{_TOKEN}=(?:"[^"\\]*"|{_TOKEN_VALUE})'
_CANONICAL_CREDENTIALS = re.compile(f"{_TOKEN} {_AUTH_PARAM}(?:, {_AUTH_PARAM})*")
# A challenge's scheme and one of its auth-params (name, value as written) with the
# separator after it: "," and any blanks (DigestCredentials renders it ", "), or the end.
_SCHEME_SP = re.compile(f"{_TOKEN} ")
_PLAIN_ITEM = re.compile(rf'({_TOKEN})=("[^"\\]*"|{_TOKEN_VALUE})(,[ \t]*|\Z)')


def _with_integrity_protected(request: Request, auth: DigestCredentials, protected: bool) -> str:
    """The Authorization value with integrity-protected set (TS 24.229 §5.2.2.1): the
    UE's text with the parameter appended when it has none and is in the form we would
    write, else the credentials re-rendered with it set in place or appended."""
    value = "yes" if protected else "no"
    if auth.param("integrity-protected") is None:
        text = request.get("Authorization")
        if text is not None and _CANONICAL_CREDENTIALS.fullmatch(text):
            return f'{text}, integrity-protected="{value}"'
        if auth.scheme is not None and auth.params:
            # (another spelling: SIPp writes no blank after the commas) the rendering
            # of `auth.with_param(...)`, each param as `AuthParam.__str__` writes it and
            # the new one last, without a copy of the view
            body = ", ".join([f"{n}={quote(v)}" if q else f"{n}={v}" for n, v, q in auth.params])
            return f'{auth.scheme} {body}, integrity-protected="{value}"'
    return str(auth.with_param("integrity-protected", value, quoted=True))


# The keys as the S-CSCF appends them to its challenge: `, ik="…", ck="…"` (or ck first)
# at the end, quoted without escapes.
_KEYS_AT_END = re.compile(r', (?:ik="([^"\\]*)", ck="([^"\\]*)"|ck="([^"\\]*)", ik="([^"\\]*)")\Z')
# A ck or ik param name, in any case, where a param can begin (or inside a quoted value:
# then the text takes the long way all the same)
_KEY_NAME = re.compile(r"(?:^|[ ,])(?:ck|ik)[ \t]*=", re.IGNORECASE)


def _without_keys(text: str) -> tuple[str, str | None, str | None] | None:
    """A challenge without its ck and ik params, and their values: what
    `str(DigestCredentials.parse(text).without("ck", "ik"))`, `.ck` and `.ik` give,
    read off the text (TS 24.229 §5.2.2.1) when its params are each `name=token` or
    `name="..."` without escapes, as the S-CSCF writes them; None for any other form
    (the parser's then). The S-CSCF's own form (the params before the keys already in
    the rendered form, the two keys last) is cut at the keys in one search."""
    m = _KEYS_AT_END.search(text)
    if m is not None:
        head = text[: m.start()]
        if _CANONICAL_CREDENTIALS.fullmatch(head) and _KEY_NAME.search(head) is None:
            if m.group(1) is not None:
                return head, m.group(2), m.group(1)
            return head, m.group(3), m.group(4)
    return _without_keys_by_items(text)


def _without_keys_by_items(text: str) -> tuple[str, str | None, str | None] | None:
    """`_without_keys` param by param (any order, any blanks after the commas)."""
    head = _SCHEME_SP.match(text)
    if head is None:
        return None
    pos = head.end()
    end = len(text)
    kept: list[str] = []
    found: dict[str, str] = {}
    match = _PLAIN_ITEM.match
    while True:
        m = match(text, pos)
        if m is None:
            return None
        name = m.group(1).lower()
        if name == "ck" or name == "ik":
            value = m.group(2)
            found.setdefault(name, value[1:-1] if value[:1] == '"' else value)
        else:
            kept.append(text[m.start(1) : m.end(2)])
        pos = m.end()
        if not m.group(3):  # the last one: at the end of the text
            break
        if pos == end:  # a comma at the end
            return None
    if pos != end:
        return None
    scheme = text[: head.end() - 1]
    stripped = f"{scheme} {', '.join(kept)}" if kept else scheme
    return stripped, found.get("ck"), found.get("ik")


# A To/From tag param at the end of the value: a token (RFC 3261 §19.3) of the
# characters the params' fast path reads as they are (paramchar: no "`").
_TAG_AT_END = re.compile(r";tag=[A-Za-z0-9\-.!%*_+'~]+\Z")


def _to_uri(resp: Response, text: str | None = None) -> str:
    """`resp.to.uri` (SipParseError as it raises), read off the To text (`text`, if
    read already) when it is `<plain URI>` (`plain_name_addr`) with at most a tag after
    it, as registrars write it (a new registration's 200 OK, the 401): no NameAddr and
    Params built for a view dropped with the answer."""
    if text is None:
        text = resp.get("To")
    if text:
        m = _TAG_AT_END.search(text)
        plain = plain_name_addr(text[: m.start()] if m is not None else text)
        if plain is not None:
            return plain.group(1)
    return resp.to.uri


def _names_uri(value: str | None, uri: str) -> bool:
    """Whether a To/From value is `<uri>` (with or without params after it): then its
    URI is `uri` without parsing it (a re-registration's 200 OK names the IMPU the
    registration already holds; NameAddr.parse would give the same text)."""
    return (
        bool(uri)
        and value is not None
        and value.startswith("<")
        and value.startswith(uri, 1)
        and value.startswith(">", 1 + len(uri))
        and ">" not in uri
        and uri == uri.strip()
    )


def _event_package(msg: Request) -> str:
    """The package of the Event header (RFC 6665 §8.2.1), lower case ("" if none)."""
    return (msg.get("Event") or "").split(";", 1)[0].strip().lower()


def _domain_of(uri: str) -> str:
    text = uri.strip().strip("<>")
    if ":" in text:
        text = text.split(":", 1)[1]
    if "@" in text:
        text = text.split("@", 1)[1]
    host = text.split(";", 1)[0].split("?", 1)[0]
    if host.startswith("["):
        return host[1 : host.find("]")].lower()
    return host.split(":", 1)[0].lower()


# ----------------------------------------------------------------------- the core


class PcscfCore:
    """P-CSCF state: pending transactions, registrations, SAs; actions out."""

    def __init__(
        self,
        config: PcscfConfig,
        network: NetworkConfig | None = None,
        *,
        rng: random.Random | None = None,
        port: int | None = None,
        port_c: int | None = None,
        port_s: int | None = None,
        spi_allocator: Any = None,
        max_in_flight: int | None = None,
        dereg_grace: float | None = None,
    ) -> None:
        self.config = config
        # How long a set stays for the retransmissions of the REGISTER whose last
        # answer it carried (0: released with that answer, as over TCP): the argument,
        # else `PcscfConfig.dereg_grace`. An attribute, so a test can shorten it.
        self.dereg_grace = float(config.dereg_grace if dereg_grace is None else dereg_grace)
        # (an attribute, so a test can shorten it)
        self.superseded_drain = SUPERSEDED_DRAIN
        # The overload bound: the argument, else the config's (read defensively: a
        # config without the field gets the default), 0 or less for none.
        if max_in_flight is None:
            max_in_flight = getattr(config, "max_in_flight", DEFAULT_MAX_IN_FLIGHT)
        self.max_in_flight = int(max_in_flight)
        self.max_queue_delay = float(
            getattr(config, "max_queue_delay", DEFAULT_MAX_QUEUE_DELAY) or 0.0
        )
        # UE requests forwarded and not answered yet (what `open_transactions` reports)
        self._in_flight = 0
        # Upstream answer times (forwarded → final), in windows of QUEUE_DELAY_WINDOW:
        # the current window's end and quickest answer, and the last full window's.
        self._delay_window_end = 0.0
        self._delay_min = 0.0
        self._delay_last = 0.0
        # () -> (spi-c, spi-s): the SA table's allocator (unique among live SAs).
        self._spi_allocator = spi_allocator
        self.network = network
        self._rng = rng or random.SystemRandom()
        # Actual bound ports (a config port 0 means: whatever the edge got).
        self.port = port or config.port
        self.port_c = port_c or config.port_c
        self.port_s = port_s or config.port_s
        # Operator order: encryption first, then integrity, as the config lists them.
        preference = tuple(
            (alg, ealg)
            for ealg in config.encryption_algorithms
            for alg in config.integrity_algorithms
        )
        self.policy = SecAgreePolicy(preference=preference, required=config.sec_agree == "required")
        # The key of `_branch_for`: this P-CSCF's name, address and port, not a secret of the
        # process, so that a restarted P-CSCF forwards a UE's retransmission under the
        # branch its predecessor used and the next hop answers it from its transaction
        # (RFC 3261 §17.2.3) instead of taking it for a new REGISTER (a second challenge,
        # the first left to lapse). Two P-CSCFs still differ.
        self._secret = hashlib.blake2s(
            f"{config.name}\x00{config.address}\x00{self.port}".encode(), digest_size=8
        ).digest()
        # Forwarded requests' contexts by our branch, oldest first (they all live
        # TRANSACTION_LIFETIME, so this is their expiry order: `next_deadline` reads the
        # first, `handle_timer` takes them off the front). An OrderedDict, not a dict:
        # a dict keeps the slots of its deleted entries until it resizes, and finding
        # its first entry scans them, so with the contexts of 32 s of registrations
        # (some 38,000 at 600/s) going from the front, every `next_deadline` (once per
        # message) scanned thousands of them; its linked order reaches the first at once.
        self.pending: OrderedDict[str, _Pending | _Answered] = OrderedDict()
        # The open contexts of `pending` of a `_PER_UE` kind, by IMPI then our branch (in
        # `pending`'s order): a terminated reg-event NOTIFY, a de-registration or an
        # expiry reads its UE's, not the whole table (O(n) per NOTIFY at load). An entry
        # goes when its context is answered or leaves `pending` (`_settled`); readers
        # check it against `pending` all the same.
        self._open_by_impi: dict[str, dict[str, _Pending]] = {}
        # the cached final answers of `pending`, compressed `PACK_GROUP` at a time (one
        # deflate run per group: a quarter of the work per answer of packing each alone)
        self._packer = WirePacker()
        # `_Answered` entries of `pending` whose answers wait for a group, oldest first
        self._to_pack: list[_Answered] = []
        # Service-Route sets seen (bounded): registrations share them
        self._routes = SharedTuples(64)
        # Where requests from the core to UEs may come from (`_from_core`): the
        # configured routes and trusted nodes now, each S-CSCF's Service-Route when a
        # 200 OK brings it.
        self._core_sources: set[Address] = set()
        self._core_hosts: set[str] = set()
        self._trusted_routes: set[tuple[str, ...]] = set()
        for route in config.routes:
            for uri in (route.icscf, route.scscf):
                if uri:
                    self._trust(uri)
        for uri in getattr(config, "trusted_nodes", ()):
            self._trust(uri)
        # The instances of each S-CSCF that runs as several, by address: each one's
        # group in the order tried (`_live`); those passed over, until when. The
        # timings are attributes, so a test can shorten them.
        self._siblings: dict[Address, tuple[Address, ...]] = {}
        for group in getattr(config, "scscf_instances", ()):
            addresses = tuple(a for a in map(self._address, group) if a is not None)
            for address in addresses:
                self._siblings[address] = addresses
        self._down: dict[Address, float] = {}
        self.scscf_timeout = float(getattr(config, "scscf_timeout", 8.0))
        self.scscf_down_time = float(getattr(config, "scscf_down_time", 30.0))
        # An instance passed over is asked with an OPTIONS every this many seconds
        # until it answers one, and passed over till then (0: for scscf_down_time);
        # (next probe, branch of the open one or "") of each, by address
        self.scscf_probe_interval = float(getattr(config, "scscf_probe_interval", 5.0))
        self._probing: dict[Address, tuple[float, str]] = {}
        self._probe_cseq = 0
        self.registrations: dict[str, Registration] = {}  # by IMPI
        self.by_spi: dict[int, str] = {}  # inbound SPI -> IMPI
        # What registrations and subscriptions are made of; `track_changes` swaps in
        # subclasses that note which IMPI's record changed (None: nobody asks).
        self.registration_type: type[Registration] = Registration
        self.subscription_type: type[RegEventSubscription] = RegEventSubscription
        self.grace_type: type[_Grace] = _Grace
        self.changed: set[str] | None = None
        # De-registered UEs' sets kept for the de-REGISTER's retransmissions
        # (`DEREGISTER_GRACE`): by heap key, and by each inbound SPI (not in `by_spi`).
        self._grace: dict[str, _Grace] = {}
        self._grace_by_spi: dict[int, _Grace] = {}
        # The sets held after the network ended their registration (`NETWORK_TERMINATED`)
        # by the UE's contact (host, port-s): the UE's own terminated NOTIFY still goes
        # over one when it comes after the REGISTER's answer (`_terminating`).
        self._grace_by_contact: dict[Address, _Grace] = {}
        # reg-event subscriptions (TS 24.229 §5.2.3) by Call-ID, their registration's
        # IMPI in each ("" once it ended); the S-CSCFs' contacts they name, shared
        self.subscriptions: dict[str, RegEventSubscription] = {}
        self._sub_names: dict[str, str] = {}
        self.subscribe_reg_event = config.subscribe_reg_event
        self.drops: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        # IMPI -> Call-ID of its reg-event subscription: whether an IMPI is subscribed
        # is asked on every 200 OK to a REGISTER, a scan of `subscriptions` otherwise.
        self._subscribed: dict[str, str] = {}
        # IMPIs of restored registrations whose subscription is refreshed to learn
        # whether the network ended them while no P-CSCF held them (`adopt`)
        self._audit: set[str] = set()
        # (when, Call-ID) of the detached subscriptions, oldest first (one wait for all):
        # each given up then if its terminated NOTIFY has not come (`_give_up_detached`)
        self._detached: deque[tuple[float, str]] = deque()
        # The texts every forwarded REGISTER carries, built once.
        name = _addr_host(config.name)
        self._via_prefix = f"{name}:{self.port};branch="
        self._own_via = f"SIP/2.0/UDP {self._via_prefix}"
        self._path_text = f"<sip:term@{name}:{self.port};lr>"
        # Record-Route (RFC 3261 §16.6 step 4) as the core sees it, and as the UE sees it:
        # the same URI with the protected server port, so the UE's in-dialog requests
        # reach us over its SAs (TS 24.229 §5.2.6.3 / §5.2.6.4).
        self._rr_core = f"<sip:{name}:{self.port};lr>"
        self._rr_ue = f"<sip:{name}:{self.port_s};lr>"
        # Our Via towards a UE: the protected client port the request leaves from, so
        # the response comes back over the same SA pair (FACTS §1.3).
        self._ue_via_prefix = f"SIP/2.0/UDP {_addr_host(config.address)}:{self.port_c};branch="
        # What names us in a Route: our host name or address, with no port or one of ours.
        self._own_hosts = frozenset(
            h.strip("[]").lower() for h in (config.name, config.address) if h
        )
        self._own_ports = frozenset((self.port, self.port_c, self.port_s))
        self._core_host = config.name.strip("[]").lower()
        # (host, port) of a served UE's contact -> IMPI: the UE's (IP, protected server
        # port) while it has an established SA set, or the source of a registration
        # without sec-agree. Requests from the core to a UE are routed by it (their
        # Request-URI is the UE's contact). Entries are checked against the
        # registration on use, set when a set is established, gone with the set.
        self._by_contact: dict[Address, str] = {}
        # Requests from the core taken to a UE and not answered yet (pending_to_ue).
        self._to_ue_open = 0
        self._visited_text = f'"{config.visited_network_id}"'
        # Our reg-event SUBSCRIBE's From / P-Asserted-Identity and Contact, and the
        # address of a Service-Route's first entry (`_subscribe_reg`).
        self._own_uri = f"<sip:{name}:{self.port}>"
        self._sub_contact = f"<sip:{_addr_host(config.address)}:{self.port}>"
        self._sub_targets: dict[tuple[str, ...], Address | None] = {}
        # Request-URI -> next hop: the routes and the host table are fixed for the life
        # of the core, and a P-CSCF sees a handful of registrar URIs.
        self._routes_by_uri: dict[str, Address | None] = {}
        # Deadline heap (deadline, key): one entry per registration (keyed by IMPI) for
        # its earliest deadline (temporary set, expiry, release), and one per set in
        # its de-registration grace (`_Grace.key`). Entries are pushed wherever a
        # deadline is set and checked against the live state when they surface (lazy
        # deletion), so per-message timer work is O(log n) in the registered
        # population. Forwarded requests' contexts need no entries: they all live
        # TRANSACTION_LIFETIME, so `pending` (a dict, insertion ordered) is in expiry
        # order itself.
        self._timers: list[tuple[float, str]] = []
        # Timer E (`RETRANSMIT_T1`): the contexts sent on over UDP, in due order for the
        # first retransmission (all at T1 after their creation, a deque), and a heap
        # (due, seq, branch, context, interval) for the later ones (intervals differ).
        # Entries are checked against `pending` when they surface: a context answered
        # (or gone) is skipped, so an answer costs nothing here.
        self._retransmit_first: deque[tuple[float, str, _Pending]] = deque()
        self._retransmit: list[tuple[float, int, str, _Pending, float]] = []
        self._retransmit_seq = 0

    # ------------------------------------------------------------------ helpers

    def _add_pending(self, branch: str, pending: _Pending) -> None:
        # a replaced context moves to the end: the dict stays in expiry order
        replaced = self.pending.pop(branch, None)
        if replaced is not None:
            if _in_flight(replaced):
                self._in_flight -= 1
            self._unwait(replaced)
            self._settled(branch, replaced)
        self.pending[branch] = pending
        if _in_flight(pending):
            self._in_flight += 1
        sent = pending.forward
        if sent is not None and sent.transport == "udp" and pending.final_data is None:
            # in creation order, so in due order: Timer E's first firing (T1)
            self._retransmit_first.append((pending.created + RETRANSMIT_T1, branch, pending))
        if pending.kind in _PER_UE and pending.impi and pending.final_data is None:
            by_branch = self._open_by_impi.get(pending.impi)
            if by_branch is None:
                self._open_by_impi[pending.impi] = {branch: pending}
            else:
                by_branch[branch] = pending

    def _settled(self, branch: str, entry: _Pending | _Answered) -> None:
        """The context `entry` at `branch` is answered or leaves `pending`: out of its
        UE's open contexts."""
        by_branch = self._open_by_impi.get(entry.impi) if entry.impi else None
        if by_branch is not None and by_branch.get(branch) is entry:
            del by_branch[branch]
            if not by_branch:
                del self._open_by_impi[entry.impi]

    def _open_of(self, impi: str) -> list[tuple[str, _Pending]]:
        """The open contexts of `impi`'s UE (`_open_by_impi`), oldest first."""
        by_branch = self._open_by_impi.get(impi)
        if not by_branch:
            return []
        pending = self.pending
        return [
            (b, p) for b, p in by_branch.items() if p.final_data is None and pending.get(b) is p
        ]

    def _answered(self, created: float, data: bytes, spi: int | None) -> _Answered:
        """The `pending` entry of a context answered with `data`: its answer waits in
        `_to_pack` until `PACK_GROUP` of them are packed together."""
        answered = _Answered(created, data, spi)
        self._to_pack = self._packer.pack_later(self._to_pack, answered, "final_data")
        return answered

    def _unwait(self, entry: _Pending | _Answered) -> None:
        """`entry` leaves `pending`: its answer, if still waiting for a group, leaves
        `_to_pack` too (a quiet P-CSCF may never fill one: nothing stays past Timer F)."""
        if type(entry) is _Answered and type(entry.final_data) is not PackedItem:
            to_pack = self._to_pack
            for i, waiting in enumerate(to_pack):
                if waiting is entry:
                    del to_pack[i]
                    break

    def _holder(self, key: str) -> Registration | _Grace | None:
        """What a heap key names: a registration (IMPI) or a set in grace (NUL first)."""
        if key[:1] == "\x00":
            return self._grace.get(key)
        return self.registrations.get(key)

    def _watch(self, deadline: float, key: str) -> None:
        """A deadline of registration (or set in grace) `key` was set. One heap entry
        per registration, for its earliest deadline: a later one (the expiry after the
        temporary set's lifetime) is pushed when that entry surfaces, not now."""
        reg = self._holder(key)
        if reg is None or (reg.scheduled is not None and reg.scheduled <= deadline):
            return
        reg.scheduled = deadline
        heapq.heappush(self._timers, (deadline, key))
        if len(self._timers) > 256 + 2 * (len(self.registrations) + len(self._grace)):
            # Entries whose registration went or was rescheduled earlier: compact so
            # the heap stays proportional to the live registrations.
            self._timers = [t for t in self._timers if self._entry_live(t)]
            heapq.heapify(self._timers)

    def _entry_live(self, entry: tuple[float, str]) -> bool:
        reg = self._holder(entry[1])
        return reg is not None and reg.scheduled == entry[0]

    def _due(self, reg: Registration) -> tuple[float, str] | None:
        """The registration's earliest live deadline and its kind (None: none)."""
        due = None
        sub = self._refresh_due(reg)
        if sub is not None:
            due = (sub.refresh_at, "subscription")
        if reg.temporary is not None and (due is None or reg.temporary_expires < due[0]):
            due = (reg.temporary_expires, "temporary")
        if reg.state is RegState.REGISTERED and reg.expires_at:
            expiry = reg.expires_at + 30.0
            if due is None or expiry < due[0]:
                due = (expiry, "expiry")
        if reg.release_at and (due is None or reg.release_at < due[0]):
            due = (reg.release_at, "release")
        if reg.previous is not None and (due is None or reg.previous_until < due[0]):
            due = (reg.previous_until, "previous")
        return due

    def _drop(self, reason: str, detail: str = "") -> list[Action]:
        self.drops[reason] += 1
        if log.isEnabledFor(logging.INFO):
            log.info("pcscf: dropped: %s %s", reason, detail)
        return [DropInput(reason)]

    def _icid(self) -> str:
        raw = self._rng.getrandbits(160).to_bytes(20, "big")
        # (what base64.b64encode gives, without its wrapper's checks)
        text = binascii.b2a_base64(raw, newline=False).decode("ascii")
        return f"{text}{self._rng.randrange(10**9):09d}"

    def _branch_for(self, ue_branch: str, salt: str) -> str:
        # Same UE branch → same upstream branch, so a retransmission maps to one context
        # (RFC 3261 §16.11 stateless branch construction).
        digest = hashlib.blake2s(
            self._secret + ue_branch.encode() + b"\x00" + salt.encode(), digest_size=10
        ).hexdigest()
        return f"z9hG4bK{digest}"

    def _new_spi(self) -> int:
        while True:
            spi = self._rng.randrange(256, 2**32)
            if spi not in self.by_spi and spi not in self._grace_by_spi:
                return spi

    def route(self, request_uri: str) -> Address | None:
        """Next hop for a REGISTER to `request_uri` (seed steps 2–3)."""
        cache = self._routes_by_uri
        try:
            return cache[request_uri]
        except KeyError:
            pass
        target = self._route(request_uri)
        if len(cache) >= 64:
            cache.clear()  # many distinct URIs (odd clients): bounded, not useful
        cache[request_uri] = target
        return target

    def _route(self, request_uri: str) -> Address | None:
        # Request-URI host by domain suffix, longest route domain first (the matching
        # rule lives in the config, so `imsaka.config` and the core agree).
        chosen = self.config.route_for(_domain_of(request_uri))
        if chosen is None:
            return None
        target = chosen.scscf if (self.config.home and chosen.scscf) else chosen.icscf
        target = target or chosen.scscf
        if target is None:
            return None
        return self._address(target)

    def _address(self, uri: str) -> Address | None:
        """(IP, port) of a `sip:` URI or host[:port], its name resolved by the network's
        host table; None if it does not parse or resolve."""
        try:
            host, port = split_hostport(uri)
        except ValueError:
            return None
        if self.network is not None:
            try:
                host = self.network.resolve(host)
            except ValueError:
                return None
        return host, port

    def _trust(self, uri: str) -> None:
        """Requests to UEs are taken from the node at `uri` (a route or Service-Route)."""
        address = self._address(uri)
        if address is not None:
            self._core_sources.add(address)
            self._core_hosts.add(address[0])

    def _trust_route(self, service_route: tuple[str, ...]) -> None:
        """The S-CSCF a Service-Route names first is a core node from now on."""
        if not service_route or service_route in self._trusted_routes:
            return
        if len(self._trusted_routes) >= 256:
            # Service-Routes that differ per user: read them again (the addresses, a
            # few S-CSCFs, stay)
            self._trusted_routes.clear()
        self._trusted_routes.add(service_route)
        try:
            self._trust(NameAddr.parse(service_route[0]).uri)
        except SipParseError:
            pass

    def subscription_of(self, impi: str) -> RegEventSubscription | None:
        """The reg-event subscription made for `impi`'s registration, if any."""
        call_id = self._subscribed.get(impi)
        return None if call_id is None else self.subscriptions.get(call_id)

    def adopt(
        self,
        reg: Registration,
        sub: RegEventSubscription | None,
        now: float,
        audit: bool = False,
    ) -> list[Action]:
        """Take back registration `reg` (and its reg-event subscription `sub`) as a
        P-CSCF before this one held it (`imsaka.cscf.pcscf_state`): indexed by its
        inbound SPIs and contact as the 401 and 200 OK that made it had, its
        Service-Route trusted, its deadlines watched. The edge restores its SA sets.
        A registered one that comes without a subscription (its SUBSCRIBE was still
        unanswered, or the grant ran out meanwhile) subscribes anew now: the returned
        SUBSCRIBE. With `audit` (taken back after a crash, or from a stop long past)
        its subscription is refreshed soon, paced (`AUDIT_BATCH`): a registration the
        network ended meanwhile goes when the answer or its NOTIFY says so
        (`_subscribe_answered`, `_reg_notify`)."""
        impi = reg.impi
        if not isinstance(reg, self.registration_type) or (
            sub is not None and not isinstance(sub, self.subscription_type)
        ):
            # (one made before `track_changes` would change unseen)
            raise TypeError("adopt: not of this core's registration_type/subscription_type")
        self.registrations[impi] = reg
        if self.changed is not None:
            self.changed.add(impi)
        reg.service_route = self._routes.share(reg.service_route)
        self._trust_route(reg.service_route)
        for sa in (reg.sa, reg.temporary):
            if sa is not None:
                for spi in sa.inbound_spis:
                    self.by_spi[spi] = impi
        if reg.sa is not None:
            self._by_contact[(reg.sa.ue_host, reg.sa.port_us)] = impi
        if reg.clear_source is not None:
            self._by_contact[reg.clear_source] = impi
        if sub is not None:
            self.subscriptions[sub.call_id] = sub
            self._subscribed[impi] = sub.call_id
            if audit and sub.confirmed and reg.state is RegState.REGISTERED:
                # (one whose refresh was under way at the crash has no refresh time:
                # it gets this one)
                at = now + (len(self._audit) // AUDIT_BATCH) * AUDIT_PAUSE
                sub.refresh_at = min(sub.refresh_at, at) if sub.refresh_at else at
                self._audit.add(impi)
        if reg.temporary is not None and not reg.answered_cseq and reg.challenged_cseq:
            # Written before its challenge response passed, if one did: that response
            # carried the next CSeq (RFC 3261 §10.2) and any later use of the set shows
            # the 200 to it went out, unwritten (`_register_protected`, `_other_request`).
            reg.answered_cseq = reg.challenged_cseq + 1
        reg.scheduled = None
        due = self._due(reg)
        if due is not None:
            self._watch(due[0], impi)
        if sub is not None:
            return []
        made = self._resubscribe(reg, now)
        if audit and made:
            self._audit.add(impi)  # (its answer tells as a refresh's would)
        return made

    def track_changes(self) -> set[str]:
        """From now on, the IMPI of every registration whose record
        (`pcscf_state.record_of`) may have changed goes into the returned set: any
        assignment to a registration or reg-event subscription made from here on
        (`tracking.tracked`), and a registration or subscription this core drops; and
        likewise the key of every set held for a REGISTER's retransmissions
        (`held_set`) made, changed or released. A state store's pass takes them out
        (`pcscf_keep`). Called before the core holds any registration."""
        if self.registrations:
            raise RuntimeError("track_changes: the core already holds registrations")
        if self.changed is None:
            self.changed = set()
            # (`scheduled` is the deadline heap's bookkeeping, not part of a record)
            self.registration_type = tracked(Registration, self.changed, ignore=("scheduled",))
            self.subscription_type = tracked(RegEventSubscription, self.changed)
            self.grace_type = tracked(_Grace, self.changed, key="key", ignore=("scheduled",))
        return self.changed

    def held_sets(self) -> list[tuple[PcscfSa, str, float, str, bytes | None]]:
        """The sets in their grace (`_hold`): (set, our branch of the REGISTER they
        answer, release time, reason, that answer's octets or None)."""
        return [self._held(g) for g in self._grace.values()]

    def held_set(self, key: str) -> tuple[PcscfSa, str, float, str, bytes | None] | None:
        """One set of `held_sets` by its key (a NUL, then our inbound spi-s), or None."""
        g = self._grace.get(key)
        return None if g is None else self._held(g)

    def _held(self, g: _Grace) -> tuple[PcscfSa, str, float, str, bytes | None]:
        final = None if g.final_data is None else self._packer.unpack(g.final_data)
        return (g.sa, g.branch, g.release_at, g.reason, final)

    def held_keys(self) -> list[str]:
        """The keys of `held_sets`, as `held_set` takes them."""
        return list(self._grace)

    def record_key(self, spi: int) -> str | None:
        """Whose record an SA set with our inbound `spi` belongs to: the IMPI of its
        registration, the key of its hold (`held_set`), or None."""
        impi = self.by_spi.get(spi)
        if impi is not None:
            return impi
        grace = self._grace_by_spi.get(spi)
        return None if grace is None else grace.key

    def adopt_held(
        self, sa: PcscfSa, branch: str, release_at: float, reason: str, final: bytes | None
    ) -> list[Action]:
        """Take back a set in its grace (`held_sets` of a P-CSCF before this one): it
        answers its REGISTER's retransmission with `final` until `release_at`. The edge
        restores the set; the returned hold puts it out of the reply index."""
        grace = self.grace_type(sa, branch, release_at, reason)
        grace.final_data = None if final is None else self._packer.pack(final)
        self._grace[grace.key] = grace
        for spi in sa.inbound_spis:
            self._grace_by_spi[spi] = grace
        if reason == NETWORK_TERMINATED:
            self._grace_by_contact[(sa.ue_host, sa.port_us)] = grace
        self._watch(release_at, grace.key)
        return [HoldSecurityAssociations(sa, release_at)]

    def _from_core(self, arrival: Arrival) -> bool:
        """Whether a request came from a node of the core this P-CSCF routes to: the
        address of a configured route or of a Service-Route it was given. Over UDP the
        node sends from its listening port; over TCP from any port of its host."""
        if arrival.source in self._core_sources:
            return True
        return arrival.transport != "udp" and arrival.source[0] in self._core_hosts

    def _via(self, branch: str, transport: str) -> str:
        return f"SIP/2.0/{transport.upper()} {self._via_prefix}{branch}"

    def _reply(
        self,
        request: Request,
        arrival: Arrival,
        status: int,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Reply:
        resp = make_response(
            request,
            status,
            reason,
            to_tag=self._rng.getrandbits(32).to_bytes(4, "big").hex(),
            headers=headers,
        )
        return self._to_ue(resp, arrival)

    def _to_ue(self, resp: Response, arrival: Arrival) -> Reply:
        """Responses go back the way the request came (over its SA: FACTS §1.3); never
        in the clear to a request that came protected: when its set is gone, over no
        SA (SPI 0, reserved by RFC 4303 §2.1: the edge finds no SA and sends nothing)."""
        spi = None
        if arrival.spi is not None:
            sa = self._set_of(arrival.spi)
            if sa is not None:
                spi = sa.spi_uc if arrival.spi == sa.spi_ps else sa.spi_us
                return Reply(resp, arrival.source, arrival.transport, spi, sa.spi_ps)
            self.drops["reply-over-removed-sa"] += 1
            spi = 0
        return Reply(resp, arrival.source, arrival.transport, spi)

    # ------------------------------------------------------------------ requests

    def receive_request(self, request: Request, arrival: Arrival, now: float) -> list[Action]:
        """A request from a UE (clear at the unprotected port, or decrypted off an SA)."""
        try:
            vias = request.via
            top_branch = vias[0].branch if vias else None
            if top_branch is None:
                return [self._reply(request, arrival, 400, "Missing Via branch")]
            mf = request.max_forwards
        except SipParseError as exc:
            return [
                self._reply(
                    request, arrival, 400, exc.reason if hasattr(exc, "reason") else "Bad Request"
                )
            ]
        if mf is not None and mf <= 0:
            return [self._reply(request, arrival, 483)]
        ue_branch = top_branch or ""
        # Retransmission of a request we already forwarded: absorbed while its answer
        # is not in (our Timer E sends it on again), else answered with that answer.
        branch = self._branch_for(
            ue_branch, request.method + (str(arrival.spi) if arrival.spi else "")
        )
        if arrival.spi is not None and self._grace_by_spi:
            grace = self._grace_by_spi.get(arrival.spi)
            # (a retransmission of a request we hold a context for is handled below,
            # as over any set: absorbed, or answered from the context)
            if grace is not None and (branch == grace.branch or branch not in self.pending):
                return self._over_grace_set(request, arrival, branch, grace)
        pending = self.pending.get(branch)
        if pending is not None and pending.final_data is None and pending.forward is not None:
            # In flight: absorbed (RFC 3261 §17.2.2, Trying). Over UDP our own client
            # transaction sends the request again (`RETRANSMIT_T1`); over TCP nothing
            # is lost.
            self.counters["retransmission-absorbed"] += 1
            return []
        if pending is not None and pending.final_data is not None:
            self.counters["retransmission-answered"] += 1
            final = parse_message(self._packer.unpack(pending.final_data))
            reply = self._to_ue(final, arrival)  # type: ignore[arg-type]
            if arrival.spi is not None and not reply.spi:
                # Never in the clear to a request that came protected.
                reply = Reply(reply.message, reply.destination, reply.transport, pending.final_spi)
            return [reply]
        if request.method == "REGISTER":
            return self._register(request, arrival, branch, ue_branch, mf, now)
        if request.method == "OPTIONS" and "@" not in request.uri and self._names_us(request.uri):
            # Asked of the P-CSCF itself (a keep-alive, RFC 3261 §11.2), by a UE
            # registered or not: no user's service is reached, so none is refused.
            self.counters["options-answered"] += 1
            return [self._reply(request, arrival, 200, headers=list(_ALLOW))]
        if request.method == "NOTIFY" and arrival.spi is None:
            call_id = request.get("Call-ID")
            if call_id in self.subscriptions:
                return self._reg_notify(request, arrival, now, call_id)
        if request.method == "NOTIFY" and arrival.spi is None and self._names_us(request.uri):
            # To us, for a subscription we no longer hold: typically the S-CSCF's
            # retransmission of the terminating NOTIFY we answered and acted on (our 200
            # was late). 481 ends its transaction now (RFC 6665 §4.1.3), where a drop
            # left it retransmitting until Timer F.
            self.counters["notify-unknown-subscription"] += 1
            return [self._reply(request, arrival, 481, "Subscription does not exist")]
        if request.method == "ACK":
            return self._drop("stray-ack")
        if arrival.spi is None:
            # From the core to a served UE? (A UE's own requests come over its SAs, or,
            # without sec-agree, from its registered source.)
            actions = self._terminating(request, arrival, branch, mf, now)
            if actions is not None:
                return actions
        return self._other_request(request, arrival, branch, now)

    def _over_grace_set(
        self, request: Request, arrival: Arrival, branch: str, grace: _Grace
    ) -> list[Action]:
        """A request over a set in its grace: the retransmission of the REGISTER whose
        last answer it carried (the de-REGISTER's 200 OK, a failed challenge response's
        4xx) gets that answer again over the same SA (its first copy was lost); anything
        else is dropped, as over an SA the P-CSCF does not know (a new registration
        starts in the clear)."""
        if branch != grace.branch or grace.final_data is None:
            return self._drop("request-over-deregistered-sa", grace.impi)
        self.counters["retransmission-answered"] += 1
        self.counters["answered-again-in-grace"] += 1
        if grace.reason == DEREGISTERED:
            self.counters["deregister-answered-again-in-grace"] += 1
        final = parse_message(self._packer.unpack(grace.final_data))
        sa = grace.sa
        spi = sa.spi_uc if arrival.spi == sa.spi_ps else sa.spi_us
        return [Reply(final, arrival.source, arrival.transport, spi, sa.spi_ps)]

    def _register(
        self,
        request: Request,
        arrival: Arrival,
        branch: str,
        ue_branch: str,
        max_forwards: int | None,
        now: float,
    ) -> list[Action]:
        try:
            auth = request.authorization
        except SipParseError:
            return [self._reply(request, arrival, 400, "Bad Authorization")]
        impi = auth.username if auth is not None and auth.username else ""
        if arrival.spi is None:
            return self._register_clear(
                request, arrival, branch, ue_branch, max_forwards, auth, impi, now
            )
        return self._register_protected(
            request, arrival, branch, ue_branch, max_forwards, auth, impi, now
        )

    def _register_clear(
        self, request, arrival, branch, ue_branch, max_forwards, auth, impi, now
    ) -> list[Action]:
        # Which of the headers read below are there, in one pass over the lines: a
        # UE without sec-agree (SIPp) sends none but Supported, each absent one a scan.
        present = frozenset(request.header_keys())
        security_client = request.get_all("Security-Client") if "security-client" in present else []
        # A challenge response; not one carrying AUTS: after a synchronisation failure
        # the UE sets up no SAs and answers in the clear (TS 24.229 §5.1.1.5.3).
        has_response = auth is not None and bool(auth.response) and not auth.auts
        reg = self.registrations.get(impi) if impi else None
        # Seed step 6: a challenge response (or a Security-Verify) in the clear where
        # sec-agree applies is dropped: it had to come over the temporary SAs.
        has_verify = "security-verify" in present
        if security_client or has_verify:
            if has_response or has_verify:
                return self._drop("clear-register-where-protection-due", impi)
        elif reg is not None and (reg.temporary is not None or reg.sa is not None) and has_response:
            return self._drop("clear-register-where-protection-due", impi)
        if (
            0 < self.max_in_flight <= self._in_flight
            or 0 < self.max_queue_delay < self.queue_delay(now)
        ) and self._initial(request, arrival, branch, auth, reg):
            return [self._overloaded(request, arrival)]
        # The offers, parsed once for the decision and the 401 (a header that does not
        # parse is left to the decision, which answers it in its own order).
        parsed: list[SecurityMechanism] | None = None
        if security_client:
            try:
                parsed = parse_security_header(security_client)
            except SecAgreeParseError:
                parsed = None
        # Read once: the decision and the forwarded copy both use them.
        require = request.get_all("Require") if "require" in present else []
        proxy_require = request.get_all("Proxy-Require") if "proxy-require" in present else []
        # RFC 3329 §2.3.1 under policy "required" (FACTS §3.3).
        decision = sec_agree_decision(
            require=require,
            proxy_require=proxy_require,
            # (read by the decision only under policy "required")
            supported=(
                request.get_all("Supported")
                if "supported" in present and self.policy.required
                else []
            ),
            security_client=parsed or security_client,
            policy=self.policy,
        )
        if not decision.proceed:
            self.counters[f"answered-{decision.status}"] += 1
            headers = answer_headers(self.policy) if decision.status in (421, 494) else None
            return [self._reply(request, arrival, decision.status, decision.reason, headers)]
        if self.policy.required and auth is None:
            # IMS AKA binds the SAs to the IMPI of the Authorization (TS 33.203 §7.2).
            self.counters["answered-494"] += 1
            return [
                self._reply(
                    request,
                    arrival,
                    494,
                    "Security Agreement Required",
                    answer_headers(self.policy),
                )
            ]
        offers: list[SecurityMechanism] = []
        if parsed is not None:
            offers = parsed
        elif security_client:
            try:
                offers = parse_security_header(security_client)
            except SecAgreeParseError as exc:
                return [self._reply(request, arrival, 400, f"Bad Security-Client ({exc.reason})")]
        target = self.route(request.uri)
        if target is None:
            return [self._reply(request, arrival, 404, "No route to the home network")]
        if self._down:
            target = self._live(target, now)
        fwd = self._prepare_upstream(
            request, branch, arrival, False, max_forwards, auth, require, proxy_require, present
        )
        if fwd is None:
            return [self._reply(request, arrival, 400, "Bad Request")]
        contact_zero = self._expires_zero(request)
        forward = Forward(fwd, target, "udp")
        self._add_pending(
            branch,
            _Pending(
                arrival=arrival,
                ue_branch=ue_branch,
                kind="register-clear",
                impi=impi,
                created=now,
                security_client=offers,
                expires_zero=contact_zero,
                security_client_text=tuple(security_client),
                forward=forward,
            ),
        )
        return [forward]

    def _initial(self, request, arrival, branch, auth, reg) -> bool:
        """Whether a REGISTER in the clear starts new work: not the retransmission of
        one in flight, not the AUTS answer of an AKA run under way (TS 24.229
        §5.1.1.5.3), not the challenge response of a UE without sec-agree (a non-empty
        `response`: its 401 was work done; a UE with sec-agree sends it over the
        temporary SAs), not the refresh of a registration without sec-agree."""
        if branch in self.pending or (auth is not None and (auth.auts or auth.response)):
            return False
        return not (
            reg is not None
            and reg.state is RegState.REGISTERED
            and reg.clear_source == arrival.source
        )

    def _note_answer_time(self, seconds: float, now: float) -> None:
        """One forwarded request's final answer came after `seconds`."""
        if now >= self._delay_window_end:
            # the window that ended is the measure if it ended within one window of now
            recent = now < self._delay_window_end + QUEUE_DELAY_WINDOW
            self._delay_last = self._delay_min if recent else 0.0
            self._delay_min = seconds
            self._delay_window_end = now + QUEUE_DELAY_WINDOW
        elif seconds < self._delay_min:
            self._delay_min = seconds

    def queue_delay(self, now: float) -> float:
        """The standing queue upstream: the quickest answer time of the last full window
        that ended within a window of `now` (0: none measured)."""
        if now < self._delay_window_end:
            return self._delay_last
        if now < self._delay_window_end + QUEUE_DELAY_WINDOW:
            return self._delay_min
        return 0.0

    def _overloaded(self, request: Request, arrival: Arrival) -> Reply:
        """503 with Retry-After to a new initial REGISTER while `max_in_flight` requests
        are forwarded and unanswered, or the core's answers queue past `max_queue_delay`
        (RFC 3261 §21.5.4): not forwarded, so the work in flight (AKA runs under way,
        re-registrations over SAs) is served first."""
        self.counters["overload_rejected"] += 1
        retry = OVERLOAD_RETRY_AFTER + self._rng.randrange(OVERLOAD_RETRY_AFTER + 1)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("pcscf: overload: 503 to %s:%d", *arrival.source)
        return self._reply(
            request, arrival, 503, "Service Unavailable", [("Retry-After", str(retry))]
        )

    def _register_protected(
        self, request, arrival, branch, ue_branch, max_forwards, auth, impi, now
    ) -> list[Action]:
        owner = self.by_spi.get(arrival.spi)  # type: ignore[arg-type]
        reg = self.registrations.get(owner) if owner else None
        if reg is None:
            return self._drop("protected-register-without-registration")
        if impi and impi != reg.impi:
            # Another IMPI over this UE's SAs: not allowed (TS 33.203 §7.2).
            return [
                self._reply(request, arrival, 403, "IMPI does not match the security association")
            ]
        on_temporary = reg.temporary is not None and arrival.spi in reg.temporary.inbound_spis
        established: Sequence[Action] = ()
        if on_temporary:
            cseq = request.cseq.seq
            if reg.answered_cseq and cseq > reg.answered_cseq:
                # The UE took the 200 to its challenge response and the set as
                # established: this is its next REGISTER (a refresh with new offers,
                # a de-REGISTER), not a second try at that response.
                established = self._establish_unseen(reg, now)
                on_temporary = False
        sent_server = reg.pending_server if on_temporary else reg.security_server
        sc = request.get_all("Security-Client")
        try:
            check_security_verify(sent_server, request.get_all("Security-Verify") or None)
            if on_temporary:
                check_security_client_unchanged(reg.security_client, sc or None)
                reg.answered_cseq = cseq
        except DowngradeError as exc:
            self.counters["downgrade-refused"] += 1
            log.warning("pcscf: %s: downgrade attempt refused: %s", reg.impi, exc)
            reply = self._reply(
                request, arrival, 494, "Security Agreement Required", answer_headers(self.policy)
            )
            actions: list[Action] = [*established, reply]
            temporary = reg.temporary
            if on_temporary and temporary is not None:
                # The 494 is the last message due over the temporary set: over UDP it is
                # held for that REGISTER's retransmissions (the 494 again), as the set of
                # a failed challenge response is; then the set goes.
                reg.temporary = None
                if arrival.transport == "udp" and self.dereg_grace > 0:
                    final = self._packer.pack(reply.message.to_bytes())
                    actions.append(self._hold(reg, temporary, branch, now, DOWNGRADE, final))
                else:
                    actions.append(self._release(reg, temporary, DOWNGRADE))
                if reg.sa is None:
                    self._forget(reg, now)
            return actions
        # A re-REGISTER's offers for the next SA set matter only if it is challenged: kept
        # as text here, parsed by `_on_401` (most re-registrations are answered 200). A
        # challenge response's too: the registrar may answer it with a new challenge.
        offer_text: tuple[str, ...] = tuple(sc) if sc else ()
        target = self.route(request.uri)
        if target is None:
            return [self._reply(request, arrival, 404, "No route to the home network")]
        if self._down:
            target = self._live(target, now)
        fwd = self._prepare_upstream(request, branch, arrival, True, max_forwards, auth)
        if fwd is None:
            return [self._reply(request, arrival, 400, "Bad Request")]
        forward = Forward(fwd, target, "udp")
        self._add_pending(
            branch,
            _Pending(
                arrival=arrival,
                ue_branch=ue_branch,
                kind="register-protected",
                impi=reg.impi,
                created=now,
                expires_zero=self._expires_zero(request),
                security_client_text=offer_text,
                forward=forward,
            ),
        )
        if established:
            return [*established, forward]
        return [forward]

    def _establish_unseen(self, reg: Registration, now: float) -> list[Action]:
        """The temporary set carried the UE's next REGISTER, or another request, after
        its challenge response: the 200 to that response went to the UE (through a
        P-CSCF that crashed before its store pass wrote the change), so the set is made
        the established one as that 200 would have made it. Until the answer to this REGISTER says otherwise the
        registration lasts what the set was granted (a refresh's 200 sets both)."""
        self.counters["established-by-later-register"] += 1
        reg.state = RegState.REGISTERED
        reg.expires_at = max(reg.expires_at, reg.temporary_expires)
        self._watch(reg.expires_at + 30.0, reg.impi)
        return self._promote(reg, now, reg.expires_at - now + 30.0)

    @staticmethod
    def _expires_zero(request: Request) -> bool:
        """Whether the REGISTER removes its bindings (all contacts expire 0, or `*`)."""
        values = request.get_all("Contact")
        if values and _CONTACT_EXPIRING.fullmatch(values[0]):
            # A first contact `<URI>;expires=N`, N not 0: not a removal, whether the
            # contacts parse (the answer below when they do) or not (False then too).
            return False
        try:
            contacts = request.contacts
            expires = request.expires
        except SipParseError:
            return False
        if not contacts:
            return False
        for c in contacts:
            if c.star:
                return True
            e = c.expires if c.expires is not None else expires
            if e != 0:
                return False
        return True

    def _prepare_upstream(
        self,
        request: Request,
        branch: str,
        arrival: Arrival,
        protected: bool,
        max_forwards: int | None,
        auth: DigestCredentials | None,
        require: list[str] | None = None,
        proxy_require: list[str] | None = None,
        present: frozenset[str] | None = None,
    ) -> Request | None:
        """Packet 1 → 2 (and 8 → 9): the P-CSCF's changes to a REGISTER. `max_forwards`,
        `auth` (and Require / Proxy-Require, and the keys of the headers `present`, when
        given) are the request's, as read already; the headers this replaces go in one
        pass (none when `present` shows none of them: a UE without sec-agree), the new
        ones are added."""
        fwd = request.copy()
        # RFC 3581: the UE's source address, so responses find it behind a NAT.
        try:
            top = fwd.via[0]
        except SipParseError:
            return None
        src_host = arrival.source[0]
        rport_asked = top.rport is True
        if rport_asked or top.host.strip("[]") != src_host:
            top = top.with_param("received", src_host)
            if rport_asked:
                top = top.with_param("rport", str(arrival.source[1]))
            # in place, remembered by its text: the response brings it back under ours
            # (`_top_branch` checks it parses) and finds it parsed
            fwd.replace_top_via(top)
        fwd.add("Via", f"SIP/2.0/UDP {self._via_prefix}{branch}", first=True)
        fwd.set("Max-Forwards", str((max_forwards if max_forwards is not None else 70) - 1))
        # integrity-protected, overwriting whatever the UE put there (FACTS §3.1).
        if auth is not None:
            fwd.set("Authorization", _with_integrity_protected(request, auth, protected))
        # Path and Require: path (RFC 3327; TS 24.228 packet 2); no sec-agree tags,
        # Security-Client or -Verify upstream (TS 24.228 R1-1c). The replaced and the
        # removed headers go first, so that the new lines follow the UE's Path lines (if
        # any), in this order.
        require = strip_sec_agree(request.get_all("Require") if require is None else require)
        proxy_require = strip_sec_agree(
            request.get_all("Proxy-Require") if proxy_require is None else proxy_require
        )
        if present is None or not present.isdisjoint(_REPLACED_UPSTREAM):
            fwd.remove(*_REPLACED_UPSTREAM)
        if "path" not in [t.lower() for t in require]:
            require.append("path")
        added = [("Path", self._path_text), ("Require", ", ".join(require))]
        if proxy_require:
            added.append(("Proxy-Require", ", ".join(proxy_require)))
        added.append(("P-Visited-Network-ID", self._visited_text))
        added.append(("P-Charging-Vector", f'icid-value="{self._icid()}"'))
        # Where TS 24.228 packet 2 shows them: after Via / Max-Forwards /
        # P-Access-Network-Info, before From (order is cosmetic in SIP but keeps traces
        # comparable with the specification's flows); one pass, the UE's lines as they are.
        fwd.add_after(added, _ANCHORS)
        return fwd

    # ------------------------------------------------------------------ non-REGISTER

    def _other_request(
        self, request: Request, arrival: Arrival, branch: str, now: float
    ) -> list[Action]:
        """Requests after registration: only over the UE's SAs (or from the registered
        clear contact of a sec-agree-less UE); P-Preferred-Identity → P-Asserted-Identity."""
        reg: Registration | None = None
        established: Sequence[Action] = ()
        if arrival.spi is not None:
            owner = self.by_spi.get(arrival.spi)
            reg = self.registrations.get(owner) if owner else None
            if reg is None:
                return self._drop("request-over-unknown-sa")
            if (reg.sa is None or arrival.spi not in reg.sa.inbound_spis) and (
                reg.previous is None or arrival.spi not in reg.previous.inbound_spis
            ):
                if not (
                    reg.answered_cseq
                    and reg.temporary is not None
                    and arrival.spi in reg.temporary.inbound_spis
                ):
                    # Only REGISTER may use the temporary set.
                    return [
                        self._reply(
                            request, arrival, 403, "Not registered over this security association"
                        )
                    ]
                # ... until its challenge response's 200: a UE that uses it for another
                # request took that 200 (its reg-event SUBSCRIBE follows it at once)
                established = self._establish_unseen(reg, now)
        else:
            reg = self._clear_ue(arrival.source)
            if reg is None:
                if any(
                    r.ue_host == arrival.source[0] and r.sa is not None
                    for r in self.registrations.values()
                ):
                    return self._drop("clear-request-from-protected-ue")
                return [self._reply(request, arrival, 403, "Not registered")]
        fwd = request.copy()
        fwd.add("Via", self._via(branch, "udp"), first=True)
        mf = fwd.max_forwards
        fwd.set("Max-Forwards", str((mf if mf is not None else 70) - 1))
        preferred = fwd.get("P-Preferred-Identity")
        fwd.remove("P-Preferred-Identity", "P-Asserted-Identity")
        asserted = self._assert_identity(reg, preferred)
        if asserted:
            fwd.set("P-Asserted-Identity", asserted)
        fwd.remove("Security-Verify")
        proxy_require = strip_sec_agree(fwd.get_all("Proxy-Require"))
        require = strip_sec_agree(fwd.get_all("Require"))
        fwd.remove("Proxy-Require", "Require")
        if proxy_require:
            fwd.set("Proxy-Require", ", ".join(proxy_require))
        if require:
            fwd.set("Require", ", ".join(require))
        # Loose routing (RFC 3261 §16.4): the Route entries naming us are done with.
        self._pop_own_routes(fwd)
        try:
            in_dialog = fwd.to.tag is not None
        except SipParseError:
            return [*established, self._reply(request, arrival, 400, "Bad To")]
        kind = "request"
        if in_dialog:
            # Along the dialog's route set, else to its remote target (RFC 3261 §12.2.1.1).
            target = self._first_route_target(fwd, now, by_uri=True)
        else:
            # Route along the Service-Route of the registration (TS 24.229 §5.2.6.3).
            if reg.service_route and not fwd.get("Route"):
                for route in reg.service_route:
                    fwd.add("Route", route)
            if request.method in DIALOG_FORMING:
                # Stay on the dialog's path (TS 24.229 §5.2.6.3): the core-side URI here,
                # rewritten to the protected server port in the answers to the UE.
                fwd.add("Record-Route", self._rr_core, first=True)
                kind = "request-rr"
            target = self._first_route_target(fwd, now)
        if request.method == "SUBSCRIBE" and _event_package(fwd) == "reg":
            kind += "-reg"  # the UE's own reg-event subscription (TS 24.229 §5.1.1.3)
        if target is None:
            return [*established, self._reply(request, arrival, 404, "No route")]
        forward = Forward(fwd, target)
        opened = self._open_context(branch, arrival, request, kind, reg.impi, now, forward)
        return [*established, opened] if established else [opened]

    def _clear_ue(self, source: Address) -> Registration | None:
        """The registration without sec-agree whose UE sends from `source`, if any."""
        impi = self._by_contact.get(source)
        reg = self.registrations.get(impi) if impi is not None else None
        if reg is not None and reg.clear_source == source and reg.state is RegState.REGISTERED:
            return reg
        return None

    # ------------------------------------------------------------------ towards the UE

    def _terminating(
        self, request: Request, arrival: Arrival, branch: str, mf: int | None, now: float
    ) -> list[Action] | None:
        """A request from the core to a UE this P-CSCF serves (TS 24.229 §5.2.6.4): the
        S-CSCF's reg-event NOTIFY to the UE's subscription (its Route is our
        Record-Route), or any request along the Path (`<sip:term@…;lr>`). Its
        Request-URI is the UE's registered contact: it goes there over the UE's
        established SA set, from our protected client port to the UE's protected server
        port (FACTS §1.3), or in the clear to a UE registered without sec-agree.

        None: not such a request (a UE's own, handled by `_other_request`). A request
        that names us in its Route for a contact we serve no longer (de-registered, SAs
        gone) is answered 404 here at once: the contact does not exist at this proxy,
        and RFC 5057 §5.1 reads 404 as the end of the dialog, so the S-CSCF's
        transaction ends now (no Timer F) and it drops the subscription."""
        if not self._from_core(arrival):
            # Not from a node we route to: not relayed to a UE over its SAs, where it
            # would arrive as the network's own word (a UE's request: `_other_request`).
            return None
        try:
            routes = request.route
        except SipParseError:
            return [self._reply(request, arrival, 400, "Bad Route")]
        # The core reaches us by name at the unprotected port (our Path and core-side
        # Record-Route); a UE's preloaded route names the address it was given, and a
        # protected UE's names port-s: its requests in the clear stay `_other_request`'s.
        own_route = bool(routes) and self._names_us(routes[0].uri, core_side=True)
        reg, sa, contact = self._served(request.uri)
        reg_notify = request.method == "NOTIFY" and _event_package(request) == "reg"
        ending = reg_notify and (
            (request.get("Subscription-State") or "").lstrip().lower().startswith("terminated")
            # The registration reported ended while the subscription stays active
            # (Kamailio's S-CSCF ends it so): the UE is told all the same (§5.1.1.7).
            or _tells_end(request.body, reg)
        )
        if reg is not None and contact is not None:
            impi = reg.impi
        else:
            if not own_route or self._clear_ue(arrival.source) is not None:
                return None
            held = self._ended_by_network(request.uri) if reg_notify else None
            if held is not None and not ending and not _lists_ended(request.body, held.contact):
                held = None  # (what is not the end of its registration waits for no UE)
            if held is None:
                self.counters["terminating-not-registered"] += 1
                return [self._reply(request, arrival, 404, "Not Found (no registered UE there)")]
            # The UE's own terminated NOTIFY after the network ended its registration
            # while a REGISTER was open (its answer went first, then the set was held):
            # the one message that tells the UE (TS 24.229 §5.1.1.7) goes over that set.
            # So does an active one that lists its contact terminated (another device
            # keeps the IMPU registered): before 2026-11-29 (tenth session) it got 404
            # and the UE never heard (lifecycle chaos --devices 2, seed 11106).
            impi, sa, contact = held.impi, held.sa, (held.sa.ue_host, held.sa.port_us)
            self.counters["terminating-end-over-held-set"] += 1
        try:
            initial = request.to.tag is None
        except SipParseError:
            return [self._reply(request, arrival, 400, "Bad To")]
        fwd = request.copy()
        self._pop_own_routes(fwd)
        if sa is not None:
            # The response comes back over the SA pair from the UE's port-s to our port-c.
            fwd.add("Via", f"{self._ue_via_prefix}{branch}", first=True)
        else:
            fwd.add("Via", self._via(branch, "udp"), first=True)
        fwd.set("Max-Forwards", str((mf if mf is not None else 70) - 1))
        kind = "terminating"
        if initial and request.method in DIALOG_FORMING:
            fwd.add("Record-Route", self._rr_ue if sa is not None else self._rr_core, first=True)
            kind = "terminating-rr"
        elif ending:
            kind = "terminating-end"  # the UE's reg-event subscription ends (§5.1.1.7)
        if sa is not None:
            reply = Reply(fwd, contact, "udp", sa.spi_us, sa.spi_ps)
        else:
            reply = Reply(fwd, contact, "udp")
        self._to_ue_open += 1
        self.counters["terminating-forwarded"] += 1
        return [self._open_context(branch, arrival, request, kind, impi, now, reply, sa)]

    def _open_context(
        self,
        branch: str,
        arrival: Arrival,
        request: Request,
        kind: str,
        impi: str,
        now: float,
        sent: Forward | Reply,
        sa: PcscfSa | None = None,
    ) -> Forward | Reply:
        """Keep the context of a non-REGISTER request sent on (`sent`, to the UE over
        `sa`) until its final answer, for the answer and for retransmissions; returns
        `sent`."""
        self._add_pending(
            branch,
            _Pending(
                arrival=arrival,
                ue_branch=request.via[0].branch or "",
                kind=kind,
                impi=impi,
                created=now,
                forward=sent,
                sa=sa,
            ),
        )
        return sent

    def _set_of(self, spi: int) -> PcscfSa | None:
        """The SA set the P-CSCF still has with inbound `spi`: a registration's
        (temporary, current or draining, by `by_spi`), or held (`_grace_by_spi`)."""
        impi = self.by_spi.get(spi)
        reg = self.registrations.get(impi) if impi else None
        if reg is not None:
            for s in (reg.temporary, reg.sa, reg.previous):
                if s is not None and spi in s.inbound_spis:
                    return s
        grace = self._grace_by_spi.get(spi)
        return grace.sa if grace is not None else None

    def _set_known(self, sa: PcscfSa) -> bool:
        """Whether the P-CSCF still has SA set `sa` (`_set_of` its inbound spi-s)."""
        have = self._set_of(sa.spi_ps)
        return have is not None and have.spi_us == sa.spi_us

    def _end_to_ue(self, reg: Registration, went: Sequence[Action] = ()) -> list[Action]:
        """The UE's SAs went (de-registration, expiry): the requests taken to it whose
        answer can no longer come back over them (the S-CSCF's NOTIFY overtaking the
        200 OK to a de-REGISTER, which comes the longer way through the I-CSCF) are
        answered upstream now, as one arriving now would be (404, see `_terminating`),
        so their senders' transactions end at once instead of at Timer F. Those sent
        over a set `went` holds (`HoldSecurityAssociations`: kept for the REGISTER's
        retransmissions) stay open: the UE's own answer still comes back over it
        (`_from_target`), and a 404 made up here would stand in for it."""
        if not self._to_ue_open:
            return []
        held = {a.sa.spi_us for a in went if type(a) is HoldSecurityAssociations}
        actions: list[Action] = []
        for branch, p in self._open_of(reg.impi):
            if p.kind not in _TO_UE or p.forward is None or p.forward.spi in held:
                continue
            request = p.forward.message.copy()
            request.pop_first("Via")  # ours: the answer is the sender's
            answer = make_response(
                request,  # type: ignore[arg-type]
                404,
                "Not Found (no registered UE there)",
                to_tag=self._rng.getrandbits(32).to_bytes(4, "big").hex(),
            )
            actions.append(Forward(answer, p.arrival.source, p.arrival.transport))
            self._to_ue_open -= 1
            self._settled(branch, p)
            self.pending[branch] = self._answered(p.created, answer.to_bytes(), None)
            self.counters["terminating-answered-for-gone-ue"] += 1
        return actions

    def _ended_by_network(self, uri: str) -> _Grace | None:
        """The set held after the network ended the registration of the UE at contact
        `uri` (`NETWORK_TERMINATED`), if any (`_grace_by_contact`)."""
        if not self._grace_by_contact:
            return None
        try:
            host, port = split_hostport(uri)
        except ValueError:
            return None
        return self._grace_by_contact.get((host, port))

    def _served(self, uri: str) -> tuple[Registration | None, PcscfSa | None, Address | None]:
        """The registration whose UE has `uri` as contact: (registration, its established
        SA set or None when it has none (no sec-agree), where to send); Nones: none."""
        try:
            host, port = split_hostport(uri)
        except ValueError:
            return None, None, None
        key = (host, port)
        impi = self._by_contact.get(key)
        reg = self.registrations.get(impi) if impi is not None else None
        if reg is None:
            return None, None, None
        sa = reg.sa
        if sa is not None and sa.ue_host == host and sa.port_us == port:
            return reg, sa, key
        if sa is None and reg.clear_source == key and reg.state is RegState.REGISTERED:
            return reg, None, key
        return None, None, None

    def _names_us(self, uri: str, core_side: bool = False) -> bool:
        """Whether a Route URI is this P-CSCF (any of its names and ports; with
        `core_side`, only as the core names it: host name and unprotected port)."""
        try:
            host, port = split_hostport(uri)
        except ValueError:
            return False
        if core_side:
            return port == self.port and host.lower() == self._core_host
        return host.lower() in self._own_hosts and port in self._own_ports

    def _pop_own_routes(self, msg: Request) -> None:
        """Remove the Route entries on top that name us (RFC 3261 §16.4)."""
        try:
            routes = msg.route
        except SipParseError:
            return
        n = 0
        while n < len(routes) and self._names_us(routes[n].uri):
            n += 1
        if not n:
            return
        lines = msg.get_all("Route")
        # one value per line (the usual spelling): the other lines stay as written
        rest = lines[n:] if len(lines) == len(routes) else [str(r) for r in routes[n:]]
        msg.remove("Route")
        for value in rest:
            msg.add("Route", value)

    def _assert_identity(self, reg: Registration, preferred: str | None) -> str:
        allowed = [a.strip() for a in reg.associated_uris] or [f"<{reg.impu}>"]
        if preferred:
            try:
                want = NameAddr.parse(preferred).uri.lower()
            except SipParseError:
                want = ""
            for a in allowed:
                try:
                    if NameAddr.parse(a).uri.lower() == want:
                        return a
                except SipParseError:
                    continue
        return allowed[0]

    def _first_route_target(self, msg: Request, now: float, by_uri: bool = False) -> Address | None:
        """Where the request goes: its first Route; without one, by the Request-URI's
        home domain (a REGISTER's routes), or with `by_uri` to the Request-URI itself
        (an in-dialog request's remote target). An S-CSCF instance passed over gives
        way to the next of its S-CSCF (`_live`)."""
        target = self._route_target(msg, by_uri)
        return self._live(target, now) if self._down and target is not None else target

    def _route_target(self, msg: Request, by_uri: bool = False) -> Address | None:
        """`_first_route_target` whether or not an instance is passed over."""
        try:
            routes = msg.route
        except SipParseError:
            return None
        if not routes and not by_uri:
            return self.route(msg.uri)
        return self._address(routes[0].uri if routes else msg.uri)

    def _live(self, target: Address, now: float) -> Address:
        """`target`, or while it is passed over (`_down`) the first instance of its
        S-CSCF that is not; all passed over: `target` itself."""
        until = self._down.get(target)
        if until is None:
            return target
        if until <= now:
            del self._down[target]  # tried first again
            return target
        for other in self._siblings.get(target, ()):
            until = self._down.get(other)
            if until is None or until <= now:
                return other
        return target

    def _failover(self, context: _Pending, now: float) -> None:
        """Timer E of a request at an S-CSCF instance that has left it unanswered for
        `scscf_timeout` s: the instance is passed over for `scscf_down_time` s and the
        request goes to the next instance of its S-CSCF (RFC 3263 §4.3: the next target
        of one name), once per instance: the same copy as a new client transaction,
        with a branch of its own (RFC 3261 §16.6 step 7, `_moved_copy`), whose answers
        and the late ones of the instance before come back to the one context."""
        sent = context.forward
        if not isinstance(sent, Forward) or sent.destination not in self._siblings:
            return
        if context.kind == "probe" or (
            now - (context.moved_at or context.created) < self.scscf_timeout
        ):
            return
        self._pass_over(sent.destination, now)
        self._move(
            context, sent, now, f"silent for {now - (context.moved_at or context.created):.0f} s"
        )

    def _pass_over(self, instance: Address, now: float, retry_after: int | None = None) -> None:
        """`instance` gets no request for `retry_after` s (a 503's Retry-After, RFC 3261
        §21.5.4), or without one until it answers an OPTIONS (`_probes`, the first
        now), or with probes off for `scscf_down_time` s."""
        if retry_after is not None:
            self._down[instance] = now + retry_after
            self._probing.pop(instance, None)  # (it answers: no probe needed)
        elif self.scscf_probe_interval > 0:
            self._down[instance] = math.inf
            self._probing.setdefault(instance, (now, ""))
        else:
            self._down[instance] = now + self.scscf_down_time

    def _move(self, context: _Pending, sent: Forward, now: float, why: str) -> bool:
        """The request of `context` on to the next instance of its S-CSCF that is not
        passed over; False (left where it is) when every one is."""
        nxt = self._live(sent.destination, now)
        if nxt == sent.destination:
            return False
        self.counters["scscf-instance-failover"] += 1
        log.info("pcscf: S-CSCF instance %s:%d %s; on to %s:%d", *sent.destination, why, *nxt)
        context.forward = Forward(self._moved_copy(sent.message, nxt), nxt, sent.transport)
        context.moved_at = now
        return True

    def _moved_copy(self, message: Request | Response, nxt: Address) -> Request | Response:
        """The copy of `message` for the instance `nxt`: a new client transaction, its
        branch our context's with `x<n>` (n: `nxt`'s place among its S-CSCF's
        instances), as RFC 3261 §16.6 step 7 requires of each address a proxy tries
        (RFC 3263 §4.3: a new request to the next target). Its answers, and late ones
        of the instance before, come back to the one context (`_OWN_VIA_REST`)."""
        values = message.get_all("Via")
        top = values[0] if values else ""
        at = top.find(self._via_prefix) + len(self._via_prefix)
        m = _OWN_VIA_REST.fullmatch(top, at) if at >= len(self._via_prefix) else None
        if m is None:
            return message  # (not our Via as we write it: the same copy)
        group = self._siblings.get(nxt, (nxt,))
        copy = message.copy()
        copy.pop_first("Via")
        copy.add("Via", f"{top[:at]}{m.group(1)}x{group.index(nxt) + 1}", first=True)
        return copy

    def _on_503(
        self, context: _Pending, response: Response, source: Address, now: float
    ) -> list[Action] | None:
        """A 503 to a request at an S-CSCF instance with others (one cut off from its
        binding store answers so): the instance is passed over (`_pass_over`, for the
        503's Retry-After) and the request goes on to the next at once (RFC 3263 §4.3:
        a 503 is a failure of that target); [] (absorbed) when it comes from an
        instance the request has moved on from; None when it is the answer (no other
        instance left, or not an instance's)."""
        sent = context.forward
        if not isinstance(sent, Forward) or sent.destination not in self._siblings:
            return None
        if source != sent.destination:
            if source in self._siblings:
                self.counters["upstream-retransmission-absorbed"] += 1
                return []
            return None
        self.counters["scscf-instance-503"] += 1
        self._pass_over(sent.destination, now, response.retry_after)
        if not self._move(context, sent, now, "answered 503"):
            return None
        return [context.forward]  # type: ignore[list-item]

    def _probes(self, now: float) -> list[Action]:
        """An OPTIONS to each instance passed over whose probe is due (RFC 3261 §11: no
        user part, asked of the node itself), the next `scscf_probe_interval` s later,
        each given up on (sent no more) when the next goes, as the I-CSCF's; the first
        final answer, any status, puts the instance back (`_probe_answered`)."""
        out: list[Action] = []
        for target, (at, old) in list(self._probing.items()):
            if at > now:
                continue
            self._probe_cseq += 1
            branch = f"z9hG4bK{self._rng.getrandbits(64):016x}"
            if old:
                self.pending.pop(old, None)  # (its Timer E finds it gone)
            self._probing[target] = (now + self.scscf_probe_interval, branch)
            probe = options_request(
                target,
                self._core_host,
                self._probe_cseq,
                f"probe-{self._rng.getrandbits(64):016x}",
            )
            probe.add("Via", self._via(branch, "udp"), first=True)
            forward = Forward(probe, target)
            self._add_pending(
                branch,
                _Pending(
                    arrival=Arrival(target),
                    ue_branch="",
                    kind="probe",
                    impi="",
                    created=now,
                    forward=forward,
                ),
            )
            self.counters["scscf-probe-sent"] += 1
            out.append(forward)
        return out

    def _probe_answered(self, pending: _Pending) -> None:
        """A final answer to our OPTIONS: the instance runs again and is tried first."""
        sent = pending.forward
        if not isinstance(sent, Forward) or sent.destination not in self._probing:
            return
        del self._probing[sent.destination]
        self._down.pop(sent.destination, None)
        self.counters["scscf-instance-up"] += 1
        log.info("pcscf: S-CSCF instance %s:%d answers again", *sent.destination)

    # ------------------------------------------------------------------ responses

    def receive_response(
        self, response: Response, source: Address, now: float, spi: int | None = None
    ) -> list[Action]:
        """A response from upstream (pop our Via, process, send to the UE), or from a UE
        to a request we took to it (`spi`: the inbound SPI it came over; pop our Via,
        send upstream)."""
        try:
            branch, n_vias = self._top_branch(response)
        except SipParseError:
            return self._drop("response-bad-via")
        pending = self.pending.get(branch or "")
        # Our own SUBSCRIBE's answer carries only our Via; everything else we forwarded
        # carries its sender's Via under ours.
        if n_vias < 2 and (pending is None or pending.kind not in ("subscribe", "probe")):
            return self._drop("response-without-ue-via")
        if pending is None:
            if spi is not None:
                return self._drop("response-over-sa-without-request")
            return self._drop("response-for-unknown-transaction")
        if spi is not None or pending.kind in _TO_UE:
            # (one test on the way of the answers from upstream, most of them REGISTER's)
            return self._response_from_ue(response, source, now, spi, pending, branch or "")
        if pending.kind == "subscribe":
            if response.status >= 200:
                if response.status == 503 and self._siblings:
                    moved = self._on_503(pending, response, source, now)
                    if moved is not None:
                        return moved
                del self.pending[branch]
                return self._subscribe_answered(response, now)
            return []
        if pending.kind == "probe":
            if response.status >= 200:
                del self.pending[branch]
                self._probe_answered(pending)  # type: ignore[arg-type]
            return []
        if pending.final_data is not None:
            # A retransmission of a final answer we already handled (the upstream server
            # transaction re-sends it when the UE's retransmitted request reached it).
            # RFC 3261 §16.7 step 5 / §17.1.2: the client transaction absorbs it. Acting on
            # it again would, for a 401, install a second SA set with new SPIs behind the
            # UE's back (its protected REGISTER then arrives on an unknown SPI).
            self.counters["upstream-retransmission-absorbed"] += 1
            return []
        if response.status == 503 and self._siblings:
            moved = self._on_503(pending, response, source, now)
            if moved is not None:
                return moved
        resp = response.copy()
        resp.pop_first("Via")
        if response.status < 200:
            return [self._to_ue(resp, pending.arrival)]
        no_503_upstream(resp)  # to the UE: a 503 would send it to another P-CSCF
        try:
            cseq = response.cseq
        except SipParseError:
            return self._drop("response-bad-cseq")
        actions: list[Action] = []
        if cseq.method == "REGISTER":
            actions = self._register_response(resp, pending, now, branch or "")
            reg = self.registrations.get(pending.impi)
            if reg is not None and reg.network_terminated:
                # (a 2xx has ended it in `_on_200`) the registration the network ended
                # goes with the last open REGISTER's answer, after it, over its SA
                pending.final = resp  # no longer open
                if not self._register_open(reg.impi, branch or ""):
                    reply = next((a for a in actions if isinstance(a, Reply)), None)
                    if reg.started_over and reg.temporary is not None:
                        # the UE registers afresh meanwhile: only the ended one's sets
                        # go; the record and its new temporary set stay for the new one
                        actions += self._ended_before(reg, now, reply, pending, branch or "")
                    else:
                        sets = (reg.temporary, reg.sa, reg.previous)
                        actions += self._sets_go(
                            reg, sets, reply, pending, branch or "", now, NETWORK_TERMINATED
                        )
                        reg.temporary = reg.sa = reg.previous = None
                        self._forget(reg, now)
                        actions += self._end_to_ue(reg, actions)
        else:
            if pending.kind != "request" and response.status < 300:
                self._dialog_response(resp, pending)
            actions = [self._to_ue(resp, pending.arrival)]
        for a in actions:
            if isinstance(a, Reply) and isinstance(a.message, Response):
                pending.final = a.message
                pending.final_spi = a.spi
        if pending.final_data is not None:
            self._in_flight -= 1  # it was open (checked above): answered now
            self._note_answer_time(now - pending.created, now)
        if pending.final_data is not None and self.pending.get(branch) is pending:
            # kept only to answer retransmissions now (Timer F): the answer and its SPI
            self._settled(branch, pending)
            grace = None
            if pending.arrival.spi is not None and self._grace_by_spi:
                grace = self._grace_by_spi.get(pending.arrival.spi)
            if grace is not None and grace.branch == branch:
                # the same packed bytes, kept by the set's grace (Timer J from now):
                # packed alone, so no group's octets stay with it past their time
                data = self._packer.pack(pending.final_data)
                self.pending[branch] = _Answered(pending.created, data, pending.final_spi)
                grace.final_data = data
            else:
                self.pending[branch] = self._answered(
                    pending.created, pending.final_data, pending.final_spi
                )
        return actions

    def _response_from_ue(
        self,
        response: Response,
        source: Address,
        now: float,
        spi: int | None,
        pending: _Pending | _Answered,
        branch: str,
    ) -> list[Action]:
        """A response over a UE's SAs, or to a request we took to a UE."""
        if spi is not None and pending.final_data is not None:
            # The UE's copy of a final answer already sent upstream: absorbed.
            self.counters["ue-retransmission-absorbed"] += 1
            return []
        if isinstance(pending, _Pending) and pending.kind in _TO_UE:
            if not self._from_target(pending, source, spi):
                return self._drop("response-not-from-the-ue")
            return self._terminating_response(response, pending, branch, now)
        # Only a UE's answer to a request we sent it may come over its SAs.
        return self._drop("response-over-sa-without-request")

    def _dialog_response(self, resp: Response, pending: _Pending) -> None:
        """A 1xx/2xx to a UE's dialog-forming request, on its way to the UE: our
        Record-Route entry names our protected server port there (TS 24.229 §5.2.6.3),
        so the UE's in-dialog requests come over its SAs; a 2xx to its reg-event
        SUBSCRIBE says it is subscribed (or no longer, Expires: 0)."""
        if "-rr" in pending.kind:
            _swap_record_route(resp, self._rr_core, self._rr_ue)
        if pending.kind.endswith("-reg") and resp.status >= 200:
            reg = self.registrations.get(pending.impi)
            if reg is not None:
                ended = (resp.get("Expires") or "").strip() == "0"
                reg.ue_sub = UE_SUB_NONE if ended else UE_SUB_ACTIVE
                reg.ue_sub_call_id = "" if ended else resp.get("Call-ID") or ""

    def _from_target(self, pending: _Pending, source: Address, spi: int | None) -> bool:
        """Whether an answer to a request we took to a UE came from that UE: over one of
        its SAs (also the set a de-registration's answer left over, held, when the
        request went over it), or (no sec-agree) in the clear from its host."""
        sent = pending.forward
        if spi is not None:
            if self.by_spi.get(spi) == pending.impi:
                return True
            grace = self._grace_by_spi.get(spi)
            return (
                grace is not None
                and grace.impi == pending.impi
                and sent is not None
                and sent.spi == grace.sa.spi_us
            )
        return sent is not None and sent.spi is None and sent.destination[0] == source[0]

    def _terminating_response(
        self, response: Response, pending: _Pending, branch: str, now: float
    ) -> list[Action]:
        """The UE's answer to a request from the core: our Via off, on to the hop that
        sent the request (where it came from: RFC 3261 §18.2.2 with rport)."""
        resp = response.copy()
        resp.pop_first("Via")
        status = response.status
        if pending.kind == "terminating-rr" and status < 300:
            # The core sees our core-side URI (TS 24.229 §5.2.6.4).
            _swap_record_route(resp, self._rr_ue, self._rr_core)
        forward = Forward(resp, pending.arrival.source, pending.arrival.transport)
        if status < 200:
            return [forward]
        actions: list[Action] = [forward]
        self._to_ue_open -= 1
        data = resp.to_bytes()
        if self.pending.get(branch) is pending:
            # kept to answer the core's retransmissions of the request until Timer J
            self._settled(branch, pending)
            self.pending[branch] = self._answered(pending.created, data, None)
        if (
            pending.kind == "terminating"
            and status < 300
            and pending.forward is not None
            and pending.forward.message.method == "NOTIFY"
        ):
            reg = self.registrations.get(pending.impi)
            if (
                reg is not None
                and reg.ue_sub == UE_SUB_NONE
                and _event_package(pending.forward.message) == "reg"
                and _went_over(pending.forward, reg)
            ):
                # The UE took a NOTIFY of its reg-event subscription: it is subscribed,
                # though the 2xx to its SUBSCRIBE never passed here (lost on the way in;
                # the NOTIFY made the dialog at the UE, RFC 6665 §4.1.2.4). Else the
                # network's end would release its SAs before its own terminated NOTIFY
                # could reach it (lifecycle chaos seed 10432).
                self.counters["ue-subscription-seen-in-notify"] += 1
                reg.ue_sub = UE_SUB_ACTIVE
                reg.ue_sub_call_id = pending.forward.message.get("Call-ID") or ""
        if pending.kind == "terminating-end" and status < 300:
            # (a UE that answers 481 has no such subscription: the final NOTIFY of one it
            # dropped with an earlier registration at the same contact told it nothing,
            # and its own is still to come)
            reg = self.registrations.get(pending.impi)
            if (
                reg is not None
                and _went_over(pending.forward, reg)
                and not self._of_another_subscription(pending.forward, reg)
            ):
                # (a NOTIFY that went over an older registration's set tells nothing
                # of the one the record now holds)
                if self._from_an_scscf_left(pending.arrival, reg):
                    # The end of the UE's subscription at the S-CSCF it moved from tells
                    # it nothing of the registration it holds at the new one, ended or
                    # not, and the UE subscribes anew there at once: counted subscribed
                    # still, a network end there waits for the UE's word (its new
                    # SUBSCRIBE gets its answer over these SAs). Before 2026-11-29
                    # (eleventh session) this answer released them while such an end
                    # waited (lifecycle chaos --scscf-moves, seed 11202).
                    return actions
                reg.ue_sub = UE_SUB_NOTIFIED
                if reg.release_at:
                    # the UE has its terminated NOTIFY: the SAs can go (TS 24.229 §5.2.3)
                    actions += self._network_end(reg, now)
                elif (
                    reg.state is RegState.REGISTERED
                    and pending.forward is not None
                    and _tells_end(pending.forward.message.body, reg)
                ):
                    # The S-CSCF's word that the registration ended, answered by the UE,
                    # before our own NOTIFY (late, or none: our SUBSCRIBE refused when
                    # the network ended the registration before it reached the S-CSCF).
                    self.counters["network-deregistration-seen-in-ue-notify"] += 1
                    actions += self._network_end(reg, now)
        return actions

    def _from_an_scscf_left(self, arrival: Arrival, reg: Registration) -> bool:
        """Whether a request taken to the UE of `reg` came from an S-CSCF other than the
        one its Service-Route leads to (nor an instance of it): the one the user moved
        from (the I-CSCF chose anew, TS 24.229 §5.3.1.2), whose end of the UE's
        subscription there tells nothing of the registration the UE now holds at the
        new one. Before 2026-11-29 (tenth session) the UE's answer to it ended that
        registration here, SAs and all (lifecycle chaos --devices 2 --scscf-moves, seed
        11102). Over TCP a node sends from any port: its host alone is compared."""
        serving = self._route_address(reg.service_route)
        source = arrival.source
        if serving is None or self._same_node(serving, source):
            return False
        if arrival.transport != "udp" and source[0] == serving[0]:
            return False
        self.counters["end-from-an-scscf-left-answered"] += 1
        return True

    def _of_another_subscription(self, sent: Any, reg: Registration) -> bool:
        """Whether the NOTIFY `sent` (a `Reply`) is of another dialog than `reg`'s UE
        subscription, when that is known: the final NOTIFY of the registration before,
        which the S-CSCF sent again after the UE registered afresh at the same contact
        (its answer lost), relayed over this registration's set and answered by the
        UE's transaction. Before 2026-11-29 (ninth session) its answer ended this
        registration (lifecycle_chaos --scscf-moves, seed 11002)."""
        known = reg.ue_sub_call_id
        if not known or sent is None or sent.message.get("Call-ID") == known:
            return False
        self.counters["end-of-an-earlier-subscription-answered"] += 1
        return True

    def _top_branch(self, response: Response) -> tuple[str | None, int]:
        """The branch of the top Via and how many Via values there are; SipParseError
        for a Via that does not parse, as `response.via` raises. The top Via is ours, as
        we wrote it plus the `received` the next hop may add (RFC 3261 §18.2.1): its
        branch is read off the text; the Vias below are parsed."""
        values = response.get_all("Via")
        if values:
            top = values[0]
            own = self._own_via
            if top.startswith(own):
                m = _OWN_VIA_REST.fullmatch(top, len(own))
                if m is not None:
                    for value in values[1:]:
                        Via.parse(value)
                    return m.group(1), len(values)
        vias = response.via
        branch = vias[0].branch if vias else ""
        moved = _MOVED_BRANCH.fullmatch(branch) if branch else None
        return (moved.group(1) if moved else branch), len(vias)

    def _register_response(
        self, resp: Response, pending: _Pending, now: float, branch: str
    ) -> list[Action]:
        if resp.status == 401:
            return self._on_401(resp, pending, now, branch)
        if 200 <= resp.status < 300:
            return self._on_200(resp, pending, now, branch)
        # Any other final answer: forward it; a failed challenge response ends the
        # temporary SA set after the answer went out over it (TS 33.203 §7.3, §7.4),
        # kept for that REGISTER's retransmissions as a de-REGISTER's set is.
        reply = self._to_ue(resp, pending.arrival)
        actions: list[Action] = [reply]
        reg = self.registrations.get(pending.impi)
        if (
            reg is not None
            and reg.temporary is not None
            and pending.kind == "register-protected"
            and pending.arrival.spi in reg.temporary.inbound_spis
        ):
            reason = f"authentication failed ({resp.status})"
            actions += self._sets_go(reg, (reg.temporary,), reply, pending, branch, now, reason)
            reg.temporary = None
            if reg.sa is None:
                self._forget(reg, now)
        return actions

    def _on_401(self, resp: Response, pending: _Pending, now: float, branch: str) -> list[Action]:
        values = resp.get_all("WWW-Authenticate")
        keyed = _without_keys(values[0]) if len(values) == 1 else None
        if keyed is not None:
            # the S-CSCF's one challenge, in the form it is rendered in: cut as text
            text, ck_hex, ik_hex = keyed
            stripped = [text]
        else:
            try:
                challenges = resp.auth("WWW-Authenticate")
            except SipParseError:
                return [self._to_ue(resp, pending.arrival)]
            ck_hex = ik_hex = None
            stripped = []
            for ch in challenges:
                ck_hex = ck_hex or ch.ck
                ik_hex = ik_hex or ch.ik
                stripped.append(str(ch.without("ck", "ik")))
        # Never let ck/ik reach the UE (PITFALLS: phones stall on them).
        resp.remove("WWW-Authenticate")
        for text in stripped:
            resp.add("WWW-Authenticate", text)
        offers = pending.security_client
        if not offers and pending.security_client_text:
            # a re-REGISTER's offers, kept as text until a challenge needs them
            try:
                offers = parse_security_header(pending.security_client_text)
            except SecAgreeParseError:
                offers = []
        if not offers:
            # A UE without sec-agree (policy optional): no SAs, plain 401.
            return [self._to_ue(resp, pending.arrival)]
        try:
            ck = bytes.fromhex(ck_hex or "")
            ik = bytes.fromhex(ik_hex or "")
        except ValueError:
            ck = ik = b""
        if len(ck) != 16 or len(ik) != 16:
            self.counters["401-without-keys"] += 1
            return [self._to_ue(resp, pending.arrival)]
        chosen = choose_mechanism(offers, self.policy)
        if chosen is None:  # checked on the way in; the S-CSCF cannot change it
            return [self._to_ue(resp, pending.arrival)]
        impi = pending.impi
        actions: list[Action] = []
        reg = self.registrations.get(impi)
        if (
            reg is not None
            and (reg.release_at or reg.network_terminated)
            and pending.kind == "register-clear"
            and not self._register_open(impi, over_sa=True)
        ):
            # The network ended the registration this record holds (its release waits
            # for the UE's terminated NOTIFY) and the UE starts over: that one goes now,
            # the challenge gets a record of its own (else its set went with the old).
            actions += self._network_release(reg, now)
            reg = None
        if reg is not None and self._of_a_replaced_set(reg, pending):
            # The challenge of a REGISTER of the registration before (it came over a set
            # this record no longer takes it over, or the UE has since started afresh):
            # the UE has left it; it goes to the UE as it came, and the record's sets,
            # the new registration's, stay (lifecycle chaos seed 10432).
            self.counters["challenge-of-a-replaced-register"] += 1
            return [self._to_ue(resp, pending.arrival)]
        if reg is None and pending.kind == "register-protected":
            # The challenge of a REGISTER that came over the SAs of a registration that
            # has ended since (the UE was told to register again and did, then
            # de-registered): the UE has left it. It goes to the UE as it came, and no
            # record or temporary set is made for it, which would stay until its
            # lifetime ran out. Before 2026-11-29 (ninth session) one was
            # (lifecycle_chaos --devices 2 --scscf-moves, seed 11103).
            self.counters["challenge-of-an-ended-registration"] += 1
            return [self._to_ue(resp, pending.arrival)]
        ue_host = sys.intern(pending.arrival.source[0])
        if reg is None:
            reg = self.registration_type(
                impi=impi, impu="", ue_host=ue_host, state=RegState.CHALLENGED
            )
            self.registrations[impi] = reg
        # Over the set the REGISTER came on (TS 24.229 §5.2.2.1), read before that set
        # gives way to the new one (below)
        reply = self._to_ue(resp, pending.arrival)
        rechallenged = False
        old = reg.temporary
        if old is not None:
            rechallenged = (
                pending.kind == "register-protected" and pending.arrival.spi in old.inbound_spis
            )
            if rechallenged:
                # A new challenge to the challenge response (the S-CSCF lost the first
                # one, or asks again): this 401 is the last message over the temporary
                # set it came on, which goes after it (held for that REGISTER's
                # retransmissions); the new keys get a temporary set of their own, as
                # the UE makes one (§5.1.1.5.1, TS 33.203 §7.4).
                self.counters["challenge-response-rechallenged"] += 1
                actions.append(reply)
                reason = "replaced by a new challenge"
                actions += self._sets_go(reg, (old,), reply, pending, branch, now, reason)
            else:  # an unanswered earlier challenge: its set goes
                actions.append(self._release(reg, old, "replaced by a new challenge"))
            reg.temporary = None
        if self._spi_allocator is not None:
            spi_pc, spi_ps = self._spi_allocator()
        else:
            spi_pc = self._new_spi()
            spi_ps = self._new_spi()
            while spi_ps == spi_pc:
                spi_ps = self._new_spi()
        params = (
            impi,
            sys.intern(chosen.alg or ""),
            sys.intern(chosen.effective_ealg),
            ue_host,
            self.config.address,
            chosen.spi_c or 0,
            chosen.spi_s or 0,
            chosen.port_c or 0,
            chosen.port_s or 0,
            spi_pc,
            spi_ps,
            self.port_c,
            self.port_s,
        )
        sa = PcscfSa(*params, ck=ck, ik=ik)
        server = SecurityMechanism(
            "ipsec-3gpp",
            q=100,
            alg=sa.alg,
            ealg=chosen.ealg,
            spi_c=spi_pc,
            spi_s=spi_ps,
            port_c=self.port_c,
            port_s=self.port_s,
        )
        # CK/IK go to the SA table with the install action and nowhere else.
        reg.temporary = PcscfSa(*params)
        reg.answered_cseq = 0  # (a new challenge: its response is yet to come)
        reg.challenged_cseq = resp.cseq.seq  # (read by `receive_response` already)
        if not rechallenged:  # (a new challenge of the same attempt: as it started)
            reg.started_over = pending.kind == "register-clear"
        reg.temporary_expires = now + float(self.config.temporary_sa_lifetime)
        self._watch(reg.temporary_expires, impi)
        server_text = _seed_spelling(format_security_header([server]))
        reg.pending_server = (server_text,)
        reg.security_client = pending.security_client_text
        try:
            reg.impu = reg.impu or _to_uri(resp)
        except SipParseError:
            pass
        self.by_spi[spi_pc] = impi
        self.by_spi[spi_ps] = impi
        resp.add("Security-Server", server_text)
        actions.append(
            InstallSecurityAssociations(sa, float(self.config.temporary_sa_lifetime), True)
        )
        if not rechallenged:
            actions.append(reply)
        self.counters["challenges"] += 1
        return actions

    def _on_200(self, resp: Response, pending: _Pending, now: float, branch: str) -> list[Action]:
        reg = self.registrations.get(pending.impi)
        arrival = pending.arrival
        actions: list[Action] = []
        contacts = resp.get_all("Contact")
        granted = self._granted_expires(resp, contacts)
        if reg is None:
            # A registration without SAs (policy optional, or the UE never offered
            # sec-agree): keep it so its later requests are recognised.
            if pending.expires_zero or granted == 0:
                return [self._to_ue(resp, arrival)]
            reg = self.registration_type(
                impi=pending.impi or arrival.source[0],
                impu="",
                ue_host=arrival.source[0],
                state=RegState.REGISTERED,
                clear_source=arrival.source,
            )
            self.registrations[reg.impi] = reg
            self._by_contact[arrival.source] = reg.impi
        if reg.sa is not None and self._of_a_replaced_set(reg, pending):
            # the answer to a REGISTER of the registration before (`_of_a_replaced_set`):
            # to the UE as it came, nothing of the record changes
            self.counters["answer-of-a-replaced-register"] += 1
            return [self._to_ue(resp, arrival)]
        to = resp.get("To")
        if not _names_uri(to, reg.impu):
            try:
                reg.impu = _to_uri(resp, to)
            except SipParseError:
                pass
        # the S-CSCF's route, the same for its many users: one tuple of one string object
        route_before = reg.service_route
        reg.service_route = self._routes.share(resp.get_all("Service-Route"))
        self._trust_route(reg.service_route)
        reg.associated_uris = tuple(resp.get_all("P-Associated-URI"))
        if len(contacts) > 1:
            # The 200 lists every contact bound to the IMPU (RFC 3261 §10.3 step 8),
            # another device's too (several IMPIs sharing it): this UE's is the one its
            # REGISTER asked for, else another device's end reads as this one's.
            reg.contact = _own_contact(contacts, pending) or contacts[0]
        elif contacts:
            reg.contact = contacts[0]
        reply = self._to_ue(resp, arrival)  # over the SA the REGISTER came on
        actions.append(reply)
        own = pending.expires_zero or granted == 0
        if (
            reg.network_terminated
            and reg.started_over
            and reg.temporary is not None
            and arrival.spi is not None
            and arrival.spi in reg.temporary.inbound_spis
        ):
            # the new registration the UE started after the network's end: that end
            # was the registration before's, whose set `_promote` supersedes (held for
            # the REGISTER still open over it)
            reg.network_terminated = False
        if own or (reg.network_terminated and not self._register_open(reg.impi, branch)):
            # De-registration (the UE's, or the network's while this REGISTER was open):
            # SAs go only after the 200 went out over them; the one it went over (UDP)
            # stays for the REGISTER's retransmissions until Timer J. (Not refreshed,
            # no reg-event SUBSCRIBE: the registration has ended.)
            reason = DEREGISTERED if own else NETWORK_TERMINATED
            sets = (reg.temporary, reg.sa, reg.previous)
            actions += self._sets_go(reg, sets, reply, pending, branch, now, reason)
            reg.temporary = reg.sa = reg.previous = None
            # The 200 lists the IMPU's other contacts (RFC 3261 §10.3 step 8): while it
            # stays registered there, the S-CSCF keeps our subscription unless ended.
            sub = self.subscriptions.get(self._subscribed.get(reg.impi, "")) if granted else None
            self._forget(reg, now)
            if sub is not None:
                actions += self._end_subscription(sub, now)
            return actions + self._end_to_ue(reg, actions)
        reg.state = RegState.REGISTERED
        reg.expires_at = now + granted
        if reg.release_at:
            # registered again after the network's end (or the audit's finding) was
            # heard: the wait for that end's last messages is over
            reg.release_at = 0.0
        self._watch(reg.expires_at + 30.0, reg.impi)
        self._watch_refresh(reg)  # a refresh may now outlive its subscription's grant
        lifetime = float(granted) + 30.0
        if (
            reg.temporary is not None
            and arrival.spi is not None
            and arrival.spi in reg.temporary.inbound_spis
        ):
            actions += self._promote(reg, now, lifetime)
        elif reg.sa is not None:
            actions.append(UpgradeSecurityAssociations(reg.sa, max(lifetime, 0.0)))
        elif arrival.spi is None and reg.clear_source != arrival.source:
            old_source = reg.clear_source
            if old_source is not None and self._by_contact.get(old_source) == reg.impi:
                del self._by_contact[old_source]
            reg.clear_source = arrival.source
            self._by_contact[arrival.source] = reg.impi
        self.counters["registered"] += 1
        if (
            reg.service_route is not route_before
            and route_before
            and reg.impi in self._subscribed
            and not self._same_scscf(route_before, reg.service_route)
        ):
            # Registered at another S-CSCF now (the I-CSCF chose anew, TS 24.229
            # §5.3.1.2): the subscription at the one before hears nothing of this
            # registration any more (its end, the network's de-registration). Ended
            # there, and made anew along the new Service-Route (below).
            self.counters["reg-subscription-moved"] += 1
            actions += self._replace_subscription(reg.impi, now)
        if self.subscribe_reg_event and reg.service_route and reg.impi not in self._subscribed:
            actions += self._subscribe_reg(reg, now)
        return actions

    def _same_scscf(self, before: tuple[str, ...], after: tuple[str, ...]) -> bool:
        """Whether Service-Routes `before` and `after` lead to one S-CSCF: the same
        address, or instances of one (`_siblings`: they share its registrations and
        subscriptions). Unresolvable: compared as texts."""
        first, then = self._route_address(before), self._route_address(after)
        if first is None or then is None:
            return before == after
        return self._same_node(first, then)

    def _same_node(self, one: Address, other: Address) -> bool:
        """Whether addresses `one` and `other` are one S-CSCF: the same, or instances
        of one (`_siblings`)."""
        return one == other or other in self._siblings.get(one, ())

    def _route_address(self, route: tuple[str, ...]) -> Address | None:
        """The address of the first entry of Service-Route `route` (its S-CSCF)."""
        return self._address(_contact_uri(route[0])) if route else None

    @staticmethod
    def _of_a_replaced_set(reg: Registration, pending: _Pending) -> bool:
        """Whether `pending`, a REGISTER over an SA set, belongs to a registration `reg`
        has replaced: it came over neither of its sets, or over its established one
        while the UE registers afresh (`started_over`: the challenge of its initial
        REGISTER made the temporary set)."""
        spi = pending.arrival.spi
        if spi is None or pending.kind != "register-protected":
            return False
        temporary = reg.temporary
        if temporary is not None and spi in temporary.inbound_spis:
            return False
        if temporary is not None and reg.started_over:
            return True
        sa = reg.sa
        return sa is not None and spi not in sa.inbound_spis

    def _promote(self, reg: Registration, now: float, lifetime: float) -> list[Action]:
        """The temporary set becomes the established one (TS 33.203 §7.4)."""
        actions: list[Action] = []
        old = reg.sa
        reg.sa = reg.temporary
        assert reg.sa is not None
        reg.temporary = None
        reg.answered_cseq = 0
        if reg.started_over:
            # The UE registered afresh (initial REGISTER) over a record it had: the
            # subscription made for the registration before may yet bring that
            # one's end (a late terminated NOTIFY), which is not this one's. This
            # one subscribes for itself (`_on_200`); the UE's own subscription, too,
            # is new (§5.1.1.3).
            reg.started_over = False
            reg.ue_sub = UE_SUB_NONE
            reg.ue_sub_call_id = ""
            actions += self._replace_subscription(reg.impi, now)
        reg.security_server = reg.pending_server
        reg.pending_server = reg.security_client = ()
        actions.append(UpgradeSecurityAssociations(reg.sa, lifetime))
        self._by_contact[(reg.sa.ue_host, reg.sa.port_us)] = reg.impi
        if reg.previous is not None:
            # replaced twice within a drain: the older one goes now, or is held for
            # the transactions still open over it (`_older_goes`)
            actions.append(self._older_goes(reg, reg.previous, now))
            reg.previous = None
        if old is not None:
            # TS 33.203 §7.4: the UE already used the new set (for a REGISTER); the old
            # one stays for the transactions still open over it.
            reg.previous = old
            reg.previous_until = now + self.superseded_drain
            self._watch(reg.previous_until, reg.impi)
            actions.append(HoldSecurityAssociations(old, reg.previous_until))
        return actions

    def _older_goes(self, reg: Registration, older: PcscfSa, now: float) -> Action:
        """The set a re-registration replaced, replaced once more before its drain ran
        out: released, unless a transaction is still open over it (a UE's request
        waiting for its answer, or one taken to the UE waiting for the UE's), which
        keeps it out of routing for that answer (`_hold`, `dereg_grace`), as at the
        end of a registration (`_sets_go`). TS 24.229 §5.1.1.5.1 has the UE keep its old
        set until its transactions over it complete: a P-CSCF that dropped it sent
        that answer nowhere and met the UE's retransmissions with an unknown SPI until
        its Timer F (chaos seed 10152: a SUBSCRIBE refresh, moved between S-CSCF
        instances, open across two quick re-registrations)."""
        if self.dereg_grace > 0:
            awaited, asked = self._open_spis(reg.impi)
            if older.spi_us in awaited or not asked.isdisjoint(older.inbound_spis):
                self.counters["superseded-set-held-for-open-transaction"] += 1
                return self._hold(reg, older, "", now, SUPERSEDED)
        return self._release(reg, older, SUPERSEDED)

    def _open_spis(self, impi: str) -> tuple[set[int], set[int]]:
        """The SPIs `impi`'s open transactions use: the outbound ones of requests taken
        to the UE (its answer awaited) and the inbound ones the UE's own open requests
        came over (their answer due)."""
        awaited: set[int] = set()
        asked: set[int] = set()
        for _, p in self._open_of(impi):
            if p.kind in _TO_UE:
                if p.forward is not None and p.forward.spi is not None:
                    awaited.add(p.forward.spi)
            elif p.kind in _FROM_UE and p.arrival.spi is not None:
                asked.add(p.arrival.spi)
        return awaited, asked

    # ------------------------------------------------------------------ reg event

    def _subscribe_reg(self, reg: Registration, now: float) -> list[Action]:
        """TS 24.229 §5.2.3: after the first registration, SUBSCRIBE to the reg event of
        the registered IMPU along its Service-Route, so a network-initiated
        de-registration reaches the P-CSCF (and it can remove the UE's SAs)."""
        call_id = f"{self._rng.getrandbits(64):016x}@{self.config.name}"
        branch = f"z9hG4bK{self._rng.getrandbits(64):016x}"
        local_tag = f"{self._rng.getrandbits(32):08x}"
        sub = Request(
            "SUBSCRIBE",
            reg.impu,
            [
                ("Via", self._via(branch, "udp")),
                ("Max-Forwards", "70"),
                *[("Route", r) for r in reg.service_route],
                ("From", f"{self._own_uri};tag={local_tag}"),
                ("To", f"<{reg.impu}>"),
                ("Call-ID", call_id),
                ("CSeq", "1 SUBSCRIBE"),
                ("Event", "reg"),
                ("Expires", str(ASKED)),
                ("Contact", self._sub_contact),
                ("P-Asserted-Identity", self._own_uri),
                ("Content-Length", "0"),
            ],
        )
        # Its first Route's address: the same for every SUBSCRIBE along a Service-Route
        # (one shared tuple per S-CSCF), so worked out once per route set.
        targets = self._sub_targets
        try:
            target = targets[reg.service_route]
        except KeyError:
            target = self._route_target(sub)
            if len(targets) >= 64:
                targets.clear()  # Service-Routes that differ per user: bounded
            targets[reg.service_route] = target
        if target is None:
            return []
        if self._down:
            target = self._live(target, now)
        self.subscriptions[call_id] = self.subscription_type(
            call_id, reg.impi, reg.impu, local_tag, now
        )
        self._subscribed[reg.impi] = call_id
        return [self._send_subscribe(sub, target, branch, reg.impi, now)]

    def _send_subscribe(
        self, sub: Request, target: Address, branch: str, impi: str, now: float
    ) -> Forward:
        """Our SUBSCRIBE out, kept as a client transaction (retransmitted over UDP)."""
        forward = Forward(sub, target, "udp")
        self._add_pending(
            branch,
            _Pending(
                arrival=Arrival(target),
                ue_branch="",
                kind="subscribe",
                impi=impi,
                created=now,
                forward=forward,
            ),
        )
        return forward

    def _in_dialog_subscribe(
        self, sub: RegEventSubscription, expires: int, now: float
    ) -> list[Action]:
        """Refresh (`expires` > 0, TS 24.229 §5.2.3) or end (0) subscription `sub` with
        a SUBSCRIBE in its dialog (RFC 6665 §4.1.2.2-4.1.2.3)."""
        sub.refresh_at = 0.0  # until its answer grants anew
        branch = f"z9hG4bK{self._rng.getrandbits(64):016x}"
        try:
            request = in_dialog_subscribe(
                sub, self._via(branch, "udp"), self._own_uri, self._sub_contact, expires
            )
        except LocalProtocolError:
            request = None  # a remote target or route set we cannot write
        target = self._first_route_target(request, now, by_uri=True) if request else None
        if request is None or target is None:
            # Not sent: held here no longer (the next 200 OK to a REGISTER of its UE
            # subscribes anew, along the Service-Route).
            self.counters["reg-subscription-unroutable"] += 1
            self._unsubscribe(sub.call_id)
            return []
        return [self._send_subscribe(request, target, branch, sub.impi, now)]

    def _refresh_subscription(self, reg: Registration, now: float) -> list[Action]:
        """The registration's subscription reached its refresh point (TS 24.229 §5.2.3)."""
        sub = self._refresh_due(reg)
        if sub is None:
            return []
        if reg.impi in self._audit:
            self.counters["reg-subscription-audited"] += 1
        else:
            self.counters["reg-subscription-refreshed"] += 1
        return self._in_dialog_subscribe(sub, ASKED, now)

    def _subscribe_answered(self, response: Response, now: float) -> list[Action]:
        """The final answer to one of our SUBSCRIBEs: a 2xx sets up or renews the
        dialog and its refresh; a refusal ends it here. A 481 to a refresh (the S-CSCF
        no longer holds it, RFC 6665 §4.1.2.2) is followed by a new subscription while
        the registration lives; after any other refusal the next 200 OK to a REGISTER
        of the UE subscribes anew. The audit of a registration taken back (`adopt`)
        ends with this answer, or with the new subscription's after a 481: a 480, the
        S-CSCF's answer for an IMPU it holds no registration of (TS 24.229 §5.4.2.1.1),
        says the network ended it while no P-CSCF held it, and it goes."""
        call_id = response.get("Call-ID") or ""
        sub = self.subscriptions.get(call_id)
        impi = sub.impi if sub is not None else ""
        audited = impi in self._audit if impi else False
        if response.status >= 300:
            self._unsubscribe(call_id)
            self.counters["reg-subscribe-refused"] += 1
            log.info("pcscf: reg-event SUBSCRIBE refused: %d", response.status)
            reg = self.registrations.get(impi) if impi else None
            if response.status == 481 and reg is not None and sub.cseq > 1:
                return self._resubscribe(reg, now)  # (an audit waits for its answer)
            if audited:
                self._audit.discard(impi)
                if response.status == 480 and reg is not None:
                    self._found_not_registered(reg, now)
            return []
        if audited:
            self._audit.discard(impi)  # (the NOTIFY that follows tells the state)
        if sub is None:
            return []  # ended meanwhile (the final NOTIFY to our unsubscribe came first)
        try:
            on_2xx(sub, response, now, self._sub_names)
        except SipParseError:
            return self._drop("subscribe-2xx-unreadable")
        if sub.cseq == 1:
            self.counters["reg-subscribed"] += 1
        self._watch_refresh(self.registrations.get(sub.impi) if sub.impi else None)
        return []

    def _found_not_registered(self, reg: Registration, now: float) -> None:
        """The audit of taken-back `reg` found it ended at the S-CSCF: it goes once a
        request its UE had under way at the crash (a de-REGISTER's retransmission,
        answered by the S-CSCF as usual) had `dereg_grace` to pass over its SAs, as
        after the 200 to a de-REGISTER (`_network_end` at the release time)."""
        self.counters["audit-found-not-registered"] += 1
        log.info("pcscf: %s taken back, not registered any more", reg.impi)
        at = now + self.dereg_grace
        if not reg.release_at or at < reg.release_at:
            reg.release_at = at
            self._watch(at, reg.impi)

    def _refresh_due(self, reg: Registration) -> RegEventSubscription | None:
        """The subscription of `reg` when it is to be refreshed: the registration
        outlives its grant (else it ends first, or its refresh, a REGISTER whose 200
        OK moves it past the grant, brings the question back: `_watch_refresh`)."""
        call_id = self._subscribed.get(reg.impi)
        if call_id is None or reg.state is not RegState.REGISTERED:
            return None
        sub = self.subscriptions.get(call_id)
        if sub is None or not sub.refresh_at or not sub.confirmed:
            return None
        return sub if reg.expires_at > sub.expires_at or reg.impi in self._audit else None

    def _watch_refresh(self, reg: Registration | None) -> None:
        """The grant of `reg`'s subscription or `reg`'s expiry moved: the refresh is
        watched when due (`_refresh_due`)."""
        sub = self._refresh_due(reg) if reg is not None else None
        if sub is not None:
            self._watch(sub.refresh_at, reg.impi)

    def _subscribe_unanswered(self, call_id: str) -> None:
        """Our SUBSCRIBE in `call_id` got no final answer (Timer F). A subscription no
        NOTIFY set up either, or whose refresh went unanswered (it may lapse at the
        S-CSCF unseen), is not held here: the next 200 OK to a REGISTER of its UE
        subscribes anew."""
        sub = self.subscriptions.get(call_id)
        if sub is not None and (not sub.confirmed or sub.cseq > 1):
            self.counters["reg-subscribe-unanswered"] += 1
            self._audit.discard(sub.impi)
            self._unsubscribe(call_id)

    def _resubscribe(self, reg: Registration, now: float) -> list[Action]:
        """A new subscription for live registration `reg`, whose own ended."""
        if (
            not (self.subscribe_reg_event and reg.service_route)
            or reg.impi in self._subscribed
            or reg.state is not RegState.REGISTERED
        ):
            return []
        self.counters["reg-resubscribed"] += 1
        return self._subscribe_reg(reg, now)

    def _reg_notify(
        self, request: Request, arrival: Arrival, now: float, call_id: str | None = None
    ) -> list[Action]:
        """A reg-event NOTIFY (RFC 3680): when the registration is terminated
        (de-registration, expiry, RTR) the UE's SAs and registration go. `call_id`: its
        Call-ID, when read already."""
        if call_id is None:
            call_id = request.get("Call-ID")
        call_id = call_id or ""
        sub = self.subscriptions.get(call_id)
        ok = make_response(request, 200, to_tag=None)
        actions: list[Action] = [Reply(ok, arrival.source, arrival.transport, None)]
        state_text = (request.get("Subscription-State") or "").lower()
        state = state_text.split(";", 1)[0].strip()
        if sub is None:
            return actions
        impi = sub.impi
        on_notify(sub, request, state_text, now, self._sub_names)
        # reginfo (RFC 3680) read for three ASCII attribute texts only: searched in the
        # bytes, not decoded (UTF-8 keeps every ASCII octet as it is)
        body = request.body
        reg = self.registrations.get(impi) if impi else None
        if b"<reginfo" in body:
            # ended, or only the contact this registration holds (the IMPU stays
            # registered for other contacts, TS 24.229 §5.4.2.1.2)
            terminated = _tells_end(body, reg)
            if terminated and state in ("active", "pending"):
                sub.ended_active = True
        else:
            # No reginfo: only the subscription's state tells; a subscription that ran
            # out (`timeout`, RFC 6665 §4.1.3) says nothing of the registration.
            terminated = state == "terminated" and "reason=timeout" not in state_text
        if not impi and state != "terminated":
            # A subscription of a registration that ended here, the IMPU still
            # registered at the S-CSCF (a contact of it is left there): ended there too.
            return actions + self._end_subscription(sub, now)
        if state == "terminated":
            self._unsubscribe(call_id)
            if not terminated and reg is not None:
                # Only the subscription ended (its grant ran out, the S-CSCF dropped
                # it) while the registration lives: made again at once (RFC 6665
                # §4.1.3), unless the one that ended was itself that young.
                self.counters["reg-subscription-ended"] += 1
                if now - sub.since >= TRANSACTION_LIFETIME:
                    actions += self._resubscribe(reg, now)
                return actions
        else:
            self._watch_refresh(reg)
        if terminated and reg is not None and self._only_over_fresh_set(reg):
            return actions + self._ended_before(reg, now)
        if terminated and reg is not None and self._register_open(impi):
            if reg.state is RegState.REGISTERED and not self._register_open(impi, over_sa=True):
                # Only an initial REGISTER is open (in the clear: the UE starts over, as
                # after its own terminated NOTIFY): a registration of its own, whose 401
                # makes a new record; nothing is due over the ended one's SAs.
                return actions + self._network_release(reg, now)
            # A REGISTER of this UE is open (its de-REGISTER, whose NOTIFY can overtake
            # the 200 OK, or a re-REGISTER): the SAs go once its answer went out over
            # them (TS 33.203 §7.4).
            reg.network_terminated = True
            return actions
        if terminated and reg is not None and reg.state is RegState.REGISTERED:
            lapsed = "reason=timeout" in state_text or b'event="expired"' in body
            if reg.ue_sub == UE_SUB_ACTIVE and reg.sa is not None and not lapsed:
                # The UE subscribed too (TS 24.229 §5.1.1.3): its own terminated NOTIFY,
                # sent by the S-CSCF with ours, is how it learns of the de-registration
                # (§5.1.1.7), and it can only reach it over these SAs. They go once that
                # NOTIFY was answered, or when its transaction has surely ended. (Not
                # for a registration that lapsed: its UE stopped refreshing, is likely
                # gone, and knows its own expiry.)
                if not reg.release_at:
                    reg.release_at = now + TRANSACTION_LIFETIME
                    self._watch(reg.release_at, reg.impi)
                    self.counters["network-deregistration-awaits-ue-notify"] += 1
                return actions
            actions += self._network_release(reg, now)
        return actions

    def _only_over_fresh_set(self, reg: Registration) -> bool:
        """Whether `reg` holds the temporary set of a registration its UE started afresh
        (`started_over`: after its own terminated NOTIFY, most often) and the UE's
        REGISTERs still open over SAs, if any, all came over that set (its challenge
        response)."""
        temporary = reg.temporary
        if temporary is None or not reg.started_over:
            return False
        spis = temporary.inbound_spis
        return all(
            p.arrival.spi in spis
            for _, p in self._open_of(reg.impi)
            if p.kind == "register-protected"
        )

    def _ended_before(
        self,
        reg: Registration,
        now: float,
        reply: Reply | None = None,
        pending: _Pending | None = None,
        branch: str = "",
    ) -> list[Action]:
        """The network ended the registration `reg` held while the UE registers afresh
        (the challenge of its initial REGISTER made the temporary set): the
        termination is of the registration before. Its sets go (held while an answer
        is due over them; `reply`, the answer to `pending`, the last REGISTER of that
        registration, goes over its set first); the record stays for the new one,
        challenged."""
        self.counters["network-deregistered"] += 1
        log.info("pcscf: %s de-registered by the network while registering anew", reg.impi)
        went = self._sets_go(
            reg, (reg.sa, reg.previous), reply, pending, branch, now, NETWORK_TERMINATED
        )
        reg.sa = reg.previous = None
        reg.network_terminated = False
        reg.state = RegState.CHALLENGED
        reg.release_at = 0.0
        reg.ue_sub = UE_SUB_NONE
        reg.ue_sub_call_id = ""
        return went + self._end_to_ue(reg, went)

    def _network_end(self, reg: Registration, now: float) -> list[Action]:
        """The registration ended by the network, the UE's terminated NOTIFY through
        (or its wait over): SAs and state go now; while a REGISTER of the UE is open,
        once its answer went out over them (`receive_response`; at its Timer F in
        `handle_timer` if none comes). A UE that already registers afresh over the
        record (challenged, `_only_over_fresh_set`) keeps that: only the ended
        registration's sets go (`_ended_before`)."""
        if self._only_over_fresh_set(reg):
            return self._ended_before(reg, now)
        if self._register_open(reg.impi, over_sa=True):
            reg.network_terminated = True
            reg.release_at = 0.0
            return []
        return self._network_release(reg, now)

    def _register_open(self, impi: str, besides: str = "", over_sa: bool = False) -> bool:
        """Whether a REGISTER of `impi` (other than ours with branch `besides`; with
        `over_sa`, one that came over an SA set) was forwarded and is not answered yet."""
        kind = "register-protected" if over_sa else "register"
        n = len(kind)
        return any(b != besides and p.kind[:n] == kind for b, p in self._open_of(impi))

    def _network_release(self, reg: Registration, now: float) -> list[Action]:
        """The registration ended by the network (reg-event NOTIFY): SAs and state go
        (a set with an answer still due over it once that answer went: `_sets_go`)."""
        self.counters["network-deregistered"] += 1
        log.info("pcscf: %s de-registered by the network (reg-event NOTIFY)", reg.impi)
        return self._registration_gone(reg, now, "registration terminated (reg event)")

    def _registration_gone(self, reg: Registration, now: float, reason: str) -> list[Action]:
        """`reg` ends with no REGISTER to answer (expiry, the network's de-registration):
        its sets go, but one still awaited by a request of or to its UE is held until
        Timer F (`_sets_go`); requests taken to the UE over the others are answered."""
        sets = (reg.temporary, reg.sa, reg.previous)
        went = self._sets_go(reg, sets, None, None, "", now, reason)
        reg.temporary = reg.sa = reg.previous = None
        self._forget(reg, now)
        return went + self._end_to_ue(reg, went)

    def _unsubscribe(self, call_id: str) -> None:
        """Subscription `call_id` ended (or never came to be): forgotten here."""
        sub = self.subscriptions.pop(call_id, None)
        if sub is not None and self._subscribed.get(sub.impi) == call_id:
            del self._subscribed[sub.impi]
            if self.changed is not None:
                self.changed.add(sub.impi)  # (its registration's record loses it)

    @staticmethod
    def _granted_expires(resp: Response, contacts: list[str] | None = None) -> int:
        """The longest expiry the registrar granted: its Contacts' `expires` (RFC 3261
        §10.3 step 8), the Expires header for a Contact without one; a malformed value
        as RFC 3261 §10.2.1.1 reads it (`_delta_seconds`), never an error: the 200 goes
        to the UE as it came (RFC 3261 §16.7 has a proxy forward it; the UE reads it by
        the same rule) and the registration lasts what the UE will take it to.
        `contacts`: its Contact values (`get_all`), when read already."""
        if not resp.has("Expires"):
            # each Contact `<URI>;expires=N` as the S-CSCF writes them: N read off the
            # text (what the parsed Contacts give, without parsing them)
            best = -1
            for value in resp.get_all("Contact") if contacts is None else contacts:
                m = plain_name_addr(value)
                granted = None if m is None or m.group(3) is None else int(m.group(3))
                if granted is None or granted > 0xFFFFFFFF:
                    best = -1
                    break
                best = max(best, granted)
            if best >= 0:
                return best
        return _granted_by_parsing(resp)

    def _release(self, reg: Registration, sa: PcscfSa, reason: str) -> ReleaseSecurityAssociations:
        self._unroute(reg, sa)
        return ReleaseSecurityAssociations(sa, reason)

    def _sets_go(
        self,
        reg: Registration,
        sets: Sequence[PcscfSa | None],
        reply: Reply | None,
        pending: _Pending | None,
        branch: str,
        now: float,
        reason: str,
    ) -> list[Action]:
        """`sets` of `reg` go after `reply`, the last message due over the one it
        leaves over (TS 33.203 §7.4): that one, over UDP, held for the retransmissions
        of the REGISTER it answers (`_hold`; over TCP there are none); one a request
        taken to the UE is still open over (the S-CSCF's NOTIFY overtaking the 200 to a
        challenged de-REGISTER, which left over the new set) held as long for the UE's
        answer, one the UE's own request came over and waits for its answer held for
        that answer, and so is the set a re-authentication replaced, still draining
        for the UE's own transactions over it (`previous`); the others released at
        once. Without `reply` (expiry, de-registration by the network) only the
        waiting ones are held."""
        actions: list[Action] = []
        grace = self.dereg_grace > 0
        awaited, asked = self._open_spis(reg.impi) if grace else (set(), set())
        for s in sets:
            if s is None:
                continue
            if (
                reply is not None
                and pending is not None
                and reply.spi is not None
                and pending.arrival.spi in s.inbound_spis
                and pending.arrival.transport == "udp"
                and grace
            ):
                actions.append(self._hold(reg, s, branch, now, reason))
            elif (
                s.spi_us in awaited
                or (s is reg.previous and grace)
                or not asked.isdisjoint(s.inbound_spis)
            ):
                # no REGISTER of its own to answer again: `branch` "" matches none
                actions.append(self._hold(reg, s, "", now, reason))
            else:
                actions.append(self._release(reg, s, reason))
        newest = reg.sa
        if reason == NETWORK_TERMINATED and newest is not None:
            # A request to the UE after the end takes the newest set held, as it would
            # have before (the held ones share the UE's contact; the UE may have deleted
            # an older one once the newest carried traffic, TS 33.203 §7.4).
            grace = self._grace.get(f"{HELD}{newest.spi_ps}")
            if grace is not None and grace.sa is newest:
                self._grace_by_contact[(newest.ue_host, newest.port_us)] = grace
        return actions

    def _hold(
        self,
        reg: Registration,
        sa: PcscfSa,
        branch: str,
        now: float,
        reason: str,
        final: bytes | None = None,
    ) -> Action:
        """The set a REGISTER's last answer left over: out of routing now, kept for
        that REGISTER's retransmissions until `DEREGISTER_GRACE` has run, then released
        with `reason` (`_end_grace`). `final`: that answer, packed, when the core made it
        (else it is cached when the answer from upstream passes, `receive_response`)."""
        self._unroute(reg, sa)
        grace = self.grace_type(sa, branch, now + self.dereg_grace, reason)
        grace.final_data = final
        self._grace[grace.key] = grace
        for spi in sa.inbound_spis:
            self._grace_by_spi[spi] = grace
        if reason == NETWORK_TERMINATED:
            grace.contact = reg.contact
            self._grace_by_contact[(sa.ue_host, sa.port_us)] = grace
        self._watch(grace.release_at, grace.key)
        return HoldSecurityAssociations(sa, grace.release_at)

    def _end_grace(self, grace: _Grace) -> ReleaseSecurityAssociations:
        """Timer J of the answered REGISTER has run: its set goes (once: its record
        goes)."""
        del self._grace[grace.key]
        if self.changed is not None:
            self.changed.add(grace.key)
        for spi in grace.sa.inbound_spis:
            if self._grace_by_spi.get(spi) is grace:
                del self._grace_by_spi[spi]
        contact = (grace.sa.ue_host, grace.sa.port_us)
        if self._grace_by_contact.get(contact) is grace:
            del self._grace_by_contact[contact]
        return ReleaseSecurityAssociations(grace.sa, grace.reason)

    def in_grace(self) -> int:
        """SA sets kept for the retransmissions of the REGISTER whose last answer
        they carried (de-REGISTERs, failed challenge responses), and sets a challenged
        re-registration replaced, kept for the transactions open over them (the edge
        holds both kinds: its `sa_sets_in_grace`)."""
        return len(self._grace) + sum(
            1 for r in self.registrations.values() if r.previous is not None
        )

    def _unroute(self, reg: Registration, sa: PcscfSa) -> None:
        """Nothing routes to or from the UE over `sa` any more."""
        for spi in sa.inbound_spis:
            if self.by_spi.get(spi) == reg.impi:
                del self.by_spi[spi]
        key = (sa.ue_host, sa.port_us)
        if self._by_contact.get(key) == reg.impi:
            # Kept when the set that stays (the newer one: port-s is the same across
            # re-registrations, FACTS §1.1) is reached at the same contact.
            live = reg.sa
            if live is None or live is sa or (live.ue_host, live.port_us) != key:
                del self._by_contact[key]

    def _forget(self, reg: Registration, now: float) -> None:
        if self.registrations.get(reg.impi) is reg:
            del self.registrations[reg.impi]
            if self.changed is not None:
                self.changed.add(reg.impi)
            if reg.clear_source is not None and self._by_contact.get(reg.clear_source) == reg.impi:
                del self._by_contact[reg.clear_source]
            self._detach_subscription(reg.impi, now)

    def _replace_subscription(self, impi: str, now: float) -> list[Action]:
        """A fresh registration of `impi` took over the record: the subscription made for
        the one before is detached (`_detach_subscription`) and ended at the S-CSCF
        (Expires: 0, RFC 6665 §4.1.2.3), which would otherwise keep it, and NOTIFY it,
        for as long as the IMPU stays registered there."""
        sub = self.subscriptions.get(self._subscribed.get(impi, ""))
        self._detach_subscription(impi, now)
        return self._end_subscription(sub, now) if sub is not None else []

    def _end_subscription(self, sub: RegEventSubscription, now: float) -> list[Action]:
        """Our Expires: 0 in the dialog of detached subscription `sub`, once."""
        if sub.ending or not sub.confirmed:
            return []
        sub.ending = True
        self.counters["reg-unsubscribed"] += 1
        return self._in_dialog_subscribe(sub, 0, now)

    def _detach_subscription(self, impi: str, now: float) -> None:
        """The reg-event subscription made for `impi`'s registration was that
        registration's (RFC 3680), which ended: its NOTIFYs still to come (the S-CSCF's
        terminated one, late under loss) are answered but end nothing, and a new
        registration of the IMPI, which may already be under way, subscribes for
        itself. If that NOTIFY has not come within `DETACHED_WAIT`, it is given up."""
        call_id = self._subscribed.pop(impi, None)
        self._audit.discard(impi)
        sub = self.subscriptions.get(call_id) if call_id is not None else None
        if sub is not None:
            sub.impi = ""
            sub.refresh_at = 0.0
            if sub.ended_active:
                # The S-CSCF told the end and keeps the subscription: no terminated
                # NOTIFY is coming, so ours ends it now (at the next timer), before a
                # new registration's SUBSCRIBE meets it there.
                self._detached.appendleft((now, sub.call_id))
            else:
                self._detached.append((now + DETACHED_WAIT, sub.call_id))

    def _give_up_detached(self, now: float) -> list[Action]:
        """Detached subscriptions whose terminated NOTIFY never came (the S-CSCF that
        held them restarted and lost them, or its NOTIFY was lost for good): ended with
        our Expires: 0 if the dialog allows (RFC 6665 §4.1.2.3; its answer and final
        NOTIFY then find nothing here and end nothing) and forgotten, so that none is
        kept for ever."""
        out: list[Action] = []
        detached = self._detached
        while detached and detached[0][0] <= now:
            _, call_id = detached.popleft()
            sub = self.subscriptions.get(call_id)
            if sub is None or sub.impi:
                continue  # ended meanwhile
            self.counters["reg-subscription-given-up"] += 1
            out += self._end_subscription(sub, now)
            self._unsubscribe(call_id)
        return out

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        deadline = None
        timers = self._timers
        while timers:
            # `_entry_live(timers[0])`, inline: asked after every message
            due, key = timers[0]
            holder = self._grace.get(key) if key[:1] == "\x00" else self.registrations.get(key)
            if holder is not None and holder.scheduled == due:
                deadline = due
                break
            heapq.heappop(timers)
        oldest = next(iter(self.pending.values()), None)
        if oldest is not None:
            when = _END_AT(oldest.created + TRANSACTION_LIFETIME)
            if deadline is None or when < deadline:
                deadline = when
        if self._retransmit_first or self._retransmit:
            when = self._next_retransmission()
            if when is not None and (deadline is None or when < deadline):
                deadline = when
        if self._detached:
            when = self._detached[0][0]
            if deadline is None or when < deadline:
                deadline = when
        if self._probing:
            when = min(at for at, _ in self._probing.values())
            if deadline is None or when < deadline:
                deadline = when
        return deadline

    def _waits(self, branch: str, context: _Pending) -> bool:
        """Whether `context` (at `branch`) still waits for its answer (Timer E runs):
        a request to the UE only while its SA set is there (the UE answers over it)."""
        if context.final_data is not None or self.pending.get(branch) is not context:
            return False
        return context.sa is None or self._set_known(context.sa)

    def _onto_newer_set(self, context: _Pending) -> None:
        """A request to the UE still unanswered over a set that a re-registration has
        replaced since goes again over the new one. The UE deletes the old set as soon
        as our first message over the new one reaches it (the 200 OK to its
        re-REGISTER; TS 33.203 §7.4, TS 24.229 §5.1.1.5.1): it knows its own transactions
        on the old set, not ours in flight towards it, so a copy of ours that was lost
        before the switch would otherwise be sent again into an SPI it no longer has
        until Timer F. Its answer is taken over any of its sets (`_from_target`)."""
        reg = self.registrations.get(context.impi)
        if reg is None or reg.previous is not context.sa:
            return
        new = reg.sa
        sent = context.forward
        if new is None or type(sent) is not Reply:
            return
        context.sa = new
        context.forward = Reply(
            sent.message, (new.ue_host, new.port_us), sent.transport, new.spi_us, new.spi_ps
        )
        self.counters["retransmitted-over-new-set"] += 1

    def _next_retransmission(self) -> float | None:
        """The earliest Timer E of a context still waiting; the answered ones in front
        are dropped on the way."""
        pending = self.pending
        first = self._retransmit_first
        while first:
            _, branch, context = first[0]
            # `_waits`, inline: asked after every message
            if (
                context.final_data is None
                and pending.get(branch) is context
                and (context.sa is None or self._set_known(context.sa))
            ):
                break
            first.popleft()
        later = self._retransmit
        while later:
            entry = later[0]
            if self._waits(entry[2], entry[3]):
                break
            heapq.heappop(later)
        when = first[0][0] if first else None
        if later and (when is None or later[0][0] < when):
            when = later[0][0]
        return when

    def _retransmissions(self, now: float) -> list[Action]:
        """Timer E (RFC 3261 §17.1.2.2): what went on for each context still waiting
        whose timer is due, sent again; the next one at twice the interval, at most
        T2, until Timer F ends the context. Counted from `now`: a late wake-up sends
        one copy, not one per interval it missed."""
        later = self._retransmit
        first = self._retransmit_first
        while first and first[0][0] <= now:
            # T1 has passed: into the heap, as if its last interval had been T1
            due, branch, context = first.popleft()
            self._retransmit_seq += 1
            heapq.heappush(later, (due, self._retransmit_seq, branch, context, RETRANSMIT_T1))
        out: list[Action] = []
        while later and later[0][0] <= now:
            _, _, branch, context, interval = heapq.heappop(later)
            if self._waits(branch, context) and context.created + TRANSACTION_LIFETIME > now:
                self._retransmit_seq += 1
                interval = min(2 * interval, RETRANSMIT_T2)
                heapq.heappush(
                    later, (now + interval, self._retransmit_seq, branch, context, interval)
                )
                if context.sa is not None:
                    self._onto_newer_set(context)
                elif self._siblings and self.scscf_timeout > 0:
                    self._failover(context, now)
                out.append(context.forward)  # type: ignore[arg-type]
        if out:
            self.counters["retransmitted"] += len(out)
        return out

    def handle_timer(self, now: float) -> list[Action]:
        # (probes first: the one a new probe gives up on is not sent again with it)
        actions: list[Action] = self._probes(now) if self._probing else []
        if self._retransmit_first or self._retransmit:
            actions += self._retransmissions(now)
        if self._detached and self._detached[0][0] <= now:
            actions += self._give_up_detached(now)
        pending = self.pending
        unanswered: list[str] = []  # IMPIs of REGISTERs never answered
        while pending:
            branch, oldest = next(iter(pending.items()))
            if oldest.created + TRANSACTION_LIFETIME > now:
                break
            del pending[branch]
            if _in_flight(oldest):  # Timer F: never answered
                self._in_flight -= 1
                if oldest.kind[:8] == "register" and oldest.impi:
                    unanswered.append(oldest.impi)
                self._settled(branch, oldest)
            elif oldest.final_data is None and oldest.kind in _TO_UE:
                self._to_ue_open -= 1  # the UE never answered
                self._settled(branch, oldest)
            elif oldest.kind == "subscribe" and oldest.forward is not None:
                self._subscribe_unanswered(oldest.forward.message.get("Call-ID") or "")
            elif self._to_pack:
                self._unwait(oldest)
        for impi in unanswered:
            # the registration the network ended waited for this REGISTER's answer
            reg = self.registrations.get(impi)
            if reg is not None and reg.network_terminated and not self._register_open(impi):
                actions += self._network_release(reg, now)
        timers = self._timers
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            if not self._entry_live(entry):
                continue  # gone, or rescheduled earlier (a newer entry carries it)
            key = entry[1]
            holder = self._holder(key)
            if isinstance(holder, _Grace):
                holder.scheduled = None
                actions.append(self._end_grace(holder))
                continue
            reg = self.registrations[key]
            reg.scheduled = None
            due = self._due(reg)
            if due is None:
                continue
            if due[0] > now:
                # the deadline moved later (the expiry after the temporary lifetime)
                self._watch(due[0], key)
                continue
            if due[1] == "release":
                # The UE's terminated NOTIFY never came through (TS 24.229 §5.2.3).
                actions += self._network_end(reg, now)
                later = self._due(reg) if self.registrations.get(key) is reg else None
                if later is not None:
                    self._watch(later[0], key)
            elif due[1] == "subscription":
                actions += self._refresh_subscription(reg, now)
                later = self._due(reg)
                if later is not None:
                    self._watch(later[0], key)
            elif due[1] == "previous":
                # the transactions over the set a re-registration replaced have ended
                actions.append(self._release(reg, reg.previous, SUPERSEDED))
                reg.previous = None
                later = self._due(reg)
                if later is not None:
                    self._watch(later[0], key)
            elif due[1] == "temporary":
                # The UE never answered the 401 within the temporary set's lifetime.
                actions.append(self._release(reg, reg.temporary, "temporary SA lifetime expired"))
                reg.temporary = None
                if reg.sa is None and reg.state is not RegState.REGISTERED:
                    self._forget(reg, now)
                else:
                    later = self._due(reg)
                    if later is not None:
                        self._watch(later[0], key)
            else:
                actions += self._registration_gone(reg, now, "registration expired")
        return actions

    def open_transactions(self) -> int:
        """Forwarded requests without a final response yet. Entries whose final answer
        is cached (for retransmissions, like Timer J) are not counted, nor the P-CSCF's
        own reg-event SUBSCRIBEs (TS 24.229 §5.2.3), whose entry keeps no final. Kept as
        a count (the overload bound reads it on every initial REGISTER)."""
        return self._in_flight

    def pending_to_ue(self) -> int:
        """Requests from the core taken to a UE (TS 24.229 §5.2.6.4) without its final
        answer yet."""
        return self._to_ue_open

    def stats(self) -> dict[str, Any]:
        return {
            "registrations": len(self.registrations),
            "pending": len(self.pending),
            "sas": sum(
                (r.sa is not None) + (r.temporary is not None) for r in self.registrations.values()
            ),
            "drops": dict(self.drops),
            **dict(self.counters),
        }


_ANCHORS = frozenset(("via", "max-forwards", "p-access-network-info"))
# The UE's headers a forwarded REGISTER loses (`_prepare_upstream`), as keys
_REPLACED_UPSTREAM = (
    "require",
    "proxy-require",
    "security-client",
    "security-verify",
    "p-visited-network-id",
    "p-charging-vector",
)


def _delta_seconds(text: str | None) -> int | None:
    """An expires value (Contact param or Expires header) as RFC 3261 §10.2.1.1 has it
    read: None when absent; digits above 2**32-1 as 2**32-1 (MAY); anything else that
    is not delta-seconds as `MALFORMED_EXPIRES` (SHOULD)."""
    if text is None:
        return None
    digits = text.strip()
    if not (digits.isdigit() and digits.isascii()):
        return MALFORMED_EXPIRES
    digits = digits.lstrip("0")
    # (no int() of a long text: CPython refuses over 4,300 digits)
    return 0xFFFFFFFF if len(digits) > 10 else min(int(digits or "0"), 0xFFFFFFFF)


def _granted_by_parsing(resp: Response) -> int:
    """`PcscfCore._granted_expires` the exact way: from the parsed Contacts and the
    Expires header, each value read by `_delta_seconds`. Contacts that do not parse
    carry no expiry that can be read: the Expires header's, else `MALFORMED_EXPIRES`
    as for a malformed value (never 0, which would end a live registration's SAs)."""
    default = _delta_seconds(resp.get("Expires"))
    try:
        contacts = resp.contacts
    except SipParseError:
        return MALFORMED_EXPIRES if default is None else default
    best = 0
    for c in contacts:
        e = _delta_seconds(c.params.get("expires"))
        if e is None:
            e = default
        if e is not None:
            best = max(best, e)
    if not contacts and default is not None:
        best = default
    return best


def _went_over(sent: Any, reg: Registration) -> bool:
    """Whether the request `sent` to the UE (a `Reply`) went over `reg`'s established
    set (in the clear: `reg` has none). Not over `previous`: after the UE registered
    afresh over the record, that is the set of the registration before."""
    spi = sent.spi if sent is not None else None
    if spi is None:
        return reg.sa is None
    return reg.sa is not None and reg.sa.spi_us == spi


def _reginfo_ended(body: bytes) -> bool:
    """Whether a reginfo document reports the registration terminated (RFC 3680: a
    registration element "terminated", none "active"). Searched in the bytes: the
    attribute texts are ASCII, which UTF-8 keeps as they are."""
    return b'state="terminated"' in body and b'state="active"' not in body


def _contact_uri(value: str) -> str:
    """The URI of a name-addr (`<uri>;params`) or addr-spec header value."""
    start = value.find("<")
    end = value.find(">", start + 1)
    return value[start + 1 : end] if 0 <= start < end else value.split(";", 1)[0].strip()


def _own_contact(contacts: list[str], pending: _Pending) -> str | None:
    """Of a 200 OK's Contact values, the one whose URI the REGISTER of `pending` bound
    (its own Contact); None when it cannot be told."""
    forward = pending.forward
    if forward is None:
        return None
    asked = forward.message.get("Contact")
    if not asked:
        return None
    uri = _contact_uri(asked)
    return next((c for c in contacts if _contact_uri(c) == uri), None)


def _tells_end(body: bytes, reg: Registration | None) -> bool:
    """Whether reginfo `body` reports the registration ended, or (for `reg`) the
    contact it registered terminated: what a reg-event NOTIFY tells of it, whatever its
    Subscription-State. A document that lists contacts, none of them `reg`'s, tells of
    other devices sharing the IMPU only (TS 24.229 §5.2.3 acts on this UE's contact),
    even when their registration ended: the S-CSCF a user moved from ends it so,
    telling the device that did not move to register again (RTR NEW_SERVER_ASSIGNED),
    while this UE is registered at the new one."""
    if b"<reginfo" not in body:
        return False
    needle = _contact_needle(reg) if reg is not None else None
    if needle is not None and b"<contact" in body and needle not in body:
        return False
    if _reginfo_ended(body):
        return True
    return _needle_ended(body, needle)


def _lists_ended(body: bytes, contact: str) -> bool:
    """Whether reginfo `body` lists `contact` (a Contact header value) as a terminated
    contact; False when `contact` is not known."""
    return _needle_ended(body, _uri_needle(contact))


def _needle_ended(body: bytes, needle: bytes | None) -> bool:
    """Whether reginfo `body` lists the contact whose <uri> is `needle` (None: not
    known, False) as terminated."""
    return needle is not None and b'state="terminated"' in body and _contact_ended(body, needle)


def _contact_needle(reg: Registration) -> bytes | None:
    """The <uri> element of reginfo (RFC 3680 §5.3) that lists the contact `reg`
    registered (the Contact of its 200 OK); None when that is not known."""
    return _uri_needle(reg.contact)


def _uri_needle(text: str) -> bytes | None:
    """The <uri> element of reginfo that lists the contact of Contact value `text`."""
    start = text.find("<")
    end = text.find(">", start + 1)
    if start < 0 or end < 0:
        return None
    return f"<uri>{xml_escape(text[start + 1 : end])}</uri>".encode()


def _contact_ended(body: bytes, needle: bytes) -> bool:
    """Whether reginfo `body` lists the contact whose <uri> is `needle` as a terminated
    <contact> element (RFC 3680 §5.3)."""
    at = body.find(needle)
    while at >= 0:
        element = body.rfind(b"<contact ", 0, at)
        if element >= 0 and b'state="terminated"' in body[element:at]:
            return True
        at = body.find(needle, at + 1)
    return False


def _swap_record_route(msg: Message, ours: str, theirs: str) -> None:
    """Our Record-Route entry `ours` written as `theirs` (the other side's port),
    the other entries and their order as they were."""
    values = msg.get_all("Record-Route")
    if not any(ours in v for v in values):
        return
    msg.remove("Record-Route")
    for v in values:
        msg.add("Record-Route", v.replace(ours, theirs))


def _seed_spelling(value: str) -> str:
    """`ipsec-3gpp;q=0.1;alg=…` → `ipsec-3gpp; q=0.1; alg=…` as in packet 7."""
    return "; ".join(part.strip() for part in value.split(";"))
