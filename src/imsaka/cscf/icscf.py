"""I-CSCF: the home network's entry point for REGISTER (TS 24.229 §5.3.1; TS 29.228 §6.1.1, §6.7).

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

`select_scscf`, `uar_for` and `reply_for_uaa` are pure; `Icscf` is the asyncio edge.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from imsaka.config import IcscfConfig, ImsConfig, NetworkConfig, ScscfEntry, split_hostport
from imsaka.cscf.registrar import plain_contact, plain_name_addr
from imsaka.diameter import cx
from imsaka.sip import Request, Response, SipParseError, VisitedNetworkId
from imsaka.sip.headers import digest_param
from imsaka.sip.proxy import check_max_forwards, pop_via, preprocess_route, push_via

__all__ = [
    "Icscf",
    "IcscfServer",
    "UarInput",
    "reply_for_uaa",
    "run",
    "select_scscf",
    "uar_for",
]

log = logging.getLogger("imsaka.cscf.icscf")

#: ``async send(cx_request) -> cx_answer``; raises on timeout / no connection.
CxSender = Callable[[Any], Awaitable[Any]]


# --------------------------------------------------------------------------- pure parts


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


def _is_deregistration(req: Request) -> bool:
    # one plain binding with a non-zero expires param (a P-CSCF's registration or
    # refresh): not a de-registration, whatever Expires says (RFC 3261 §10.2.1.1)
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


def uar_for(req: Request, network: NetworkConfig, *, capabilities: bool = False) -> UarInput:
    """The UAR fields for a REGISTER (raises `SipParseError` naming a bad header)."""
    plain = plain_name_addr(req.get("to"))
    impu = plain.group(1) if plain is not None else req.to.uri
    # only the username is read here: the S-CSCF parses (and checks) the credentials
    cred = req.get("authorization")
    username = digest_param(cred, "username") if cred is not None else None
    impi = username or _impi_from_impu(impu)
    pvni = req.get("p-visited-network-id")
    if pvni is not None:
        visited = VisitedNetworkId.parse(pvni).value
    else:
        visited = network.home_domains[0] if network.home_domains else ""
    if capabilities:
        kind = cx.UserAuthorizationType.REGISTRATION_AND_CAPABILITIES
    elif _is_deregistration(req):
        kind = cx.UserAuthorizationType.DE_REGISTRATION
    else:
        kind = cx.UserAuthorizationType.REGISTRATION
    return UarInput(impi, impu, visited, kind)


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
        return (
            480,
            "Temporarily Unavailable (HSS unreachable)",
            (("Retry-After", str(retry_after)),),
        )
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
    if result is None or 3000 <= result < 5000:
        return 480, "Temporarily Unavailable (HSS busy)", (("Retry-After", str(retry_after)),)
    if result == cx.DIAMETER_AUTHORIZATION_REJECTED:
        return 403, "Forbidden (authorization rejected)", ()
    # UNABLE_TO_COMPLY, MISSING_AVP, ...: the exchange failed, the user was not refused.
    # An HSS answers 5012 when it is overloaded too: Retry-After (RFC 3261 §21.5.1) lets
    # the UE try again later instead of giving up (bounded on its side).
    return (
        500,
        f"Server Internal Error (HSS error {result})",
        (("Retry-After", str(retry_after)),),
    )


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
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.network = network
        self.endpoint = endpoint
        self._cx_send = cx_send
        self._random = random_bytes
        self._session = 0
        self._named: dict[str, ScscfEntry] = {}
        self.counters: Counter[str] = Counter()

    async def handle_request(self, request: Request, tx: Any) -> None:
        """The SipEndpoint request handler: one REGISTER, one UAR, one forwarded transaction."""
        if request.method != "REGISTER":
            self.counters["not_register"] += 1
            tx.reply(501, "Not Implemented (I-CSCF routes REGISTER only)")
            return
        preprocess_route(request, self._is_mine)
        too_many = check_max_forwards(request)
        if too_many is not None:
            self.counters["max_forwards"] += 1
            tx.respond(too_many)
            return
        try:
            uar_input = uar_for(request, self.network)
        except SipParseError as exc:
            self.counters["bad_register"] += 1
            tx.reply(400, f"Bad Request ({exc.reason})"[:120])
            return
        tried: set[str] = set()
        while True:
            uar = self._uar(uar_input)
            try:
                answer = await self._cx_send(uar)
            except Exception as exc:  # timeout, no connection: the HSS is unreachable
                self.counters["uar_failed"] += 1
                log.warning("UAR for %s failed: %s", uar_input.impu, exc or type(exc).__name__)
                answer = None
            refusal = reply_for_uaa(answer, self.config.retry_after)
            if refusal is not None:
                status, reason, headers = refusal
                self.counters[f"uaa_refused_{status}"] += 1
                tx.reply(status, reason, headers=list(headers))
                return
            entry = self._select(answer, tried)
            if entry is None:
                self.counters["no_scscf"] += 1
                tx.reply(600, "Busy Everywhere (no S-CSCF can be selected)")
                return
            response = await self._forward(request, entry)
            unreachable = response.status in (408, 503) and self._is_our_timeout(response)
            if unreachable or response.status == 480 or 300 <= response.status < 400:
                # TS 24.229 §5.3.1.2: the selected S-CSCF does not answer (or turns the
                # user away for now): ask the HSS for capabilities and pick another one;
                # with none left, 600 (Busy Everywhere).
                tried.add(entry.name)
                if self._has_untried(tried):
                    self.counters["scscf_retry"] += 1
                    uar_input = uar_for(request, self.network, capabilities=True)
                    continue
                if unreachable or response.status < 400:
                    self.counters["no_scscf"] += 1
                    tx.reply(600, "Busy Everywhere (no S-CSCF answered)")
                    return
            pop_via(response)
            tx.respond(response)
            return

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

    def _has_untried(self, tried: set[str]) -> bool:
        return any(e.name not in tried for e in self.config.scscfs)

    def _is_mine(self, uri: Any) -> bool:
        host = (uri.host or "").strip("[]").lower()
        port = uri.port or 5060
        return port == self.config.port and host in (self.config.name.lower(), self.config.address)

    def _is_our_timeout(self, response: Response) -> bool:
        # The endpoint answers a dead next hop itself (408 on Timer F, 503 on a transport
        # error); such a response has our own Via on top and no To tag from a peer.
        return response.to.tag is None

    def _uar(self, u: UarInput) -> cx.UserAuthorizationRequest:
        d = self.config.diameter
        self._session += 1
        return cx.UserAuthorizationRequest(
            session_id=f"{d.host};{int(time.time())};{self._session}",
            origin_host=d.host,
            origin_realm=d.realm,
            destination_realm=d.hss.realm,
            destination_host=d.hss.host,
            user_name=u.impi,
            public_identity=u.impu,
            visited_network_identifier=u.visited_network,
            user_authorization_type=int(u.authorization_type),
        )

    def _forward(self, request: Request, entry: ScscfEntry) -> Awaitable[Response]:
        """The forwarded copy sent (the endpoint's coroutine, awaited by the caller)."""
        fwd = request.copy()
        fwd.uri = entry.name  # Max-Forwards was decremented by check_max_forwards
        transport = self._transport(entry.transport)
        push_via(
            fwd,
            transport.name.upper(),
            self.config.name,
            self.config.port,
            rng=self._random,
        )
        self.counters["forwarded"] += 1
        return self.endpoint.send_request(fwd, (entry.address, entry.port), transport=transport)

    def _transport(self, name: str) -> Any:
        try:
            return self.endpoint.transport(name)
        except Exception:
            return self.endpoint.transports[0]


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
        await add_transports(self.endpoint, c, "icscf")
        observe(self.node, self.endpoint, self._observers)
        await self.node.start()
        self.icscf = Icscf(c, self.network, endpoint=self.endpoint, cx_send=self.node.request)
        self.endpoint.set_request_handler(self.icscf.handle_request)

    async def stop(self) -> None:
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
