"""P-CSCF overload protection: past `max_in_flight` requests forwarded and unanswered, a
new initial REGISTER gets 503 with Retry-After (RFC 3261 §21.5.4, §20.33) and is not
forwarded; REGISTERs over an SA, retransmissions of requests in flight and AUTS
answers are still served. Core (sans-I/O) and over real sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest
from prometheus_client import generate_latest

from imsaka.config import PcscfConfig
from imsaka.cscf.pcscf import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUE_DELAY,
    OVERLOAD_RETRY_AFTER,
    Arrival,
    Forward,
    InstallSecurityAssociations,
    PcscfCore,
    Reply,
)
from imsaka.metrics import parse_metrics, registry_for
from imsaka.sip import make_response, parse_message
from imsaka.ue.client import UeClient

from .test_pcscf_core import ICSCF, PACKET1, UE, core
from .test_pcscf_rereg import CHALLENGE, OK_HEADERS, _second


def _scan(p) -> int:
    """In flight by the definition: UE requests in `pending` without a final answer."""
    return sum(1 for e in p.pending.values() if e.final_data is None and e.kind != "subscribe")


def _initial(n: int, impi: str = "user1_private@home1.net") -> bytes:
    return (
        PACKET1.replace("z9hG4bKnashds7", f"z9hG4bKinit{n}")
        .replace("user1_private@home1.net", impi)
        .replace("apb03a0s09dkjdfglkj49111", f"call{n}")
        .encode()
    )


def _is_503(actions) -> int:
    """The Retry-After of the one action, a 503 to the UE (not forwarded)."""
    (reply,) = actions
    assert isinstance(reply, Reply) and reply.message.status == 503
    retry = int(reply.message.get("Retry-After"))
    assert OVERLOAD_RETRY_AFTER <= retry <= 2 * OVERLOAD_RETRY_AFTER
    return retry


def test_bound_from_config_or_argument():
    p = core()
    assert p.max_in_flight == getattr(p.config, "max_in_flight", DEFAULT_MAX_IN_FLIGHT)
    names = {f.name for f in dataclasses.fields(PcscfConfig)}
    if "max_in_flight" in names:
        cfg = dataclasses.replace(p.config, max_in_flight=7)
    else:  # a config without the field yet: one that has it

        class Configured(PcscfConfig):
            max_in_flight = 7

        cfg = Configured(**{n: getattr(p.config, n) for n in names})
    assert PcscfCore(cfg, p.network).max_in_flight == 7
    assert PcscfCore(cfg, p.network, max_in_flight=2).max_in_flight == 2


def test_new_register_refused_while_protected_and_in_flight_ones_pass():
    p = core()
    p.max_in_flight = 2
    p.max_queue_delay = 0  # the count alone
    # UE 1 registers: its SAs are established, nothing in flight afterwards
    (fwd,) = p.receive_request(parse_message(_initial(1)), Arrival(UE), 0.0)
    assert p.open_transactions() == 1 == _scan(p)
    resp = make_response(fwd.message, 401, to_tag="t", headers=[CHALLENGE])
    acts = p.receive_response(parse_message(resp.to_bytes()), ICSCF, 0.5)
    sa = next(a for a in acts if isinstance(a, InstallSecurityAssociations)).sa
    server = next(a for a in acts if isinstance(a, Reply)).message.get("Security-Server")
    port_c = Arrival(("127.0.0.1", 2468), spi=sa.spi_ps)
    (fwd,) = p.receive_request(parse_message(_second(2, server).encode()), port_c, 1.0)
    resp = make_response(fwd.message, 200, to_tag="t", headers=OK_HEADERS)
    p.receive_response(parse_message(resp.to_bytes()), ICSCF, 1.5)
    assert p.open_transactions() == 0 == _scan(p)  # its SUBSCRIBE is not counted
    # two other UEs' initial REGISTERs fill the bound
    a = p.receive_request(parse_message(_initial(2, "u2@home1.net")), Arrival(UE), 2.0)
    b = p.receive_request(parse_message(_initial(3, "u3@home1.net")), Arrival(UE), 2.0)
    assert isinstance(a[0], Forward) and isinstance(b[0], Forward)
    assert p.open_transactions() == 2 == _scan(p)
    # a third: 503 with Retry-After, not forwarded, counted
    _is_503(p.receive_request(parse_message(_initial(4, "u4@home1.net")), Arrival(UE), 2.1))
    assert p.counters["overload_rejected"] == 1 and p.open_transactions() == 2
    # the retransmission of one in flight is absorbed, not refused (its work is under
    # way; the P-CSCF's own Timer E sends it up again)
    assert p.receive_request(parse_message(_initial(2, "u2@home1.net")), Arrival(UE), 2.2) == []
    assert p.counters["overload_rejected"] == 1 and p.open_transactions() == 2 == _scan(p)
    # an AUTS answer (resynchronisation of an AKA run) in the clear is served
    auts = _initial(5, "u5@home1.net").replace(b'response=""', b'response="", auts="AAAA"')
    (f,) = p.receive_request(parse_message(auts), Arrival(UE), 2.3)
    assert isinstance(f, Forward)
    # a re-registration over UE 1's SAs is served past the bound
    (f,) = p.receive_request(parse_message(_second(3, server).encode()), port_c, 2.4)
    assert isinstance(f, Forward) and p.open_transactions() == 4 == _scan(p)
    assert p.stats()["overload_rejected"] == 1
    # answers bring the count down: new REGISTERs are forwarded again
    for fwd in (a[0], b[0], f):
        resp = make_response(fwd.message, 403, to_tag="t")
        p.receive_response(parse_message(resp.to_bytes()), ICSCF, 3.0)
    assert p.open_transactions() == 1 == _scan(p)
    (f,) = p.receive_request(parse_message(_initial(6, "u6@home1.net")), Arrival(UE), 3.1)
    assert isinstance(f, Forward) and p.open_transactions() == 2 == _scan(p)
    # requests never answered leave the count at Timer F
    p.handle_timer(3.1 + 33.0)
    assert p.open_transactions() == 0 == _scan(p) and not p.pending


def test_challenge_response_without_sec_agree_passes_the_bound():
    """Policy optional (SIPp, desk clients): the second REGISTER of an AKA run comes in
    the clear with a response; refusing it would waste the 401 (and the MAR) already
    done, so only the first REGISTER of a run can be refused."""
    base = core()
    p = PcscfCore(dataclasses.replace(base.config, sec_agree="optional"), base.network)
    p.max_in_flight = 1
    p.max_queue_delay = 0  # the count alone

    def plain(n: int, impi: str, response: str = "") -> bytes:
        text = _initial(n, impi).decode()
        lines = [
            line
            for line in text.split("\r\n")
            if not line.startswith(("Security-Client", "Require", "Proxy-Require"))
        ]
        text = "\r\n".join(lines)
        if response:
            text = text.replace('response=""', f'response="{response}"').replace(
                'nonce=""', 'nonce="bm9uY2U="'
            )
        return text.encode()

    (f,) = p.receive_request(parse_message(plain(1, "u1@home1.net")), Arrival(UE), 0.0)
    assert isinstance(f, Forward) and p.open_transactions() == 1
    _is_503(p.receive_request(parse_message(plain(2, "u2@home1.net")), Arrival(UE), 0.1))
    answer = plain(3, "u3@home1.net", response="6629fae49393a05397450978507c4ef1")
    (f,) = p.receive_request(parse_message(answer), Arrival(UE), 0.2)
    assert isinstance(f, Forward) and p.counters["overload_rejected"] == 1


def test_no_bound_when_zero():
    p = core()
    p.max_in_flight = 0
    p.max_queue_delay = 0  # the count alone
    for n in range(5):
        (f,) = p.receive_request(parse_message(_initial(n, f"u{n}@h")), Arrival(UE), 0.0)
        assert isinstance(f, Forward)
    assert p.open_transactions() == 5 and "overload_rejected" not in p.counters


def _answer(p, fwd, at: float) -> None:
    resp = make_response(fwd.message, 403, to_tag="t")
    p.receive_response(parse_message(resp.to_bytes()), ICSCF, at)


def test_standing_queue_refuses_new_registers_by_delay():
    """`max_queue_delay`: 503 while the quickest answer of the last full 100 ms window
    took longer than the target; one slow answer among quick ones does not count, and
    the measure lapses when no answer came for a window."""
    p = core()
    p.max_in_flight = 0  # the delay alone
    assert p.max_queue_delay == DEFAULT_MAX_QUEUE_DELAY == 0.4
    n = iter(range(100, 1000))

    def initial(at: float):
        i = next(n)
        return p.receive_request(parse_message(_initial(i, f"u{i}@h")), Arrival(UE), at)

    # quick answers (50 ms) and one slow one (2 s) in a window: no standing queue
    slow = initial(0.0)[0]
    quick = [initial(1.95)[0] for _ in range(3)]
    _answer(p, slow, 2.0)
    for f in quick:
        _answer(p, f, 2.0)
    assert isinstance(initial(2.11)[0], Forward)  # the window [2.0, 2.1) is full: 50 ms
    assert p.queue_delay(2.11) == pytest.approx(0.05)
    # every answer of a window slow (0.5 s): new initial REGISTERs get 503 + Retry-After
    late = [initial(2.5)[0] for _ in range(3)]
    for f in late:
        _answer(p, f, 3.0)
    assert isinstance(initial(3.05)[0], Forward)  # that window is not full yet
    _is_503(initial(3.12))
    assert p.counters["overload_rejected"] == 1 and p.queue_delay(3.12) == pytest.approx(0.5)
    # no answer for a whole window since: the measure lapses, REGISTERs pass again
    assert p.queue_delay(3.25) == 0.0
    assert isinstance(initial(3.25)[0], Forward)
    # off: 0
    p.max_queue_delay = 0
    for f in [initial(4.0)[0] for _ in range(2)]:
        _answer(p, f, 5.0)
    assert isinstance(initial(5.15)[0], Forward)


def test_queue_delay_config_field():
    base = core()
    cfg = dataclasses.replace(base.config, max_queue_delay=0.25)
    assert PcscfCore(cfg, base.network).max_queue_delay == 0.25
    assert PcscfCore(dataclasses.replace(cfg, max_queue_delay=0), base.network).max_queue_delay == 0


# ---------------------------------------------------------------- over real sockets


def _raw_register(sub, port: int, n: int) -> bytes:
    """An initial REGISTER of `sub` as a UE at 127.0.0.1:`port` would send it."""
    home = sub.impi.split("@", 1)[1]
    impu = sub.impus[0]
    return (
        f"REGISTER sip:{home} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKraw{n}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <{impu}>;tag=raw{n}\r\n"
        f"To: <{impu}>\r\n"
        f"Contact: <sip:127.0.0.1:{port}>;expires=600000\r\n"
        f"Call-ID: raw{n}@127.0.0.1\r\n"
        f'Authorization: Digest username="{sub.impi}", realm="{home}", nonce="", '
        f'uri="sip:{home}", response=""\r\n'
        "Security-Client: ipsec-3gpp; alg=hmac-sha-1-96; spi-c=1111; spi-s=2222; "
        "port-c=3333; port-s=4444\r\n"
        "Require: sec-agree\r\n"
        "Proxy-Require: sec-agree\r\n"
        f"CSeq: {n} REGISTER\r\n"
        "Supported: path\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def _answer_to(sock: socket.socket, timeout: float = 5.0):
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
    return parse_message(data)


async def _in_flight_reaches(server, count: int) -> bool:
    for _ in range(200):
        if server.core.open_transactions() == count:
            return True
        await asyncio.sleep(0.01)
    return False


async def _quiet(server, polls: int = 30) -> bool:
    """Nothing in flight for `polls` consecutive 10 ms polls (within 5 s)."""
    calm = 0
    for _ in range(500):
        calm = calm + 1 if server.core.open_transactions() == 0 else 0
        if calm >= polls:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_overload_over_sockets(visited_network, subscribers):
    net = visited_network
    server = net.pcscf
    ue_a = UeClient(net.ue_config(subscribers[0]))
    await ue_a.start()
    ue_b = UeClient(net.ue_config(subscribers[1]))
    await ue_b.start()
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    raw.setblocking(False)
    raw_port = raw.getsockname()[1]
    try:
        assert (await ue_a.register(timeout=15)).ok
        # UE A's reg-event SUBSCRIBE (TS 24.229 §5.1.1.3) follows its 200 OK: answered
        # before the bound is set, so the one request in flight below is UE B's.
        assert await _quiet(server)
        server.core.max_in_flight = 1
        server.core.max_queue_delay = 0  # the count alone
        # Hold what the upstream answers, so requests stay in flight.
        icscf = (net.config.icscf.address, net.config.icscf.port)
        held: list[tuple[bytes, tuple[str, int]]] = []
        deliver = server._clear_datagram

        def hold(data, source, transport):
            if source == icscf:
                held.append((data, source))
            else:
                deliver(data, source, transport)

        server.udp.set_receiver(hold)
        b_run = asyncio.ensure_future(ue_b.register(timeout=20))
        assert await _in_flight_reaches(server, 1)
        # a new UE's initial REGISTER: 503 at once, with Retry-After
        pcscf = server.address
        raw.sendto(_raw_register(subscribers[2], raw_port, 1), pcscf)
        answer = await _answer_to(raw)
        assert answer.status == 503
        assert OVERLOAD_RETRY_AFTER <= int(answer.get("Retry-After")) <= 2 * OVERLOAD_RETRY_AFTER
        assert server.core.open_transactions() == 1
        # UE A's re-registration over its SAs is forwarded all the same
        a_run = asyncio.ensure_future(ue_a.reregister(timeout=20))
        assert await _in_flight_reaches(server, 2)
        # the upstream answers: everything in flight completes
        server.udp.set_receiver(deliver)
        for data, source in held:
            deliver(data, source, server.udp)
        assert (await a_run).ok
        assert (await b_run).ok
        assert await _in_flight_reaches(server, 0)
        # below the bound again: the new UE's REGISTER is forwarded (its 401 comes)
        raw.sendto(_raw_register(subscribers[2], raw_port, 2), pcscf)
        answer = await _answer_to(raw, timeout=10)
        assert answer.status == 401 and answer.get("Security-Server")
        assert server.stats()["overload_rejected"] == 1
        assert server.census()["pending_forwarded"] == 0
        samples = parse_metrics(
            generate_latest(registry_for("pcscf", server, process=False)).decode()
        )
        key = (
            "imsaka_events_total",
            (("event", "overload_rejected"), ("function", "pcscf"), ("source", "pcscf")),
        )
        assert samples[key] == 1
    finally:
        raw.close()
        await ue_a.close()
        await ue_b.close()
