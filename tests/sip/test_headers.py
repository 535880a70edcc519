"""Typed header views and URIs: parse, fields, serialization round trips, errors."""

from __future__ import annotations

import pytest

from imsaka.sip import (
    AbsoluteUri,
    ChargingFunctionAddresses,
    ChargingVector,
    Contact,
    ContentType,
    CSeq,
    DigestCredentials,
    NameAddr,
    Params,
    SecurityMechanism,
    SipParseError,
    SipUri,
    TelUri,
    Via,
    parse_uri,
)
from imsaka.sip.headers import option_tags, parse_date
from imsaka.sip.uri import unescape


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.com",
        "sip:alice:secretword@atlanta.com;transport=tcp",
        "sips:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sips:1212@gateway.com",
        "sip:alice@192.0.2.4",
        "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
        "sip:alice;day=tuesday@atlanta.com",
        "sip:[5555::aaa:bbb:ccc:ddd]:1357;comp=sigcomp",
        "sip:user1_public1@home1.net",
        "sip:term@pcscf1.visited1.net;lr",
        "sip:%61lice@atlanta.com;maddr=239.255.255.1;ttl=15",
        "sip:host.example.com.:5061",
    ],
)
def test_sip_uri_round_trip(text):
    u = parse_uri(text)
    assert isinstance(u, SipUri)
    assert str(u) == text
    assert SipUri.parse(str(u)) == u


def test_sip_uri_parts():
    u = SipUri.parse("sips:alice:pw@[2001:db8::1]:5061;transport=TCP;lr?h=1")
    assert (u.scheme, u.user, u.password, u.host, u.port) == (
        "sips",
        "alice",
        "pw",
        "[2001:db8::1]",
        5061,
    )
    assert u.host_ip == "2001:db8::1" and u.transport == "tcp" and u.lr and u.headers == "h=1"
    assert u.aor() == "sips:alice@[2001:db8::1]"
    assert SipUri.parse("sip:%61lice@h").user_unescaped == "alice"
    assert SipUri("::1", "bob", 5060).host == "[::1]"
    assert str(SipUri("::1", "bob", 5060)) == "sip:bob@[::1]:5060"
    assert SipUri.parse("SIP:a@H").scheme == "sip"


@pytest.mark.parametrize(
    "text",
    [
        "sip:",
        "sip:@host",
        "sip:a@",
        "sip:a@[::1",
        "sip:a@[zz::1]",
        "sip:a@host:99999",
        "sip:a@host:0",
        "sip:a@host:x",
        "sip:a b@host",
        "sip:a@ho st",
        "sip:a@host;=x",
        "sip:a@host;p=",
        "sip:a%2@host",
        "sip:a@host?",
        "sip:a@-host",
        "tel:",
        "tel:abc-xyz",
        "not a uri",
        ":nouri",
    ],
)
def test_bad_uris(text):
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_tel_uri():
    t = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert isinstance(t, TelUri) and t.is_global
    assert t.digits == "+12015550123" and t.params.get("phone-context") == "example.com"
    assert str(t) == "tel:+1-201-555-0123;phone-context=example.com"
    assert t == TelUri.parse("tel:+1.201.555.0123;phone-context=example.com")
    assert not TelUri.parse("tel:7042;phone-context=example.com").is_global


def test_absolute_uri():
    u = parse_uri("urn:service:sos")
    assert isinstance(u, AbsoluteUri) and u.scheme == "urn" and str(u) == "urn:service:sos"


def test_unescape():
    assert unescape("a%20b%2C") == "a b,"
    with pytest.raises(SipParseError):
        unescape("a%zz")


def test_params():
    p = Params.parse('a=1;B;c="x;y"')
    assert p.get("b") == "" and p.get("A") == "1" and p.get("c") == "x;y" and p.raw("c") == '"x;y"'
    assert "b" in p and "z" not in p and p.get("z") is None
    assert str(p) == ';a=1;B;c="x;y"'
    assert p.with_param("a", "2").get("a") == "2" and p.without("a").get("a") is None
    assert Params.parse(p.to_str(lead=False)) == p
    for bad in ("a;;b", "=x", 'a="unterminated', "a=b c"):
        with pytest.raises(SipParseError):
            Params.parse(bad)


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds",
        "SIP/2.0/TCP [2001:db8::9]:5070;branch=z9hG4bK1;received=192.0.2.1;rport=4000",
        "SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKx",
        "SIP/2.0/UDP [5555::aaa:bbb:ccc:ddd]:1357;comp=sigcomp;branch=z9hG4bKnashds7",
        "SIP/2.0/SCTP h;maddr=224.2.0.1;ttl=16;branch=z9hG4bKm",
    ],
)
def test_via_round_trip(text):
    v = Via.parse(text)
    assert str(v) == text and Via.parse(str(v)) == v


def test_via_fields_and_response_address():
    v = Via.parse("SIP / 2.0 / udp  10.0.0.1 : 5070 ; rport ; branch=z9hG4bKx")
    assert (v.transport, v.host, v.port, v.rport, v.branch) == (
        "UDP",
        "10.0.0.1",
        5070,
        True,
        "z9hG4bKx",
    )
    assert v.response_address() == ("10.0.0.1", 5070)
    v2 = v.with_param("received", "192.0.2.9").with_param("rport", "4444")
    assert v2.received == "192.0.2.9" and v2.rport == 4444
    assert v2.response_address() == ("192.0.2.9", 4444)
    assert Via.parse("SIP/2.0/UDP host").response_address() == ("host", 5060)
    assert Via.parse("SIP/2.0/TLS host").response_address() == ("host", 5061)
    assert Via.parse("SIP/2.0/UDP [::1]:7").response_address() == ("::1", 7)
    for bad in (
        "SIP/2.0 host",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP host;rport=x",
        "SIP/2.0/UDP h:70000",
        "SIP/2.0/UDP ho st",
    ):
        with pytest.raises(SipParseError):
            Via.parse(bad)


def test_name_addr_forms():
    na = NameAddr.parse('"Alice \\"A\\" Smith" <sip:alice@atlanta.com>;tag=1928301774')
    assert na.display_name == 'Alice "A" Smith' and na.tag == "1928301774"
    assert NameAddr.parse(str(na)) == na
    na = NameAddr.parse("Bob Jones <sip:bob@biloxi.com>")
    assert na.display == "Bob Jones" and na.tag is None
    # addr-spec: params after the URI belong to the header (§20.10)
    na = NameAddr.parse("sip:carol@chicago.com;tag=887s")
    assert na.uri == "sip:carol@chicago.com" and na.tag == "887s"
    assert str(na) == "<sip:carol@chicago.com>;tag=887s"
    na = NameAddr.parse("<tel:+1-212-555-1111>")
    assert isinstance(na.parsed_uri, TelUri)
    assert NameAddr.parse("<sip:a@b>").with_param("tag", "x").tag == "x"
    for bad in (
        "",
        '"unterminated <sip:a@b>',
        "<sip:a@b",
        '"x" sip:a@b',
        "<sip:a@b> junk",
        "bad@display <sip:a@b>",
        "sip:a@b,c",
        "<>",
    ):
        with pytest.raises(SipParseError):
            NameAddr.parse(bad)


def test_contact():
    c = Contact.parse('<sip:ue@[::1]:5060>;expires=3600;q=0.7;+sip.instance="<urn:x>"')
    assert c.expires == 3600 and c.q == 0.7 and c.params.get("+sip.instance") == "<urn:x>"
    assert Contact.parse(str(c)) == c
    star = Contact.parse(" * ")
    assert star.star and str(star) == "*"
    with pytest.raises(SipParseError):
        _ = Contact.parse("<sip:a@b>;expires=soon").expires
    with pytest.raises(SipParseError):
        _ = Contact.parse("<sip:a@b>;q=2").q


def test_cseq():
    c = CSeq.parse("  4711   INVITE ")
    assert (c.seq, c.method) == (4711, "INVITE") and str(c) == "4711 INVITE"
    for bad in ("INVITE", "1", "-1 INVITE", "1 IN VITE", "99999999999 INVITE", "2147483648 INVITE"):
        with pytest.raises(SipParseError):
            CSeq.parse(bad)


def test_digest_credentials_quoting_kept():
    text = (
        'Digest username="user1_private@home1.net", realm="registrar.home1.net", '
        'nonce="A34Cm+Fva37UYWpGNB34JP", uri="sip:registrar.home1.net", '
        'response="6629fae49393a05397450978507c4ef1", algorithm=AKAv1-MD5, qop=auth-int, '
        'nc=00000001, cnonce="0a4f113b", integrity-protected="yes", '
        'auts="CjkyMzRfOiwg5CfkJ2UK=", opaque=5ccc069c403ebaf9f0171e9517f40e41'
    )
    d = DigestCredentials.parse(text)
    assert d.scheme == "Digest"
    assert d.algorithm == "AKAv1-MD5" and not d.param("algorithm").quoted
    assert d.opaque == "5ccc069c403ebaf9f0171e9517f40e41" and not d.param("opaque").quoted
    assert d.qop == "auth-int" and d.nc == "00000001" and d.cnonce == "0a4f113b"
    assert d.auts == "CjkyMzRfOiwg5CfkJ2UK=" and d.param("auts").quoted
    assert d.integrity_protected == "yes"
    assert d["nonce"] == "A34Cm+Fva37UYWpGNB34JP" and "nonce" in d and "stale" not in d
    assert str(d) == text
    assert DigestCredentials.parse(str(d)) == d
    with pytest.raises(KeyError):
        d["nothing"]


def test_digest_build_and_edit():
    ch = DigestCredentials.build(realm="r", nonce="n==", algorithm="AKAv1-MD5", ik="aa", ck="bb")
    assert str(ch) == 'Digest realm="r", nonce="n==", algorithm=AKAv1-MD5, ik="aa", ck="bb"'
    assert "aa" not in repr(ch) and "bb" not in repr(ch)
    assert str(ch.without("ik", "CK")) == 'Digest realm="r", nonce="n==", algorithm=AKAv1-MD5'
    ch2 = ch.with_param("integrity-protected", "no")
    assert ch2.param("integrity-protected").quoted and ch2.integrity_protected == "no"
    assert ch2.with_param("integrity-protected", "yes").integrity_protected == "yes"
    assert DigestCredentials.build(stale="TRUE").stale
    esc = DigestCredentials.build(realm='a"b\\c')
    assert DigestCredentials.parse(str(esc)).realm == 'a"b\\c'


def test_authentication_info_has_no_scheme():
    d = DigestCredentials.parse('nextnonce="abc", qop=auth, rspauth="x"', scheme_required=False)
    assert (
        d.scheme is None
        and d.get("nextnonce") == "abc"
        and str(d) == 'nextnonce="abc", qop=auth, rspauth="x"'
    )


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Digest",
        'Digest realm="x',
        "Digest realm",
        "Digest =x",
        "Digest a=b c",
        "Digest a=b,,c=d",
        "Di gest",
        'Digest realm="a", nonce="b',
    ],
)
def test_bad_digest(bad):
    with pytest.raises(SipParseError):
        DigestCredentials.parse(bad)


def test_security_mechanism():
    s = SecurityMechanism.build(
        "ipsec-3gpp",
        q="0.1",
        alg="hmac-sha-1-96",
        ealg="aes-cbc",
        spi_c=1,
        spi_s=4294967295,
        port_c=5062,
        port_s=5064,
        prot="esp",
        mod="trans",
    )
    assert str(s) == (
        "ipsec-3gpp;q=0.1;alg=hmac-sha-1-96;ealg=aes-cbc;spi-c=1;spi-s=4294967295;"
        "port-c=5062;port-s=5064;prot=esp;mod=trans"
    )
    assert (s.q, s.ealg, s.spi_s, s.port_c, s.prot, s.mod) == (
        0.1,
        "aes-cbc",
        4294967295,
        5062,
        "esp",
        "trans",
    )
    assert SecurityMechanism.parse(str(s)) == s
    d = SecurityMechanism.parse("digest;d-alg=md5;d-qop=auth-int;q=0.2")
    assert d.mechanism == "digest" and d.get("d-qop") == "auth-int"
    reordered = SecurityMechanism.parse(
        "IPSEC-3GPP; port-s=5064; alg=hmac-sha-1-96;ealg=aes-cbc;spi-c=1;"
        "spi-s=4294967295;port-c=5062;prot=esp;mod=trans;q=0.1"
    )
    assert reordered.same_as(s) and reordered != s
    assert not s.same_as(SecurityMechanism.parse(str(s).replace("aes-cbc", "null")))
    for bad in (
        "ipsec-3gpp;spi-c=4294967296",
        "ipsec-3gpp;port-s=0",
        "ipsec-3gpp;port-c=65536",
        "ipsec-3gpp;q=1.5",
        "ipsec-3gpp;spi-s=abc",
        "ipsec 3gpp",
        ";alg=x",
    ):
        with pytest.raises(SipParseError):
            SecurityMechanism.parse(bad)


def test_charging_headers():
    cv = ChargingVector.parse(
        'icid-value="AyretyU0dm+6O2IrT5tAFrbHLso=023551024"; orig-ioi=home1.net;'
        " term-ioi=visited1.net;icid-generated-at=192.0.2.1"
    )
    assert cv.icid_value == "AyretyU0dm+6O2IrT5tAFrbHLso=023551024"
    assert (cv.orig_ioi, cv.term_ioi, cv.icid_generated_at) == (
        "home1.net",
        "visited1.net",
        "192.0.2.1",
    )
    assert ChargingVector.parse(str(cv)) == cv
    with pytest.raises(SipParseError):
        ChargingVector.parse("orig-ioi=x")
    built = ChargingVector.build("abc=123", orig_ioi="home1.net")
    assert str(built) == 'icid-value="abc=123";orig-ioi=home1.net'
    cfa = ChargingFunctionAddresses.parse('ccf=192.1.1.1; ccf=192.1.1.2; ecf="aaa://h.net"')
    assert cfa.ccf == ["192.1.1.1", "192.1.1.2"] and cfa.ecf == ["aaa://h.net"]
    assert ChargingFunctionAddresses.parse(str(cfa)) == cfa


def test_content_type_date_option_tags():
    ct = ContentType.parse("Application/SDP ; charset=utf-8")
    assert ct.mime == "application/sdp" and ct.params.get("charset") == "utf-8"
    assert ContentType.parse(str(ct)) == ct
    with pytest.raises(SipParseError):
        ContentType.parse("text")
    assert parse_date("Sat, 13 Nov 2010 23:29:00 GMT").minute == 29
    for bad in ("yesterday", "Sat, 31 Feb 2010 23:29:00 GMT", "Sat, 13 Foo 2010 23:29:00 GMT"):
        with pytest.raises(SipParseError):
            parse_date(bad)
    assert option_tags(["path", "sec-agree"]) == ["path", "sec-agree"]
    with pytest.raises(SipParseError):
        option_tags(["bad tag"])


def test_auth_params_are_equal_only_to_auth_params():
    from imsaka.sip.headers import AuthParam

    p = AuthParam("nonce", "abc", True)
    assert (p.name, p.value, p.quoted) == ("nonce", "abc", True)
    assert p == AuthParam("nonce", "abc", True) and p != AuthParam("nonce", "abc", False)
    assert p != ("nonce", "abc", True) and hash(p) == hash(AuthParam("nonce", "abc", True))
    assert str(p) == 'nonce="abc"' and repr(p) == "AuthParam('nonce=\"abc\"')"


def test_digest_fast_path_and_exact_parser_agree():
    from imsaka.sip.headers import DigestCredentials, _digest_params_fast

    plain = 'username="u@h", realm="r", nonce="", uri="sip:r", response="", algorithm=AKAv1-MD5'
    cred = DigestCredentials.parse("Digest " + plain)
    assert cred.get("nonce") == "" and cred.algorithm == "AKAv1-MD5" and cred["realm"] == "r"
    escaped = DigestCredentials.parse('Digest realm="a\\"b", qop="auth,auth-int"')
    assert escaped.realm == 'a"b' and escaped.qop == "auth,auth-int"
    # octets between two items: not the fast path's; the exact parser names the fault
    assert _digest_params_fast('realm="r", junk, nonce="n"') is None
    with pytest.raises(SipParseError, match="digest parameter"):
        DigestCredentials.parse('Digest realm="r", junk, nonce="n"')
    assert DigestCredentials.parse("Digest\trealm=r").scheme == "Digest"
