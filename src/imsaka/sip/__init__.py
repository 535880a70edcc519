"""imsaka.sip: the SIP stack (RFC 3261, RFC 3581, RFC 6026, RFC 3327/3608/3329/7315).

API summary
-----------
Messages (`imsaka.sip.message`)::

    from imsaka.sip import parse_message, SipParseError, Request, Response, make_response
    msg = parse_message(data)            # Request | Response; only SipParseError escapes
    #   SipParseError.status (400, 513, 505) and .reason: the answer to give
    msg.get("via")                       # first value (first comma element of list headers)
    msg.get_all("v")                     # all values, comma-split, over all lines
    msg.set("Max-Forwards", "69"); msg.add("Via", v, first=True); msg.remove("Route")
    msg.pop_first("Via")                 # remove the topmost value of a list header
    msg.to_bytes()                       # untouched header lines byte for byte, Content-Length right
    req = Request("REGISTER", "sip:home1.net", [("Via", ...), ...], body=b"")
    resp = make_response(req, 401, to_tag="5ef4", headers=[("WWW-Authenticate", ...)])
    req.copy()                           # independent header list (for forwarding)

Typed views, parsed on first use and cached (`imsaka.sip.headers`, `imsaka.sip.uri`)::

    msg.via / msg.top_via -> Via (.branch .received .rport .comp .host .port .response_address())
    msg.from_ / msg.to -> NameAddr (.uri .parsed_uri .tag .display_name .params)
    msg.cseq -> CSeq(seq, method); msg.call_id; msg.max_forwards; msg.expires
    msg.contacts -> [Contact] (.expires .q .star); msg.route / record_route / path /
        service_route / name_addrs("P-Associated-URI") -> [NameAddr]
    msg.auth("Authorization") / msg.authorization / msg.www_authenticate -> DigestCredentials
        (cred["nonce"], .ik .ck .auts .integrity_protected, .param(n).quoted,
         .with_param(), .without("ck", "ik"), DigestCredentials.build(...))
    msg.security("Security-Client") -> [SecurityMechanism] (.alg .ealg .spi_c .spi_s
        .port_c .port_s .q .prot .mod, .same_as(), SecurityMechanism.build(...))
    msg.charging_vector -> ChargingVector (.icid_value .orig_ioi .term_ioi)
    AccessNetworkInfo, VisitedNetworkId, ChargingFunctionAddresses, ContentType,
    parse_date, option_tags; URIs: parse_uri -> SipUri | TelUri | AbsoluteUri, Params.
    Every view: ViewClass.parse(text), str(view) parses back to an equal view.

Transactions (`imsaka.sip.transaction`, sans-I/O, RFC 3261 §17 + RFC 6026)::

    layer = TransactionLayer(config=TimerConfig(), reliable=lambda dest: ...)
    layer.send_request(req, dest, now) / receive_response(resp, src, now)
    layer.receive_request(req, src, now, reply_to) / respond(key, resp, now)
    layer.next_deadline(); layer.handle_timer(now); layer.next_event() / events()
    events: Transmit, ResponseReceived, RequestReceived, AckReceived,
            TransactionTimeout(timer="B"/"F"/"H"), TransportError, StrayResponse,
            TransactionTerminated, Dropped(reason)

Transports and the asyncio endpoint (`imsaka.sip.transport`, `imsaka.sip.endpoint`)::

    ep = SipEndpoint(owner="pcscf", timers=TimerConfig(), max_size=65536)
    t = ep.add_transport(await UdpTransport.create("127.0.0.1", 5060, owner="pcscf"))
    t.add_observer(fn)                   # imsaka.wire.WireEvent(protocol="sip")
    ep.set_request_handler(handler)      # handler(request, tx) sync or async;
                                         # tx.respond(resp) / tx.reply(status, ...)
    resp = await ep.send_request(req, addr, transport=t, on_provisional=cb, timeout=None)
    await ep.forward(tx, fwd_copy, next_hop)   # stateful proxying (483/Via/408/503)
    ep.send_stateless(msg, addr); ep.relay_stray_responses(); ep.set_ack_handler(fn)
    ep.set_stateless_handler(fn)         # fn(request, source, transport) -> True if consumed
    ep.forward_stateless(req, addr)      # §16.11, retransmission-stable branch
    SipTransport interface: name, reliable, local_address, send(data, addr),
    set_receiver(cb(data, source, transport)), set_error_handler(cb), close(),
    optional respond_to_source.

Proxy helpers (`imsaka.sip.proxy`, sans-I/O): push_via, pop_via, new_branch,
new_tag, new_call_id (rng injectable), check_max_forwards (483), preprocess_route,
next_hop, add_record_route, add_path, route_from_path, preload_route,
stamp_received (RFC 3581), ack_for_2xx, check_require (420), loop_branch /
detect_loop (482, spirals pass), error_response_bytes (stateless 400/513).
Stream framing: `imsaka.sip.framing.StreamFramer`.
"""

from imsaka.sip.errors import LocalProtocolError, RemoteProtocolError, SipError, SipParseError
from imsaka.sip.headers import (
    AccessNetworkInfo,
    AuthParam,
    ChargingFunctionAddresses,
    ChargingVector,
    Contact,
    ContentType,
    CSeq,
    DigestCredentials,
    NameAddr,
    SecurityMechanism,
    Via,
    VisitedNetworkId,
)
from imsaka.sip.message import (
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_SIZE,
    Message,
    Request,
    Response,
    make_response,
    parse_message,
)
from imsaka.sip.uri import AbsoluteUri, Params, SipUri, TelUri, parse_uri

__all__ = [
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_SIZE",
    "AbsoluteUri",
    "AccessNetworkInfo",
    "AuthParam",
    "CSeq",
    "ChargingFunctionAddresses",
    "ChargingVector",
    "Contact",
    "ContentType",
    "DigestCredentials",
    "LocalProtocolError",
    "Message",
    "NameAddr",
    "Params",
    "RemoteProtocolError",
    "Request",
    "Response",
    "SecurityMechanism",
    "SipError",
    "SipParseError",
    "SipUri",
    "TelUri",
    "Via",
    "VisitedNetworkId",
    "make_response",
    "parse_message",
    "parse_uri",
]
