"""P-CSCF core (sans-I/O): packets 1→2, 4/5→7, 8→9, 12→13 and the drop/refuse rules."""

from __future__ import annotations

import random

from imsaka.config import NetworkConfig, PcscfConfig, PcscfRoute
from imsaka.cscf.pcscf import (
    Arrival,
    DropInput,
    Forward,
    HoldSecurityAssociations,
    InstallSecurityAssociations,
    PcscfCore,
    ReleaseSecurityAssociations,
    Reply,
    UpgradeSecurityAssociations,
)
from imsaka.sip import Request, make_response, parse_message

UE = ("127.0.0.1", 40000)
ICSCF = ("127.0.0.1", 5070)

PACKET1 = (
    "REGISTER sip:registrar.home1.net SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKnashds7\r\n"
    "Max-Forwards: 70\r\n"
    "P-Access-Network-Info: 3GPP-UTRAN-TDD; utran-cell-id-3gpp=234151D0FCE11\r\n"
    "From: <sip:user1_public1@home1.net>;tag=4fa3\r\n"
    "To: <sip:user1_public1@home1.net>\r\n"
    "Contact: <sip:127.0.0.1:40000>;expires=600000\r\n"
    "Call-ID: apb03a0s09dkjdfglkj49111\r\n"
    'Authorization: Digest username="user1_private@home1.net", realm="registrar.home1.net", '
    'nonce="", uri="sip:registrar.home1.net", response="", integrity-protected="yes"\r\n'
    "Security-Client: ipsec-3gpp; alg=hmac-sha-1-96; spi-c=23456789; spi-s=12345678; port-c=2468; port-s=1357\r\n"
    "Require: sec-agree\r\n"
    "Proxy-Require: sec-agree\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Supported: path\r\n"
    "Content-Length: 0\r\n\r\n"
)


def packet8(r7) -> str:
    """Packet 8 of the seed: PACKET1 answering the challenge of `r7` (the 401 the UE
    got), with the RES response, CSeq 2, a new branch and `r7`'s Security-Server
    mirrored in Security-Verify."""
    return (
        PACKET1.replace('nonce=""', 'nonce="AAAA", algorithm=AKAv1-MD5')
        .replace('response=""', 'response="6629fae49393a05397450978507c4ef1"')
        .replace("CSeq: 1", "CSeq: 2")
        .replace("z9hG4bKnashds7", "z9hG4bKsecond")
        .replace(
            "\r\nRequire: sec-agree\r\n",
            f"\r\nSecurity-Verify: {r7.get('Security-Server')}\r\nRequire: sec-agree\r\n",
            1,
        )
    )


def core(**kw) -> PcscfCore:
    cfg = PcscfConfig(
        name="pcscf1.visited1.net",
        port=5060,
        routes=(PcscfRoute(domain="home1.net", icscf="sip:icscf1_p.home1.net:5070"),),
        **kw,
    )
    net = NetworkConfig(
        home_domains=("home1.net",),
        hosts={"icscf1_p.home1.net": "127.0.0.1", "scscf1.home1.net": "127.0.0.1"},
    )
    return PcscfCore(cfg, net, rng=random.Random(7))


def test_packet2_and_packet7_and_packet13():
    p = core()
    acts = p.receive_request(parse_message(PACKET1.encode()), Arrival(UE), 0.0)
    (fwd,) = acts
    assert isinstance(fwd, Forward) and fwd.destination == ICSCF
    m = parse_message(fwd.message.to_bytes())
    assert len(m.via) == 2 and m.via[0].host == "pcscf1.visited1.net"
    assert m.get("Max-Forwards") == "69"
    assert m.get("Path") == "<sip:term@pcscf1.visited1.net:5060;lr>"
    assert m.get_all("Require") == ["path"] and m.get("Proxy-Require") is None
    assert m.get("P-Visited-Network-ID") == '"Visited Network Number 1"'
    assert m.charging_vector.get("icid-value")
    assert m.get("Security-Client") is None
    assert m.authorization.integrity_protected == "no"
    # 401 from upstream with ck/ik
    c401 = make_response(
        m,
        401,
        to_tag="5ef4",
        headers=[
            (
                "WWW-Authenticate",
                'Digest realm="registrar.home1.net", nonce="AAAA", algorithm=AKAv1-MD5, '
                'ik="00112233445566778899aabbccddeeff", ck="ffeeddccbbaa11223344556677889900"',
            )
        ],
    )
    acts = p.receive_response(parse_message(c401.to_bytes()), ICSCF, 1.0)
    inst = next(a for a in acts if isinstance(a, InstallSecurityAssociations))
    rep = next(a for a in acts if isinstance(a, Reply))
    assert rep.spi is None and rep.destination == UE
    r7 = parse_message(rep.message.to_bytes())
    assert len(r7.via) == 1
    www = r7.www_authenticate
    assert www.ck is None and www.ik is None and www.nonce == "AAAA"
    ss = r7.security("Security-Server")[0]
    assert (ss.alg, ss.spi_c, ss.spi_s) == ("hmac-sha-1-96", inst.sa.spi_pc, inst.sa.spi_ps)
    assert inst.sa.ck == bytes.fromhex("ffeeddccbbaa11223344556677889900")
    assert (inst.sa.spi_uc, inst.sa.port_uc, inst.sa.port_us) == (23456789, 2468, 1357)
    # packet 8 over the temporary SA
    p8 = packet8(r7)
    assert "Security-Verify" in p8
    # seed step 6: the same REGISTER in the clear is dropped
    acts = p.receive_request(parse_message(p8.encode()), Arrival(UE), 2.0)
    assert (
        isinstance(acts[0], DropInput) and acts[0].reason == "clear-register-where-protection-due"
    )
    ue_c = ("127.0.0.1", 2468)
    acts = p.receive_request(parse_message(p8.encode()), Arrival(ue_c, spi=inst.sa.spi_ps), 2.0)
    (fwd9,) = acts
    m9 = parse_message(fwd9.message.to_bytes())
    assert m9.authorization.integrity_protected == "yes"
    assert m9.get("Security-Verify") is None and m9.get("Security-Client") is None
    ok = make_response(
        m9,
        200,
        to_tag="5ef4",
        headers=[
            ("Path", "<sip:term@pcscf1.visited1.net:5060;lr>"),
            ("Service-Route", "<sip:orig@scscf1.home1.net:5080;lr>"),
            ("Contact", "<sip:127.0.0.1:1357>;expires=600000"),
            ("P-Associated-URI", "<sip:user1_public1@home1.net>, <sip:user1_public2@home1.net>"),
        ],
    )
    acts = p.receive_response(parse_message(ok.to_bytes()), ICSCF, 3.0)
    rep = next(a for a in acts if isinstance(a, Reply))
    assert rep.spi == inst.sa.spi_uc and rep.destination == ue_c
    assert any(isinstance(a, UpgradeSecurityAssociations) for a in acts)
    assert p.stats()["registrations"] == 1
    # a request over the established SA gets P-Asserted-Identity from the set
    inv = Request(
        "MESSAGE",
        "sip:user2@home1.net",
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:1357;branch=z9hG4bKmsg1"),
            ("From", "<sip:user1_public1@home1.net>;tag=1"),
            ("To", "<sip:user2@home1.net>"),
            ("Call-ID", "m1"),
            ("CSeq", "1 MESSAGE"),
            ("Max-Forwards", "70"),
            ("P-Preferred-Identity", "<sip:user1_public2@home1.net>"),
        ],
    )
    (f,) = p.receive_request(inv, Arrival(ue_c, spi=inst.sa.spi_ps), 4.0)
    assert f.message.get("P-Asserted-Identity") == "<sip:user1_public2@home1.net>"
    assert f.message.get("P-Preferred-Identity") is None
    assert f.message.get("Route") == "<sip:orig@scscf1.home1.net:5080;lr>"
    # the same request in the clear from that UE: refused
    (d,) = p.receive_request(inv, Arrival(UE), 4.0)
    assert isinstance(d, DropInput)


def test_421_and_494():
    p = core()
    no_tag = PACKET1.replace("Proxy-Require: sec-agree\r\n", "").replace(
        "Require: sec-agree\r\n", ""
    )
    (r,) = p.receive_request(parse_message(no_tag.encode()), Arrival(UE), 0.0)
    assert r.message.status == 421 and r.message.get("Require") == "sec-agree"
    assert r.message.get("Security-Server")
    supported_only = no_tag.replace("Supported: path", "Supported: path, sec-agree")
    (r,) = p.receive_request(parse_message(supported_only.encode()), Arrival(UE), 0.0)
    assert r.message.status == 494
    no_auth = "\r\n".join(ln for ln in PACKET1.split("\r\n") if not ln.startswith("Authorization"))
    (r,) = p.receive_request(parse_message(no_auth.encode()), Arrival(UE), 0.0)
    assert r.message.status == 494


def test_optional_admits_ue_without_security_client():
    p = core(sec_agree="optional")
    plain = "\r\n".join(
        ln
        for ln in PACKET1.split("\r\n")
        if not ln.startswith(("Security-Client", "Require", "Proxy-Require"))
    )
    (fwd,) = p.receive_request(parse_message(plain.encode()), Arrival(UE), 0.0)
    assert isinstance(fwd, Forward)
    m = parse_message(fwd.message.to_bytes())
    c401 = make_response(
        m,
        401,
        to_tag="x",
        headers=[
            (
                "WWW-Authenticate",
                'Digest realm="r", nonce="AAAA", algorithm=MD5, ik="00112233445566778899aabbccddeeff", ck="ffeeddccbbaa11223344556677889900"',
            )
        ],
    )
    acts = p.receive_response(parse_message(c401.to_bytes()), ICSCF, 1.0)
    assert not any(isinstance(a, InstallSecurityAssociations) for a in acts)
    (rep,) = acts
    assert rep.message.www_authenticate.ck is None and rep.message.get("Security-Server") is None


def test_downgrade_refused_and_temporary_sa_expiry():
    p = core()
    (fwd,) = p.receive_request(parse_message(PACKET1.encode()), Arrival(UE), 0.0)
    c401 = make_response(
        fwd.message,
        401,
        to_tag="5ef4",
        headers=[
            (
                "WWW-Authenticate",
                'Digest realm="r", nonce="AAAA", algorithm=AKAv1-MD5, ik="00112233445566778899aabbccddeeff", ck="ffeeddccbbaa11223344556677889900"',
            )
        ],
    )
    acts = p.receive_response(parse_message(c401.to_bytes()), ICSCF, 1.0)
    inst = next(a for a in acts if isinstance(a, InstallSecurityAssociations))
    bad = (
        PACKET1.replace("CSeq: 1", "CSeq: 2")
        .replace("z9hG4bKnashds7", "z9hG4bKx")
        .replace(
            "\r\nRequire: sec-agree\r\n",
            "\r\nSecurity-Verify: ipsec-3gpp; q=0.1; alg=hmac-md5-96; spi-c=1; spi-s=2; port-c=3; port-s=4\r\nRequire: sec-agree\r\n",
            1,
        )
    )
    acts = p.receive_request(
        parse_message(bad.encode()), Arrival(("127.0.0.1", 2468), spi=inst.sa.spi_ps), 2.0
    )
    assert acts[0].message.status == 494
    # the temporary set goes after the 494 (held for that REGISTER's retransmissions)
    assert [type(a) for a in acts[1:]] == [HoldSecurityAssociations]
    assert acts[1].sa.spi_ps == inst.sa.spi_ps
    # a fresh challenge whose UE never answers: its temporary set expires
    p2 = core()
    (fwd,) = p2.receive_request(parse_message(PACKET1.encode()), Arrival(UE), 0.0)
    c401 = make_response(
        fwd.message,
        401,
        to_tag="5ef4",
        headers=c401.header_items()[-1:]
        if False
        else [
            (
                "WWW-Authenticate",
                'Digest realm="r", nonce="AAAA", algorithm=AKAv1-MD5, ik="00112233445566778899aabbccddeeff", ck="ffeeddccbbaa11223344556677889900"',
            )
        ],
    )
    p2.receive_response(parse_message(c401.to_bytes()), ICSCF, 1.0)
    assert p2.stats()["sas"] == 1
    acts = p2.handle_timer(1.0 + 241)
    assert any(isinstance(a, ReleaseSecurityAssociations) for a in acts)
    assert p2.stats()["sas"] == 0 and p2.stats()["registrations"] == 0


def test_a_retransmitted_401_from_upstream_is_absorbed_not_a_second_sa_set():
    """RFC 3261 §17.1.2: the upstream server transaction re-sends its 401 when the UE's
    retransmitted REGISTER reaches it. The P-CSCF's client side absorbs the copy: no
    second temporary SA set with new SPIs (the UE already set up SAs from the first)."""
    p = core()
    (fwd,) = p.receive_request(parse_message(PACKET1.encode()), Arrival(UE), 0.0)
    c401 = make_response(
        fwd.message,
        401,
        to_tag="5ef4",
        headers=[
            (
                "WWW-Authenticate",
                'Digest realm="r", nonce="AAAA", algorithm=AKAv1-MD5, ik="00112233445566778899aabbccddeeff", ck="ffeeddccbbaa11223344556677889900"',
            )
        ],
    )
    first = p.receive_response(parse_message(c401.to_bytes()), ICSCF, 1.0)
    assert sum(isinstance(a, InstallSecurityAssociations) for a in first) == 1
    again = p.receive_response(parse_message(c401.to_bytes()), ICSCF, 1.5)
    assert again == [] and p.counters["upstream-retransmission-absorbed"] == 1
    assert p.stats()["sas"] == 1 and p.counters["challenges"] == 1
    # The UE's own retransmission of packet 1 still gets the cached 401.
    (reply,) = p.receive_request(parse_message(PACKET1.encode()), Arrival(UE), 2.0)
    assert reply.message.status == 401


def test_an_options_asked_of_the_pcscf_itself_is_answered_200_registered_or_not():
    """A keep-alive OPTIONS to the P-CSCF's own address (no user part, RFC 3261 §11.2)
    gets 200 with Allow from anyone; one for a user from an unregistered UE is still
    refused like any other of its requests."""
    p = core()

    def options(uri: str) -> Request:
        return parse_message(
            (
                f"OPTIONS {uri} SIP/2.0\r\n"
                "Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKopt1\r\n"
                "Max-Forwards: 70\r\n"
                "From: <sip:user1_public1@home1.net>;tag=o1\r\n"
                f"To: <{uri}>\r\n"
                "Call-ID: options-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )

    (rep,) = p.receive_request(options("sip:pcscf1.visited1.net:5060"), Arrival(UE), 0.0)
    assert isinstance(rep, Reply) and rep.destination == UE and rep.spi is None
    r = parse_message(rep.message.to_bytes())
    assert r.status == 200 and r.to.tag and "OPTIONS" in r.get_all("Allow")
    assert p.counters["options-answered"] == 1
    req = options("sip:user1_public2@home1.net")
    req.set("Via", "SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKopt2")
    (rep,) = p.receive_request(req, Arrival(UE), 0.0)
    assert parse_message(rep.message.to_bytes()).status == 403


def test_a_503_from_upstream_reaches_the_ue_as_500_with_its_retry_after():
    """RFC 3261 §16.7 step 6: a proxy does not forward a 503 (to a UE it says that this
    P-CSCF serves nothing, and RFC 3263 §4.3 takes the UE to another); the P-CSCF
    sends a 500 in its place, with the 503's Retry-After and To tag. Other answers
    pass as they came."""
    p = core()
    (fwd,) = p.receive_request(parse_message(PACKET1.encode()), Arrival(UE), 0.0)
    refused = make_response(
        parse_message(fwd.message.to_bytes()),
        503,
        "Service Unavailable (binding store out of reach)",
        to_tag="5ef4",
        headers=[("Retry-After", "5")],
    )
    (reply,) = p.receive_response(parse_message(refused.to_bytes()), ICSCF, 0.1)
    answer = parse_message(reply.message.to_bytes())
    assert (answer.status, answer.retry_after, answer.to.tag) == (500, 5, "5ef4")
    assert answer.reason == (
        "Server Internal Error (next hop: Service Unavailable (binding store out of reach))"
    )
    assert len(answer.via) == 1 and reply.destination == UE
    p = core()
    (fwd,) = p.receive_request(parse_message(PACKET1.encode()), Arrival(UE), 0.0)
    busy = make_response(parse_message(fwd.message.to_bytes()), 504, to_tag="5ef4")
    (reply,) = p.receive_response(parse_message(busy.to_bytes()), ICSCF, 0.1)
    assert reply.message.status == 504
