"""Proxy core helpers (RFC 3261 §16, RFC 3327, RFC 3608, RFC 3581) and a stateful
proxy chain over loopback UDP: UE -> proxy -> registrar."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from imsaka.sip import Request, Response, SipUri, make_response, parse_message
from imsaka.sip.endpoint import SipEndpoint
from imsaka.sip.proxy import (
    add_path,
    add_record_route,
    check_max_forwards,
    new_branch,
    new_call_id,
    new_tag,
    next_hop,
    pop_via,
    preload_route,
    preprocess_route,
    push_via,
    retransmission_branch,
    route_from_path,
    stamp_received,
    stateless_branch,
    target_token,
)
from imsaka.sip.transaction import TimerConfig
from imsaka.sip.transport import TcpTransport, UdpTransport

from .conftest import SEED

pytestmark = pytest.mark.timeout(30)


def counter_rng():
    c = itertools.count()
    return lambda n: next(c).to_bytes(n, "big")


def test_branches_tags_call_ids_from_injected_rng():
    rng = counter_rng()
    assert new_branch(rng) == "z9hG4bK0000000000000000"
    assert new_branch(rng) == "z9hG4bK0000000000000001"
    assert new_tag(rng) == "000000000002"
    assert new_call_id("[::1]", rng) == "000000000000000000000003@::1"
    assert new_branch() != new_branch()


@pytest.mark.parametrize("digest", [stateless_branch, retransmission_branch])
def test_a_derived_branch_is_the_same_for_a_retransmission_only(digest):
    # the I-CSCF forwards with retransmission_branch: the same REGISTER to the same
    # S-CSCF, forwarded again after a restart, is the same transaction there (RFC 3261
    # §17.2.3); stateless_branch is §16.11's (its target is the Request-URI)
    def branch(req, target="sip:scscf1.home1.net"):
        if digest is stateless_branch:
            req.uri = target
            return stateless_branch(req)
        return retransmission_branch(req, target_token(target))

    req, again = parse_message(SEED[1]), parse_message(SEED[1])
    b = branch(req)
    assert b.startswith("z9hG4bK") and branch(again) == b
    assert branch(again, "sip:scscf2.home1.net") != b  # another S-CSCF (failover)
    other = parse_message(SEED[1])
    other.replace_top_via(push_via(parse_message(SEED[1]), "UDP", "ue", 1, branch="z9hG4bKx1234"))
    assert branch(other) != b  # another client transaction upstream
    if digest is retransmission_branch:
        # an RFC 2543 branch tells one request from another too poorly: random
        old = parse_message(SEED[1])
        old.replace_top_via(push_via(parse_message(SEED[1]), "UDP", "ue", 1, branch="1234"))
        assert branch(old) != branch(old)


def test_push_and_pop_via():
    req = parse_message(SEED[1])
    via = push_via(req, "UDP", "pcscf1.visited1.net", None, branch="z9hG4bK240f34.1")
    assert str(via) == "SIP/2.0/UDP pcscf1.visited1.net;branch=z9hG4bK240f34.1"
    assert [v.host for v in req.via] == ["pcscf1.visited1.net", "[5555::aaa:bbb:ccc:ddd]"]
    v6 = push_via(req, "TCP", "::1", 5060, rng=counter_rng(), rport=True)
    assert str(v6) == "SIP/2.0/TCP [::1]:5060;rport;branch=z9hG4bK0000000000000000"
    resp = make_response(req, 200)
    assert pop_via(resp) == v6
    assert pop_via(resp).host == "pcscf1.visited1.net"
    assert [str(v) for v in resp.via] == [str(parse_message(SEED[1]).top_via)]
    assert pop_via(resp) is not None and pop_via(resp) is None


def test_seed_packet2_built_from_packet1():
    """The P-CSCF's edits of packet 1 give packet 2's Via, Max-Forwards and Path."""
    req = parse_message(SEED[1])
    assert check_max_forwards(req) is None
    push_via(req, "UDP", "pcscf1.visited1.net", None, branch="z9hG4bK240f34.1")
    add_path(req, "sip:term@pcscf1.visited1.net")
    p2 = parse_message(SEED[2])
    assert [str(v) for v in req.via] == [str(v) for v in p2.via]
    assert req.max_forwards == p2.max_forwards == 69
    assert [str(p) for p in req.path] == [str(p) for p in p2.path]


def test_max_forwards():
    req = parse_message(SEED[1])
    req.set("Max-Forwards", "1")
    assert check_max_forwards(req) is None and req.max_forwards == 0
    resp = check_max_forwards(req)
    assert isinstance(resp, Response) and resp.status == 483 and resp.reason == "Too Many Hops"
    req.remove("max-forwards")
    assert check_max_forwards(req) is None and req.max_forwards == 70


def test_loose_routing():
    mine = SipUri.parse("sip:pcscf.example.net;lr")

    def is_mine(u: SipUri) -> bool:
        return u.host == mine.host

    req = parse_message(SEED[1])
    req.add("Route", "<sip:pcscf.example.net;lr>")
    req.add("Route", "<sip:scscf.example.net;lr>")
    preprocess_route(req, is_mine)  # our own Route entry is removed
    assert [r.uri for r in req.route] == ["sip:scscf.example.net;lr"]
    hop = next_hop(req)
    assert hop.host == "scscf.example.net" and req.uri == "sip:registrar.home1.net"
    # no Route: the Request-URI
    req.remove("route")
    assert next_hop(req).host == "registrar.home1.net"


def test_strict_router_previous_hop_and_next_hop():
    def is_mine(u: SipUri) -> bool:
        return u.host == "proxy.example.net"

    # the previous hop was a strict router: it put our URI in the Request-URI
    req = parse_message(SEED[1])
    req.uri = "sip:proxy.example.net"
    req.add("Route", "<sip:next.example.net;lr>")
    req.add("Route", "<sip:bob@final.example.net>")
    preprocess_route(req, is_mine)
    assert req.uri == "sip:bob@final.example.net"
    assert [r.uri for r in req.route] == ["sip:next.example.net;lr"]
    # the next hop is a strict router (no lr): Request-URI rewritten
    req2 = parse_message(SEED[1])
    req2.add("Route", "<sip:strict.example.net>")
    hop = next_hop(req2)
    assert hop.host == "strict.example.net" and req2.uri == "sip:strict.example.net"
    assert [r.uri for r in req2.route] == ["sip:registrar.home1.net"]


def test_record_route_path_service_route():
    req = parse_message(SEED[1])
    add_record_route(req, "sip:pcscf1.visited1.net")
    add_record_route(req, SipUri.parse("sip:icscf.home1.net;lr"))
    assert [r.uri for r in req.record_route] == [
        "sip:icscf.home1.net;lr",
        "sip:pcscf1.visited1.net;lr",
    ]
    p11 = parse_message(SEED[11])
    routes = route_from_path(p11.get_all("path"))
    assert routes == ["<sip:term@pcscf1.visited1.net;lr>"]
    invite = parse_message(SEED[1])
    preload_route(invite, [*p11.get_all("service-route"), "<sip:x@as.home1.net;lr>"])
    assert [r.uri for r in invite.route] == [
        "sip:orig@scscf1.home1.net;lr",
        "sip:x@as.home1.net;lr",
    ]


def test_stamp_received():
    req = parse_message(SEED[8])
    stamp_received(req, "192.0.2.7", 4444)
    v = req.top_via
    assert v.received == "192.0.2.7" and v.rport is None and v.branch == "z9hG4bKnashds7"
    req = parse_message(SEED[8])
    stamp_received(req, "5555::aaa:bbb:ccc:ddd", 1357)
    assert req.top_via.received is None  # the same address: nothing added
    req.set("Via", "SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKx")
    stamp_received(req, "10.0.0.1", 3333)
    assert req.top_via.rport == 3333 and req.top_via.received == "10.0.0.1"


# -- a stateful proxy chain on loopback ---------------------------------------------

FAST = TimerConfig(t1=0.02, t2=0.08, t4=0.1, timer_d=0.1)


async def test_stateful_proxy_chain_register_401_then_200():
    ue = SipEndpoint(owner="ue", timers=FAST)
    proxy = SipEndpoint(owner="pcscf", timers=FAST)
    registrar = SipEndpoint(owner="scscf", timers=FAST)
    ut = ue.add_transport(await UdpTransport.create("127.0.0.1"))
    pt = proxy.add_transport(await UdpTransport.create("127.0.0.1"))
    rt = registrar.add_transport(await UdpTransport.create("127.0.0.1"))
    seen_at_registrar: list[Request] = []

    def registrar_handler(req, tx):
        seen_at_registrar.append(req)
        if req.authorization is None or req.authorization.response == "":
            tx.reply(
                401,
                to_tag="5ef4",
                headers=[
                    (
                        "WWW-Authenticate",
                        'Digest realm="home1.net", nonce="abc", algorithm=AKAv1-MD5, ik="00", ck="11"',
                    )
                ],
            )
        else:
            tx.reply(
                200,
                to_tag="5ef4",
                headers=[("Path", req.get("path")), ("Service-Route", "<sip:orig@scscf;lr>")],
            )

    async def proxy_handler(req, tx):
        fwd = req.copy()
        add_path(fwd, f"sip:term@127.0.0.1:{pt.local_address[1]}")
        fwd.set("Require", "path")
        resp = await proxy.forward(tx, fwd, rt.local_address)
        assert resp.get("via") is not None

    registrar.set_request_handler(registrar_handler)
    proxy.set_request_handler(proxy_handler)
    try:
        req = parse_message(SEED[1])
        req.remove("via")
        r1 = await ue.send_request(req, pt.local_address)
        assert r1.status == 401 and r1.www_authenticate.nonce == "abc"
        assert len(r1.via) == 1 and r1.top_via.port == ut.local_address[1]
        got = seen_at_registrar[0]
        assert len(got.via) == 2 and got.max_forwards == 69
        assert got.top_via.port == pt.local_address[1] and got.top_via.received is None
        assert got.via[1].received == "127.0.0.1" and got.via[1].rport == ut.local_address[1]
        assert got.path[0].parsed_uri.user == "term"
        req2 = parse_message(SEED[8])
        req2.remove("via")
        r2 = await ue.send_request(req2, pt.local_address)
        assert r2.status == 200 and r2.service_route[0].uri == "sip:orig@scscf;lr"
        assert len(seen_at_registrar) == 2
    finally:
        for ep in (ue, proxy, registrar):
            await ep.close()


async def test_proxy_408_on_timeout_483_and_503():
    ue = SipEndpoint(owner="ue", timers=FAST)
    proxy = SipEndpoint(owner="pcscf", timers=FAST)
    ut = ue.add_transport(await UdpTransport.create("127.0.0.1"))
    pt = proxy.add_transport(await UdpTransport.create("127.0.0.1"))
    ptcp = proxy.add_transport(await TcpTransport.create("127.0.0.1"))
    silent = await UdpTransport.create("127.0.0.1")  # a next hop that never answers
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()

    async def proxy_handler(req, tx):
        if req.get("x-mode") == "tcp":
            await proxy.forward(tx, req.copy(), ("127.0.0.1", closed), transport=ptcp)
        else:
            await proxy.forward(tx, req.copy(), silent.local_address)

    proxy.set_request_handler(proxy_handler)
    try:
        req = parse_message(SEED[1])
        req.remove("via")
        r = await ue.send_request(req, pt.local_address)
        assert r.status == 408 and len(r.via) == 1 and r.top_via.port == ut.local_address[1]
        req = parse_message(SEED[1])
        req.remove("via")
        req.set("Max-Forwards", "0")
        assert (await ue.send_request(req, pt.local_address)).status == 483
        req = parse_message(SEED[1])
        req.remove("via")
        req.set("X-Mode", "tcp")
        assert (await ue.send_request(req, pt.local_address)).status == 503
    finally:
        await ue.close()
        await proxy.close()
        await silent.close()


async def test_stray_response_relayed_statelessly():
    proxy = SipEndpoint(owner="pcscf", timers=FAST)
    pt = proxy.add_transport(await UdpTransport.create("127.0.0.1"))
    proxy.relay_stray_responses()
    got = []

    class Peer(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            got.append(data)

    loop = asyncio.get_running_loop()
    up_t, _ = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    up_port = up_t.get_extra_info("sockname")[1]
    try:
        req = parse_message(SEED[1])
        req.set("Via", f"SIP/2.0/UDP 127.0.0.1:{up_port};branch=z9hG4bKup")
        push_via(req, "UDP", "127.0.0.1", pt.local_address[1], branch="z9hG4bKgone")
        late_2xx = make_response(req, 200, to_tag="t")
        up_t.sendto(late_2xx.to_bytes(), pt.local_address)
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        relayed = parse_message(got[0])
        assert [v.branch for v in relayed.via] == ["z9hG4bKup"]
        # a response whose top Via is not ours is dropped
        other = make_response(parse_message(SEED[1]), 200)
        up_t.sendto(other.to_bytes(), pt.local_address)
        await asyncio.sleep(0.05)
        assert len(got) == 1 and proxy.counters["dropped: stray response not for us"] == 1
    finally:
        await proxy.close()
        up_t.close()


def test_ack_for_2xx():
    from imsaka.sip.proxy import ack_for_2xx

    invite = parse_message(SEED[1])
    invite.method = "INVITE"
    invite.set("CSeq", "7 INVITE")
    ok = make_response(invite, 200, to_tag="callee")
    ok.set("Contact", "<sip:callee@192.0.2.9:5070>")
    ok.add("Record-Route", "<sip:p2;lr>")
    ok.add("Record-Route", "<sip:p1;lr>")
    ack = ack_for_2xx(invite, ok, counter_rng())
    again = parse_message(ack.to_bytes())
    assert again.method == "ACK" and again.uri == "sip:callee@192.0.2.9:5070"
    assert [r.uri for r in again.route] == ["sip:p1;lr", "sip:p2;lr"]
    assert again.to.tag == "callee" and again.from_.tag == "4fa3"
    assert (again.cseq.seq, again.cseq.method) == (7, "ACK")
    assert again.top_via.branch == "z9hG4bK0000000000000000"
    assert again.top_via.comp == "sigcomp" and again.top_via.host == invite.top_via.host


async def test_respond_to_source_transport_flag():
    ep = SipEndpoint(timers=FAST)
    t = ep.add_transport(await UdpTransport.create("127.0.0.1"))
    t.respond_to_source = True  # as a protected transport would declare
    ep.set_request_handler(lambda req, tx: tx.reply(200))
    got = []

    class Peer(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            got.append(data)

    loop = asyncio.get_running_loop()
    pt, _ = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    try:
        req = parse_message(SEED[8])  # Via sent-by [5555::...]:1357, no rport
        pt.sendto(req.to_bytes(), t.local_address)
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        assert parse_message(got[0]).status == 200
    finally:
        await ep.close()
        pt.close()


def test_check_require_420():
    from imsaka.sip.proxy import check_require

    req = parse_message(SEED[1])  # Require: sec-agree, Proxy-Require: sec-agree
    assert check_require(req, {"sec-agree", "path"}) is None
    resp = check_require(req, {"path"})
    assert resp.status == 420 and resp.get_all("unsupported") == ["sec-agree"]
    assert check_require(req, {"SEC-AGREE"}, header="Proxy-Require") is None
    assert check_require(req, set(), header="Proxy-Require").status == 420
    ack = parse_message(SEED[1])
    ack.method = "ACK"
    assert check_require(ack, set()) is None


def test_loop_detection_unit():
    from imsaka.sip.proxy import detect_loop, loop_branch

    req = parse_message(SEED[2])
    ours = lambda via: via.host == "me.example.net"  # noqa: E731
    assert detect_loop(req, ours) is None
    push_via(req, "UDP", "me.example.net", 5060, branch=loop_branch(req, counter_rng()))
    # the same request comes back: loop
    resp = detect_loop(req, ours)
    assert resp is not None and resp.status == 482 and resp.reason == "Loop Detected"
    # an AS rewrote the Request-URI: spiral, not a loop
    req.uri = "sip:other@home1.net"
    assert detect_loop(req, ours) is None
    # a Via of someone else with the same hash is not ours
    assert detect_loop(req, lambda via: False) is None


async def test_proxy_forwarding_to_itself_answers_482():
    ue = SipEndpoint(owner="ue", timers=FAST)
    proxy = SipEndpoint(owner="pcscf", timers=FAST)
    ue.add_transport(await UdpTransport.create("127.0.0.1"))
    pt = proxy.add_transport(await UdpTransport.create("127.0.0.1"))
    loops = []

    async def handler(req, tx):
        loops.append(len(req.via))
        await proxy.forward(tx, req.copy(), pt.local_address)  # misconfigured: to itself

    proxy.set_request_handler(handler)
    try:
        req = parse_message(SEED[1])
        req.remove("via")
        resp = await ue.send_request(req, pt.local_address)
        assert resp.status == 482 and len(resp.via) == 1
        assert loops == [1, 2]  # it went round once, then the loop was seen
    finally:
        await ue.close()
        await proxy.close()


async def test_stateless_proxy_keeps_retransmissions_matching():
    ue = SipEndpoint(owner="ue", timers=FAST)
    proxy = SipEndpoint(owner="proxy", timers=FAST)
    registrar = SipEndpoint(owner="registrar", timers=FAST)
    ue.add_transport(await UdpTransport.create("127.0.0.1"))
    pt = proxy.add_transport(await UdpTransport.create("127.0.0.1"))
    rt = registrar.add_transport(await UdpTransport.create("127.0.0.1"))
    calls = []

    async def slow_registrar(req, tx):
        calls.append(req)
        await asyncio.sleep(0.1)  # the UE retransmits meanwhile (T1 = 20 ms)
        tx.reply(200, to_tag="r")

    registrar.set_request_handler(slow_registrar)

    def stateless(req, source, transport):
        proxy.forward_stateless(req, rt.local_address)
        return True

    proxy.set_stateless_handler(stateless)
    proxy.relay_stray_responses()
    try:
        req = parse_message(SEED[1])
        req.remove("via")
        resp = await ue.send_request(req, pt.local_address)
        assert resp.status == 200 and len(resp.via) == 1
        assert len(calls) == 1  # every retransmission matched the registrar's transaction
        assert proxy.counters["forwarded_stateless"] >= 2
        assert len(proxy.layer) == 0  # no transaction at the stateless proxy
        assert len(calls[0].via) == 2 and calls[0].top_via.branch.startswith("z9hG4bKsl")
        # Max-Forwards 0: 483 straight back
        req = parse_message(SEED[1])
        req.remove("via")
        req.set("Max-Forwards", "0")
        assert (await ue.send_request(req, pt.local_address)).status == 483
    finally:
        for ep in (ue, proxy, registrar):
            await ep.close()
