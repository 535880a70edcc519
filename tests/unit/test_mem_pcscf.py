"""The P-CSCF's context of a forwarded REGISTER once its final answer went to the UE:
only what a retransmitted request needs until Timer F (the answer, compressed, and the
SPI it left over), and a retransmission still gets the same answer."""

from __future__ import annotations

import random

from imsaka.config import NetworkConfig, PcscfConfig, PcscfRoute
from imsaka.cscf.pcscf import TRANSACTION_LIFETIME, Arrival, Forward, PcscfCore, Reply
from imsaka.sip import make_response, parse_message
from imsaka.sip.compact import PACK_GROUP, PackedItem, PackedWire

UE = ("127.0.0.1", 40000)
ICSCF = ("127.0.0.1", 5070)
IK, CK = "00112233445566778899aabbccddeeff", "ffeeddccbbaa11223344556677889900"


def packet1(n: int) -> bytes:
    return (
        "REGISTER sip:registrar.home1.net SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKue{n:04d}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:user{n}_public1@home1.net>;tag=4fa3\r\n"
        f"To: <sip:user{n}_public1@home1.net>\r\n"
        "Contact: <sip:127.0.0.1:40000>;expires=600000\r\n"
        f"Call-ID: call{n:04d}\r\n"
        f'Authorization: Digest username="user{n}_private@home1.net", realm="registrar.home1.net", '
        'nonce="", uri="sip:registrar.home1.net", response=""\r\n'
        "Security-Client: ipsec-3gpp; alg=hmac-sha-1-96; spi-c=23456789; spi-s=12345678; "
        "port-c=2468; port-s=1357\r\n"
        "Require: sec-agree\r\n"
        "Proxy-Require: sec-agree\r\n"
        "CSeq: 1 REGISTER\r\n"
        "Supported: path\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def core() -> PcscfCore:
    cfg = PcscfConfig(
        name="pcscf1.visited1.net",
        port=5060,
        routes=(PcscfRoute(domain="home1.net", icscf="sip:icscf1_p.home1.net:5070"),),
    )
    net = NetworkConfig(home_domains=("home1.net",), hosts={"icscf1_p.home1.net": "127.0.0.1"})
    return PcscfCore(cfg, net, rng=random.Random(7))


def challenge_all(p: PcscfCore, count: int) -> list[bytes]:
    sent = []
    for n in range(count):
        (fwd,) = p.receive_request(parse_message(packet1(n)), Arrival(UE), float(n))
        assert isinstance(fwd, Forward)
        c401 = make_response(
            fwd.message,
            401,
            to_tag=f"t{n}",
            headers=[
                (
                    "WWW-Authenticate",
                    f'Digest realm="registrar.home1.net", nonce="NONCE{n:04d}xyz", '
                    f'algorithm=AKAv1-MD5, ik="{IK}", ck="{CK}"',
                )
            ],
        )
        acts = p.receive_response(parse_message(c401.to_bytes()), ICSCF, float(n) + 0.5)
        (reply,) = [a for a in acts if isinstance(a, Reply)]
        sent.append(reply.message.to_bytes())
    return sent


def test_answered_context_keeps_the_packed_answer_only():
    p = core()
    n = 2 * PACK_GROUP + 3  # two groups packed, three answers waiting for the next
    sent = challenge_all(p, n)
    assert p.open_transactions() == 0 and len(p.pending) == n
    entries = list(p.pending.values())
    for entry in entries:
        assert not hasattr(entry, "arrival") and not hasattr(entry, "security_client")
    groups = {id(e.final_data[0]): e.final_data[0] for e in entries[: 2 * PACK_GROUP]}
    assert all(type(e.final_data) is PackedItem for e in entries[: 2 * PACK_GROUP])
    assert len(groups) == 2
    for group in groups.values():
        assert type(group[0]) is PackedWire
        assert len(group[0]) < sum(len(d) for d in sent[:PACK_GROUP]) // 4
    assert [e.final_data for e in entries[2 * PACK_GROUP :]] == sent[2 * PACK_GROUP :]
    assert p._to_pack == entries[2 * PACK_GROUP :]
    # the key material the P-CSCF strips from the 401 never reaches its dictionary
    for zdict in p._packer._versions:
        assert IK.encode() not in zdict and CK.encode() not in zdict and b"NONCE" not in zdict


def test_a_retransmitted_register_gets_the_same_answer_until_timer_f():
    p = core()
    n = PACK_GROUP + 5  # a packed group and answers still waiting for one
    sent = challenge_all(p, n)
    for i in range(n):
        (again,) = p.receive_request(parse_message(packet1(i)), Arrival(UE), 30.0)
        assert isinstance(again, Reply) and again.destination == UE
        assert again.message.to_bytes() == sent[i]
    assert p.counters["retransmission-answered"] == n
    assert p.counters["challenges"] == n  # no second SA set per retransmission
    # Timer F after the first context: it goes, the others stay
    p.handle_timer(0.0 + TRANSACTION_LIFETIME)
    assert len(p.pending) == n - 1
    assert p.next_deadline() == 1.0 + TRANSACTION_LIFETIME


def test_answers_waiting_for_a_group_go_with_their_contexts():
    # a quiet P-CSCF may never fill a group: Timer F takes the waiting answers out
    # with their contexts, nothing is kept past it
    p = core()
    sent = challenge_all(p, 3)
    assert len(p._to_pack) == 3
    p.handle_timer(0.0 + TRANSACTION_LIFETIME)
    assert [e.final_data for e in p._to_pack] == sent[1:]
    p.handle_timer(40.0 + TRANSACTION_LIFETIME)
    assert len(p.pending) == 0 and p._to_pack == []


def test_one_deadline_entry_per_registration_and_both_deadlines_still_fire():
    from tests.e2e.test_pcscf_core import ICSCF as UP
    from tests.e2e.test_pcscf_core import PACKET1, packet8
    from tests.e2e.test_pcscf_core import core as seed_core

    from imsaka.cscf.pcscf import InstallSecurityAssociations, ReleaseSecurityAssociations

    p = seed_core()
    (fwd,) = p.receive_request(parse_message(PACKET1.encode()), Arrival(UE), 0.0)
    www = f'Digest realm="r", nonce="AAAA", algorithm=AKAv1-MD5, ik="{IK}", ck="{CK}"'
    c401 = make_response(fwd.message, 401, to_tag="t", headers=[("WWW-Authenticate", www)])
    acts = p.receive_response(parse_message(c401.to_bytes()), UP, 1.0)
    inst = next(a for a in acts if isinstance(a, InstallSecurityAssociations))
    r7 = next(a for a in acts if isinstance(a, Reply)).message
    p8 = packet8(r7)
    ue_c = ("127.0.0.1", 2468)
    (fwd9,) = p.receive_request(parse_message(p8.encode()), Arrival(ue_c, spi=inst.sa.spi_ps), 2.0)
    ok = make_response(
        fwd9.message,
        200,
        to_tag="t",
        headers=[("Contact", "<sip:127.0.0.1:1357>;expires=600000")],
    )
    p.receive_response(parse_message(ok.to_bytes()), UP, 3.0)
    assert p.stats()["registrations"] == 1
    # the temporary set's deadline (1 + 240 s) carries the registration's one entry
    assert len(p._timers) == 1 and p._timers[0][0] == 241.0
    assert p.handle_timer(241.0) == []  # nothing due: the entry moves to the expiry
    (entry,) = p._timers
    assert entry[0] == 3.0 + 600000 + 30.0
    acts = p.handle_timer(entry[0])
    assert [a.reason for a in acts if isinstance(a, ReleaseSecurityAssociations)] == [
        "registration expired"
    ]
    assert p.stats()["registrations"] == 0 and p.next_deadline() is None
