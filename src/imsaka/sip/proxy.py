"""Proxy core helpers (RFC 3261 §16, RFC 3327 Path, RFC 3608 Service-Route,
RFC 3581 rport) and stateless error answers (§8.2, §16.3).

All functions are sans-I/O: they change or build messages. Randomness (branches)
comes from an injectable `rng(n) -> n random octets` (default `os.urandom`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from imsaka.sip._abnf import MAGIC_COOKIE, REASON_PHRASES, canonical_key
from imsaka.sip.errors import LocalProtocolError, SipParseError
from imsaka.sip.headers import NameAddr, Via
from imsaka.sip.message import Request, Response, make_response
from imsaka.sip.uri import Params, SipUri, TelUri, format_host, host_ip, parse_uri

Rng = Callable[[int], bytes]


def new_branch(rng: Rng | None = None) -> str:
    """A §8.1.1.7 branch: the magic cookie and 64 random bits."""
    return MAGIC_COOKIE + (rng or os.urandom)(8).hex()


def retransmission_branch(request: Request, token: str) -> str:
    """The branch of a transaction-stateful proxy's forwarded copy of `request`, the
    same when the same client transaction upstream is forwarded to the same target
    again, e.g. by the same proxy restarted: the next hop then takes it for the request
    it has answered (RFC 3261 §17.2.3) instead of a new one. It is the upstream branch
    (unique per client transaction, §8.1.1.7) and `token`, a short name of the
    target (`target_token()`), so a copy to another target (a failover) is another
    transaction. A random branch where the upstream one is no RFC 3261 branch."""
    via = request.top_via
    branch = via.branch if via is not None else None
    if not branch or not branch.startswith(MAGIC_COOKIE) or len(branch) < len(MAGIC_COOKIE) + 4:
        return new_branch()
    return f"{branch}.{token}"


@functools.lru_cache(maxsize=64)
def target_token(target: str) -> str:
    """A short token naming `target` in `retransmission_branch` (made once per target:
    a proxy has a few, and forwards every request to one)."""
    import hashlib

    return hashlib.blake2s(target.encode("utf-8", "surrogateescape"), digest_size=3).hexdigest()


def new_tag(rng: Rng | None = None) -> str:
    """A From/To tag (§19.3: at least 32 random bits)."""
    return (rng or os.urandom)(6).hex()


def new_call_id(host: str, rng: Rng | None = None) -> str:
    return f"{(rng or os.urandom)(12).hex()}@{host_ip(host)}"


def push_via(
    msg: Request,
    transport: str,
    host: str,
    port: int | None,
    *,
    branch: str | None = None,
    rng: Rng | None = None,
    rport: bool = False,
    params: dict[str, str | None] | None = None,
) -> Via:
    """Insert our Via on top (§16.6 step 8). Returns the Via added."""
    if not branch:
        branch = new_branch(rng)
    if params:
        items: list[tuple[str, str | None]] = [("rport", None)] if rport else []
        items.extend(params.items())
        items.append(("branch", branch))
        via = Via(transport, format_host(host), port, Params(tuple(items)))
    else:
        # the usual Via (rport and branch only): its text written at once, the text
        # str(via) would build from the params (a proxy pushes one per request)
        pairs = (("rport", None), ("branch", branch)) if rport else (("branch", branch),)
        via = Via(transport, host, port, Params(pairs))  # (brackets an IPv6 host)
        sent_by = via.host if port is None else f"{via.host}:{port}"
        via._text = (
            f"SIP/2.0/{via.transport} {sent_by};rport;branch={branch}"
            if rport
            else f"SIP/2.0/{via.transport} {sent_by};branch={branch}"
        )
    msg.add_top_via(via)
    return via


def loop_hash(request: Request) -> str:
    """§16.3 step 4 / §16.6 step 8: a digest of what decides where a request goes and
    stays the same when it comes back round a loop: Request-URI, From/To tags,
    Call-ID, CSeq number, Route, Proxy-Require and Proxy-Authorization. A spiral
    (an AS changing the Request-URI or Route) changes it."""
    import hashlib

    parts = [
        request.uri,
        request.from_.tag or "",
        request.to.tag or "",
        request.call_id or "",
        str(request.cseq.seq),
        *request.get_all("route"),
        *request.get_all("proxy-require"),
        *request.get_all("proxy-authorization"),
    ]
    return hashlib.blake2s(
        "\x00".join(parts).encode("utf-8", "surrogateescape"), digest_size=6
    ).hexdigest()


def loop_branch(request: Request, rng: Rng | None = None) -> str:
    """A branch carrying the loop hash and a random part: unique per transaction,
    recognisable when the same request returns."""
    return f"{MAGIC_COOKIE}{loop_hash(request)}.{(rng or os.urandom)(6).hex()}"


def stateless_branch(request: Request) -> str:
    """§16.11: a stateless proxy's branch must be the same for every retransmission
    of a request and differ between requests: a digest of the received top Via
    (its branch, or the whole Via for RFC 2543 peers) and the method (ACK and
    CANCEL get their own)."""
    import hashlib

    via = request.get_all("via")[0] if request.has("via") else ""
    seed = f"{via}\x00{request.method}\x00{loop_hash(request)}"
    return (
        MAGIC_COOKIE
        + "sl"
        + hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    )


def detect_loop(request: Request, ours: Callable[[Via], bool]) -> Response | None:
    """§16.3 step 4: 482 Loop Detected when one of our Vias carries the loop hash of
    this very request (it came back unchanged); a spiral passes. Call before our Via
    is pushed."""
    prefix = f"{MAGIC_COOKIE}{loop_hash(request)}."
    for via in request.via:
        branch = via.branch or ""
        if branch.startswith(prefix) and ours(via):
            return make_response(request, 482)
    return None


def pop_via(response: Response) -> Via | None:
    """Remove our topmost Via from a response before relaying it (§16.7 step 3)."""
    return response.pop_top_via()


def no_503_upstream(response: Response) -> None:
    """§16.7 step 6: a proxy does not forward a 503 from downstream, which would tell the
    element before it that this proxy serves nothing (a UE or proxy then moves to
    another one, RFC 3263 §4.3); it sends a 500 in its place. Changed in place, with
    the 503's Retry-After and other fields (§21.5.1: a 500 may say when to retry)."""
    if response.status == 503:
        response.status = 500
        response.reason = f"Server Internal Error (next hop: {response.reason})"


def stamp_received(request: Request, source_host: str, source_port: int) -> None:
    """§18.2.1 + RFC 3581 §4: add `received` when the top Via host differs from the
    packet's source, and fill `rport` when the client asked for it."""
    via = request.top_via
    changed = via
    if host_ip(via.host) != source_host:
        changed = changed.with_param("received", source_host)
    if via.rport is True:
        changed = changed.with_param("rport", str(source_port))
        if "received" not in changed.params:
            changed = changed.with_param("received", source_host)
    if changed is not via:
        request.replace_top_via(changed)


def check_max_forwards(request: Request, default: int = 70) -> Response | None:
    """§16.3 step 3 / §16.6 step 3: 483 when Max-Forwards is 0, else decrement it
    (adding it with `default` when absent). Returns the 483 to send, or None."""
    value = request.max_forwards
    if value is None:
        request.set("Max-Forwards", str(default))
        return None
    if value <= 0:
        return make_response(request, 483)
    request.set("Max-Forwards", str(value - 1))
    return None


def check_require(
    request: Request, supported: set[str] | frozenset[str], header: str = "Require"
) -> Response | None:
    """§8.2.2.3 (UAS, `Require`) / §16.3 step 5 (proxy, `Proxy-Require`): a 420 Bad
    Extension listing the option tags we do not support in `Unsupported`, or None.
    Never for ACK or CANCEL."""
    if request.method in ("ACK", "CANCEL"):
        return None
    wanted = request.get_all(header)
    known = {t.lower() for t in supported}
    missing = [t for t in wanted if t.lower() not in known]
    if not missing:
        return None
    return make_response(request, 420, headers=[("Unsupported", ", ".join(missing))])


def _uri_of(value: str) -> SipUri | TelUri:
    na = NameAddr.parse(value)
    uri = na.parsed_uri
    if not isinstance(uri, SipUri | TelUri):
        raise SipParseError(f"unroutable URI {na.uri[:40]!r}")
    return uri


def preprocess_route(request: Request, is_mine: Callable[[SipUri], bool]) -> None:
    """§16.4: undo a strict-routing previous hop (Request-URI is our Record-Route
    URI: replace it by the last Route value) and remove the top Route if it is ours."""
    routes = request.get_all("route")
    if not routes:
        return  # nothing to undo or remove: the Request-URI is not looked at
    ruri = parse_uri(request.uri)
    if isinstance(ruri, SipUri) and is_mine(ruri):
        last = routes[-1]
        request.uri = NameAddr.parse(last).uri
        keep = routes[:-1]
        request.remove("route")
        for r in keep:
            request.add("Route", r)
        routes = keep
    if routes:
        top = _uri_of(routes[0])
        if isinstance(top, SipUri) and is_mine(top):
            request.pop_first("route")


def next_hop(request: Request) -> SipUri | TelUri:
    """§16.6 steps 6–7 / §16.12: the URI to resolve for forwarding. With a loose
    router (`lr`) on top of Route, that Route URI (Request-URI unchanged); with a
    strict router, rewrite: the Request-URI goes to the end of Route, the top Route
    becomes the Request-URI. Without Route, the Request-URI."""
    routes = request.get_all("route")
    if not routes:
        return parse_uri(request.uri)  # type: ignore[return-value]
    top = _uri_of(routes[0])
    if isinstance(top, SipUri) and top.lr:
        return top
    # strict router (RFC 2543 style)
    request.pop_first("route")
    request.add("Route", f"<{request.uri}>")
    request.uri = NameAddr.parse(routes[0]).uri
    return top


def add_record_route(request: Request, uri: SipUri | str) -> None:
    """§16.6 step 4: our URI with `lr` on top of Record-Route."""
    u = uri if isinstance(uri, SipUri) else SipUri.parse(uri)
    if not u.lr:
        u = u.with_params(u.params.with_param("lr"))
    request.add("Record-Route", f"<{u}>", first=True)


def add_path(request: Request, uri: SipUri | str) -> None:
    """RFC 3327 §5.1: a proxy on the registration path adds its URI (with `lr`) on
    top of Path, and `Require: path` is kept/added by the caller when the registrar
    must support it (TS 24.229 §5.2.2.1)."""
    u = uri if isinstance(uri, SipUri) else SipUri.parse(uri)
    if not u.lr:
        u = u.with_params(u.params.with_param("lr"))
    request.add("Path", f"<{u}>", first=True)


def route_from_path(path_values: list[str]) -> list[str]:
    """RFC 3327 §5.3: a registrar routes terminating requests through the stored
    Path, in order, as a preloaded Route set."""
    return [str(NameAddr.parse(v)) for v in path_values]


def preload_route(request: Request, route_values: list[str]) -> None:
    """Put a route set (Service-Route RFC 3608 §6, or Path) in front of any Route."""
    for value in reversed(route_values):
        request.add("Route", value, first=True)


def ack_for_2xx(invite: Request, response: Response, rng: Rng | None = None) -> Request:
    """§13.2.2.4: the UAC's ACK to a 2xx (sent with `send_stateless`, no transaction):
    Request-URI = the 2xx's Contact, Route = its Record-Route reversed, From/Call-ID
    of the INVITE, To (with tag) of the 2xx, the INVITE's CSeq number, a new branch."""
    contacts = response.contacts
    ack = Request("ACK", contacts[0].uri if contacts else invite.uri)
    via = invite.top_via
    items = tuple((n, v) for n, v in via.params if n.lower() != "branch")
    ack.add(
        "Via",
        str(Via(via.transport, via.host, via.port, Params((*items, ("branch", new_branch(rng)))))),
    )
    ack.add("Max-Forwards", "70")
    for rr in reversed(response.get_all("record-route")):
        ack.add("Route", rr)
    ack.add("From", invite.get("from"))
    ack.add("To", response.get("to"))
    ack.add("Call-ID", invite.call_id)
    ack.add("CSeq", f"{invite.cseq.seq} ACK")
    return ack


def timeout_response(request: Request) -> Response:
    """The TU's own 408 on Timer B/F (§8.1.3.1, §16.7 step 10 for a proxy)."""
    return make_response(request, 408)


def unavailable_response(request: Request, reason: str = "Service Unavailable") -> Response:
    """503 on a transport error towards the next hop (§8.1.3.1, §16.9)."""
    return make_response(request, 503, reason)


def error_phrase(status: int, reason: str) -> str:
    base = REASON_PHRASES.get(status, "Error")
    clean = "".join(c if c.isprintable() else " " for c in reason)[:120]
    return f"{base} ({clean})" if clean else base


_SALVAGE = ("via", "from", "to", "call-id", "cseq")


def error_response_bytes(data: bytes, status: int, reason: str) -> bytes | None:
    """A stateless error answer (e.g. 400 "Bad Request (missing Call-ID)", 513) for a
    request that failed to parse, when enough survives to route it: a request line,
    a Via that parses, Call-ID and CSeq (§8.2 / RFC 3261 §16.3). None for responses,
    for ACK (never answered) and when those headers are missing."""
    end = data.find(b"\r\n\r\n")
    head = data[: end if end >= 0 else min(len(data), 65536)]
    text = head.decode("utf-8", "replace")
    lines = text.split("\r\n")
    first = lines[0].split(" ")
    if not lines[0] or lines[0][:4].upper() == "SIP/" or len(first) < 2:
        return None
    if first[0].upper() == "ACK":
        return None
    found: dict[str, list[str]] = {k: [] for k in _SALVAGE}
    for line in lines[1:]:
        if line[:1] in (" ", "\t") or ":" not in line:
            continue
        name, _, value = line.partition(":")
        key = canonical_key(name)
        if key in found and all(c.isprintable() for c in value):
            found[key].append(value.strip())
    # a response must carry all five (§8.2.6.2); without them the peer could not match it
    if not all(found[k] for k in _SALVAGE):
        return None
    try:
        for v in found["via"]:
            Via.parse(v.split(",")[0])
    except SipParseError:
        return None
    resp = Response(status, error_phrase(status, reason))
    try:
        for key in _SALVAGE:
            for v in found[key][: 32 if key == "via" else 1]:
                resp.add(key, v)
    except LocalProtocolError:
        return None
    return resp.to_bytes()


def is_request_bytes(data: bytes) -> bool:
    return data.lstrip(b"\r\n")[:4].upper() != b"SIP/"
