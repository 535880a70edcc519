"""I-CSCF: the home network's entry point (TS 24.229 §5.3.1, §5.3.2; TS 29.228 §6.1.1, §6.3, §6.7).

For each REGISTER (seed packets 2→3 and 9→10):
1. UAR to the HSS: User-Name from the Authorization username (the IMPI; without
   Authorization, derived from the IMPU), Public-Identity from To, Visited-Network-
   Identifier from P-Visited-Network-ID (absent: the request came from the home network,
   so the first home domain), User-Authorization-Type DE_REGISTRATION when every binding
   asks for expiry 0, REGISTRATION otherwise, REGISTRATION_AND_CAPABILITIES when a
   selected S-CSCF did not answer and another one is being chosen;
2. S-CSCF selection: the Server-Name of the UAA when it names one, otherwise the
   configured S-CSCF that has every Mandatory-Capability, preferring more
   Optional-Capabilities (and the Server-Names the HSS lists first) — TS 29.228 §6.7;
3. forwards with its own Via and the Request-URI set to the S-CSCF's name (packet 3:
   ``REGISTER sip:scscf1.home1.net``); Max-Forwards decremented (483 at zero);
4. relays the responses (packets 5, 12) after popping its Via.

UAA errors become SIP answers (TS 24.229 §5.3.1.2): user unknown → 404, identities
don't match / roaming not allowed / any other permanent error → 403; HSS unreachable,
timeout or a transient Diameter error → 480 with Retry-After; no S-CSCF can be selected
→ 600. The I-CSCF keeps no registration state: only the transactions in flight.

Any other request (TS 24.229 §5.3.2.1: an initial or standalone request for a user of
this network, e.g. a P-CSCF's or an application server's SUBSCRIBE to a user's reg
event) is routed by a user location query: LIR for the Request-URI's identity, then the
LIA's Server-Name, or an S-CSCF chosen from its capabilities when the user has services
while unregistered (2003), gets the request with its URI as the top Route (the
Request-URI unchanged). LIA errors: user unknown → 404, not registered → 480 (TS 29.228
§6.3). INVITE is refused with 501 (this core sets up no sessions yet), a request whose
Route leads past the I-CSCF with 403 (it routes by the HSS only).

`select_scscf`, `uar_for`, `lir_identity`, `reply_for_uaa` and `reply_for_lia` are pure;
`Icscf` is the asyncio edge: a request's steps are callbacks of the Cx answer and of the
forwarded transaction's response (`DiameterNode.request_callback`,
`SipEndpoint.send_request_callback`), no Task each.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from imsaka.config import IcscfConfig, ImsConfig, NetworkConfig, ScscfEntry, split_hostport
from imsaka.cscf.probe import Prober
from imsaka.cscf.registrar import plain_contact, plain_name_addr
from imsaka.diameter import cx
from imsaka.sip import (
    Request,
    Response,
    SipParseError,
    SipUri,
    TelUri,
    VisitedNetworkId,
    parse_uri,
)
from imsaka.sip.headers import digest_param
from imsaka.sip.proxy import (
    check_max_forwards,
    no_503_upstream,
    pop_via,
    preprocess_route,
    push_via,
    retransmission_branch,
    target_token,
)

__all__ = [
    "Icscf",
    "IcscfServer",
    "UarInput",
    "lir_identity",
    "reply_for_lia",
    "reply_for_uaa",
    "run",
    "select_scscf",
    "uar_for",
]

log = logging.getLogger("imsaka.cscf.icscf")

#: ``async send(cx_request) -> cx_answer``; raises on timeout / no connection.
CxSender = Callable[[Any], Awaitable[Any]]
#: ``ask(cx_request, callback)``: ``callback(cx_answer, None)`` or ``callback(None, exc)``
#: (`DiameterNode.request_callback`).
CxAsker = Callable[[Any, Callable[[Any, BaseException | None], None]], None]


# --------------------------------------------------------------------------- pure parts


_DE_REGISTRATION = cx.UserAuthorizationType.DE_REGISTRATION


@dataclass(frozen=True, slots=True)
class UarInput:
    """What goes into the UAR for one REGISTER."""

    impi: str
    impu: str
    visited_network: str
    authorization_type: cx.UserAuthorizationType


def _impi_from_impu(impu: str) -> str:
    text = impu
    for scheme in ("sip:", "sips:", "tel:"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
            break
    return text.split(";", 1)[0]


def _is_deregistration(req: Request, contact_lines: list[str] | None) -> bool:
    # one plain binding with a non-zero expires param (a P-CSCF's registration or
    # refresh): not a de-registration, whatever Expires says (RFC 3261 §10.2.1.1)
    if contact_lines is None:
        return False  # no Contact: a query of the bindings
    value = contact_lines[0]
    if len(contact_lines) == 1 and value and "," not in value:
        plain = plain_name_addr(value)  # plain_contact(req), from the line already read
    else:
        plain = plain_contact(req)
    if plain is not None:
        expires = plain.group(3)
        if expires is not None and 0 < int(expires) <= 0xFFFFFFFF:
            return False
    contacts = req.contacts
    if not contacts:
        return False
    for c in contacts:
        if c.star:
            return True
    # every binding asks for expiry 0 (RFC 3261 §10.2.2): the first that does not
    # decides, and the Expires header is read only for a Contact without the param
    header: int | None = -1
    for c in contacts:
        expires = c.expires
        if expires is None:
            if header == -1:
                header = req.expires
            expires = header
        if expires != 0:
            return False
    return True


# The headers a UAR is made from, read in one pass over the REGISTER (`uar_for`).
_UAR_HEADERS = frozenset({"to", "authorization", "p-visited-network-id", "contact"})


def uar_for(req: Request, network: NetworkConfig, *, capabilities: bool = False) -> UarInput:
    """The UAR fields for a REGISTER (raises `SipParseError` naming a bad header)."""
    lines = req.line_values(_UAR_HEADERS)
    to = lines.get("to")
    plain = plain_name_addr(to[0]) if to is not None else None
    impu = plain.group(1) if plain is not None else req.to.uri
    # only the username is read here: the S-CSCF parses (and checks) the credentials
    cred = lines.get("authorization")
    username = digest_param(cred[0], "username") if cred is not None else None
    impi = username or _impi_from_impu(impu)
    pvni = lines.get("p-visited-network-id")
    if pvni is not None:
        first = pvni[0]
        if not first or "," in first:  # a list on one line, or an empty line first
            first = req.get("p-visited-network-id")
        visited = VisitedNetworkId.parse(first).value  # type: ignore[arg-type]
    else:
        visited = network.home_domains[0] if network.home_domains else ""
    if capabilities:
        kind = cx.UserAuthorizationType.REGISTRATION_AND_CAPABILITIES
    elif _is_deregistration(req, lines.get("contact")):
        kind = cx.UserAuthorizationType.DE_REGISTRATION
    else:
        kind = cx.UserAuthorizationType.REGISTRATION
    return UarInput(impi, impu, visited, kind)


def _carries_a_response(req: Request) -> bool:
    """Whether REGISTER `req` carries a challenge response (its Authorization's
    `response` not empty): the answer to a challenge, or a protected refresh."""
    cred = req.get("Authorization")
    return bool(cred and digest_param(cred, "response"))


def _server_entry(name: str, config: IcscfConfig, network: NetworkConfig) -> ScscfEntry | None:
    entry = config.scscf_by_name(name)
    if entry is not None:
        return entry
    # A Server-Name we were not told about: reach it if its host is an address or a
    # name in [network].hosts (no DNS here).
    try:
        host, port = split_hostport(name.strip("<>"))
        address = network.resolve(host)
    except ValueError:
        return None
    return ScscfEntry(name=name, address=address, port=port)


def select_scscf(
    answer: Any,
    config: IcscfConfig,
    network: NetworkConfig,
    *,
    exclude: frozenset[str] = frozenset(),
) -> ScscfEntry | None:
    """TS 29.228 §6.7 / TS 24.229 §5.3.1.2: the S-CSCF for this registration, or None."""
    name = answer.server_name
    if name and name not in exclude:
        entry = _server_entry(name, config, network)
        if entry is not None:
            return entry
    caps = answer.server_capabilities
    mandatory = set(caps.mandatory_capabilities) if caps is not None else set()
    optional = set(caps.optional_capabilities) if caps is not None else set()
    listed = list(caps.server_names) if caps is not None else []
    # Server-Names the HSS lists come first, in its order, when we know how to reach them.
    for listed_name in listed:
        entry = config.scscf_by_name(listed_name)
        if entry is not None and entry.name not in exclude and mandatory <= set(entry.capabilities):
            return entry
    best: ScscfEntry | None = None
    best_score = -1
    for entry in config.scscfs:
        if entry.name in exclude:
            continue
        offered = set(entry.capabilities)
        if not mandatory <= offered:
            continue
        score = len(optional & offered)
        if score > best_score:
            best, best_score = entry, score
    return best


def reply_for_uaa(
    answer: Any | None, retry_after: int = 30
) -> tuple[int, str, tuple[tuple[str, str], ...]] | None:
    """None when the UAA allows the registration; else the SIP answer to give."""
    if answer is None:
        return _hss_unreachable(retry_after)
    result = answer.result
    if result is not None and 2000 <= result < 3000:
        return None
    code = answer.experimental_result_code
    if code == cx.DIAMETER_ERROR_USER_UNKNOWN:
        return 404, "Not Found (user unknown)", ()
    if code == cx.DIAMETER_ERROR_IDENTITIES_DONT_MATCH:
        return 403, "Forbidden (identities don't match)", ()
    if code == cx.DIAMETER_ERROR_ROAMING_NOT_ALLOWED:
        return 403, "Forbidden (roaming not allowed)", ()
    if code == cx.DIAMETER_ERROR_IDENTITY_NOT_REGISTERED:
        return 403, "Forbidden (identity not registered)", ()
    if code is not None:
        return 403, f"Forbidden (HSS refused: {code})", ()
    if result == cx.DIAMETER_AUTHORIZATION_REJECTED:
        return 403, "Forbidden (authorization rejected)", ()
    return _exchange_failed(result, retry_after)


def _hss_unreachable(retry_after: int) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    return 480, "Temporarily Unavailable (HSS unreachable)", (("Retry-After", str(retry_after)),)


def _exchange_failed(
    result: int | None, retry_after: int
) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    """The answer to give when the Cx exchange failed without refusing the user."""
    later = (("Retry-After", str(retry_after)),)
    if result is None or 3000 <= result < 5000:
        return 480, "Temporarily Unavailable (HSS busy)", later
    # UNABLE_TO_COMPLY, MISSING_AVP, ...: the exchange failed, the user was not refused.
    # An HSS answers 5012 when it is overloaded too: Retry-After (RFC 3261 §21.5.1) lets
    # the UE try again later instead of giving up (bounded on its side).
    return 500, f"Server Internal Error (HSS error {result})", later


def lir_identity(req: Request) -> str:
    """The Public-Identity of the LIR for a request the I-CSCF routes (TS 24.229
    §5.3.2.1: the user the Request-URI names; TS 29.228 §6.3): a SIP URI without its
    port, parameters and headers; a tel URI's number; a SIP URI with user=phone as the
    tel URI it stands for (RFC 3261 §19.1.6). Raises `SipParseError` for a URI that
    names no user of a network."""
    uri = parse_uri(req.uri)
    if isinstance(uri, TelUri):
        return f"tel:{uri.number}"
    if not isinstance(uri, SipUri) or not uri.user:
        raise SipParseError(f"Request-URI names no user: {req.uri[:60]!r}")
    if uri.params.get("user") == "phone":
        return f"tel:{uri.user.split(';', 1)[0]}"
    return uri.aor()


def reply_for_lia(
    answer: Any | None, retry_after: int = 30
) -> tuple[int, str, tuple[tuple[str, str], ...]] | None:
    """None when the LIA names an S-CSCF or the capabilities to choose one by; else the
    SIP answer to give (TS 24.229 §5.3.2.1, TS 29.228 §6.3)."""
    if answer is None:
        return _hss_unreachable(retry_after)
    result = answer.result  # (the Experimental-Result's when there is no Result-Code)
    if result is not None and 2000 <= result < 3000:
        return None  # a Server-Name, or 2003 (DIAMETER_UNREGISTERED_SERVICE) with capabilities
    code = answer.experimental_result_code
    if code == cx.DIAMETER_ERROR_USER_UNKNOWN:
        return 404, "Not Found (user unknown)", ()
    if code == cx.DIAMETER_ERROR_IDENTITY_NOT_REGISTERED:
        return 480, "Temporarily Unavailable (not registered)", ()
    if code is not None:
        return 404, f"Not Found (HSS refused: {code})", ()
    return _exchange_failed(result, retry_after)


# --------------------------------------------------------------------------- the edge


class Icscf:
    """The I-CSCF's request handling, given a SIP endpoint and a Cx sender."""

    def __init__(
        self,
        config: IcscfConfig,
        network: NetworkConfig,
        *,
        endpoint: Any,
        cx_send: CxSender,
        cx_ask: CxAsker | None = None,
    ) -> None:
        self.config = config
        self.network = network
        self.endpoint = endpoint
        self._cx_send = cx_send
        self._session = 0
        self._named: dict[str, ScscfEntry] = {}
        self.counters: Counter[str] = Counter()
        # cx_ask(uar, callback): the UAR sent, callback(answer, None) or (None, exc)
        self._cx_ask = cx_ask if cx_ask is not None else self._ask_in_task
        self._tasks: set[asyncio.Future[Any]] = set()  # coroutine senders' waits
        # the UAR's fixed AVPs, read once (the configuration does not change while we run)
        d = config.diameter
        self._uar_fixed = (d.host, d.realm, d.hss.realm, d.hss.host)
        # S-CSCFs with several instances (`[[icscf.scscfs]]` entries repeating a name):
        # name -> the instances in order; and until when an instance that left a request
        # unanswered is tried after the others
        self._pools: dict[str, tuple[ScscfEntry, ...]] = {}
        for entry in config.scscfs:
            instances = config.instances_of(entry.name)
            if len(instances) > 1:
                self._pools[entry.name] = instances
        self._down_until: dict[tuple[str, int], float] = {}
        self._prober = Prober(
            endpoint, config.name, config.scscf_probe_interval, self._answers_again, self.counters
        )

    def on_request(self, request: Request, tx: Any) -> None:
        """The SipEndpoint request handler: one request, one UAR (REGISTER) or LIR (any
        other), one forwarded transaction, driven by the answers' callbacks (no Task, no
        coroutine)."""
        query = self._admit(request, tx)
        if query is not None:
            _Routing(self, request, tx, query, None).ask()

    async def handle_request(self, request: Request, tx: Any) -> None:
        """`on_request` as a coroutine that returns when the request is answered (or
        raises what a callback raised)."""
        query = self._admit(request, tx)
        if query is not None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            _Routing(self, request, tx, query, done).ask()
            await done

    def _admit(self, request: Request, tx: Any) -> UarInput | str | None:
        """The UAR's input for a REGISTER we route, the LIR's Public-Identity for any
        other request, or None when it is answered here."""
        method = request.method
        if method == "INVITE":
            self.counters["not_routed"] += 1
            tx.reply(501, "Not Implemented (no sessions through this core yet)")
            return None
        preprocess_route(request, self._is_mine)
        too_many = check_max_forwards(request)
        if too_many is not None:
            self.counters["max_forwards"] += 1
            tx.respond(too_many)
            return None
        if method != "REGISTER":
            uri = request.request_uri if method == "OPTIONS" else None
            if isinstance(uri, SipUri) and not uri.user and self._is_mine(uri):
                # asked of the I-CSCF itself (a peer's keep-alive probe: RFC 3261 §11.2)
                allow = [("Allow", "REGISTER, SUBSCRIBE, OPTIONS")]
                tx.reply(200, to_tag=os.urandom(4).hex(), headers=allow)
                return None
            return self._lir_identity(request, tx)
        try:
            return uar_for(request, self.network)
        except SipParseError as exc:
            self.counters["bad_register"] += 1
            tx.reply(400, f"Bad Request ({exc.reason})"[:120])
            return None

    def _lir_identity(self, request: Request, tx: Any) -> str | None:
        """§5.3.2.1: the user a request other than REGISTER is for, or None (answered)."""
        if request.get("route") is not None:
            # A Route past us was set by someone else: we route by the HSS only.
            self.counters["not_routed"] += 1
            tx.reply(403, "Forbidden (the I-CSCF routes by the HSS, not by Route)")
            return None
        try:
            return lir_identity(request)
        except SipParseError as exc:
            self.counters["bad_request"] += 1
            tx.reply(404, f"Not Found ({exc.reason})"[:120])
            return None

    def _ask_in_task(self, uar: Any, callback: Callable[[Any, BaseException | None], None]) -> None:
        """A coroutine `cx_send` behind the callback form (tests, other senders)."""
        self._in_task(
            self._cx_send(uar), lambda answer: callback(answer, None), lambda e: callback(None, e)
        )

    def _in_task(
        self,
        coro: Awaitable[Any],
        on_result: Callable[[Any], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """`coro` in a Task (kept until it ends) whose result or exception goes to the
        callbacks; a cancelled one (close) calls neither."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(task: asyncio.Future[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled():
                exc = task.exception()
                on_error(exc) if exc is not None else on_result(task.result())

        task.add_done_callback(done)

    def _select(self, answer: Any, tried: set[str]) -> ScscfEntry | None:
        """`select_scscf`, remembering where the Server-Names the HSS hands out lead
        (the configuration does not change while we run)."""
        name = answer.server_name
        if name and not tried:
            entry = self._named.get(name)
            if entry is None:
                entry = _server_entry(name, self.config, self.network)
                if entry is not None and len(self._named) < 64:
                    self._named[name] = entry
            if entry is not None:
                return entry
        return select_scscf(answer, self.config, self.network, exclude=frozenset(tried))

    def _instance(self, entry: ScscfEntry, tried: list[ScscfEntry] | None) -> ScscfEntry | None:
        """For an S-CSCF with several instances: the first in order that this request has
        not tried, those that left a request unanswered lately last; None when every
        one was tried. `entry` itself for any other S-CSCF."""
        pool = self._pools.get(entry.name)
        if pool is None:
            return entry if not tried else None
        now = time.monotonic()
        down = self._down_until
        fallback = None
        for instance in pool:
            if tried and instance in tried:
                continue
            if down.get((instance.address, instance.port), 0.0) > now:
                fallback = fallback or instance
                continue
            return instance
        return fallback

    def _mark_down(
        self, entry: ScscfEntry, retry_after: int | None = None, *, alone: bool = False
    ) -> None:
        """`entry` left a request unanswered (or answered 503 with `retry_after`): an
        instance of an S-CSCF with several is tried after the others until it answers a
        probe (or for `scscf_down_time`, or `retry_after`). `alone`: an S-CSCF with one
        instance, which a REGISTER found silent: REGISTERs go to another S-CSCF at once
        for as long (`passed_over`), rather than each waiting out its silence again."""
        if entry.name not in self._pools and not alone:
            return
        self.counters["scscf_instance_down" if not alone else "scscf_down"] += 1
        address = (entry.address, entry.port)
        if retry_after is not None:
            # it answers, but cannot serve now: no request for as long as it asks
            # (RFC 3261 §21.5.4), no probe either
            self._down_until[address] = time.monotonic() + retry_after
            log.warning(
                "S-CSCF %s at %s:%d answered 503; its other instances first for %d s",
                entry.name,
                entry.address,
                entry.port,
                retry_after,
            )
            return
        others = "REGISTERs to other S-CSCFs" if alone else "its other instances first"
        if self.config.scscf_probe_interval > 0:
            # until it answers an OPTIONS (`_answers_again`)
            if self._prober.probing(address):
                return
            self._down_until[address] = math.inf
            self._prober.start(address, self._transport(entry.transport))
            log.warning(
                "S-CSCF %s at %s:%d did not answer; %s until it answers an OPTIONS (every %g s)",
                entry.name,
                entry.address,
                entry.port,
                others,
                self.config.scscf_probe_interval,
            )
            return
        self._down_until[address] = time.monotonic() + self.config.scscf_down_time
        log.warning(
            "S-CSCF %s at %s:%d did not answer; %s for %g s",
            entry.name,
            entry.address,
            entry.port,
            others,
            self.config.scscf_down_time,
        )

    def passed_over(self, entry: ScscfEntry) -> bool:
        """Whether `entry` left a request unanswered lately and has not answered a probe
        since (`_mark_down`)."""
        until = self._down_until.get((entry.address, entry.port))
        return until is not None and until > time.monotonic()

    def _answers_again(self, address: tuple[str, int]) -> None:
        """An instance passed over answered its probe: tried in its turn again."""
        if self._down_until.pop(address, None) is not None:
            self.counters["scscf_instance_up"] += 1
            log.info("S-CSCF instance at %s:%d answers again", *address)

    def close(self) -> None:
        """Stop probing (the endpoint closes)."""
        self._prober.close()

    def _has_live_other(self, tried: set[str], name: str) -> bool:
        """Whether an S-CSCF other than `name`, not in `tried`, has an instance that is
        not passed over (`passed_over`)."""
        return any(
            e.name not in tried and e.name != name and not self.passed_over(e)
            for e in self.config.scscfs
        )

    def _has_untried(self, tried: set[str], also: str = "") -> bool:
        """Whether an S-CSCF is left that is neither in `tried` nor named `also`."""
        return any(e.name not in tried and e.name != also for e in self.config.scscfs)

    def _is_mine(self, uri: Any) -> bool:
        host = (uri.host or "").strip("[]").lower()
        port = uri.port or 5060
        return port == self.config.port and host in (self.config.name.lower(), self.config.address)

    def _is_our_timeout(self, response: Response) -> bool:
        # The endpoint answers a dead next hop itself (408 on Timer F, 503 on a transport
        # error); such a response has our own Via on top and no To tag from a peer.
        return response.to.tag is None

    def _head(self) -> dict[str, str]:
        """The fields every Cx request of ours starts with, a new Session-Id each."""
        host, realm, hss_realm, hss_host = self._uar_fixed
        self._session += 1
        return {
            "session_id": f"{host};{int(time.time())};{self._session}",
            "origin_host": host,
            "origin_realm": realm,
            "destination_realm": hss_realm,
            "destination_host": hss_host,
        }

    def _uar(self, u: UarInput) -> cx.UserAuthorizationRequest:
        return cx.UserAuthorizationRequest(
            **self._head(),
            user_name=u.impi,
            public_identity=u.impu,
            visited_network_identifier=u.visited_network,
            user_authorization_type=int(u.authorization_type),
        )

    def _lir(self, impu: str, *, capabilities: bool) -> cx.LocationInfoRequest:
        return cx.LocationInfoRequest(
            **self._head(),
            public_identity=impu,
            user_authorization_type=(
                int(cx.UserAuthorizationType.REGISTRATION_AND_CAPABILITIES)
                if capabilities
                else None
            ),
        )

    def _forward(self, request: Request, entry: ScscfEntry, reg: _Routing) -> None:
        """The forwarded copy sent; its final response goes to `reg.on_response`."""
        fwd = request.copy()  # Max-Forwards was decremented by check_max_forwards
        if reg.lir is None:
            fwd.uri = entry.name
        else:
            # §5.3.2.1: the S-CSCF as the top Route, the Request-URI (the user) kept
            fwd.add("Route", f"<{_loose(entry.name)}>", first=True)
        transport = self._transport(entry.transport)
        # The same branch for the P-CSCF's retransmission after a restart of ours (one
        # per S-CSCF instance: a failover's differs, a new client transaction per
        # address tried, RFC 3261 §16.6 step 7). The S-CSCF then answers it from the
        # transaction it has (the 401 with the nonce it sent, the 200 without a second
        # SAR), where a new branch would make it a new REGISTER with the same Call-ID
        # and CSeq (RFC 3261 §10.3 step 7: refused). (The instance a REGISTER moves
        # on to knows a copy the one before answered by the UE's Via branch, which the
        # shared store keeps with the bindings.)
        pooled = entry.name in self._pools
        push_via(
            fwd,
            transport.name.upper(),
            self.config.name,
            self.config.port,
            branch=retransmission_branch(request, _instance_token(entry)),
        )
        self.counters["forwarded"] += 1
        addr = (entry.address, entry.port)
        on_response = reg.on_response
        # A REGISTER also moves on from a silent S-CSCF to another one (below, `_silent`)
        # before its Timer F: that runs out with the P-CSCF's and the UE's, too late for
        # the move to answer the UE.
        elsewhere = reg.moves_when_silent() and (
            self._has_untried(reg.tried, entry.name) or bool(reg.left_silent)
        )
        watched = pooled or elsewhere
        if watched:
            on_response = reg.watch(entry, self.config.scscf_timeout, elsewhere)
        send = getattr(self.endpoint, "send_request_callback", None)
        if send is not None:
            key = send(fwd, addr, transport, on_response)
            if watched:
                reg.sent = key
            return
        # an endpoint with the coroutine only (tests' fakes)
        self._in_task(
            self.endpoint.send_request(fwd, addr, transport=transport), on_response, reg.fail
        )

    def _transport(self, name: str) -> Any:
        try:
            return self.endpoint.transport(name)
        except Exception:
            return self.endpoint.transports[0]


def _instance_token(entry: ScscfEntry) -> str:
    """The `target_token` of one instance of an S-CSCF: its name, address and port."""
    return target_token(f"{entry.name} {entry.address}:{entry.port}")


def _loose(name: str) -> str:
    """An S-CSCF's name as a loose-routing Route URI (RFC 3261 §16.12)."""
    return name if ";lr" in name.lower() else f"{name};lr"


class _Routing:
    """One request in flight: a REGISTER (TS 24.229 §5.3.1.2: UAR) or another one for a
    user of ours (§5.3.2.1: LIR, `lir` its Public-Identity), then S-CSCF selection, the
    forwarded transaction, and on a silent or refusing S-CSCF a query with capabilities
    and the next one. Each step is a callback of the answer before it; `done` (the
    coroutine form's future) is resolved when the request is answered."""

    __slots__ = (
        "dereg",
        "done",
        "entry",
        "icscf",
        "instances",
        "left_silent",
        "lir",
        "request",
        "sent",
        "silence",
        "tried",
        "tx",
        "uar_input",
    )

    def __init__(
        self,
        icscf: Icscf,
        request: Request,
        tx: Any,
        query: UarInput | str,
        done: asyncio.Future[None] | None,
    ) -> None:
        self.icscf = icscf
        self.request = request
        self.tx = tx
        if isinstance(query, str):
            self.lir: str | None = query
            self.uar_input: UarInput | None = None
        else:
            self.lir = None
            self.uar_input = query
        uar = self.uar_input
        self.dereg = uar is not None and uar.authorization_type == _DE_REGISTRATION
        self.done = done
        self.tried: set[str] = set()
        self.entry: ScscfEntry | None = None
        # an S-CSCF with several instances: those this request went to, and the timer
        # that moves it on from a silent one
        self.instances: list[ScscfEntry] | None = None
        self.silence: asyncio.TimerHandle | None = None
        self.sent: tuple | None = None  # the copy to the current instance (its key)
        # S-CSCFs this REGISTER left (or passed over) for their silence: it may go back
        # to one once it answers a probe (`_back_again`); None until there is one
        self.left_silent: set[str] | None = None

    def ask(self) -> None:
        icscf = self.icscf
        if self.lir is None:
            assert self.uar_input is not None
            icscf._cx_ask(icscf._uar(self.uar_input), self.on_uaa)
        else:
            icscf._cx_ask(icscf._lir(self.lir, capabilities=bool(self.tried)), self.on_uaa)

    def on_uaa(self, answer: Any, exc: BaseException | None) -> None:
        try:
            self._on_uaa(answer, exc)
        except Exception as failure:
            self.fail(failure)

    def _on_uaa(self, answer: Any, exc: BaseException | None) -> None:
        icscf = self.icscf
        if getattr(icscf.endpoint, "closed", False):
            return  # shutting down: the node failing its requests is no answer to give
        if exc is not None:  # timeout, no connection: the HSS is unreachable
            if not isinstance(exc, Exception):
                raise exc
            query = "UAR" if self.lir is None else "LIR"
            icscf.counters[f"{query.lower()}_failed"] += 1
            who = self.lir if self.uar_input is None else self.uar_input.impu
            log.warning("%s for %s failed: %s", query, who, exc or type(exc).__name__)
            answer = None
        tx = self.tx
        if self.lir is None:
            refusal = reply_for_uaa(answer, icscf.config.retry_after)
        else:
            refusal = reply_for_lia(answer, icscf.config.retry_after)
        if refusal is not None:
            status, reason, headers = refusal
            icscf.counters[f"{'uaa' if self.lir is None else 'lia'}_refused_{status}"] += 1
            tx.reply(status, reason, headers=list(headers))
            self.finish()
            return
        entry = icscf._select(answer, self.tried)
        if entry is not None and icscf._pools:
            self.instances = None
            entry = icscf._instance(entry, None)
        if entry is None:
            icscf.counters["no_scscf"] += 1
            tx.reply(600, "Busy Everywhere (no S-CSCF can be selected)")
            self.finish()
            return
        if (
            icscf.passed_over(entry)
            and self.moves_when_silent()
            and not _carries_a_response(self.request)
            and icscf._has_live_other(self.tried, entry.name)
        ):
            # It left a REGISTER unanswered lately and has not answered a probe since:
            # an initial REGISTER (no challenge response) goes to another S-CSCF at
            # once, as that REGISTER went after `scscf_timeout` s (before 2026-11-29,
            # ninth session, each one waited that long again for as long as it stayed
            # silent). One that carries a response (the answer to its challenge, a
            # protected refresh) still waits for it: moved, it meets a new challenge,
            # which the wait spares it when the S-CSCF is back before its probe says
            # so. Nor when every other one is passed over too: the HSS's choice stands.
            icscf.counters["scscf_passed_over"] += 1
            self._left(entry.name)
            self._elsewhere(entry)
            return
        self.entry = entry
        icscf._forward(self.request, entry, self)

    def watch(
        self, entry: ScscfEntry, timeout: float, elsewhere: bool = False
    ) -> Callable[[Response], None]:
        """The response callback of a copy sent to `entry` (an instance of an S-CSCF
        with several, or a REGISTER's S-CSCF with another one left to choose:
        `elsewhere`): a copy this request has since sent elsewhere answers for nothing;
        silence for `timeout` s moves it on, to the next instance while one is left,
        else (`elsewhere`) to another S-CSCF."""
        if self.instances is None:
            self.instances = []
        self.instances.append(entry)
        self._stop_watch()
        if elsewhere or self.icscf._instance(entry, self.instances) is not None:
            loop = asyncio.get_running_loop()
            self.silence = loop.call_later(timeout, self._silent, entry)

        def on_response(response: Response) -> None:
            if self.entry is entry:
                self._stop_watch()
                self.on_response(response)

        return on_response

    def _stop_watch(self) -> None:
        if self.silence is not None:
            self.silence.cancel()
            self.silence = None

    def _silent(self, entry: ScscfEntry, again: bool = False) -> None:
        """`entry` left the copy unanswered for `scscf_timeout` s (`again`: still,
        looked at once more by `_move_from_silent`)."""
        self.silence = None
        if self.entry is entry and not getattr(self.icscf.endpoint, "closed", False):
            try:
                if again or (not self._next_instance(entry) and self.moves_when_silent()):
                    self._move_from_silent(entry)
            except Exception as failure:
                self.fail(failure)

    def _move_from_silent(self, entry: ScscfEntry) -> None:
        """`entry` is silent: the REGISTER to an S-CSCF not tried, else back to one it
        left for its silence that has answered a probe since. When it left some and
        none is back yet, it stays at `entry` and looks again after `scscf_timeout` s
        (its Timer F still ends it); when it left none, the HSS is asked for another
        all the same (none left: 600)."""
        icscf = self.icscf
        if (
            icscf._has_untried(self.tried, entry.name)
            or self._back_again(entry.name)
            or not self.left_silent
        ):
            self._next_scscf(entry)
            return
        loop = asyncio.get_running_loop()
        self.silence = loop.call_later(icscf.config.scscf_timeout, self._silent, entry, True)

    def _left(self, name: str) -> None:
        if self.left_silent is None:
            self.left_silent = set()
        self.left_silent.add(name)

    def _back_again(self, name: str) -> bool:
        """Whether an S-CSCF other than `name` that this REGISTER left for its silence
        has answered a probe since: it is tried again (taken out of `tried`). A
        partition that moves between two S-CSCFs otherwise left a REGISTER at the one
        it reached last, silent, until Timer F, with the other one back meanwhile
        (lifecycle_chaos --devices 2 --scscf-moves, seed 11136)."""
        left = self.left_silent
        if not left:
            return False
        icscf = self.icscf
        back = {
            n
            for n in left
            if n != name
            and n in self.tried
            and any(e.name == n and not icscf.passed_over(e) for e in icscf.config.scscfs)
        }
        if not back:
            return False
        self.tried -= back
        left -= back
        icscf.counters["scscf_back_again"] += 1
        return True

    def moves_when_silent(self) -> bool:
        """A REGISTER other than a de-registration goes to another S-CSCF after
        `scscf_timeout` s of silence: another S-CSCF holds no registration to end."""
        return self.lir is None and not self.dereg and self.icscf.config.scscf_timeout > 0

    def _next_scscf(self, entry: ScscfEntry) -> None:
        """A REGISTER that `entry` (its last instance) left unanswered for
        `scscf_timeout` s: to another S-CSCF, chosen with the HSS's capabilities, as
        when its Timer F runs out (TS 24.229 §5.3.1.2 leaves the wait to the I-CSCF;
        waiting out Timer F, 32 s, the P-CSCF's and the UE's would run out with it).
        The silent one is sent it no more: were it to answer after all, the user's
        registration there is taken from it by the HSS (RTR NEW_SERVER_ASSIGNED once the
        next one's SAR is in)."""
        icscf = self.icscf
        icscf.counters["scscf_silent"] += 1
        log.warning(
            "S-CSCF %s did not answer a REGISTER within %g s; asking the HSS for another",
            entry.name,
            icscf.config.scscf_timeout,
        )
        self._abandon()
        self.entry = None  # a late answer of the silent one is for nothing
        if entry.name not in icscf._pools:  # (an instance's own was marked, `_silent`)
            icscf._mark_down(entry, alone=True)
        self._left(entry.name)
        self._elsewhere(entry)

    def _elsewhere(self, entry: ScscfEntry) -> None:
        """The REGISTER to another S-CSCF than `entry`: a UAR with capabilities, from
        which the I-CSCF chooses one not tried (TS 24.229 §5.3.1.2)."""
        self.tried.add(entry.name)
        self.icscf.counters["scscf_retry"] += 1
        self.uar_input = uar_for(self.request, self.icscf.network, capabilities=True)
        self.ask()

    def _abandon(self) -> None:
        """The copy to the current S-CSCF is sent no more: should it come back while
        its copy was still being retransmitted, it would take a request answered
        elsewhere (a late de-REGISTER ending the registration made after it); the copy
        to the next one is a new client transaction, its branch of its own."""
        if self.sent is not None:
            abandon = getattr(self.icscf.endpoint, "abandon_request", None)
            if abandon is not None:
                abandon(self.sent)
            self.sent = None

    def _next_instance(self, entry: ScscfEntry, retry_after: int | None = None) -> bool:
        """`entry` did not answer (or answered 503, with `retry_after`): the request to
        the next instance of its S-CSCF, if one is left (TS 24.229 §5.3.1.2 leaves how
        an S-CSCF is reached to the I-CSCF; RFC 3263 §4.3 moves on to the next target
        of the same name)."""
        icscf = self.icscf
        icscf._mark_down(entry, retry_after)
        following = icscf._instance(entry, self.instances) if self.instances else None
        if following is None:
            return False
        icscf.counters["scscf_instance_failover"] += 1
        self._abandon()
        self.entry = following
        icscf._forward(self.request, following, self)
        return True

    def on_response(self, response: Response) -> None:
        try:
            self._on_response(response)
        except Exception as failure:
            self.fail(failure)

    def _on_response(self, response: Response) -> None:
        icscf = self.icscf
        entry = self.entry
        assert entry is not None
        status = response.status
        unreachable = status in (408, 503) and icscf._is_our_timeout(response)
        if unreachable and self.instances is not None and self._next_instance(entry):
            return
        if (
            status == 503
            and not unreachable
            and self.instances is not None
            and self._next_instance(entry, response.retry_after)
        ):
            # an instance that cannot serve now (one cut off from its binding store):
            # the next one at once (RFC 3263 §4.3: a 503 is a failure of that target)
            return
        # A REGISTER moves on from an S-CSCF that turns the user away for now (480,
        # 3xx); another request only from one that does not answer: its 480 is the
        # user's (not registered), and no other S-CSCF holds the registration.
        if unreachable or (self.lir is None and (status == 480 or 300 <= status < 400)):
            # TS 24.229 §5.3.1.2: the selected S-CSCF does not answer (or turns the
            # user away for now): ask the HSS for capabilities and pick another one;
            # with none left, 600 (Busy Everywhere).
            self.tried.add(entry.name)
            if icscf._has_untried(self.tried):
                icscf.counters["scscf_retry"] += 1
                if self.lir is None:
                    self.uar_input = uar_for(self.request, icscf.network, capabilities=True)
                self.ask()
                return
            if unreachable or status < 400:
                icscf.counters["no_scscf"] += 1
                self.tx.reply(600, "Busy Everywhere (no S-CSCF answered)")
                self.finish()
                return
        pop_via(response)
        # (the last instance's 503, or another request's: 500 with its Retry-After)
        no_503_upstream(response)
        self.tx.respond(response)
        self.finish()

    def finish(self) -> None:
        if self.silence is not None:
            self._stop_watch()
        done = self.done
        if done is not None and not done.done():
            done.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """A step raised: the coroutine form raises it, the endpoint's handler answers
        it as it answers a failed handler (500, or 400 for the peer's fault)."""
        if self.silence is not None:
            self._stop_watch()
        done = self.done
        if done is not None:
            if not done.done():
                done.set_exception(exc)
        elif isinstance(exc, Exception):
            self.icscf.endpoint.handler_failed(self.tx, exc)


class IcscfServer:
    """An I-CSCF with its sockets: SIP (UDP/TCP) and a Diameter client to the HSS."""

    def __init__(
        self,
        config: IcscfConfig,
        network: NetworkConfig,
        *,
        observers: tuple[Callable[[Any], None], ...] = (),
        reconnect: float = 2.0,
    ) -> None:
        self.config = config
        self.network = network
        self._observers = observers
        self._reconnect = reconnect
        self.endpoint: Any = None
        self.node: Any = None
        self.icscf: Icscf | None = None

    async def start(self) -> None:
        from imsaka.cscf._wiring import add_transports, cx_node, observe
        from imsaka.sip.endpoint import SipEndpoint

        c = self.config
        self.node = cx_node(c.diameter, reconnect=self._reconnect, owner="icscf")
        self.endpoint = SipEndpoint(owner="icscf")
        self.endpoint.hold_requests()  # until the handler is set below (not 501)
        await add_transports(self.endpoint, c, "icscf")
        observe(self.node, self.endpoint, self._observers)
        await self.node.start()
        self.icscf = Icscf(
            c,
            self.network,
            endpoint=self.endpoint,
            cx_send=self.node.request,
            cx_ask=self.node.request_callback,
        )
        self.endpoint.set_request_handler(self.icscf.on_request)

    async def stop(self) -> None:
        if self.icscf is not None:
            self.icscf.close()
        if self.endpoint is not None:
            await self.endpoint.close()
        if self.node is not None:
            await self.node.stop()

    def census(self) -> dict[str, int]:
        """Live per-transaction state, for leak checks and metrics: SIP transactions
        awaiting a final response, requests forwarded and not answered, Diameter work."""
        out: dict[str, int] = {}
        if self.endpoint is not None:
            out["transactions_waiting"] = self.endpoint.layer.pending()
            out["client_requests_waiting"] = self.endpoint.pending_count()
        if self.node is not None:
            for key, value in self.node.pending_counts().items():
                out[f"diameter_{key}"] = value
        return out


def run(config: ImsConfig) -> int:
    """``imsaka run icscf``: serve until SIGINT/SIGTERM."""
    from imsaka.cscf._serve import serve_forever, use_uvloop

    assert config.icscf is not None
    use_uvloop()
    return asyncio.run(serve_forever(IcscfServer(config.icscf, config.network), "icscf"))
