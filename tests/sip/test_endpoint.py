"""Transports and the endpoint over real loopback sockets: UDP retransmission,
absorption, timeouts, bad input, TCP framing, IPv6, rport, observers."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from imsaka.sip import Request, make_response, parse_message
from imsaka.sip.endpoint import SipEndpoint
from imsaka.sip.transaction import TimerConfig
from imsaka.sip.transport import SipTransport, TcpTransport, UdpTransport

FAST = TimerConfig(t1=0.02, t2=0.08, t4=0.1, timer_d=0.1)

pytestmark = pytest.mark.timeout(30)


def register(
    n: int = 1,
    host: str = "127.0.0.1",
    port: int = 5060,
    rport: bool = False,
    branch: str | None = None,
) -> Request:
    via = f"SIP/2.0/UDP {host}:{port};{'rport;' if rport else ''}branch={branch or f'z9hG4bKr{n}'}"
    return Request(
        "REGISTER",
        "sip:home1.net",
        [
            ("Via", via),
            ("From", "<sip:ue@home1.net>;tag=u1"),
            ("To", "<sip:ue@home1.net>"),
            ("Call-ID", f"call-{n}"),
            ("CSeq", f"{n} REGISTER"),
            ("Max-Forwards", "70"),
        ],
    )


def bare(n: int = 1) -> Request:
    r = register(n)
    r.remove("via")
    return r


class RawUdp(asyncio.DatagramProtocol):
    """A bare peer: records datagrams; optionally answers REGISTERs after `drop` copies."""

    def __init__(self, answer_after: int | None = None) -> None:
        self.received: list[tuple[float, bytes, tuple]] = []
        self.answer_after = answer_after
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.received.append((time.monotonic(), data, addr))
        if self.answer_after is not None and len(self.received) > self.answer_after:
            req = parse_message(data)
            self.transport.sendto(make_response(req, 200, to_tag="r").to_bytes(), addr)


async def raw_udp(answer_after=None, host="127.0.0.1"):
    loop = asyncio.get_running_loop()
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    transport, proto = await loop.create_datagram_endpoint(
        lambda: RawUdp(answer_after), local_addr=(host, 0), family=fam
    )
    return transport, proto


async def endpoint(kind=UdpTransport, host="127.0.0.1", **kw) -> tuple[SipEndpoint, SipTransport]:
    ep = SipEndpoint(timers=kw.pop("timers", FAST), **kw)
    size = kw.get("max_size", 65536)
    t = ep.add_transport(await kind.create(host, 0, owner=kw.get("owner", ""), max_size=size))
    return ep, t


async def wait_for(cond, timeout=3.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def test_udp_retransmission_until_answered():
    peer_t, peer = await raw_udp(answer_after=2)
    ep, _t = await endpoint()
    try:
        resp = await ep.send_request(bare(), peer_t.get_extra_info("sockname")[:2])
        assert resp.status == 200
        # the original and two retransmissions (Timer E); a stalled machine may add one
        # more before the answer arrives
        assert 3 <= len(peer.received) <= 4
        first, second, third = (r[0] for r in peer.received[:3])
        assert second - first >= 0.015 and third - second >= 0.03  # E doubles
        copies = {r[1] for r in peer.received}
        assert len(copies) == 1  # the very same bytes each time
        via = parse_message(peer.received[0][1]).top_via
        assert via.branch.startswith("z9hG4bK") and via.rport is True
        assert ep.layer.counters["retransmissions"] == len(peer.received) - 1
    finally:
        await ep.close()
        peer_t.close()


async def test_udp_timeout_gives_408():
    peer_t, peer = await raw_udp(answer_after=None)  # never answers
    ep, _t = await endpoint()
    try:
        started = time.monotonic()
        resp = await ep.send_request(bare(), peer_t.get_extra_info("sockname")[:2])
        assert resp.status == 408 and resp.call_id == "call-1"
        assert time.monotonic() - started >= 64 * FAST.t1 * 0.9
        assert len(peer.received) >= 5
        assert ep.counters["timeout"] == 1
    finally:
        await ep.close()
        peer_t.close()


async def test_server_absorbs_retransmissions_and_resends_final():
    ep, t = await endpoint()
    calls = []

    async def handler(req, tx):
        calls.append(req)
        await asyncio.sleep(0.05)
        tx.reply(200, to_tag="srv")

    ep.set_request_handler(handler)
    peer_t, peer = await raw_udp()
    try:
        req = register(1, *peer_t.get_extra_info("sockname")[:2])
        data = req.to_bytes()
        peer_t.sendto(data, t.local_address)
        await asyncio.sleep(0.01)
        peer_t.sendto(data, t.local_address)  # retransmission while the TU works: absorbed
        await wait_for(lambda: len(peer.received) == 1)
        peer_t.sendto(data, t.local_address)  # after the final: the final again
        await wait_for(lambda: len(peer.received) == 2)
        assert len(calls) == 1
        assert peer.received[0][1] == peer.received[1][1]
        assert parse_message(peer.received[0][1]).to.tag == "srv"
    finally:
        await ep.close()
        peer_t.close()


async def test_rport_and_received_and_via_routing():
    ep, t = await endpoint()
    ep.set_request_handler(lambda req, tx: tx.reply(200))
    a_t, a = await raw_udp()
    b_t, b = await raw_udp()
    try:
        a_port = a_t.get_extra_info("sockname")[1]
        b_port = b_t.get_extra_info("sockname")[1]
        # rport: the answer goes back to the source port, with received and rport filled
        a_t.sendto(register(1, "ue.invalid", 9, rport=True).to_bytes(), t.local_address)
        await wait_for(lambda: len(a.received) == 1)
        via = parse_message(a.received[0][1]).top_via
        assert via.received == "127.0.0.1" and via.rport == a_port
        # no rport: the answer goes to the Via sent-by port (RFC 3261 §18.2.2)
        a_t.sendto(register(2, "127.0.0.1", b_port).to_bytes(), t.local_address)
        await wait_for(lambda: len(b.received) == 1)
        assert parse_message(b.received[0][1]).cseq.seq == 2
        assert len(a.received) == 1
    finally:
        await ep.close()
        a_t.close()
        b_t.close()


async def test_bad_input_answered_or_dropped_and_server_keeps_serving():
    ep, t = await endpoint(max_size=4000)
    ep.set_request_handler(lambda req, tx: tx.reply(200))
    peer_t, peer = await raw_udp()
    try:
        host, port = peer_t.get_extra_info("sockname")[:2]
        good = register(1, host, port)
        # answerable: CSeq method mismatch -> 400 naming the fault
        bad = good.to_bytes().replace(b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE")
        peer_t.sendto(bad, t.local_address)
        await wait_for(lambda: len(peer.received) == 1)
        r = parse_message(peer.received[0][1])
        assert r.status == 400 and "CSeq" in r.reason and r.call_id == "call-1"
        # unanswerable (no Call-ID): dropped and counted
        peer_t.sendto(good.to_bytes().replace(b"Call-ID: call-1\r\n", b""), t.local_address)
        # garbage
        peer_t.sendto(b"\x00\x01garbage\r\n\r\n", t.local_address)
        # oversized: 513
        big = register(3, host, port)
        big.body = b"x" * 5000
        peer_t.sendto(big.to_bytes(), t.local_address)
        await wait_for(lambda: len(peer.received) == 2)
        assert parse_message(peer.received[1][1]).status == 513
        # a malformed Via in an otherwise fine message (typed view fails at matching)
        peer_t.sendto(good.to_bytes().replace(b"SIP/2.0/UDP", b"SIP/2.0/UDP [zz]"), t.local_address)
        # still serving
        peer_t.sendto(register(4, host, port).to_bytes(), t.local_address)
        await wait_for(lambda: any(parse_message(d).status == 200 for _, d, _ in peer.received))
        assert ep.counters["parse_errors"] >= 4
        assert ep.counters["dropped"] >= 2
        assert ep.counters["dropped: unparseable"] >= 2
        assert ep.counters["answered_errors"] >= 2
    finally:
        await ep.close()
        peer_t.close()


async def test_invite_100_trying_cancel_487():
    ep, t = await endpoint()
    pending = []
    ep.set_request_handler(lambda req, tx: pending.append(tx))  # never answers
    peer_t, peer = await raw_udp()
    try:
        host, port = peer_t.get_extra_info("sockname")[:2]
        inv = register(1, host, port, branch="z9hG4bKinv")
        inv.method = "INVITE"
        inv.set("CSeq", "1 INVITE")
        peer_t.sendto(inv.to_bytes(), t.local_address)
        await wait_for(lambda: len(peer.received) == 1)
        assert parse_message(peer.received[0][1]).status == 100
        cancel = register(1, host, port, branch="z9hG4bKinv")
        cancel.method = "CANCEL"
        cancel.set("CSeq", "1 CANCEL")
        peer_t.sendto(cancel.to_bytes(), t.local_address)
        await wait_for(lambda: len(peer.received) >= 3)
        got = sorted(
            (parse_message(d).status, parse_message(d).cseq.method)
            for _, d, _ in peer.received[1:3]
        )
        assert got == [(200, "CANCEL"), (487, "INVITE")]
        assert len(pending) == 1
    finally:
        await ep.close()
        peer_t.close()


async def test_handler_error_gives_500_and_no_handler_501():
    ep, t = await endpoint()

    def broken(req, tx):
        raise RuntimeError("boom")

    ep.set_request_handler(broken)
    peer_t, peer = await raw_udp()
    try:
        host, port = peer_t.get_extra_info("sockname")[:2]
        peer_t.sendto(register(1, host, port).to_bytes(), t.local_address)
        await wait_for(lambda: len(peer.received) == 1)
        assert parse_message(peer.received[0][1]).status == 500
        ep.set_request_handler(None)
        peer_t.sendto(register(2, host, port).to_bytes(), t.local_address)
        await wait_for(lambda: len(peer.received) == 2)
        assert parse_message(peer.received[1][1]).status == 501
    finally:
        await ep.close()
        peer_t.close()


@pytest.mark.parametrize("kind", [UdpTransport, TcpTransport])
async def test_held_requests_wait_for_the_handler(kind):
    """A server bound before it is ready (`hold_requests`): a request that comes first
    is answered by the handler once set (not 501); one the handler never gets is
    answered 500 after answer_timeout; the server then serves as usual."""
    srv, st = await endpoint(kind, answer_timeout=0.3)
    srv.hold_requests()
    cli, _ct = await endpoint(kind)
    try:
        early = asyncio.ensure_future(cli.send_request(bare(1), st.local_address))
        await wait_for(lambda: srv._held)
        await asyncio.sleep(0.1)  # UDP: its retransmissions absorbed meanwhile
        assert not early.done()
        seen = []

        def answer(req, tx):
            seen.append(req.cseq.seq)
            tx.reply(200)

        srv.set_request_handler(answer)
        assert (await early).status == 200 and seen == [1]
        assert (await cli.send_request(bare(2), st.local_address)).status == 200
        assert seen == [1, 2] and srv._held is None
        # holding is for start only: without a handler later, 501 again
        srv.set_request_handler(None)
        assert (await cli.send_request(bare(3), st.local_address)).status == 501
    finally:
        await cli.close()
        await srv.close()


async def test_a_held_request_never_handed_over_gets_500():
    srv, st = await endpoint(answer_timeout=0.1)
    srv.hold_requests()
    cli, _ct = await endpoint()
    try:
        resp = await cli.send_request(bare(1), st.local_address)
        assert resp.status == 500 and "no answer" in resp.reason
        srv.set_request_handler(lambda req, tx: pytest.fail("handed over after its 500"))
    finally:
        await cli.close()
        await srv.close()


@pytest.mark.parametrize("kind", [UdpTransport, TcpTransport])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_endpoint_pair_and_observers(kind, host):
    srv, st = await endpoint(kind, host, owner="scscf")
    cli, _ct = await endpoint(kind, host, owner="ue")
    events = []
    st.add_observer(events.append)
    srv.set_request_handler(
        lambda req, tx: tx.reply(
            200, to_tag="x", headers=[("Contact", req.get("contact") or "<sip:a@b>")]
        )
    )
    try:
        for n in range(1, 4):
            resp = await cli.send_request(bare(n), st.local_address)
            assert resp.status == 200 and resp.cseq.seq == n
        assert [e.direction for e in events] == ["in", "out"] * 3
        assert all(
            e.protocol == "sip" and e.owner == "scscf" and e.transport == kind.name for e in events
        )
        assert parse_message(events[0].payload).method == "REGISTER"
        if kind is TcpTransport:
            assert st.connections == 1  # one connection, many messages
    finally:
        await cli.close()
        await srv.close()


async def test_tcp_split_and_coalesced_reads():
    ep, t = await endpoint(TcpTransport)
    ep.set_request_handler(lambda req, tx: tx.reply(200))
    reader, writer = await asyncio.open_connection(*t.local_address)
    try:
        m1, m2, m3 = (register(n).to_bytes() for n in (1, 2, 3))
        writer.write(m1 + m2)  # coalesced
        await writer.drain()
        for i in range(0, len(m3), 50):  # split
            writer.write(m3[i : i + 50])
            await writer.drain()
            await asyncio.sleep(0.002)
        buf = b""
        seqs = []
        while len(seqs) < 3:
            buf += await asyncio.wait_for(reader.read(4096), 3)
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                seqs.append(parse_message(buf[: end + 4]).cseq.seq)
                buf = buf[end + 4 :]
        assert sorted(seqs) == [1, 2, 3]
        assert t.connections == 1
    finally:
        writer.close()
        await ep.close()


async def test_a_crlf_ping_gets_a_pong_and_a_pong_gets_nothing():
    """RFC 5626 §4.4.1 over TCP: a double-CRLF ping, whole or split across reads, is
    answered with one CRLF; a lone CRLF (a pong, an empty line) is not answered; the
    connection goes on serving SIP."""
    ep, t = await endpoint(TcpTransport)
    ep.set_request_handler(lambda req, tx: tx.reply(200))
    reader, writer = await asyncio.open_connection(*t.local_address)
    try:
        for _ in range(2):  # every ping of an idle flow
            writer.write(b"\r\n\r\n")
            assert await asyncio.wait_for(reader.read(100), 3) == b"\r\n"
        writer.write(b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"\r\n")  # with the one before: a ping split across reads
        assert await asyncio.wait_for(reader.read(100), 3) == b"\r\n"
        writer.write(register(1).to_bytes() + b"\r\n")  # then a pong: owed nothing
        answer = await asyncio.wait_for(reader.read(4096), 3)
        assert parse_message(answer).status == 200  # (no CRLF before it)
        await asyncio.sleep(0.1)
        writer.write(register(2).to_bytes())
        answer = await asyncio.wait_for(reader.read(4096), 3)
        assert answer.startswith(b"SIP/2.0 200")  # (nor after the last)
        assert t.counters["keepalive_pongs"] == 3
    finally:
        writer.close()
        await ep.close()


async def test_tcp_framing_errors():
    ep, t = await endpoint(TcpTransport, max_size=3000)
    ep.set_request_handler(lambda req, tx: tx.reply(200))
    try:
        # an over-long but well-framed message: 513, connection survives
        reader, writer = await asyncio.open_connection(*t.local_address)
        big = register(1)
        big.body = b"y" * 4000
        writer.write(big.to_bytes() + register(2).to_bytes())
        got = []
        buf = b""
        while len(got) < 2:
            buf += await asyncio.wait_for(reader.read(4096), 3)
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                got.append(parse_message(buf[: end + 4]).status)
                buf = buf[end + 4 :]
        assert got == [513, 200]
        writer.close()
        # no Content-Length on a stream: 400, and the connection is closed
        reader, writer = await asyncio.open_connection(*t.local_address)
        writer.write(register(3).to_bytes().replace(b"Content-Length: 0\r\n", b""))
        data = await asyncio.wait_for(reader.read(4096), 3)
        assert parse_message(data).status == 400
        assert await asyncio.wait_for(reader.read(4096), 3) == b""  # closed
        writer.close()
        # a header block that never ends: refused once over the limit
        reader, writer = await asyncio.open_connection(*t.local_address)
        writer.write(b"REGISTER sip:x SIP/2.0\r\n" + b"X-Flood: aaaaaaaaaa\r\n" * 300)
        assert await asyncio.wait_for(reader.read(4096), 3) == b""
        writer.close()
        # still serving
        cli, _ = await endpoint(TcpTransport)
        assert (await cli.send_request(bare(4), t.local_address)).status == 200
        await cli.close()
        assert t.counters["framing_errors"] == 3
    finally:
        await ep.close()


async def test_tcp_connect_failure_gives_503():
    ep, _t = await endpoint(TcpTransport)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed_port = s.getsockname()[1]
    s.close()
    try:
        resp = await ep.send_request(bare(), ("127.0.0.1", closed_port))
        assert resp.status == 503
    finally:
        await ep.close()


def test_transports_implement_the_interface():
    assert isinstance(UdpTransport(), SipTransport)
    assert isinstance(TcpTransport(), SipTransport)


async def test_tcp_connection_limit():
    ep = SipEndpoint(timers=FAST)
    t = ep.add_transport(await TcpTransport.create("127.0.0.1", 0, max_connections=2))
    ep.set_request_handler(lambda req, tx: tx.reply(200))
    conns = []
    try:
        for _ in range(3):
            conns.append(await asyncio.open_connection(*t.local_address))
        await wait_for(lambda: t.counters["refused_connections"] == 1)
        assert t.connections == 2
        # the refused one is closed, the others still serve
        assert await asyncio.wait_for(conns[2][0].read(100), 3) == b""
        conns[0][1].write(register(1).to_bytes())
        data = await asyncio.wait_for(conns[0][0].read(4096), 3)
        assert parse_message(data).status == 200
    finally:
        for _, w in conns:
            w.close()
        await ep.close()


async def test_ack_outside_transactions_goes_to_the_ack_handler():
    ep, t = await endpoint()
    acks = []
    ep.set_ack_handler(lambda req, addr, transport: acks.append((req.method, addr, transport)))
    peer_t, _ = await raw_udp()
    try:
        ack = register(1, *peer_t.get_extra_info("sockname")[:2], branch="z9hG4bKack2xx")
        ack.method = "ACK"
        ack.set("CSeq", "1 ACK")
        peer_t.sendto(ack.to_bytes(), t.local_address)
        await wait_for(lambda: acks)
        assert acks[0][0] == "ACK" and acks[0][2] is t
    finally:
        await ep.close()
        peer_t.close()


def test_digest_errors_never_echo_values():
    from imsaka.sip import DigestCredentials, SipParseError

    secret = "00112233445566778899aabbccddeeff"
    for text in (f"Digest ck={secret} x", f'Digest realm="r", ck {secret}', f"Digest ik={secret}<"):
        with pytest.raises(SipParseError) as e:
            DigestCredentials.parse(text)
        assert secret not in str(e.value) and secret[:8] not in str(e.value)


def invite(n: int = 1) -> Request:
    r = bare(n)
    r.method = "INVITE"
    r.set("CSeq", f"{n} INVITE")
    return r


async def test_invite_provisional_then_2xx_and_late_2xx_to_stray_handler():
    uas, ut = await endpoint(owner="uas")
    uac, ct = await endpoint(owner="uac")
    answered = []

    async def handler(req, tx):
        tx.reply(180, to_tag="callee")
        await asyncio.sleep(0.02)
        answered.append(tx.reply(200, to_tag="callee"))

    uas.set_request_handler(handler)
    provisional = []
    strays = []
    uac.set_stray_response_handler(lambda resp, addr, t: strays.append(resp.status))

    def on_prov(resp):
        provisional.append(resp.status)
        raise RuntimeError("a broken callback must not break the endpoint")

    try:
        resp = await uac.send_request(invite(), ut.local_address, on_provisional=on_prov)
        assert resp.status == 200 and resp.to.tag == "callee"
        assert 180 in provisional
        # the UAS retransmits its 2xx (the TU's job, RFC 6026): the UAC passes it on
        uas.transports[0].send(answered[0].to_bytes(), ct.local_address)
        await wait_for(lambda: strays == [200])
    finally:
        await uac.close()
        await uas.close()


async def test_async_handler_error_gives_500_and_overload_503():
    ep, t = await endpoint()

    async def broken(req, tx):
        await asyncio.sleep(0)
        raise ValueError("late boom")

    ep.set_request_handler(broken)
    ep.layer.max_transactions = 1
    peer_t, peer = await raw_udp()
    try:
        host, port = peer_t.get_extra_info("sockname")[:2]
        peer_t.sendto(register(1, host, port).to_bytes(), t.local_address)
        await wait_for(lambda: len(peer.received) == 1)
        assert parse_message(peer.received[0][1]).status == 500
        assert ep.counters["handler_errors"] == 1
        # the first transaction lingers (Timer J): the next request meets the limit
        peer_t.sendto(register(2, host, port).to_bytes(), t.local_address)
        await wait_for(lambda: len(peer.received) == 2)
        assert parse_message(peer.received[1][1]).status == 503
    finally:
        await ep.close()
        peer_t.close()


async def test_timer_h_without_ack_and_stray_without_handler():
    ep, t = await endpoint()
    ep.set_request_handler(lambda req, tx: tx.reply(486, to_tag="busy"))
    peer_t, peer = await raw_udp()
    try:
        host, port = peer_t.get_extra_info("sockname")[:2]
        inv = register(1, host, port)
        inv.method = "INVITE"
        inv.set("CSeq", "1 INVITE")
        peer_t.sendto(inv.to_bytes(), t.local_address)
        # 100, 486 and its G retransmissions, until H: no ACK ever
        await wait_for(lambda: ep.counters["dropped: Timer H: no ACK for the final response"] == 1)
        statuses = [parse_message(d).status for _, d, _ in peer.received]
        assert statuses[0] == 100 and statuses.count(486) >= 3
        # a response nobody waits for, and no stray handler: dropped and counted
        peer_t.sendto(make_response(register(5, host, port), 200).to_bytes(), t.local_address)
        await wait_for(lambda: ep.counters["dropped: response matches no transaction"] == 1)
    finally:
        await ep.close()
        peer_t.close()


async def test_close_cancels_pending_requests():
    peer_t, _ = await raw_udp()
    ep, t = await endpoint(timers=TimerConfig())
    try:
        task = asyncio.ensure_future(ep.send_request(bare(), peer_t.get_extra_info("sockname")[:2]))
        await asyncio.sleep(0.05)
        await ep.close()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        peer_t.close()
    assert ep.transport("udp") is t
    from imsaka.sip import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        ep.transport("tcp")
    empty = SipEndpoint()
    with pytest.raises(LocalProtocolError):
        await empty.send_request(bare(), ("127.0.0.1", 9))


async def test_garbage_flood_keeps_counter_keys_bounded():
    ep, t = await endpoint()
    ep.set_request_handler(lambda req, tx: tx.reply(200))
    peer_t, peer = await raw_udp()
    try:
        host, port = peer_t.get_extra_info("sockname")[:2]
        good = register(1, host, port).to_bytes()
        for i in range(60):
            junk = good.replace(b"Via: SIP/2.0/UDP", f"Via: SIP/2.0/UDP x{i}[".encode())
            peer_t.sendto(junk, t.local_address)
            peer_t.sendto(f"NOISE{i} \x01\r\n\r\n".encode(), t.local_address)
        peer_t.sendto(register(2, host, port).to_bytes(), t.local_address)
        await wait_for(lambda: any(parse_message(d).status == 200 for _, d, _ in peer.received))
        assert ep.counters["parse_errors"] >= 100
        assert len(ep.counters) < 12 and len(ep.layer.counters) < 12
    finally:
        await ep.close()
        peer_t.close()


def test_endpoint_config_validation():
    with pytest.raises(ValueError, match="max_size"):
        SipEndpoint(max_size=10)
    with pytest.raises(ValueError, match="max_headers"):
        SipEndpoint(max_headers=1)


async def test_unanswered_request_gets_500_and_send_timeout_gives_408():
    srv, st = await endpoint(answer_timeout=0.1)
    parked = []
    srv.set_request_handler(lambda req, tx: parked.append(tx))  # never answers
    cli, _ct = await endpoint()
    try:
        resp = await cli.send_request(bare(1), st.local_address)
        assert resp.status == 500 and "no answer" in resp.reason
        assert srv.counters["dropped: no answer from the application"] == 1
        # an INVITE is never answered automatically: the caller bounds its wait
        started = time.monotonic()
        resp = await cli.send_request(invite(2), st.local_address, timeout=0.2)
        assert resp.status == 408 and time.monotonic() - started < 1.0
        with pytest.raises(ValueError, match="answer_timeout"):
            SipEndpoint(answer_timeout=0)
    finally:
        await cli.close()
        await srv.close()


@pytest.mark.parametrize("kind", [UdpTransport, TcpTransport])
async def test_broken_receiver_does_not_stop_the_transport(kind):
    t = await kind.create("127.0.0.1", 0)
    got = []

    def receiver(data, source, transport):
        got.append(data)
        if len(got) == 1:
            raise RuntimeError("receiver bug")

    t.set_receiver(receiver)
    other = await kind.create("127.0.0.1", 0)
    try:
        for n in (1, 2):
            other.send(register(n).to_bytes(), t.local_address)
            await asyncio.sleep(0.05)
        await wait_for(lambda: len(got) == 2)
        assert t.counters["receiver_errors"] == 1
    finally:
        await other.close()
        await t.close()


async def test_uas_retransmits_2xx_until_the_ack():
    ep, t = await endpoint()
    ep.set_request_handler(lambda req, tx: tx.reply(200, to_tag="uas"))
    peer_t, peer = await raw_udp()
    try:
        host, port = peer_t.get_extra_info("sockname")[:2]
        inv = register(1, host, port, branch="z9hG4bKinv2xx")
        inv.method = "INVITE"
        inv.set("CSeq", "1 INVITE")
        peer_t.sendto(inv.to_bytes(), t.local_address)
        # 100 Trying, the 200, then 200 retransmissions at T1, 2*T1, ... (no ACK yet)
        await wait_for(
            lambda: sum(parse_message(d).status == 200 for _, d, _ in peer.received) >= 3
        )
        ok = parse_message(next(d for _, d, _ in peer.received if parse_message(d).status == 200))
        from imsaka.sip.proxy import ack_for_2xx

        ack = ack_for_2xx(inv, ok)
        ack.set("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKack")
        peer_t.sendto(ack.to_bytes(), t.local_address)
        await asyncio.sleep(0.05)
        count = len(peer.received)
        await asyncio.sleep(0.3)
        assert len(peer.received) == count  # the ACK stopped them
        assert ep.counters["2xx_retransmissions"] >= 2
        # without an ACK they stop after 64*T1 and the drop is counted
        inv2 = register(2, host, port, branch="z9hG4bKinv2xx2")
        inv2.method = "INVITE"
        inv2.set("CSeq", "2 INVITE")
        peer_t.sendto(inv2.to_bytes(), t.local_address)
        await wait_for(lambda: ep.counters["dropped: 2xx to INVITE never acknowledged"] == 1, 5)
    finally:
        await ep.close()
        peer_t.close()


async def test_large_request_switches_to_tcp():
    srv = SipEndpoint(timers=FAST)
    su = srv.add_transport(await UdpTransport.create("127.0.0.1", 0))
    stc = srv.add_transport(await TcpTransport.create("127.0.0.1", su.local_address[1]))
    seen = []
    srv.set_request_handler(lambda req, tx: (seen.append(tx.transport.name), tx.reply(200)))
    cli = SipEndpoint(timers=FAST)
    cu = cli.add_transport(await UdpTransport.create("127.0.0.1", 0))
    cli.add_transport(await TcpTransport.create("127.0.0.1", cu.local_address[1]))
    try:
        small = await cli.send_request(bare(1), su.local_address)
        big_req = bare(2)
        big_req.add("X-Big", "x" * 1400)
        big = await cli.send_request(big_req, stc.local_address)
        assert small.status == big.status == 200
        assert seen == ["udp", "tcp"]
        assert big.top_via.transport == "TCP"
    finally:
        await cli.close()
        await srv.close()


async def test_large_request_falls_back_to_udp_when_tcp_is_refused():
    srv, su = await endpoint()  # UDP only: its TCP port is closed
    srv.set_request_handler(lambda req, tx: tx.reply(200))
    cli = SipEndpoint(timers=FAST)
    cu = cli.add_transport(await UdpTransport.create("127.0.0.1", 0))
    cli.add_transport(await TcpTransport.create("127.0.0.1", cu.local_address[1]))
    try:
        big_req = bare(3)
        big_req.add("X-Big", "x" * 1400)
        resp = await cli.send_request(big_req, su.local_address)
        assert resp.status == 200 and resp.top_via.transport == "UDP"
        assert len(big_req.via) == 1
        assert cli.counters["tcp_fallback_to_udp"] == 1
    finally:
        await cli.close()
        await srv.close()


async def test_udp_refuses_names_that_would_block_on_dns():
    ep, t = await endpoint()
    try:
        resp = await ep.send_request(bare(), ("registrar.home1.net", 5060))
        assert resp.status == 503 and t.counters["send_errors"] == 1
    finally:
        await ep.close()


async def test_tcp_response_reopens_to_via_when_the_connection_is_gone():
    ep, t = await endpoint(TcpTransport)
    hold = []

    async def slow(req, tx):
        hold.append(tx)
        await asyncio.sleep(0.3)  # the client's connection closes meanwhile
        tx.reply(200)

    ep.set_request_handler(slow)
    listener = await TcpTransport.create("127.0.0.1", 0)  # where the Via points
    got = []
    listener.set_receiver(lambda data, source, tr: got.append(data))
    try:
        _reader, writer = await asyncio.open_connection(*t.local_address)
        req = register(1, "127.0.0.1", listener.local_address[1])
        req.set("Via", f"SIP/2.0/TCP 127.0.0.1:{listener.local_address[1]};branch=z9hG4bKtcp")
        writer.write(req.to_bytes())
        await writer.drain()
        await wait_for(lambda: hold)
        writer.close()
        await wait_for(lambda: got, 3)
        assert parse_message(got[0]).status == 200
    finally:
        await listener.close()
        await ep.close()


async def test_handler_meeting_a_malformed_header_answers_400():
    ep, t = await endpoint()
    ep.set_request_handler(lambda req, tx: tx.reply(200, headers=[("X-Exp", str(req.expires))]))
    peer_t, peer = await raw_udp()
    try:
        host, port = peer_t.get_extra_info("sockname")[:2]
        req = register(1, host, port)
        req.add("Expires", "soon")  # framing fine, the typed view fails in the handler
        peer_t.sendto(req.to_bytes(), t.local_address)
        await wait_for(lambda: peer.received)
        r = parse_message(peer.received[0][1])
        assert r.status == 400 and "Expires" in r.reason
        assert ep.counters["bad_requests"] == 1 and ep.counters["handler_errors"] == 0
    finally:
        await ep.close()
        peer_t.close()


async def test_tcp_idle_connections_are_closed():
    t = await TcpTransport.create("127.0.0.1", 0, idle_timeout=0.2)
    try:
        reader, writer = await asyncio.open_connection(*t.local_address)
        await wait_for(lambda: t.connections == 1)
        assert await asyncio.wait_for(reader.read(10), 3) == b""  # closed for idleness
        assert t.counters["idle_closed"] == 1 and t.connections == 0
        writer.close()
        with pytest.raises(ValueError, match="idle_timeout"):
            TcpTransport(idle_timeout=0)
    finally:
        await t.close()
