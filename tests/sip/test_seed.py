"""The seed's Appendix 1 (TS 24.228 REGISTER flow, packets 1–13): byte-exact round
trips and every typed header checked field by field."""

from __future__ import annotations

import base64

import pytest

from imsaka.sip import Request, Response, SipParseError, parse_message
from imsaka.sip.framing import StreamFramer
from imsaka.sip.headers import AccessNetworkInfo, VisitedNetworkId, parse_date

from .conftest import SEED

UE_VIA = "SIP/2.0/UDP [5555::aaa:bbb:ccc:ddd];comp=sigcomp;branch=z9hG4bKnashds7"
UE_VIA8 = "SIP/2.0/UDP [5555::aaa:bbb:ccc:ddd]:1357;comp=sigcomp;branch=z9hG4bKnashds7"
PCSCF_VIA = "SIP/2.0/UDP pcscf1.visited1.net;branch=z9hG4bK240f34.1"
ICSCF_VIA = "SIP/2.0/UDP icscf1_p.home1.net;branch=z9hG4bK351g45.1"
NONCE_RAND = bytes.fromhex("23553cbe9637a89d218ae64dae47bf35")
NONCE_AUTN = bytes.fromhex("55f328b43577b9b94a9ffac354dfafb3")


@pytest.mark.parametrize("n", range(1, 14))
def test_round_trip_byte_exact(n):
    data = SEED[n]
    msg = parse_message(data)
    assert msg.to_bytes() == data
    again = parse_message(msg.to_bytes())
    assert again.header_items() == msg.header_items()


@pytest.mark.parametrize("n", range(1, 14))
def test_round_trip_after_edit_reparses_equal(n):
    msg = parse_message(SEED[n])
    msg.set("Call-ID", "changed@here")
    msg.body = b"v=0\r\n"
    again = parse_message(msg.to_bytes())
    assert again.call_id == "changed@here"
    assert again.body == b"v=0\r\n"
    assert again.get("content-length") == "5"
    assert [k for k, _ in again.header_items()] == [k for k, _ in msg.header_items()]


@pytest.mark.parametrize("n", range(1, 14))
def test_trailing_bytes_are_not_body(n):
    # §18.3: octets beyond Content-Length in a datagram are discarded
    msg = parse_message(SEED[n] + b"GARBAGE\r\n")
    assert msg.body == b""
    assert msg.to_bytes() == SEED[n]


@pytest.mark.parametrize("n", range(1, 14))
def test_truncated_packets_raise_parse_error(n):
    data = SEED[n]
    for cut in range(0, len(data) - 1, 7):
        with pytest.raises(SipParseError):
            parse_message(data[:cut])


def test_all_packets_byte_by_byte_through_the_stream_framer():
    framer = StreamFramer()
    stream = b"".join(SEED[n] for n in range(1, 14))
    out = []
    for i in range(len(stream)):
        framer.feed(stream[i : i + 1])
        while (m := framer.next_message()) is not None:
            out.append(m)
    assert out == [SEED[n] for n in range(1, 14)]
    assert framer.buffered == 0


def test_all_packets_coalesced_in_one_read():
    framer = StreamFramer()
    framer.feed(b"".join(SEED[n] for n in range(1, 14)) + b"REGISTER sip:x SIP/2.0\r\n")
    out = []
    while (m := framer.next_message()) is not None:
        out.append(m)
    assert out == [SEED[n] for n in range(1, 14)]
    assert framer.buffered == len(b"REGISTER sip:x SIP/2.0\r\n")


def test_packet1_fields():
    m = parse_message(SEED[1])
    assert isinstance(m, Request)
    assert (m.method, m.uri, m.version) == ("REGISTER", "sip:registrar.home1.net", "SIP/2.0")
    (via,) = m.via
    assert str(via) == UE_VIA
    assert via.transport == "UDP"
    assert via.host == "[5555::aaa:bbb:ccc:ddd]" and via.port is None
    assert via.comp == "sigcomp" and via.branch == "z9hG4bKnashds7"
    assert m.max_forwards == 70
    pani = AccessNetworkInfo.parse(m.get("P-Access-Network-Info"))
    assert pani.access_type == "3GPP-UTRAN-TDD"
    assert pani.get("utran-cell-id-3gpp") == "234151D0FCE11"
    assert m.from_.uri == "sip:user1_public1@home1.net" and m.from_.tag == "4fa3"
    assert m.to.uri == "sip:user1_public1@home1.net" and m.to.tag is None
    (contact,) = m.contacts
    assert contact.expires == 600000
    assert contact.parsed_uri.host == "[5555::aaa:bbb:ccc:ddd]"
    assert contact.parsed_uri.host_ip == "5555::aaa:bbb:ccc:ddd"
    assert contact.parsed_uri.params.get("comp") == "sigcomp"
    assert m.call_id == "apb03a0s09dkjdfglkj49111"
    auth = m.authorization
    assert auth.scheme == "Digest"
    assert auth.username == "user1_private@home1.net"
    assert auth.realm == "registrar.home1.net"
    assert auth.nonce == "" and auth.param("nonce").quoted
    assert auth.uri == "sip:registrar.home1.net"
    assert auth.response == ""
    assert auth.integrity_protected is None
    (sc,) = m.security("Security-Client")
    assert sc.mechanism == "ipsec-3gpp"
    assert (sc.alg, sc.spi_c, sc.spi_s, sc.port_c, sc.port_s) == (
        "hmac-sha-1-96",
        23456789,
        12345678,
        2468,
        1357,
    )
    assert sc.ealg is None and sc.q is None
    assert m.get_all("Require") == ["sec-agree"]
    assert m.get_all("Proxy-Require") == ["sec-agree"]
    assert (m.cseq.seq, m.cseq.method) == (1, "REGISTER")
    assert m.get_all("Supported") == ["path"]
    assert m.get("Content-Length") == "0" and m.body == b""


def test_packet2_pcscf_additions():
    m = parse_message(SEED[2])
    assert [str(v) for v in m.via] == [PCSCF_VIA, UE_VIA]
    assert m.max_forwards == 69
    (path,) = m.path
    assert path.uri == "sip:term@pcscf1.visited1.net;lr"
    assert path.parsed_uri.lr and path.parsed_uri.user == "term"
    assert m.get_all("Require") == ["path"]
    vnid = VisitedNetworkId.parse(m.get("P-Visited-Network-ID"))
    assert vnid.value == "Visited Network Number 1" and vnid.raw.startswith('"')
    assert m.charging_vector.icid_value == "AyretyU0dm+6O2IrT5tAFrbHLso=023551024"
    assert m.charging_vector.orig_ioi is None
    assert m.visited_network_id == vnid and m.access_network_info.access_type == "3GPP-UTRAN-TDD"
    assert m.option_tags("require") == ["path"] and m.content_type is None
    ip = m.authorization.param("integrity-protected")
    assert (ip.value, ip.quoted) == ("no", True)


def test_packet3_icscf_via_stack():
    m = parse_message(SEED[3])
    assert m.uri == "sip:scscf1.home1.net"
    assert [str(v) for v in m.via] == [ICSCF_VIA, PCSCF_VIA, UE_VIA]
    assert m.via[0].host == "icscf1_p.home1.net"
    assert m.max_forwards == 68


@pytest.mark.parametrize("n", [4, 5, 6])
def test_401_with_keys(n):
    m = parse_message(SEED[n])
    assert isinstance(m, Response) and (m.status, m.reason) == (401, "Unauthorized")
    assert m.to.tag == "5ef4" and m.from_.tag == "4fa3"
    ch = m.www_authenticate
    assert ch.scheme == "Digest" and ch.realm == "registrar.home1.net"
    raw = base64.b64decode(ch.nonce, validate=True)
    assert raw[:16] == NONCE_RAND and raw[16:32] == NONCE_AUTN
    assert ch.algorithm == "AKAv1-MD5" and not ch.param("algorithm").quoted
    assert ch.ik == "00112233445566778899aabbccddeeff" and ch.param("ik").quoted
    # the seed's ck has 31 hex digits; kept exactly as written
    assert ch.ck == "ffeeddccbaa11223344556677889900"
    assert "<hidden>" in repr(ch) and ch.ik not in repr(ch)
    stripped = ch.without("ck", "ik")
    assert str(stripped) == str(parse_message(SEED[7]).www_authenticate)


def test_packet7_security_server():
    m = parse_message(SEED[7])
    assert [str(v) for v in m.via] == [UE_VIA]
    assert m.www_authenticate.ik is None and m.www_authenticate.ck is None
    (ss,) = m.security("Security-Server")
    assert ss.q == 0.1
    assert (ss.alg, ss.spi_c, ss.spi_s, ss.port_c, ss.port_s) == (
        "hmac-sha-1-96",
        98765432,
        87654321,
        8642,
        7531,
    )


def test_packet8_protected_register():
    m = parse_message(SEED[8])
    via = m.top_via
    assert via.port == 1357 and via.sent_by == "[5555::aaa:bbb:ccc:ddd]:1357"
    assert m.contacts[0].parsed_uri.port == 1357
    auth = m.authorization
    assert auth.algorithm == "AKAv1-MD5"
    assert auth.response == "6629fae49393a05397450978507c4ef1"
    assert base64.b64decode(auth.nonce)[:16] == NONCE_RAND
    (sv,) = m.security("Security-Verify")
    (ss,) = parse_message(SEED[7]).security("Security-Server")
    assert sv.same_as(ss) and sv == ss
    (sc,) = m.security("Security-Client")
    assert not sc.same_as(ss)
    assert m.cseq.seq == 2


def test_packet9_integrity_protected_yes():
    m = parse_message(SEED[9])
    assert m.authorization.integrity_protected == "yes"
    assert m.charging_vector.icid_value == "AyretyU0dm+6O2Irt5tAFrbHLso=023551024"


@pytest.mark.parametrize("n", [11, 12, 13])
def test_200_ok(n):
    m = parse_message(SEED[n])
    assert m.status == 200
    assert [str(p) for p in m.path] == ["<sip:term@pcscf1.visited1.net;lr>"]
    assert [p.uri for p in m.service_route] == ["sip:orig@scscf1.home1.net;lr"]
    assert m.contacts[0].expires == 600000
    date = parse_date(m.get("Date"))
    assert (date.year, date.month, date.day, date.hour) == (2001, 7, 11, 8)
    assert m.date == date
    assert m.associated_uris == m.name_addrs("p-associated-uri") and m.asserted_identities == []
    uris = m.name_addrs("P-Associated-URI")
    assert [u.uri for u in uris] == [
        "sip:user1_public2@home1.net",
        "sip:user1_public3@home1.net",
        "sip:+1-212-555-1111@home1.net;user=phone",
    ]
    assert uris[2].parsed_uri.user == "+1-212-555-1111"
    assert uris[2].parsed_uri.params.get("user") == "phone"


@pytest.mark.parametrize("n", range(1, 14))
def test_typed_views_round_trip(n):
    from imsaka.sip.headers import (
        Contact,
        CSeq,
        DigestCredentials,
        NameAddr,
        SecurityMechanism,
        Via,
    )

    m = parse_message(SEED[n])
    for v in m.via:
        assert Via.parse(str(v)) == v
    assert CSeq.parse(str(m.cseq)) == m.cseq
    for na in (m.from_, m.to, *m.path, *m.service_route, *m.name_addrs("p-associated-uri")):
        assert NameAddr.parse(str(na)) == na
    for c in m.contacts:
        assert Contact.parse(str(c)) == c
    for name in ("authorization", "www-authenticate"):
        for cred in m.auth(name):
            assert DigestCredentials.parse(str(cred)) == cred
    for name in ("security-client", "security-server", "security-verify"):
        for sec in m.security(name):
            assert SecurityMechanism.parse(str(sec)) == sec
