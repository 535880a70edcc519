"""S-CSCF asyncio edge: SIP REGISTER in, Cx (MAR/SAR) out, bindings to the store (TS 24.229 §5.4.1).

The decisions live in the sans-I/O `RegistrarCore` (imsaka.cscf.scscf_core); this module
only translates and moves things:

- a SIP REGISTER becomes a `RegisterRequest` (`register_request_from_sip`); a malformed
  one is answered 400 naming the header;
- the core's `AskVectors` / `AskAssignment` become Cx MAR / SAR (imsaka.diameter.cx)
  sent through a Diameter client; the answers go back into the core
  (`vectors_from_maa`, `outcome_of`); a timeout or a dead HSS is `CxOutcome.UNAVAILABLE`
  (→ 504 with Retry-After);
- `StoreRegistration` / `RemoveRegistration` are written to the `BindingStore` before
  the 200 OK leaves, so an answered registration survives a restart (Redis);
- a `Reply` becomes the SIP response (To tag added; Via, From, To, Call-ID, CSeq copied);
- RTR from the HSS (TS 29.228 §6.1.3) removes the bindings and is answered RTA; PPR
  (§6.1.4) replaces the stored profile;
- one timer drives reg-await-auth and binding expiry (`next_deadline` / `handle_timer`).

Times given to the core are wall-clock seconds (`time.time()`), because the binding
store outlives the process (imsaka.cscf.registrar).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from asyncio import current_task
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from functools import partial
from operator import itemgetter
from typing import Any, NoReturn, TypeVar

from imsaka.config import ImsConfig, NetworkConfig, ScscfConfig, split_hostport
from imsaka.cscf.regevent import (
    RESTORED_GAP,
    TERMINATION_EVENT,
    RegSubscription,
    RegSubscriptions,
    authorised_watcher,
    notify_request,
    reginfo_body,
    reginfo_unchanged,
)
from imsaka.cscf.registrar import (
    BindingStore,
    Claim,
    ContactBinding,
    MemoryBindingStore,
    Registration,
    open_binding_store,
    plain_contact,
    plain_name_addr,
    plain_tagged,
)
from imsaka.cscf.scscf_core import (
    Action,
    AskAssignment,
    AskVectors,
    AssignmentType,
    AuthVectorItem,
    ContactSpec,
    CxOutcome,
    DigestParams,
    RegisterRequest,
    RegistrarCore,
    RegistrarPolicy,
    RemoveRegistration,
    Reply,
    StoreRegistration,
)
from imsaka.cscf.userdata import UserDataError, parse_user_data
from imsaka.diameter import cx
from imsaka.diameter.errors import RequestRefused
from imsaka.sip import Request, Response, SipParseError, SipUri, make_response

__all__ = [
    "CxAsker",
    "CxSender",
    "RequestSender",
    "Scscf",
    "ScscfServer",
    "notify_sender",
    "outcome_of",
    "register_request_from_sip",
    "run",
    "vectors_from_maa",
]

log = logging.getLogger("imsaka.cscf.scscf")

_T = TypeVar("_T")

# How long a stopping S-CSCF waits for its open transactions (`ScscfServer.drain`): a
# NOTIFY sent just before is sent four times by then (T1 = 0.5 s).
SHUTDOWN_DRAIN = 4.0

# With a shared store each S-CSCF says every HEARTBEAT seconds that it runs, for
# ALIVE_FOR seconds: one silent longer (stopped, crashed) has the ends of registrations
# told to its reg-event subscribers by the others (`Scscf._beat`). Longer than a busy
# loop's stall; a restart quicker than it is left to the restarted S-CSCF.
HEARTBEAT = 1.0
ALIVE_FOR = 5.0
# One seen stopped this long is taken as gone for good (a restart is quicker): its
# subscriptions to live registrations are taken over by the others (`_sweep`), each
# told in its dialog so that its refreshes come to the taker. Sooner would move every
# subscription of an instance at each rolling restart, a NOTIFY each.
TAKE_OVER_AFTER = 30.0
# An S-CSCF whose heartbeat has not landed for ALIVE_FOR - HEARTBEAT seconds may be
# seen stopped by the others, who may then take its subscriptions (`_take_from_stopped`).
# From then until its heartbeat lands again and it has read what they took (`_back`)
# it is cut off (`_cut_off`): it serves no reg-event subscriber (a SUBSCRIBE gets 503
# with Retry-After: CUT_OFF_RETRY_AFTER s, which the P-CSCF takes to another instance,
# as the I-CSCF takes a REGISTER answered so while the store cannot be read) and holds
# its NOTIFYs, so that no dialog has two notifiers.
CUT_OFF_RETRY_AFTER = 5
# A registration that lapsed while the shared store was out of reach: its removal is
# tried again this often (s) until the store answers (`_claim_later`).
EXPIRY_RETRY = 1.0
# NOTIFYs a take-over sends before it pauses for TAKE_OVER_PAUSE s (~500 a second): the
# subscribers of a whole instance are not all told in one burst.
TAKE_OVER_BATCH = 50
TAKE_OVER_PAUSE = 0.1
# How long a close waits for its cancelled loops and tasks (`_cancel_all`).
CLOSE_WAIT = 5.0

#: ``async send(request) -> answer``; raises on timeout or when no HSS is connected.
CxSender = Callable[[Any], Awaitable[Any]]
#: ``ask(request, callback)``: ``callback(answer, None)`` or ``callback(None, exc)`` later
#: (`DiameterNode.request_callback`).
CxAsker = Callable[[Any, Callable[[Any, BaseException | None], None]], None]
#: ``send(request, address, callback) -> bool``: `callback(final response)` later; False
#: when it declines (the request then goes the coroutine way). `notify_sender`.
RequestSender = Callable[[Request, tuple[str, int], Callable[[Response], None]], bool]
Respond = Callable[[Response], None]

_SCHEME_TO_ALGORITHM = {
    cx.SCHEME_AKAV1_MD5.lower(): "AKAv1-MD5",
    cx.SCHEME_AKAV2_MD5.lower(): "AKAv2-MD5",
    cx.SCHEME_MD5.lower(): "MD5",
    cx.SCHEME_SIP_DIGEST.lower(): "MD5",
}
_ALGORITHM_TO_SCHEME = {
    "AKAv1-MD5": cx.SCHEME_AKAV1_MD5,
    "AKAv2-MD5": cx.SCHEME_AKAV2_MD5,
}
_ASK_ANY_SCHEME = cx.SipAuthDataItem(sip_authentication_scheme=cx.SCHEME_UNKNOWN)
# what a 200 to OPTIONS says the S-CSCF takes (RFC 3261 §11.2)
_ALLOW = (("Allow", "REGISTER, SUBSCRIBE, OPTIONS"),)


# --------------------------------------------------------------------------- SIP → core


def _to_a_node(request: Request) -> bool:
    """Whether the Request-URI names a server rather than a user (no user part)."""
    try:
        uri = request.request_uri
    except SipParseError:
        return False
    return isinstance(uri, SipUri) and not uri.user


# an AuthParam is a (name, value, quoted) tuple
_NAME = itemgetter(0)
_VALUE = itemgetter(1)

# Credentials as a UE (through its P-CSCF) sends them: "Digest" and auth-params (RFC 2617
# §3.2.2: name=token or name="quoted-string" without backslash escapes), separated by
# commas, no trailing comma. DigestCredentials.parse reads every such text to the same
# names and values (tested); read here with one C-level pass, no view and no AuthParam
# tuples. Anything else takes the parse (and its SipParseError).
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~/=]"
_AUTH_PARAM = (
    r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*=[ \t]*"
    rf"(?:\"([^\"\\]*)\"|({_TOKEN}+))"
)
_PLAIN_CREDENTIALS = re.compile(
    rf"[Dd][Ii][Gg][Ee][Ss][Tt][ \t]+({_AUTH_PARAM}(?:[ \t]*,[ \t]*{_AUTH_PARAM})*)[ \t]*"
).fullmatch
_AUTH_PARAMS = re.compile(_AUTH_PARAM).findall
# The same in the one order and spelling a UE writes them (TS 24.229 §5.1.1.2.1,
# §5.1.1.5.1: username, realm, nonce, [algorithm,] uri, response, [qop, nc, cnonce,] and
# the P-CSCF's integrity-protected last, §5.2.2.1), read by one match led by literals:
# a fifth of the work of the general form above, which reads every other order.
_Q = r'"([^"\\]*+)"'
_UE_CREDENTIALS = re.compile(
    rf"Digest username={_Q}, realm={_Q}, nonce={_Q}, (?:algorithm=({_TOKEN}++), )?"
    rf"uri={_Q}, response={_Q}(?:, qop=({_TOKEN}++), nc=({_TOKEN}++), cnonce={_Q})?"
    rf"(?:, integrity-protected={_Q})?"
).fullmatch


def _plain_digest(request: Request) -> DigestParams | None:
    """The REGISTER's one Authorization line read (the first of a repeated name), when
    that line is plain (above); else None."""
    lines = request.get_all("authorization")
    if len(lines) != 1:
        return None
    m = _UE_CREDENTIALS(lines[0])
    if m is not None:
        username, realm, nonce, algorithm, uri, response, qop, nc, cnonce, protected = m.groups()
        return DigestParams(  # positional, in field order (as RegisterRequest below)
            username, realm, nonce, uri, response, algorithm, qop, nc, cnonce, None, protected
        )
    m = _PLAIN_CREDENTIALS(lines[0])
    if m is None:
        return None
    params: dict[str, str] = {}
    for name, quoted, token in reversed(_AUTH_PARAMS(m.group(1))):
        params[name.lower()] = token or quoted
    return _digest_params(params)


def _digest_params(params: dict[str, str]) -> DigestParams:
    """DigestParams of the auth-params by lowered name."""
    get = params.get
    return DigestParams(  # positional, in field order (as RegisterRequest below)
        get("username") or "",
        get("realm") or "",
        get("nonce") or "",
        get("uri") or "",
        get("response"),
        get("algorithm"),
        get("qop"),
        get("nc"),
        get("cnonce"),
        get("auts"),
        get("integrity-protected"),
    )


def asserted_uris(request: Request) -> list[str]:
    """The URIs of P-Asserted-Identity (TS 24.229 §5.4.2.1.1: who subscribes); [] when
    there is none or one does not parse. Plain values are read off their text."""
    uris = []
    for value in request.get_all("p-asserted-identity"):
        m = plain_name_addr(value)
        if m is None:
            try:
                return [na.uri for na in request.name_addrs("p-asserted-identity")]
            except SipParseError:
                return []
        uris.append(m.group(1))
    return uris


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def register_request_from_sip(req: Request, keep_branch: bool = False) -> RegisterRequest:
    """Read what the registrar needs; `SipParseError` names the header that is wrong.
    `keep_branch`: the branch of its bottom Via too, the UE's (the bindings of a shared
    store keep it): the one no proxy on the way changes, so a copy that a proxy moved
    to another instance of this S-CSCF under a branch of its own (RFC 3261 §16.6 step 7)
    is still known as the same REGISTER."""
    to = req.to
    call_id = req.call_id
    if not call_id:
        raise SipParseError("missing Call-ID")
    auth = _plain_digest(req)
    if auth is None:
        cred = req.authorization
        if cred is not None:
            if (cred.scheme or "").lower() != "digest":
                raise SipParseError("Authorization: only the Digest scheme is supported")
            # The params by lowered name, built in C; reversed, so that the first of a
            # repeated name is the one kept (as cred.get)
            given = cred.params[::-1]
            auth = _digest_params(
                dict(zip(map(str.lower, map(_NAME, given)), map(_VALUE, given), strict=True))
            )
    contacts: list[ContactSpec] = []
    star = False
    plain = plain_contact(req)
    if plain is not None and (plain.group(3) is None or int(plain.group(3)) <= 0xFFFFFFFF):
        # the one Contact a UE registers, read without its view (the same URI and expires)
        expires = plain.group(3)
        contacts.append(ContactSpec(plain.group(1), None if expires is None else int(expires)))
    else:
        for c in req.contacts:
            if c.star:
                star = True
                continue
            params = c.params
            if len(params) == 1 and params.items[0][0].lower() == "expires":
                rest = ""  # the usual Contact: nothing but expires
            else:
                rest = str(params.without("expires"))
            contacts.append(ContactSpec(c.uri, c.expires, rest))
    # (positional, in field order: a frozen dataclass's keywords cost a name search each)
    return RegisterRequest(
        to.uri,  # impu
        call_id,
        req.cseq.seq,
        auth,
        tuple(contacts),
        star,
        req.expires,
        tuple(req.get_all("path")),
        req.method,
        req.body,
        (req.via[-1].branch or "") if keep_branch else "",
    )


def response_for(req: Request, reply: Reply, to_tag: str) -> Response:
    return make_response(
        req, reply.status, reply.reason, to_tag=to_tag, headers=list(reply.headers)
    )


# --------------------------------------------------------------------------- Cx ↔ core


def outcome_of(answer: Any) -> CxOutcome | None:
    """None for success; else how the Cx answer failed (TS 29.229 §6.2)."""
    result = answer.result
    if result is not None and 2000 <= result < 3000:
        return None
    if answer.experimental_result_code is not None:
        code = answer.experimental_result_code
        if code == cx.DIAMETER_ERROR_USER_UNKNOWN:
            return CxOutcome.USER_UNKNOWN
        if code == cx.DIAMETER_ERROR_IDENTITIES_DONT_MATCH:
            return CxOutcome.IDENTITIES_DONT_MATCH
        if code == cx.DIAMETER_ERROR_AUTH_SCHEME_NOT_SUPPORTED:
            return CxOutcome.AUTH_SCHEME_NOT_SUPPORTED
        return CxOutcome.REFUSED
    # RFC 6733 §7.1: 3xxx protocol errors and 4xxx transient failures (TOO_BUSY,
    # UNABLE_TO_DELIVER) mean "try later", not "this user is refused".
    if result is None or 3000 <= result < 5000:
        return CxOutcome.UNAVAILABLE
    if result == cx.DIAMETER_AUTHORIZATION_REJECTED:
        return CxOutcome.REFUSED
    # Other base 5xxx codes (UNABLE_TO_COMPLY, MISSING_AVP, ...) say the exchange failed,
    # not that this user is refused: a server error, not 403.
    return CxOutcome.HSS_ERROR


def vectors_from_maa(answer: Any) -> list[AuthVectorItem]:
    """SIP-Auth-Data-Items → vectors (SIP-Authenticate = RAND‖AUTN, SIP-Authorization = XRES)."""
    items = sorted(answer.sip_auth_data_items, key=lambda i: i.sip_item_number or 0)
    out = []
    for item in items:
        scheme = (item.sip_authentication_scheme or cx.SCHEME_AKAV1_MD5).lower()
        algorithm = _SCHEME_TO_ALGORITHM.get(scheme)
        if algorithm is None:
            continue
        if algorithm == "MD5":
            out.append(AuthVectorItem("MD5", password=item.sip_authorization or b""))
            continue
        out.append(
            AuthVectorItem(
                algorithm,
                rand=item.rand or b"",
                autn=item.autn or b"",
                xres=item.sip_authorization or b"",
                ck=item.confidentiality_key or b"",
                ik=item.integrity_key or b"",
            )
        )
    return out


# --------------------------------------------------------------------------- the S-CSCF


def _uris(value: object) -> tuple[str, ...]:
    """A list of IMPUs from a published record (another instance's; checked)."""
    if type(value) is not list:
        return ()
    return tuple(u for u in value if type(u) is str)


def _removal(impu: str, record: dict) -> RemoveRegistration:
    """The end of `impu` as an S-CSCF sharing the store published it (`_publish_ended`);
    the registration as it was where it reads as one of `impu` (else its contacts go
    unnamed in the NOTIFY)."""
    impi, reason = record.get("impi"), record.get("reason")
    reg: Registration | None = None
    text = record.get("registration")
    if type(text) is str:
        with contextlib.suppress(Exception):
            reg = Registration.from_json(text)
    return RemoveRegistration(
        impu,
        impi if type(impi) is str else "",
        reason if type(reason) is str else "network-initiated",
        reg if reg is not None and reg.impu == impu else None,
    )


def _age_challenge(record: dict, wall: float) -> None:
    """A kept challenge's `left` less the wall-clock time since it was written
    (`saved_at`), where both read as numbers."""
    at, left = record.get("saved_at"), record.get("left")
    if isinstance(at, (int, float)) and isinstance(left, (int, float)):
        record["left"] = left - max(0.0, wall - at)


class _Peers:
    """With a shared store, the S-CSCF's view of the others sharing it."""

    __slots__ = (
        "beat_at",
        "cut_off",
        "follower",
        "heart",
        "held",
        "stopped",
        "stopped_since",
        "store_silent",
        "sweeper",
        "to_sweep",
        "to_take",
        "unwritten",
    )

    def __init__(self) -> None:
        # hears of the registrations the others end or change (`_changed_elsewhere`),
        # for the subscriptions to them held here
        self.follower: asyncio.Future | None = None
        # says that we run (`_heartbeats`); those seen stopped at the last look, whose
        # subscribers we tell of the ends we make; those newly seen so, for `_sweeps`
        self.heart: asyncio.Future | None = None
        self.stopped: set[str] = set()
        self.to_sweep: set[str] = set()
        # when each was first seen stopped (our clock; again after a take-over that
        # left some behind), and those due for a take-over (`TAKE_OVER_AFTER`)
        self.stopped_since: dict[str, float] = {}
        self.to_take: set[str] = set()
        self.sweeper: asyncio.Future | None = None
        self.store_silent = False  # (the heartbeat's warning: once per outage)
        # when our last heartbeat that landed was sent (monotonic clock), whether we are
        # cut off (`Scscf._cut_off`), the NOTIFYs held meanwhile (the last one of each
        # subscription: a reginfo document is the full state), and the IMPUs whose
        # subscriptions could not be written meanwhile (written once back)
        self.beat_at = time.monotonic()
        self.cut_off = False
        self.held: dict[tuple[str, tuple[str, str]], tuple] = {}
        self.unwritten: set[str] = set()


class Scscf:
    """One S-CSCF: the registrar core, its Cx client, its binding store and its timer.

    `handle_request(request, respond)` is what the SIP server calls for every request
    that reaches the S-CSCF; `respond` sends a response back on the request's
    transaction. `cx_send` sends a Cx request to the HSS and returns the answer.
    """

    def __init__(
        self,
        config: ScscfConfig,
        *,
        cx_send: CxSender,
        store: BindingStore | None = None,
        clock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = os.urandom,
        send_request: Callable[[Request, tuple[str, int]], Awaitable[Response]] | None = None,
        resolve: Callable[[str], str] | None = None,
        cx_ask: CxAsker | None = None,
        send_request_callback: RequestSender | None = None,
    ) -> None:
        self.config = config
        # reg-event (RFC 3680): subscriptions, and how to send their NOTIFYs.
        # (their expiries too: one loop timer serves them and the registrar core)
        self.subscriptions = RegSubscriptions()
        self._send_request = send_request
        # the callback forms (the server's node and endpoint): a MAR/SAR or a NOTIFY
        # waits for its answer without a Task each
        self._send_callback = send_request_callback if send_request is not None else None
        self._resolve = resolve or (lambda host: host)
        self._contact = f"<sip:{_uri_host(config.address)}:{config.port}>"
        # NOTIFY target → address: the P-CSCFs' few, resolved once (bounded: a UE's own
        # subscription without a route set targets its contact)
        self._addresses: dict[str, tuple[str, int]] = {}
        self.core = RegistrarCore(RegistrarPolicy.from_config(config), random_bytes=random_bytes)
        self.store: BindingStore = (
            store
            if store is not None
            else open_binding_store(config.binding_store, prefix=config.binding_store_prefix)
        )
        self._shared = not isinstance(self.store, MemoryBindingStore)
        # (an answer may reach another S-CSCF sharing the store, or this one restarted)
        self.core.share_challenges = self._shared and config.share_challenges
        self._cx_send = cx_send
        self._cx_ask = cx_ask
        self._clock = clock
        self._random = random_bytes
        self._pending: dict[int, tuple[Request, Respond]] = {}
        self._token = 0
        self._session = 0
        self._tasks: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._rearm_mark = -1  # `_rearm`: the deadline count when it last looked
        self._closed = False
        # A shared store keeps the reg-event subscriptions too: the IMPUs whose
        # subscriptions changed since they were last written, and whether a writer
        # task is at it.
        self._subs_dirty: set[str] = set()
        self._subs_writing = False
        # ... and the subscriptions ended whose final NOTIFY awaits its answer, by IMPU:
        # kept in the store, marked `ending`, until it comes, so that a crash meanwhile
        # does not take the end with it (the next start sends it again).
        self._ending: dict[str, list[tuple[RegSubscription, str]]] = {}
        # a stop asked for (`ScscfServer.drain`): the open challenges are written for
        # the next S-CSCF on the same store (`close`)
        self.keep_challenges = False
        # With a shared store: what it knows of the other S-CSCFs sharing it (one
        # attribute: past 30 an instance's attributes no longer share their keys, and
        # every attribute read of the hot path costs more)
        self._peers = _Peers()

    # ------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Adopt the registrations already in the store (restart with Redis), and their
        reg-event subscriptions: the watchers to tell when one ends."""
        now = self._clock()
        if self._shared:
            # running again: the others leave our subscribers to us (those seen stopped
            # are swept by the first heartbeat, not here: a start waits for no sweep)
            started = time.monotonic()
            try:
                await self.store.heartbeat(self._contact, ALIVE_FOR)
                self._peers.beat_at = started
                # (what was taken from an earlier run at this Contact is not ours to drop)
                await self.store.taken_from(self._contact)
            except Exception as exc:
                log.warning("binding store: heartbeat failed: %s", str(exc).splitlines()[0])
        for reg in await self.store.all():
            self.core.load(reg)
        ended: list[tuple[RegSubscription, object, str]] = []
        for record in await self.store.all_subscriptions(self._contact):
            sub = self._adopt_subscription(record, now)
            if sub is None:
                continue
            if record.get("ending"):
                ended.append((sub, record["ending"], "final_notify_sent_again"))
            else:
                ended.append((sub, None, "ended_while_down_notified"))
        await self._take_challenges(now)
        if self._shared:
            self._peers.follower = asyncio.ensure_future(
                self.store.follow_changes(self._changed_elsewhere, self._changes_missed)
            )
        # Registrations that lapsed while we were down expire now (TIMEOUT SAR), their
        # subscribers told; so are those of registrations that ended meanwhile.
        await self._run_actions(self.core.handle_timer(now))
        for sub, reason, counter in ended:
            await self._end_from_store(sub, reason, counter)
        if self._shared:
            self._peers.heart = asyncio.ensure_future(self._heartbeats())
        self._rearm()

    async def _end_from_store(self, sub: RegSubscription, reason: object, counter: str) -> None:
        """The final NOTIFY of a subscription taken from the store whose registration
        ended where nobody told it (TS 24.229 §5.4.2.1.2): one of ours whose
        registration ended through another S-CSCF while we were down (its publication
        reached nobody here), one whose final NOTIFY the S-CSCF before us sent but never
        saw answered (it crashed with the NOTIFY retransmitting; `reason`: the end's, as
        it kept it), or one a stopped S-CSCF kept to a registration gone (`_sweep`).
        The contacts come from the ended registration's record where it is kept; with
        none, it ends as expired. The subscriber may never have had it (the P-CSCF's cue
        to release the UE's SAs: TS 24.229 §5.2.3); one that had it answers 481."""
        try:
            record = await self.store.ended_record(sub.impu)
        except Exception as exc:  # the store is down: the end is told anyway
            log.warning("binding store: end of %s not read: %s", sub.impu, exc)
            record = None
        removed = _removal(sub.impu, record) if record is not None else None
        if removed is None or (reason is not None and removed.reason != reason):
            # (none kept, or an older end's)
            removed = RemoveRegistration(
                sub.impu, "", reason if type(reason) is str else "timeout", None
            )
        self.core.counters[counter] += 1
        self._notify_ended(sub, removed, self._clock())

    # ------------------------------------------------------------- others stopped

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._task_failed()

    async def _beat(self) -> None:
        """Say that we run; an S-CSCF sharing the store newly seen stopped has the
        subscriptions it kept to registrations that ended (and its final NOTIFYs under
        way) told from here (`_sweep`, in a task of its own: however long it takes, the
        heartbeat goes on)."""
        peers = self._peers
        started = time.monotonic()
        try:
            stopped = set(await self.store.heartbeat(self._contact, ALIVE_FOR))
        except Exception as exc:  # the store is down: nobody's state is known
            if not peers.store_silent:
                peers.store_silent = True
                log.warning("binding store: heartbeat failed: %s", str(exc).splitlines()[0])
            return
        peers.store_silent = False
        told = peers.cut_off  # (`_cut_off` has warned)
        lapsed = told or started - peers.beat_at >= ALIVE_FOR - HEARTBEAT
        peers.beat_at = started
        if lapsed:
            peers.cut_off = True  # (until `_back` has read what was taken meanwhile)
            if not await self._back(told):
                return
        newly = stopped - peers.stopped
        peers.stopped = stopped
        for notifier in sorted(newly):
            log.info(
                "scscf: %s stopped; the ends of its subscriptions are told from here", notifier
            )
        peers.to_sweep |= newly
        now = self._clock()
        since = peers.stopped_since
        for notifier in [n for n in since if n not in stopped]:
            del since[notifier]  # back, or forgotten once nothing of it was left
        for notifier in newly:
            since[notifier] = now
        for notifier, at in since.items():
            if now - at >= TAKE_OVER_AFTER:
                since[notifier] = now  # (tried again after as long, if it leaves some)
                peers.to_take.add(notifier)
        if (peers.to_sweep or peers.to_take) and (peers.sweeper is None or peers.sweeper.done()):
            peers.sweeper = asyncio.ensure_future(self._sweeps())

    def _cut_off(self) -> bool:
        """With a shared store: whether the others may see us stopped (our last
        heartbeat that landed was sent ALIVE_FOR - HEARTBEAT s ago or more), from then
        until `_back` has run. Meanwhile we serve no reg-event subscriber and hold our
        NOTIFYs: a subscription the others take is theirs alone."""
        peers = self._peers
        if peers.cut_off:
            return True
        if time.monotonic() - peers.beat_at < ALIVE_FOR - HEARTBEAT:
            return False
        peers.cut_off = True
        self.core.counters["store_cut_off"] += 1
        log.warning(
            "scscf: no heartbeat has reached the binding store for %.1f s: the other "
            "S-CSCFs may take our reg-event subscriptions; SUBSCRIBEs answered 503 and "
            "NOTIFYs held until it is reached again",
            time.monotonic() - peers.beat_at,
        )
        return True

    async def _back(self, told: bool) -> bool:
        """Our heartbeat landed after one lapsed: the subscriptions the others took
        meanwhile (`taken_from`) are served here no more, dropped without a NOTIFY
        (the taker told each subscriber in its dialog, and the refreshes go there),
        with the NOTIFYs held for them; the NOTIFYs held for the rest go now, and what
        could not be written meanwhile is written (logged when `_cut_off` warned, `told`,
        or something changed). False (still cut off, tried again at the next heartbeat)
        when what was taken cannot be read."""
        peers = self._peers
        try:
            records = await self.store.taken_from(self._contact)
        except Exception as exc:
            log.warning("binding store: what was taken not read: %s", str(exc).splitlines()[0])
            return False
        taken = {(r.get("impu"), (r.get("call_id"), r.get("remote_tag"))) for r in records}
        held, peers.held = peers.held, {}
        dropped = 0
        for impu, key in taken:
            if type(impu) is not str:
                continue
            sub = self.subscriptions.get(impu, key)
            if sub is not None:
                self.subscriptions.remove(sub)
            for ending, _ in list(self._ending.get(impu, ())):
                if ending.key == key:
                    self._ended_told(ending)  # (its final NOTIFY is the taker's)
            was_held = held.pop((impu, key), None) is not None
            if sub is not None or was_held:
                dropped += 1
        peers.cut_off = False
        now = self._clock()
        sent = 0
        for sub, body, reason, ending in held.values():
            if reason is None and sub not in self.subscriptions:
                continue  # ended here since without a NOTIFY (its subscriber gone)
            self._send_notify(sub, body, now, terminated_reason=reason, ending=ending)
            sent += 1
        unwritten, peers.unwritten = peers.unwritten, set()
        for impu in unwritten:
            self._keep_subscriptions(impu)
        self.core.counters["subscription_taken_while_cut_off"] += dropped
        if told or dropped or sent:  # (a lapse nothing asked about passes quietly)
            log.info(
                "scscf: the binding store is reached again; %d reg-event subscriptions "
                "taken meanwhile dropped here, %d held NOTIFYs sent",
                dropped,
                sent,
            )
        return True

    async def _sweeps(self) -> None:
        peers = self._peers
        try:
            while peers.to_sweep or peers.to_take:
                take = not peers.to_sweep
                pending = peers.to_take if take else peers.to_sweep
                notifier = min(pending)
                pending.discard(notifier)
                if notifier in peers.stopped:  # (not back meanwhile)
                    await self._sweep(notifier, take_over=take)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._task_failed()

    async def _sweep(self, notifier: str, *, take_over: bool = False) -> None:
        """The subscriptions the stopped S-CSCF `notifier` kept to registrations that are
        gone (they ended while it was stopping or stopped, its publication heard by
        nobody there) or whose final NOTIFY it had under way: taken, and their final
        NOTIFY sent from here, in their dialogs (TS 24.229 §5.4.2.1.2). Those to live
        registrations stay for it (or for the end or change made here:
        `_end_for_stopped`, `_change_for_stopped`), unless `take_over` (it has been
        stopped `TAKE_OVER_AFTER` s): then they are held here and told so
        (`_hold_taken`), so that their refreshes, which went to it and failed, come
        here. Stops where `notifier` runs again."""
        try:
            records = await self.store.all_subscriptions(notifier)
        except Exception as exc:
            self.core.counters["store_errors"] += 1
            log.warning("binding store: subscriptions of %s not read: %s", notifier, exc)
            return
        by_impu: dict[str, list[dict]] = {}
        for record in records:
            impu = record.get("impu")
            if type(impu) is str:
                by_impu.setdefault(impu, []).append(record)
        left = False
        told = 0
        for impu, held in by_impu.items():
            if notifier not in self._peers.stopped:
                return  # back: the rest is its own again
            now = self._clock()
            live = None
            try:
                if not all(r.get("ending") for r in held):
                    live = await self.store.get(impu)
                    if live is None or not live.is_live(now):
                        live = None
                    elif not take_over:
                        left = True
                        continue
                taken = await self.store.take_subscriptions(notifier, impu)
            except Exception as exc:
                self.core.counters["store_errors"] += 1
                log.warning("binding store: subscriptions to %s not taken: %s", impu, exc)
                left = True
                continue
            subs = self._taken_subscriptions(taken, now)
            if live is not None:
                if self.core.registrations.get(impu) is None:
                    self.core.load(live)
                told += await self._hold_taken(impu, subs, (), "taken_from_stopped_notifier")
            else:
                for sub, ending in subs:
                    await self._end_from_store(sub, ending, "ended_for_stopped_notifier")
                told += len(subs)
            if told >= TAKE_OVER_BATCH:
                told = 0
                await asyncio.sleep(TAKE_OVER_PAUSE)
        if take_over and by_impu:
            log.info(
                "scscf: %s stopped %g s ago; its reg-event subscriptions are held here now",
                notifier,
                TAKE_OVER_AFTER,
            )
        if not left:
            with contextlib.suppress(Exception):
                await self.store.forget_notifier(notifier)

    async def _end_for_stopped(self, removed: RemoveRegistration) -> None:
        """A registration ended here: the subscriptions to it that S-CSCFs sharing the
        store, stopped now, kept get its final NOTIFY from here (their publication
        reaches nobody there)."""
        now = self._clock()
        for sub, _ in await self._take_from_stopped(removed.impu, now):
            self.core.counters["ended_for_stopped_notifier"] += 1
            self._notify_ended(sub, removed, now)

    async def _change_for_stopped(self, stored: StoreRegistration) -> None:
        """A contact of a registration that stays came or went here: the subscriptions
        to it that stopped S-CSCFs sharing the store kept are taken over and told the
        change, in their dialogs (`_hold_taken`)."""
        impu = stored.registration.impu
        if self.core.registrations.get(impu) is None:
            return
        taken = await self._take_from_stopped(impu, self._clock())
        await self._hold_taken(impu, taken, stored.ended, "changed_for_stopped_notifier")

    async def _hold_taken(
        self,
        impu: str,
        taken: list[tuple[RegSubscription, Any]],
        ended: tuple[tuple[ContactBinding, str], ...],
        counter: str,
    ) -> int:
        """Subscriptions to `impu` (live, held here) taken from a stopped S-CSCF held
        here from now on, each told the registration's state (with the contacts
        `ended` just now) in its dialog. A NOTIFY is a target refresh (the subscriber
        takes its Contact as the dialog's remote target, RFC 6665 §4.1.2.4, RFC 3261
        §12.2.1.2): ours sends the subscriber's refreshes here from now on. One whose
        final NOTIFY was under way there gets that NOTIFY (as `_sweep` sends it).
        Returns how many NOTIFYs went."""
        reg = self.core.registrations.get(impu)
        if reg is None:
            return 0
        now = self._clock()
        for sub, ending in taken:
            if ending:
                await self._end_from_store(sub, ending, "ended_for_stopped_notifier")
                continue
            sub = self.subscriptions.add(sub, reg)
            self.subscriptions.arm(sub)
            self.core.counters[counter] += 1
            body = reginfo_body(impu, reg, version=sub.version, now=now, ended=ended)
            self._send_notify(sub, body, now)
        self._rearm()
        return len(taken)

    async def _take_from_stopped(self, impu: str, now: float) -> list[tuple[RegSubscription, Any]]:
        """The unexpired subscriptions to `impu` that the stopped S-CSCFs sharing the
        store kept, taken from it (GETDEL), each with the reason of a final NOTIFY it
        had under way (`ending`; None if none)."""
        found: list[tuple[RegSubscription, Any]] = []
        for notifier in sorted(self._peers.stopped):
            try:
                taken = await self.store.take_subscriptions(notifier, impu)
            except Exception as exc:
                self.core.counters["store_errors"] += 1
                log.warning("binding store: subscriptions of %s not taken: %s", notifier, exc)
                continue
            found += self._taken_subscriptions(taken, now)
        return found

    def _taken_subscriptions(
        self, records: list[dict], now: float
    ) -> list[tuple[RegSubscription, Any]]:
        """The unexpired subscriptions among records taken from the store, each with the
        reason of a final NOTIFY under way (`ending`; None if none)."""
        out = []
        for record in records:
            sub = self._stored_subscription(record)
            if sub is not None and sub.expires_at > now:
                out.append((sub, record.get("ending")))
        return out

    def _stored_subscription(self, record: dict) -> RegSubscription | None:
        """A subscription as the store kept it, its NOTIFY CSeq and reginfo version moved
        past what a crash could have lost; None (counted, logged) when it does not read
        as one."""
        try:
            return RegSubscription.from_dict(record, RESTORED_GAP)
        except (KeyError, TypeError, ValueError) as exc:
            self.core.counters["subscription_unreadable"] += 1
            log.warning("a stored reg-event subscription is unreadable: %s", exc)
            return None

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        peers = self._peers
        loops = [f for f in (peers.follower, peers.heart, peers.sweeper) if f is not None]
        peers.follower = peers.heart = peers.sweeper = None
        for sub in list(self.subscriptions):
            self.subscriptions.disarm(sub)
        await self._cancel_all([*loops, *self._tasks])
        self._tasks.clear()
        # what the cancelled writer had not written yet: the next S-CSCF reads it
        self._subs_writing = False
        if not (self._shared and self._cut_off()):  # (cut off: none may be ours)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._write_subscriptions(), 5.0)
        if self.keep_challenges and self._shared:
            # a stop asked for: the others tell our subscribers of the ends they make
            # from now on, not ALIVE_FOR seconds later (a crash leaves that to the TTL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.leave(self._contact), 2.0)
        if self.keep_challenges and not self.core.share_challenges:
            # (shared, each is in the store under its nonce already: a list as well
            # would let the next start hold one that another instance took and
            # verified, to be answered twice)
            await self._keep_challenges()
        await self.store.close()

    async def _keep_challenges(self) -> None:
        """The open challenges written for the next S-CSCF (`RegistrarCore.challenges_to_keep`:
        XRES or the MD5 password, never IK/CK), each stamped with the wall clock; only
        a shared store keeps them."""
        records = self.core.challenges_to_keep(self._clock())
        if not records:
            return
        wall = time.time()
        for r in records:
            r["saved_at"] = wall
        try:
            await asyncio.wait_for(
                self.store.put_challenges(self._contact, records, max(r["left"] for r in records)),
                5.0,
            )
        except Exception as exc:  # (Redis away: they are challenged anew, as before)
            log.error("scscf: open challenges not kept: %s", str(exc).splitlines()[0])
            return
        log.info("scscf: %d open challenges kept for the next start", len(records))

    async def _take_challenges(self, now: float) -> None:
        """The challenges the S-CSCF before this one kept (`_keep_challenges`), taken."""
        try:
            records = await self.store.take_challenges(self._contact)
        except Exception as exc:
            log.error("scscf: open challenges not read: %s", str(exc).splitlines()[0])
            return
        wall = time.time()
        for r in records:
            _age_challenge(r, wall)
        taken = self.core.adopt_challenges(records, now)
        if records:
            log.info("scscf: %d of %d open challenges taken back", taken, len(records))

    def _adopt_subscription(self, record: dict, now: float) -> RegSubscription | None:
        """A subscription kept in the store by the S-CSCF before us at our Contact (where
        its subscriber sends its refreshes; not another S-CSCF's sharing the store):
        held again until it expires (RFC 6665 §4.2.2). One whose registration lapsed
        meanwhile gets its final NOTIFY from the expiry at start; one whose registration
        is gone is returned, and so is one whose final NOTIFY was under way (`ending`),
        for `_end_from_store`."""
        sub = self._stored_subscription(record)
        if sub is None:
            return None
        if sub.expires_at <= now:
            self._keep_subscriptions(sub.impu)  # gone: so is its record
            return None
        reg = self.core.registrations.get(sub.impu)
        if reg is None or record.get("ending"):
            return sub
        sub = self.subscriptions.add(sub, reg)
        self.subscriptions.arm(sub)
        self.core.counters["subscription_restored"] += 1
        return None

    def _keep_subscriptions(self, impu: str) -> None:
        """The subscriptions to `impu` changed (made, refreshed, a NOTIFY sent, ended): a
        shared store gets them, by one writer task that writes each IMPU's newest state
        in turn (so no older write can land after a newer one)."""
        if not self._shared:
            return
        self._subs_dirty.add(impu)
        if not self._subs_writing and not self._closed:
            self._subs_writing = True
            self._spawn(self._subscriptions_writer())

    async def _subscriptions_writer(self) -> None:
        try:
            await self._write_subscriptions()
        except Exception:
            self._task_failed()
        finally:
            self._subs_writing = False
            self._tasks.discard(current_task())

    async def _write_subscriptions(self) -> None:
        dirty = self._subs_dirty
        while dirty:
            impu = dirty.pop()
            records = [sub.to_dict() for sub in self.subscriptions.of_impu(impu)]
            for sub, reason in self._ending.get(impu, ()):
                records.append({**sub.to_dict(), "ending": reason})
            try:
                written = await self.store.put_subscriptions(self._contact, impu, records)
            except asyncio.CancelledError:
                dirty.add(impu)  # not written: close() writes it
                raise
            except Exception as exc:  # the store is down: SIP goes on without it
                # (written again once it is back: `_back`)
                self._peers.unwritten.add(impu)
                self.core.counters["store_errors"] += 1
                log.warning("binding store write of reg-event subscriptions failed: %s", exc)
                continue
            if not written:  # our heartbeat lapsed: not over what the others may take
                self._peers.unwritten.add(impu)
                self.core.counters["subscriptions_not_written_cut_off"] += 1

    def busy(self) -> bool:
        """Whether a task of ours (a Cx request, a store write, a NOTIFY's delivery) or
        a REGISTER awaiting its reply is in progress."""
        return bool(self._tasks or self._pending)

    # ------------------------------------------------------------- SIP

    async def handle_request(self, request: Request, respond: Respond) -> None:
        pending = self.receive_request(request, respond)
        if pending is not None:
            await pending

    def receive_request(
        self, request: Request, respond: Respond
    ) -> Coroutine[Any, Any, None] | None:
        """`handle_request` without a task where none is needed: the request is handled
        here and now (a SUBSCRIBE, a REGISTER with the memory store: its MAR/SAR run in
        their own task), or the coroutine that handles it (a REGISTER whose record is
        read from a shared store first, a SUBSCRIBE to a registration not known here
        yet) is returned for the caller to run."""
        method = request.method
        if method == "SUBSCRIBE":
            if self._shared:
                if self._cut_off():
                    # (RFC 3263 §4.3: the P-CSCF tries another instance at once)
                    self.core.counters["subscribe_refused_cut_off"] += 1
                    respond(self._unavailable(request))
                    return None
                impu = self._unknown_watched(request)
                if impu is not None:
                    return self._subscribe_shared(impu, request, respond)
                if self._peers.stopped:
                    found = self._refresh_not_held(request)
                    if found is not None:
                        return self._refresh_taken(*found, request, respond)
            self._subscribe(request, respond)
            return None
        if method == "OPTIONS" and _to_a_node(request):
            # asked of the S-CSCF itself (an I-CSCF's probe: RFC 3261 §11.2); one to a
            # user would go on to the user's UE, as sessions would (not here yet)
            tag = self._random(4).hex()
            respond(make_response(request, 200, "OK", to_tag=tag, headers=list(_ALLOW)))
            return None
        if method != "REGISTER":
            # Sessions through the S-CSCF are not this issue's; say so instead of dropping.
            respond(
                make_response(
                    request, 501, "Not Implemented (S-CSCF handles REGISTER and SUBSCRIBE only)"
                )
            )
            return None
        try:
            reg_req = register_request_from_sip(request, self._shared)
        except SipParseError as exc:
            self.core.counters["bad_register"] += 1
            respond(make_response(request, 400, f"Bad Request ({exc.reason})"[:120]))
            return None
        if self._shared:
            return self._register_shared(request, respond, reg_req)
        self._run_now(self._register(request, respond, reg_req))
        self._rearm()
        return None

    def _unavailable(self, request: Request) -> Response:
        """503 with Retry-After (RFC 3261 §21.5.4): this instance cannot serve the
        request now, another instance of the S-CSCF may. With a To tag (§8.2.6.2): the
        I-CSCF tells a 503 of its own (a transport error, no tag) from a peer's by it,
        and relays a peer's when no instance is left, instead of answering 600."""
        return make_response(
            request,
            503,
            "Service Unavailable (binding store out of reach)",
            to_tag=self._random(4).hex(),
            headers=[("Retry-After", str(CUT_OFF_RETRY_AFTER))],
        )

    def _refresh_not_held(self, request: Request) -> tuple[str, tuple[str, str]] | None:
        """(IMPU, dialog key) of an in-dialog SUBSCRIBE (a refresh) to a live
        registration whose subscription is not held here; None otherwise."""
        try:
            if request.to.tag is None:
                return None
            impu = request.to.uri
            tagged = plain_tagged(request.get("from"))
            remote_tag = tagged[1] if tagged is not None else request.from_.tag
        except SipParseError:
            return None
        reg = self.core.lookup(impu, self._clock())
        if reg is None or not remote_tag:
            return None
        key = (request.call_id or "", remote_tag)
        return None if self.subscriptions.get(reg.impu, key) is not None else (reg.impu, key)

    async def _refresh_taken(
        self, impu: str, key: tuple[str, str], request: Request, respond: Respond
    ) -> None:
        """A refresh of a subscription not held here while an S-CSCF sharing the store
        is seen stopped: the P-CSCF moved it from that silent instance
        (`[pcscf].scscf_timeout`). The stopped ones' subscriptions to the IMPU are
        taken now (GETDEL, as the take-over after `TAKE_OVER_AFTER` would): the one
        refreshed is held as if it had been all along and answered as any refresh (its
        200 and NOTIFY carry our Contact: the next refreshes come here), the others
        told in their dialogs (`_hold_taken`). Before 2026-11-28 it was answered 481
        and made anew."""
        now = self._clock()
        taken = await self._take_from_stopped(impu, now)
        reg = self.core.registrations.get(impu)
        others: list[tuple[RegSubscription, Any]] = []
        for sub, ending in taken:
            if reg is not None and not ending and sub.key == key:
                self.subscriptions.arm(self.subscriptions.add(sub, reg))
                self.core.counters["refresh_taken_from_stopped_notifier"] += 1
            else:
                others.append((sub, ending))
        await self._hold_taken(impu, others, (), "taken_from_stopped_notifier")
        self._subscribe(request, respond)
        self._rearm()

    def _unknown_watched(self, request: Request) -> str | None:
        """The IMPU a SUBSCRIBE watches when no live registration of it is known here;
        None when one is (or the To does not parse: `_subscribe` answers that)."""
        try:
            impu = request.to.uri
        except SipParseError:
            return None
        return impu if self.core.lookup(impu, self._clock()) is None else None

    async def _subscribe_shared(self, impu: str, request: Request, respond: Respond) -> None:
        """A SUBSCRIBE to a registration not known here, with a shared store: it may have
        been made through another S-CSCF sharing it (behind one Server-Name, the I-CSCF
        routes the SUBSCRIBE to either: TS 24.229 §5.3.2.1), so it is read first. A
        store that cannot be read gets 503, not 480 (the registration may well be
        there): the P-CSCF tries another instance."""
        if not await self._adopt_stored(impu):
            self.core.counters["subscribe_refused_store_unavailable"] += 1
            respond(self._unavailable(request))
            return
        found = self._refresh_not_held(request) if self._peers.stopped else None
        if found is not None:
            await self._refresh_taken(*found, request, respond)
            return
        self._subscribe(request, respond)
        self._rearm()

    async def _register_shared(
        self, request: Request, respond: Respond, reg_req: RegisterRequest
    ) -> None:
        # Another S-CSCF sharing the store may have changed this IMPU's record.
        try:
            stored = await self.store.get(reg_req.impu)
        except Exception as exc:  # the store is out of reach: do not guess
            log.warning("binding store unavailable: %s", exc)
            self.core.counters["register_refused_store_unavailable"] += 1
            # 503 with Retry-After: the I-CSCF (or a P-CSCF) tries another instance of
            # this S-CSCF at once (RFC 3263 §4.3), which may reach the store
            respond(self._unavailable(request))
            return
        if stored is None:
            self.core.forget(reg_req.impu)
        else:
            self.core.load(stored)
        auth = reg_req.auth
        if auth is not None and auth.nonce and not self.core.has_challenge(auth.nonce):
            await self._take_shared_challenge(auth.nonce)
        await self._run_actions(self._register(request, respond, reg_req))
        self._rearm()

    async def _take_shared_challenge(self, nonce: str) -> None:
        """An answer to a challenge not made here: another S-CSCF sharing the store made
        it (the I-CSCF moved on from a silent instance), or this one before a crash.
        Its record taken from the store (`_share_challenges`) is verified here, where
        it was challenged again before."""
        try:
            record = await self.store.take_challenge(nonce)
        except Exception as exc:  # the store is down: challenged anew
            self.core.counters["store_errors"] += 1
            log.warning("binding store: challenge not read: %s", str(exc).splitlines()[0])
            return
        if record is None:
            return
        _age_challenge(record, time.time())
        if self.core.adopt_challenges([record], self._clock()):
            self.core.counters["challenge_taken_from_store"] += 1

    async def _share_challenges(self) -> None:
        """The challenges made here since the last look, written to the shared store
        before their 401s go (XRES or the MD5 password, never IK/CK)."""
        core = self.core
        made, core.challenges_made = core.challenges_made, []
        now, wall = self._clock(), time.time()
        try:
            for nonce in made:
                record = core.challenge_record(nonce, now)
                if record is not None:
                    record["saved_at"] = wall
                    await self.store.share_challenge(record, record["left"])
        except Exception as exc:  # the store is down: an answer elsewhere is challenged anew
            core.counters["store_errors"] += 1
            log.warning("binding store: challenge not written: %s", str(exc).splitlines()[0])

    async def _drop_shared_challenges(self, nonces: list[str]) -> None:
        try:
            await self.store.drop_challenges(nonces)
        except Exception as exc:  # (they run out on their own)
            self.core.counters["store_errors"] += 1
            log.warning("binding store: challenges not removed: %s", str(exc).splitlines()[0])
        finally:
            self._tasks.discard(current_task())

    def _register(
        self, request: Request, respond: Respond, reg_req: RegisterRequest
    ) -> list[Action]:
        self._token += 1
        token = self._token
        self._pending[token] = (request, respond)
        return self.core.handle_register(token, reg_req, self._clock())

    # ------------------------------------------------------------- reg event

    def _subscribe(self, request: Request, respond: Respond) -> None:
        """SUBSCRIBE to the reg event of a registered IMPU (TS 24.229 §5.4.2.1.1)."""
        event = (request.get("event") or "").split(";", 1)[0].strip().lower()
        if event != "reg":
            respond(make_response(request, 489, "Bad Event", headers=[("Allow-Events", "reg")]))
            return
        try:
            impu = request.to.uri
            tagged = plain_tagged(request.get("from"))  # a P-CSCF's or a UE's From
            if tagged is not None:
                remote_uri, remote_tag = tagged
            else:
                remote = request.from_
                remote_uri, remote_tag = remote.uri, remote.tag
            plain = plain_contact(request)  # a P-CSCF's: no view of it needed
            if plain is not None:
                target: str | None = plain.group(1)
            else:
                contacts = request.contacts
                target = contacts[0].uri if contacts and not contacts[0].star else None
            requested = request.expires
        except SipParseError as exc:
            respond(make_response(request, 400, f"Bad Request ({exc.reason})"[:120]))
            return
        if not remote_tag or target is None:
            respond(
                make_response(
                    request, 400, "Bad Request (SUBSCRIBE needs a From tag and a Contact)"
                )
            )
            return
        now = self._clock()
        reg = self.core.lookup(impu, now)
        if reg is None:
            # §5.4.2.1.1 step 0: no binding for the watched URI
            self.core.counters["subscribe_not_registered"] += 1
            respond(make_response(request, 480, "Temporarily Unavailable (not registered)"))
            return
        watchers = asserted_uris(request) or [remote_uri]
        if not authorised_watcher(reg, watchers):
            # §5.4.2.1.1 step 1: a registration's contacts are not everyone's to read
            self.core.counters["subscribe_forbidden"] += 1
            respond(make_response(request, 403, "Forbidden (not authorised to watch this IMPU)"))
            return
        expires = (
            self.config.max_expires
            if requested is None
            else min(requested, self.config.max_expires)
        )
        local_tag = request.to.tag
        if local_tag is not None:
            held = self.subscriptions.get(reg.impu, (request.call_id or "", remote_tag))
            if held is None or held.local_tag != local_tag:
                # A refresh (RFC 6665 §4.1.2.1) of a subscription we do not hold (ended,
                # expired, never ours): RFC 6665 §4.2.1.2 / RFC 3261 §12.2.2.
                self.core.counters["subscribe_unknown_dialog"] += 1
                respond(make_response(request, 481, "Subscription Does Not Exist"))
                return
        self._keep_subscriptions(reg.impu)
        sub = self.subscriptions.add(
            RegSubscription(  # (positional, in the order of its parameters)
                reg.impu,
                request.call_id or "",  # call_id
                local_tag or self._random(4).hex(),
                remote_tag,
                remote_uri,
                target,  # remote_target
                tuple(request.get_all("record-route")),  # route_set
                now + expires,  # expires_at
            ),
            reg,
        )
        respond(
            make_response(
                request,
                200,
                "OK",
                to_tag=sub.local_tag,
                headers=[("Expires", str(expires)), ("Contact", self._contact)],
                # RFC 3261 §12.1.1: the subscriber (a UE behind its P-CSCF) builds its
                # route set from the Record-Route of the 2xx.
                copy_record_route=True,
            )
        )
        self.core.counters["subscribed"] += 1
        if expires == 0:  # an unsubscribe: the final NOTIFY ends the dialog
            self.subscriptions.remove(sub)
            body = reginfo_body(reg.impu, reg, version=sub.version, now=now)
            self._send_notify(sub, body, now, terminated_reason="timeout")
            return
        body = reginfo_body(reg.impu, reg, version=sub.version, now=now)
        self._send_notify(sub, body, now)
        # RFC 6665 §4.2.1.2: a refresh replaces the expiry; one live entry per subscription.
        self.subscriptions.arm(sub)
        self._rearm()

    def _subscription_expired(self, sub: RegSubscription) -> None:
        """RFC 6665 §4.2.2: a subscription not refreshed in time ends with a final NOTIFY."""
        now = self._clock()
        if self._closed or sub not in self.subscriptions:
            return  # already ended
        if sub.expires_at > now:  # refreshed since its entry was pushed: wait the rest
            self.subscriptions.arm(sub)
            return
        self.subscriptions.remove(sub)
        self._keep_subscriptions(sub.impu)
        self.core.counters["subscription_expired"] += 1
        reg = self.core.lookup(sub.impu, now)
        body = reginfo_body(sub.impu, reg, version=sub.version, now=now)
        self._send_notify(sub, body, now, terminated_reason="timeout")

    def _notify_changed(self, stored: StoreRegistration) -> None:
        """A contact of a registration that stays came or went: every subscriber gets
        the new state, the contacts gone listed terminated with their event (TS 24.229
        §5.4.2.1.2; RFC 3680 §5.3)."""
        reg = stored.registration
        subs = self.subscriptions.of_impu(reg.impu)
        if not subs:
            return
        now = self._clock()
        self.core.counters["notify_contacts_changed"] += 1
        for sub in subs:
            body = reginfo_body(
                reg.impu,
                reg,
                version=sub.version,
                now=now,
                ended=stored.ended,
                created=stored.created,
                gone=stored.gone,
            )
            self._send_notify(sub, body, now)

    async def _adopt_stored(self, impu: str) -> bool:
        """`impu`'s record from the shared store taken up here, if there is one (another
        S-CSCF sharing the store may have made or refreshed it); nothing when the store
        is down. Whether the store could be read."""
        try:
            stored = await self.store.get(impu)
        except Exception as exc:
            log.warning("binding store: %s not read: %s", impu, exc)
            return False
        if stored is not None:
            self.core.load(stored)
        return True

    async def _adopt_of_impis(self, impis: list[str]) -> bool:
        """`_adopt_stored` for every record of `impis` (an RTR naming no IMPU): those
        made through another S-CSCF sharing the store are known here only there."""
        try:
            stored = await self.store.of_impis([i for i in impis if i])
        except Exception as exc:
            log.warning("binding store: registrations of %s not read: %s", impis, exc)
            return False
        for reg in stored:
            self.core.load(reg)
        return True

    async def _publish_ended(self, removed: RemoveRegistration) -> None:
        """Tell the S-CSCFs sharing the store that `removed` ended here: one of them may
        hold reg-event subscriptions to it (`_changed_elsewhere`)."""
        reg = removed.registration
        record = {
            "notifier": self._contact,
            "kind": "ended",
            "impu": removed.impu,
            "impi": removed.impi,
            "reason": removed.reason,
            "registration": reg.to_json() if reg is not None else None,
        }
        if not await self._publish(record):
            self._spawn(self._publish_later(record, None))

    async def _publish_changed(self, stored: StoreRegistration) -> None:
        """Tell the S-CSCFs sharing the store that a contact of a registration that stays
        came or went here (`_notify_changed` told our own subscribers)."""
        reg = stored.registration
        record = {
            "notifier": self._contact,
            "kind": "changed",
            "impu": reg.impu,
            "registration": reg.to_json(),
            "ended": [[binding.to_dict(), event] for binding, event in stored.ended],
            "added": stored.added,
            "created": list(stored.created),
            "gone": list(stored.gone),
        }
        if not await self._publish(record):
            self._spawn(self._publish_later(record, reg.version))

    async def _publish(self, record: dict) -> bool:
        """Whether `record` reached the channel."""
        try:
            await self.store.publish_change(record)
        except Exception as exc:  # the store is down: our own subscribers were told
            log.warning("binding store: change of %s not published: %s", record["impu"], exc)
            return False
        return True

    async def _publish_later(self, record: dict, version: int | None) -> None:
        """A change (`version`: of the record written) or an end (None) made here whose
        publication the store did not take (cut off right after the write): published
        once the store answers (every `EXPIRY_RETRY` s), unless it is no longer true
        there (the record written again since, or, for an end, the IMPU registered
        again): a late end would end the subscriptions of a newer registration held
        elsewhere. Before, it was lost, and the other instances' subscribers never
        heard of it."""

        async def attempt() -> bool | None:
            try:
                current = await self.store.get(record["impu"])
                if (
                    (current is not None)
                    if version is None
                    else (current is None or current.version != version)
                ):
                    return False
                await self.store.publish_change(record)
            except Exception:  # (still out of reach: logged once, by `_publish`)
                return None
            return True

        try:
            counter = "publication_held_store_unavailable"
            if await self._once_the_store_answers(counter, attempt) is False:
                self.core.counters["publication_superseded"] += 1
        except Exception:
            self._task_failed()
        finally:
            self._tasks.discard(current_task())

    def _changed_elsewhere(self, record: dict) -> None:
        """Another S-CSCF sharing the store ended a registration (de-registration, RTR,
        expiry) or added or removed a contact of one: the reg-event subscriptions to it
        held here get the NOTIFY they would have had had it happened here (TS 24.229
        §5.4.2.1.2). Two S-CSCFs behind one Server-Name take a UE's REGISTERs, an RTR
        and the SUBSCRIBEs in any order."""
        if self._closed or record.get("notifier") == self._contact:
            return
        impu = record.get("impu")
        if type(impu) is not str:
            return
        if record.get("kind") == "changed":
            self._contacts_changed_elsewhere(impu, record)
        elif self.subscriptions.of_impu(impu) or impu in self.core.registrations:
            self._ended_elsewhere(impu, record)

    def _changes_missed(self) -> None:
        """The connection the others' changes come over broke and is back: what they
        published meanwhile is lost (`_catch_up`)."""
        if not self._closed:
            self._spawn(self._catch_up())

    async def _catch_up(self) -> None:
        """Each IMPU with reg-event subscriptions here read again from the store, as
        the others' publications would have told it: one whose record is gone and
        whose end is kept (`ended_record`) ended elsewhere, one whose record is not the
        copy held here changed elsewhere (the contacts held here and gone there told
        ended). Before 2026-11-28 such an end, published while this instance's
        connection to Redis was broken (a cut shorter than the heartbeat's), never
        reached its subscribers."""
        try:
            impus = list(dict.fromkeys(sub.impu for sub in self.subscriptions))
            caught = 0
            for impu in impus:
                try:
                    stored = await self.store.get(impu)
                    ended = await self.store.ended_record(impu) if stored is None else None
                except Exception as exc:  # broken again: the next gap tries again
                    log.warning("binding store: catching up: %s", str(exc).splitlines()[0])
                    return
                if not self.subscriptions.of_impu(impu):
                    continue  # (ended here meanwhile)
                held = self.core.registrations.get(impu)
                if stored is None:
                    if ended is not None and ended.get("notifier") != self._contact:
                        caught += 1
                        self._changed_elsewhere(ended)
                elif held is None or held.version != stored.version:
                    gone = [
                        [binding.to_dict(), "unregistered"]
                        for uri, binding in (held.contacts.items() if held else ())
                        if uri not in stored.contacts
                    ]
                    caught += 1
                    self._contacts_changed_elsewhere(
                        impu,
                        {"registration": stored.to_json(), "ended": gone, "added": False},
                    )
            self.core.counters["changes_caught_up"] += caught
            if caught:
                log.info("scscf: %d registrations changed or ended elsewhere caught up", caught)
        except Exception:
            self._task_failed()
        finally:
            self._tasks.discard(current_task())

    def _ended_elsewhere(self, impu: str, record: dict) -> None:
        removed = _removal(impu, record)
        if removed.registration is not None:
            self._forget_ended(removed.registration)
        if not self.subscriptions.of_impu(impu):
            return
        self.core.counters["ended_elsewhere_notified"] += 1
        self._notify_terminated(removed)
        self._rearm()

    def _forget_ended(self, ended: Registration) -> None:
        """Our copy of a registration that ended through another S-CSCF goes, unless it
        is newer than the one that ended (the UE registered again through us since):
        every contact of ours was in the ended one, made by the same REGISTER or one
        before it. Otherwise it stayed until its own expiry, up to the grant (days)."""
        held = self.core.registrations.get(ended.impu)
        if held is None:
            return
        theirs = ended.contacts
        for uri, ours in held.contacts.items():
            binding = theirs.get(uri)
            if binding is None or binding.call_id != ours.call_id or binding.cseq < ours.cseq:
                return
        self.core.forget(ended.impu)
        self.core.counters["ended_elsewhere_forgotten"] += 1

    def _contacts_changed_elsewhere(self, impu: str, record: dict) -> None:
        """The record as the other S-CSCF wrote it is taken up where this one holds the
        registration or subscriptions to it (its copy here was older), and those
        subscribers are told which contacts came or went."""
        subscribed = bool(self.subscriptions.of_impu(impu))
        if not subscribed and impu not in self.core.registrations:
            return
        try:
            reg = Registration.from_json(record["registration"])
            ended = tuple(
                (ContactBinding.from_dict(binding), str(event))
                for binding, event in record.get("ended") or ()
            )
        except Exception:  # (a record of another version, or damaged: not ours to fix)
            self.core.counters["change_unreadable"] += 1
            return
        if reg.impu != impu:
            self.core.counters["change_unreadable"] += 1
            return
        self.core.load(reg)
        if subscribed:
            self.core.counters["changed_elsewhere_notified"] += 1
            self._notify_changed(
                StoreRegistration(
                    reg,
                    ended=ended,
                    added=record.get("added") is True,
                    created=_uris(record.get("created")),
                    gone=_uris(record.get("gone")),
                )
            )
        self._rearm()

    def _notify_terminated(self, removed: RemoveRegistration) -> None:
        """The registration ended: tell every subscriber (TS 24.229 §5.4.1.5, §5.4.2.1.2),
        so that the P-CSCF removes the UE's security associations."""
        subs = self.subscriptions.pop_impu(removed.impu)
        if not subs:
            return
        self._keep_subscriptions(removed.impu)
        now = self._clock()
        for sub in subs:
            self._notify_ended(sub, removed, now)

    def _notify_ended(self, sub: RegSubscription, removed: RemoveRegistration, now: float) -> None:
        """The final NOTIFY of `sub`, ended with the registration `removed`; with a
        shared store it stays there (`_ending`) until the NOTIFY is answered."""
        if removed.reason == "moved":
            # Registered at another S-CSCF (RTR NEW_SERVER_ASSIGNED): the subscription
            # ends here, the registration does not. "deactivated" asks the subscriber
            # to subscribe again at once (RFC 6665 §4.1.3: subscriptions moving between
            # nodes), which now reaches the S-CSCF that serves the user.
            self.core.counters["subscription_moved_on"] += 1
            body = reginfo_unchanged(sub.version)
            self._send_notify(sub, body, now, terminated_reason="deactivated", ending="moved")
            return
        event = TERMINATION_EVENT.get(removed.reason, "deactivated")
        reason = "rejected" if removed.reason == "network-initiated" else "deactivated"
        if removed.reason == "timeout":
            reason = "timeout"
        body = reginfo_body(
            removed.impu, removed.registration, version=sub.version, now=now,
            terminated_event=event,
        )  # fmt: skip
        self._send_notify(sub, body, now, terminated_reason=reason, ending=removed.reason)

    def _send_notify(
        self,
        sub: RegSubscription,
        body: bytes,
        now: float,
        *,
        terminated_reason: str | None = None,
        ending: str | None = None,
    ) -> None:
        if self._send_request is None:
            return
        if self._shared and self._cut_off():
            self._peers.held[(sub.impu, sub.key)] = (sub, body, terminated_reason, ending)
            self.core.counters["notify_held_cut_off"] += 1
            return
        notify = notify_request(
            sub, body, contact=self._contact, now=now, terminated_reason=terminated_reason
        )
        self._keep_subscriptions(sub.impu)  # its CSeq and version moved on
        target = (
            sub.route_set[0].strip("<>").split(">", 1)[0] if sub.route_set else sub.remote_target
        )
        address = self._addresses.get(target)
        if address is None:
            try:
                host, port = split_hostport(target)
                address = (self._resolve(host), port)
            except ValueError as exc:
                self.core.counters["notify_unroutable"] += 1
                log.warning("reg-event NOTIFY to %s: %s", target, exc)
                return
            if len(self._addresses) >= 256:
                self._addresses.clear()
            self._addresses[target] = address
        self.core.counters["notify_sent"] += 1
        final = ending is not None and self._shared
        if final:
            self._ending.setdefault(sub.impu, []).append((sub, ending))
        waiting = sub.in_flight
        if waiting is not None:
            # One NOTIFY of a subscription at a time: sent now, this one could overtake
            # the one still retransmitted (its copies lost), which its subscriber would
            # then refuse (500, a lower CSeq: RFC 3261 §12.2.2), and what that one told
            # (a contact's end) would be lost.
            self.core.counters["notify_waits_for_the_one_before"] += 1
            if waiting:
                waiting.append((notify, address, final))
            else:
                sub.in_flight = [(notify, address, final)]
            return
        self._dispatch_notify(sub, notify, address, final)

    def _dispatch_notify(
        self, sub: RegSubscription, notify: Request, address: tuple[str, int], final: bool
    ) -> None:
        sub.in_flight = ()  # (in flight, none waiting: no list made for the usual case)
        send = self._send_callback
        if send is None or not send(notify, address, partial(self._notify_answered, sub, final)):
            self._spawn(self._deliver(sub, notify, address, final))

    def _next_notify(self, sub: RegSubscription, gone: bool) -> None:
        """The NOTIFY of `sub` in flight was answered (or given up on): the next one
        waiting goes; none when that answer said the subscriber is `gone` (the final
        NOTIFYs among them then count as told)."""
        waiting, sub.in_flight = sub.in_flight, None
        if not waiting or self._closed:
            return
        if gone:
            if any(final for _, _, final in waiting):
                self._ended_told(sub)  # (its records of `sub`, all at once)
            return
        notify, address, final = waiting[0]
        self._dispatch_notify(sub, notify, address, final)
        if len(waiting) > 1:
            sub.in_flight = waiting[1:]

    def _notify_answered(self, sub: RegSubscription, final: bool, response: Response) -> None:
        """The final response to a NOTIFY (the callback form of `_deliver`)."""
        if self._closed:
            return
        gone = True
        try:
            gone = self._notify_outcome(sub, response)
        except Exception:
            self._task_failed()
        finally:
            if final:
                self._ended_told(sub)
            self._next_notify(sub, gone)

    def _notify_outcome(self, sub: RegSubscription, response: Response) -> bool:
        """Whether the answer to a NOTIFY of `sub` says its subscriber is gone (the
        subscription then ends here)."""
        if response.status in (404, 408, 481) or response.status >= 500:
            # RFC 6665 §4.2.2: the subscriber is gone; end the subscription.
            self.core.counters["notify_failed"] += 1
            self.subscriptions.remove(sub)
            self._keep_subscriptions(sub.impu)
            return True
        return False

    def _ended_told(self, sub: RegSubscription) -> None:
        """The final NOTIFY of `sub` answered (or given up on): its record goes."""
        held = self._ending.get(sub.impu)
        if held is None:
            return
        left = [entry for entry in held if entry[0] is not sub]
        if left:
            self._ending[sub.impu] = left
        else:
            del self._ending[sub.impu]
        self._keep_subscriptions(sub.impu)

    async def _deliver(
        self, sub: RegSubscription, notify: Request, address: tuple[str, int], final: bool
    ) -> None:
        gone = True
        try:
            assert self._send_request is not None
            gone = self._notify_outcome(sub, await self._send_request(notify, address))
        except Exception:
            self._task_failed()
        finally:
            self._tasks.discard(current_task())
            if final and not self._closed:
                self._ended_told(sub)
            self._next_notify(sub, gone)

    # ------------------------------------------------------------- actions

    def _run_now(self, actions: Iterable[Action]) -> None:
        """The actions that wait for nothing: a reply, a Cx request (in a task of its
        own), and with the memory store its writes. All of them, with that store."""
        for action in actions:
            if isinstance(action, Reply):
                self._reply(action)
            elif isinstance(action, (AskVectors, AskAssignment)):
                self._ask(action)
            elif isinstance(action, StoreRegistration):
                self._memory().put_now(action.registration)
                if action.tells:
                    self._notify_changed(action)
            elif isinstance(action, RemoveRegistration):
                self._memory().delete_now(action.impu)
                self._notify_terminated(action)

    def _memory(self) -> MemoryBindingStore:
        store = self.store
        assert isinstance(store, MemoryBindingStore)  # a shared one is written awaiting
        return store

    async def _run_actions(self, actions: list[Action]) -> None:
        if not self._shared:
            self._run_now(actions)
            return
        # A shared store: its reads and writes are awaited, in the actions' order.
        core = self.core
        if core.challenges_made:
            await self._share_challenges()
        claimed_elsewhere: set[str] = set()
        held: dict[str, RemoveRegistration] = {}
        unwritten = refused = False
        for action in actions:
            if isinstance(action, StoreRegistration):
                if action.if_unchanged:
                    partial = await self._store_partial_expiry(action.registration)
                    if partial is None:  # told, or not, when the store says
                        self._spawn(self._partial_expiry_later(action))
                    written = bool(partial)
                else:
                    written = await self._store_ok(self.store.put(action.registration))
                    unwritten = not written
                if written and action.tells:
                    self._notify_changed(action)
                    await self._publish_changed(action)
                    if self._peers.stopped:
                        await self._change_for_stopped(action)
            elif isinstance(action, RemoveRegistration):
                if action.reason == "timeout":
                    claim = await self._claim_lapsed(action.impu)
                    if claim is None:
                        held[action.impu] = action  # ended, or not, when the store says
                        continue
                    if claim != "removed":
                        claimed_elsewhere.add(action.impu)
                    if claim == "live":
                        continue  # refreshed through another S-CSCF: adopted again
                elif not await self._store_ok(self.store.delete(action.impu)):
                    self._notify_terminated(action)
                    self._spawn(self._delete_later(action))  # published once it lands
                    continue
                self._notify_terminated(action)
                if action.impu not in claimed_elsewhere:  # (the claimer tells the rest)
                    await self._publish_ended(action)
                    if self._peers.stopped:
                        await self._end_for_stopped(action)
            elif isinstance(action, Reply) and unwritten and 200 <= action.status < 300:
                # (a 200 for bindings the store does not have: chaos seed 10177)
                self.core.counters["register_refused_store_write_failed"] += 1
                self._reply(action, unwritten=True)
                unwritten, refused = False, True
            elif isinstance(action, AskAssignment) and action.impu in held:
                # The lapsed registration's TIMEOUT_DEREGISTRATION SAR (`_expire_binding`
                # asks it right after the removal) waits with it.
                self._spawn(self._claim_later(held.pop(action.impu), action))
            elif isinstance(action, AskAssignment) and await self._needless(
                action, claimed_elsewhere
            ):
                self.core.abandon(action.token)
            else:
                self._run_now((action,))
        if core.challenges_ended:
            # after the bindings' write: another instance getting the REGISTER's copy
            # meanwhile finds the challenge or the bindings it made, never neither
            ended, core.challenges_ended = core.challenges_ended, []
            if not refused:  # (refused: the instance the REGISTER moves to verifies it)
                self._spawn(self._drop_shared_challenges(ended))

    async def _needless(self, ask: AskAssignment, claimed_elsewhere: set[str]) -> bool:
        """Whether another S-CSCF sharing the store made the background SAR `ask`
        needless: it claimed the lapsed registration (and sends the SAR itself), or it
        registered the user whose challenge ran out here."""
        kind = ask.assignment_type
        if kind is AssignmentType.TIMEOUT_DEREGISTRATION:
            return ask.impu in claimed_elsewhere
        if kind is AssignmentType.AUTHENTICATION_TIMEOUT:
            return await self._registered_elsewhere(ask.impu)
        return False

    async def _registered_elsewhere(self, impu: str) -> bool:
        """A challenge made here ran out unanswered here (reg-await-auth) with nothing
        registered here: whether the store has the IMPU registered all the same (its
        answer went to another S-CSCF sharing the store, which registered the UE). Then
        no AUTHENTICATION_TIMEOUT SAR (TS 29.228 §6.1.2: it is for a user that never
        answered)."""
        try:
            stored = await self.store.get(impu)
        except Exception as exc:  # the store is down: the SAR goes, as before
            self.core.counters["store_errors"] += 1
            log.warning("binding store: %s not read: %s", impu, str(exc).splitlines()[0])
            return False
        if stored is None or not stored.is_live(self._clock()):
            return False
        self.core.counters["auth_timeout_registered_elsewhere"] += 1
        return True

    async def _claim_lapsed(self, impu: str, *, quiet: bool = False) -> Claim | None:
        """A binding lapsed here; with a shared store, exactly one S-CSCF removes it and
        sends the TIMEOUT_DEREGISTRATION SAR (docs/lifecycle.md). None: the store could
        not be reached, so whether another S-CSCF refreshed it is not known."""
        try:
            claim = await self.store.claim_lapsed(impu, self._clock())
            stored = await self.store.get(impu) if claim == "live" else None
        except Exception as exc:
            if not quiet:  # (a retry of `_claim_later`: once a second while it is down)
                self.core.counters["store_errors"] += 1
                log.warning("binding store claim failed: %s", str(exc).splitlines()[0])
            return None
        if claim == "live":
            self.core.counters["expiry_refreshed_elsewhere"] += 1
            if stored is not None:
                self.core.load(stored)
        elif claim == "gone":
            self.core.counters["expiry_claimed_elsewhere"] += 1
        return claim

    async def _claim_later(self, removed: RemoveRegistration, ask: AskAssignment) -> None:
        """A registration lapsed here while the shared store was out of reach: it ends
        (NOTIFYs, publication, SAR) only once the store confirms that no other S-CSCF
        refreshed it, tried every `EXPIRY_RETRY` s until the store answers. Ending it
        unconfirmed told the P-CSCF and the HSS that a user was gone whom another
        instance had just re-registered (chaos seed 10112: the UE's next REGISTER
        went over SAs the P-CSCF had removed). Meanwhile the HSS keeps the user
        registered here, and the record stays in the store as it was."""
        try:
            claim = await self._once_the_store_answers(
                "expiry_held_store_unavailable",
                lambda: self._claim_lapsed(removed.impu, quiet=True),
            )
            if claim is None:  # (closed)
                return
            if claim == "live":
                self.core.abandon(ask.token)
                return
            self._notify_terminated(removed)
            if claim == "gone":  # another S-CSCF claimed it: it publishes, it sends the SAR
                self.core.abandon(ask.token)
                return
            await self._publish_ended(removed)
            if self._peers.stopped:
                await self._end_for_stopped(removed)
            self._run_now((ask,))
        except Exception:
            self._task_failed()
        finally:
            self._tasks.discard(current_task())

    async def _store_partial_expiry(self, reg: Registration, *, quiet: bool = False) -> bool | None:
        """Some contacts of `reg` lapsed here, others stay: write that back only over the
        stored copy this S-CSCF last saw; if another S-CSCF sharing the store refreshed
        (or removed) it meanwhile, adopt the stored record instead (docs/lifecycle.md).
        Whether it was written; None when the store could not be reached."""
        try:
            if await self.store.put_if_unchanged(reg):
                return True
            stored = await self.store.get(reg.impu)
        except Exception as exc:
            if not quiet:  # (a retry of `_partial_expiry_later`: once a second)
                self.core.counters["store_errors"] += 1
                log.warning("binding store write failed: %s", str(exc).splitlines()[0])
            return None
        self.core.counters["partial_expiry_changed_elsewhere"] += 1
        if stored is None:
            self.core.forget(reg.impu)
        else:
            self.core.load(stored)  # re-arms its timer: a lapsed contact there expires next
        return False

    async def _partial_expiry_later(self, stored: StoreRegistration) -> None:
        """Some contacts lapsed here while the shared store was out of reach: the change
        is written, and told (NOTIFYs, publication), only once the store takes it over
        the copy read here, tried every `EXPIRY_RETRY` s; refreshed or removed through
        another S-CSCF meanwhile, the stored record is adopted instead and nobody is
        told of an end that did not happen there. Before, the contacts went here and
        nobody heard of it."""
        try:
            written = await self._once_the_store_answers(
                "expiry_held_store_unavailable",
                lambda: self._store_partial_expiry(stored.registration, quiet=True),
            )
            if written:
                self._notify_changed(stored)
                await self._publish_changed(stored)
                if self._peers.stopped:
                    await self._change_for_stopped(stored)
        except Exception:
            self._task_failed()
        finally:
            self._tasks.discard(current_task())

    async def _delete_later(self, removed: RemoveRegistration) -> None:
        """A registration ended here (de-registration, RTR) while the shared store was
        out of reach: its record is removed, and the end published to the S-CSCFs
        sharing the store, once the store answers (every `EXPIRY_RETRY` s), unless the
        IMPU was registered again through another S-CSCF meanwhile (a newer record:
        kept, no end published). Before, the record stayed until its expiry: the
        other instances took the user for registered, and their subscribers never
        heard of the end."""
        reg = removed.registration

        async def attempt() -> bool | None:
            try:
                if reg is None:
                    await self.store.delete(removed.impu)
                elif (
                    not await self.store.delete_if_unchanged(reg)
                    and await self.store.get(removed.impu) is not None
                ):
                    return False
            except Exception:  # (still out of reach: counted and logged once)
                return None
            return True

        try:
            removed_here = await self._once_the_store_answers(
                "removal_held_store_unavailable", attempt
            )
            if removed_here is None:  # (closed)
                return
            if not removed_here:
                self.core.counters["removal_changed_elsewhere"] += 1
                return
            await self._publish_ended(removed)
            if self._peers.stopped:
                await self._end_for_stopped(removed)
        except Exception:
            self._task_failed()
        finally:
            self._tasks.discard(current_task())

    async def _once_the_store_answers(
        self, counter: str, attempt: Callable[[], Awaitable[_T | None]]
    ) -> _T | None:
        """The loop of a change held while the shared store is out of reach (`counter`
        counts them): `attempt` every `EXPIRY_RETRY` s until it answers (None: not
        reached); None once this instance closes."""
        self.core.counters[counter] += 1
        while await self._retry_pause():
            result = await attempt()
            if result is not None:
                return result
        return None

    async def _cancel_all(self, futures: list[asyncio.Future]) -> None:
        """Cancel `futures` and wait for them, CLOSE_WAIT s at most: a close must end
        even if one swallowed its cancellation (a store call can) and went on; it is
        left to the loop's end, counted and logged."""
        for future in futures:
            future.cancel()
        if not futures:
            return
        done, pending = await asyncio.wait(futures, timeout=CLOSE_WAIT)
        for future in done:
            if not future.cancelled():
                future.exception()  # (retrieved: a failure here is no longer news)
        if pending:
            self.core.counters["close_left_running"] += len(pending)
            log.warning(
                "scscf: %d task(s) still running %.0f s after the close cancelled them: left",
                len(pending),
                CLOSE_WAIT,
            )

    async def _retry_pause(self) -> bool:
        """The wait of a loop that tries the store again (`_claim_later` and the like):
        False once this instance closes. A store call can swallow the close's
        cancellation (redis-py's reads can), and the loop would then go on, and close()
        wait for it, forever (a chaos run hung so at its end)."""
        await asyncio.sleep(EXPIRY_RETRY)
        task = current_task()
        return not self._closed and not (task is not None and task.cancelling())

    async def _store(self, op: Awaitable[None]) -> None:
        await self._store_ok(op)

    async def _store_ok(self, op: Awaitable[None]) -> bool:
        """Whether the write `op` reached the store (a failure is counted and logged)."""
        try:
            await op
        except Exception as exc:
            self.core.counters["store_errors"] += 1
            log.warning("binding store write failed: %s", exc)
            return False
        return True

    def _reply(self, reply: Reply, *, unwritten: bool = False) -> None:
        """Send `reply`; with `unwritten` (a 2xx to a REGISTER whose bindings the shared
        store did not take: cut off between the read and the write), 503 with
        Retry-After instead, on which the I-CSCF tries another instance at once. The
        bindings stay in this instance's memory until the next REGISTER reads the
        store again."""
        entry = self._pending.pop(reply.token, None)
        if entry is None:
            return
        request, respond = entry
        try:
            if unwritten:
                respond(self._unavailable(request))
                return
            respond(response_for(request, reply, self._random(4).hex()))
        except Exception as exc:  # the transaction ended meanwhile (e.g. closed endpoint)
            self.core.counters["reply_too_late"] += 1
            log.info("REGISTER %s: answer %d not sent: %s", request.call_id, reply.status, exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Each spawned body (_cx, _deliver, _fire) ends in try/except/finally
        # that counts and logs a failure and leaves self._tasks: no done callback, which
        # the loop would run as one more event per task. A task cancelled before it
        # started never runs its finally: close() clears what it cancelled.
        self._tasks.add(asyncio.get_running_loop().create_task(coro))

    def _task_failed(self) -> None:
        """In a spawned body's ``except Exception``: a bug must not pass silently, it is
        logged with its traceback and counted."""
        self.core.counters["internal_errors"] += 1
        log.error("S-CSCF task failed", exc_info=True)

    def _session_id(self) -> str:
        self._session += 1
        return f"{self.config.diameter.host};{int(self._clock())};{self._session}"

    def _mar_for(self, ask: AskVectors) -> cx.MultimediaAuthRequest:
        # The scheme comes from the subscriber's record at the HSS ("Unknown"), never from
        # the REGISTER (PITFALLS); a resynchronisation names the scheme it resynchronises.
        if ask.resync is None and ask.algorithm is None:
            item = _ASK_ANY_SCHEME  # the usual MAR's item: one immutable value for all
        else:
            scheme = _ALGORITHM_TO_SCHEME.get(ask.algorithm or "", cx.SCHEME_UNKNOWN)
            item = cx.SipAuthDataItem(
                sip_authentication_scheme=scheme, sip_authorization=ask.resync
            )
        d = self.config.diameter
        return cx.MultimediaAuthRequest(
            session_id=self._session_id(),
            origin_host=d.host,
            origin_realm=d.realm,
            destination_realm=d.hss.realm,
            destination_host=d.hss.host,
            user_name=ask.impi,
            public_identity=ask.impu,
            server_name=self.config.server_name,
            sip_number_auth_items=ask.count,
            sip_auth_data_item=item,
        )

    def _sar_for(self, ask: AskAssignment) -> cx.ServerAssignmentRequest:
        d = self.config.diameter
        return cx.ServerAssignmentRequest(
            session_id=self._session_id(),
            origin_host=d.host,
            origin_realm=d.realm,
            destination_realm=d.hss.realm,
            destination_host=d.hss.host,
            user_name=ask.impi,
            public_identities=(ask.impu,),
            server_name=self.config.server_name,
            server_assignment_type=int(ask.assignment_type),
            user_data_already_available=int(ask.user_data_available),
        )

    def _maa_received(self, ask: AskVectors, answer: Any, now: float) -> list[Action]:
        try:
            vectors = vectors_from_maa(answer)
        except Exception as exc:  # a malformed item (wrong lengths) from the HSS
            log.warning("MAA for %s unusable: %s", ask.impi, exc)
            vectors = []
        return self.core.vectors_received(ask.token, vectors, now)

    def _ask(self, ask: AskVectors | AskAssignment) -> None:
        """Send one MAR or SAR (TS 29.228 §6.3, §6.1.2). With the memory store and the
        node's callback form its answer is handled in the callback (no Task); else in a
        Task (`_cx`), which also awaits the shared store's writes."""
        if self._cx_ask is None or self._shared:
            self._spawn(self._cx(ask))
            return
        try:
            request = self._mar_for(ask) if isinstance(ask, AskVectors) else self._sar_for(ask)
            self._cx_ask(request, partial(self._cx_answered, ask, request))
        except Exception:
            self._task_failed()

    def _cx_answered(
        self, ask: AskVectors | AskAssignment, request: Any, answer: Any, exc: Any
    ) -> None:
        if self._closed:
            return  # as a cancelled task: nothing after close()
        try:
            self._run_now(self._cx_outcome(ask, request, answer, exc))
            self._rearm()
        except Exception:
            self._task_failed()

    def _cx_outcome(
        self, ask: AskVectors | AskAssignment, request: Any, answer: Any, exc: Any
    ) -> list[Action]:
        """Hand the answer (or the failure `exc`) to the core; what it says to do."""
        if exc is not None:  # timeout, no connection, peer down
            log.warning(
                "%s to the HSS failed: %s", type(request).__name__, exc or type(exc).__name__
            )
            outcome: CxOutcome | None = CxOutcome.UNAVAILABLE
        else:
            outcome = outcome_of(answer)
        now = self._clock()
        if outcome is not None:
            return self.core.cx_failed(ask.token, outcome, now)
        if isinstance(ask, AskVectors):
            return self._maa_received(ask, answer, now)
        data = answer.user_data
        text = data.decode("utf-8", "replace") if data else None
        return self.core.assignment_done(ask.token, text, now)

    async def _cx(self, ask: AskVectors | AskAssignment) -> None:
        """The task of one MAR or SAR: ask the HSS, hand the answer (or the failure) to
        the core, run what it says."""
        try:
            request = self._mar_for(ask) if isinstance(ask, AskVectors) else self._sar_for(ask)
            try:
                answer, exc = await self._cx_send(request), None
            except Exception as error:
                answer, exc = None, error
            await self._run_actions(self._cx_outcome(ask, request, answer, exc))
            self._rearm()
        except Exception:
            self._task_failed()
        finally:
            self._tasks.discard(current_task())

    # ------------------------------------------------------------- Cx from the HSS

    async def handle_cx_request(self, request: Any, peer: Any = None) -> Any:
        """RTR and PPR from the HSS (TS 29.228 §6.1.3, §6.1.4)."""
        d = self.config.diameter
        base = {"origin_host": d.host, "origin_realm": d.realm}
        if self._shared and self._cut_off():
            self._refuse_cut_off()
        if isinstance(request, cx.RegistrationTerminationRequest):
            impus = list(request.public_identities) or None
            # Associated-Identities: the subscription's other IMPIs, de-registered too
            # (TS 29.228 §6.1.3; our HSS names them all, its User-Name the first).
            also = request.associated_identities
            impis = list(dict.fromkeys((request.user_name, *(also.user_names if also else ()))))
            if self._shared:
                # The registration may have been made or refreshed through another
                # S-CSCF sharing the store: read it, so that its end is told (to our
                # subscribers, and through the store to the others').
                for impu in impus or []:
                    if not await self._adopt_stored(impu):
                        self._refuse_cut_off()
                if not impus and not await self._adopt_of_impis(impis):
                    self._refuse_cut_off()
            why = request.deregistration_reason  # (mandatory; read with care all the same)
            code = why.reason_code if why is not None else None
            again = code == cx.ReasonCode.SERVER_CHANGE
            moved = code == cx.ReasonCode.NEW_SERVER_ASSIGNED
            count, actions = 0, []
            for impi in impis:
                # NEW_SERVER_ASSIGNED: the User-Name's devices registered at the new
                # S-CSCF (our HSS names the mover so) and go quietly; the other IMPIs'
                # devices did not, and are told to register again ("deactivated",
                # TS 24.229 §5.4.1.5), which takes them there. Before 2026-11-29 (ninth
                # session) they went quietly too, registered nowhere until they refreshed.
                mover = moved and impi == request.user_name
                removed, ends = self.core.network_deregister(
                    impi,
                    impus,
                    self._clock(),
                    register_again=again or (moved and not mover),
                    moved=mover,
                )
                count += removed
                actions += ends
            if self._shared and not count:
                # The registration may be known only to the shared store.
                for impu in impus or []:
                    await self._store(self.store.delete(impu))
            await self._run_actions(actions)
            self._rearm()
            return request.answer(**base, result_code=cx.DIAMETER_SUCCESS)
        if isinstance(request, cx.PushProfileRequest):
            if request.user_data:
                text = request.user_data.decode("utf-8", "replace")
                try:
                    _private, identities = parse_user_data(text)
                except UserDataError:
                    return request.answer(
                        **base, experimental_result_code=cx.DIAMETER_ERROR_NOT_SUPPORTED_USER_DATA
                    )
                if self._shared:
                    # The registrations may have been made or refreshed through another
                    # S-CSCF sharing the store: the profile goes on the stored records,
                    # never on a stale copy held here (whose write would take a refresh
                    # back to its old expiry).
                    for identity in {p.identity for p in identities}:
                        if not await self._adopt_stored(identity):
                            self._refuse_cut_off()
                # Only the registrations the document lists: a subscription's implicit
                # sets each have their own (as each one's SAA carried it), and a PPR
                # brings one of them.
                now = self._clock()
                held = [self.core.lookup(p.identity, now) for p in identities]
                impus = list(dict.fromkeys(reg.impu for reg in held if reg is not None))
                if not impus:
                    # TS 29.228 §6.1.4: the HSS may try another IMPI of the user
                    self.core.counters["ppr_user_unknown"] += 1
                    return request.answer(
                        **base, experimental_result_code=cx.DIAMETER_ERROR_USER_UNKNOWN
                    )
                for impu in impus:
                    stored = self.core.push_profile(impu, text, identities)
                    if stored is None:
                        continue
                    if not await self._store_ok(self.store.put(stored.registration)):
                        self._refuse_cut_off()
                    if stored.tells:  # the implicit set changed: its subscribers hear
                        self._notify_changed(stored)
                        if self._shared:
                            await self._publish_changed(stored)
            return request.answer(**base, result_code=cx.DIAMETER_SUCCESS)
        return None

    def _refuse_cut_off(self) -> NoReturn:
        """An RTR or PPR while the shared store is out of reach: the registration's
        state is there (it may have been made through another instance since), and an
        end made here would reach nobody. TOO_BUSY, on which the HSS tries the next
        instance of this S-CSCF (RFC 6733 §7.1.3)."""
        self.core.counters["cx_refused_cut_off"] += 1
        raise RequestRefused(cx.DIAMETER_TOO_BUSY, "binding store out of reach")

    # ------------------------------------------------------------- timer

    def _rearm(self) -> None:
        """One loop timer for the registrar core's deadlines and the subscriptions'."""
        if self._closed:
            return
        # No deadline added since the last look: the earliest can only have moved later
        # (or gone), and a timer armed earlier is left to fire (below): nothing to do.
        mark = self.core.deadlines_added + self.subscriptions.arms  # both only grow
        if mark == self._rearm_mark:
            return
        self._rearm_mark = mark
        deadline = self.core.next_deadline()
        due = self.subscriptions.next_deadline()
        if due is not None and (deadline is None or due < deadline):
            deadline = due
        if deadline == self._timer_at:
            return
        armed = self._timer_at if self._timer is not None else None
        if armed is not None and (deadline is None or armed <= deadline):
            # Armed earlier than needed (the challenge it was for was answered): let it
            # fire and re-arm then, rather than cancel and re-arm twice per registration.
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - self._clock())
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._rearm_mark = -1  # fired: the next _rearm looks again
        now = self._clock()
        for sub in self.subscriptions.pop_due(now):
            self._subscription_expired(sub)
        core_due = self.core.next_deadline()
        if core_due is not None and core_due <= now:
            self._spawn(self._fire())
        else:
            self._rearm()

    async def _fire(self) -> None:
        try:
            await self._run_actions(self.core.handle_timer(self._clock()))
            self._rearm()
        except Exception:
            self._task_failed()
        finally:
            self._tasks.discard(current_task())


def notify_sender(endpoint: Any) -> RequestSender:
    """The NOTIFY sender of an S-CSCF on `endpoint` (a SipEndpoint): its callback form on
    the first transport, as `send_request` sends; it declines (the coroutine form then
    sends) where `send_request` would carry the request over a stream instead (RFC 3261
    §18.1.1: within 200 octets of the MTU, a stream transport at hand)."""

    def send(request: Request, address: tuple[str, int], callback: Callable[[Response], None]):
        transports = endpoint.transports
        if not transports:
            return False
        t = transports[0]
        if endpoint.stream_for(request, t) is not None:
            return False
        endpoint.send_request_callback(request, address, t, callback)
        return True

    return send


class ScscfServer:
    """An S-CSCF with its sockets: SIP (UDP/TCP), a Diameter node towards the HSS (client,
    and a listener when ``[scscf.diameter].port`` is set, for RTR/PPR), and its store."""

    def __init__(
        self,
        config: ScscfConfig,
        *,
        store: BindingStore | None = None,
        observers: tuple[Callable[[Any], None], ...] = (),
        reconnect: float = 2.0,
        network: NetworkConfig | None = None,
    ) -> None:
        self.config = config
        self.network = network
        self._store = store
        self._observers = observers
        self._reconnect = reconnect
        self.endpoint: Any = None
        self.node: Any = None
        self.scscf: Scscf | None = None

    async def start(self) -> None:
        from imsaka.cscf._wiring import add_transports, cx_node, observe
        from imsaka.sip.endpoint import SipEndpoint

        c = self.config
        self.node = cx_node(c.diameter, reconnect=self._reconnect, owner="scscf")
        self.endpoint = SipEndpoint(owner="scscf")
        # Bound before the registrations are read back and the Diameter node is up (a
        # restart): what arrives meanwhile (the I-CSCF's retransmissions) waits for
        # the handler below instead of getting 501.
        self.endpoint.hold_requests()
        network = self.network
        self.scscf = Scscf(
            c,
            cx_send=self.node.request,
            cx_ask=self.node.request_callback,
            store=self._store,
            send_request=self.endpoint.send_request,
            send_request_callback=notify_sender(self.endpoint),
            resolve=network.resolve if network is not None else None,
        )
        self.node.set_request_handler(self.scscf.handle_cx_request)
        await add_transports(self.endpoint, c, "scscf")
        observe(self.node, self.endpoint, self._observers)
        await self.scscf.start()
        await self.node.start()
        scscf = self.scscf

        # The endpoint makes its task from this coroutine directly, so a task cancelled
        # on close before it ran leaves no coroutine never awaited behind.
        def handle(request: Request, tx: Any) -> Coroutine[Any, Any, None] | None:
            return scscf.receive_request(request, tx.respond)

        self.endpoint.set_request_handler(handle)

    async def drain(self, seconds: float = SHUTDOWN_DRAIN) -> None:
        """Before a stop that others outlive (SIGTERM, a restart): up to `seconds` for
        what is under way to end (`_under_way`): the NOTIFYs awaiting their answer
        (retransmitted at T1, 3·T1, 7·T1 over UDP), the REGISTERs and RTRs being
        handled, so that the end of a registration just handled (an RTR's NOTIFY: the
        P-CSCF's cue to release the UE's SAs) is not lost with the process. SIP
        requests are still served meanwhile; once idle, the Diameter node stops (no RTR
        can then arrive between the last look and the close) and what it had started
        ends too. The stop that follows writes the open challenges for the next S-CSCF
        (`Scscf._keep_challenges`)."""
        if self.endpoint is None:
            return
        if self.scscf is not None:
            self.scscf.keep_challenges = True
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while self._under_way() and loop.time() < end:
            await asyncio.sleep(0.05)
        if self.node is not None:
            # No new RTR or PPR from here on (DPR: the HSS tells another S-CSCF, or
            # this one restarted), then what the last of them started (their NOTIFYs).
            await self.node.stop()
            while self._under_way() and loop.time() < end:
                await asyncio.sleep(0.05)

    def _under_way(self) -> bool:
        """Whether anything is in progress: a SIP transaction awaiting its final answer,
        a task of the S-CSCF's (a Cx request, a store write: an RTR's NOTIFYs leave only
        once its record is removed from a shared store), a Diameter request of either
        side not answered yet."""
        assert self.endpoint is not None
        if self.endpoint.layer.pending():
            return True
        if self.scscf is not None and self.scscf.busy():
            return True
        return self.node is not None and any(self.node.pending_counts().values())

    async def stop(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.close()
        if self.node is not None:
            await self.node.stop()
        if self.scscf is not None:
            await self.scscf.close()

    def census(self) -> dict[str, int]:
        """Live per-UE and per-transaction state, for leak checks and metrics."""
        out: dict[str, int] = {}
        if self.scscf is not None:
            core = self.scscf.core.pending_counts()
            out["bindings"] = core["registrations"]
            store = self.scscf.store
            # the memory store counts locally; a shared Redis store is not scanned here
            if hasattr(store, "__len__"):
                out["store_bindings"] = len(store)
            out["challenges"] = core["challenges"]
            out["cached_vectors"] = core["cached_vectors"]
            out["failure_records"] = core["failure_records"]
            out["answered_challenges_open"] = core["answered_challenges"]
            out["cx_operations"] = core["operations"]
            out["requests_awaiting_reply"] = len(self.scscf._pending)
            out["subscriptions"] = len(self.scscf.subscriptions)
            out["subscription_timers"] = self.scscf.subscriptions.armed
            out["subscription_expiry_entries"] = self.scscf.subscriptions.expiry_entries
            out["final_notifies_open"] = sum(map(len, self.scscf._ending.values()))
            out["notifies_held_cut_off"] = len(self.scscf._peers.held)
        if self.endpoint is not None:
            out["transactions_waiting"] = self.endpoint.layer.pending()
        if self.node is not None:
            for key, value in self.node.pending_counts().items():
                out[f"diameter_{key}"] = value
        return out


def run(config: ImsConfig) -> int:
    """``imsaka run scscf``: serve until SIGINT/SIGTERM."""
    from imsaka.cscf._serve import serve_forever, use_uvloop

    assert config.scscf is not None
    use_uvloop()
    return asyncio.run(serve_forever(ScscfServer(config.scscf, network=config.network), "scscf"))
