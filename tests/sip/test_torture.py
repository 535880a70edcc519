"""Hand-written torture messages in the categories of RFC 4475 (our own messages,
not the RFC's): valid-but-odd messages must parse and round-trip, invalid ones must
raise SipParseError with the right status, and every parser is fed whole, byte by
byte (stream framer) and with trailing bytes."""

from __future__ import annotations

import pytest

from imsaka.sip import Request, Response, SipParseError, parse_message
from imsaka.sip.framing import StreamFramer
from imsaka.sip.proxy import error_response_bytes


def msg(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


BASE = [
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKt1",
    "From: <sip:ue@home1.net>;tag=t1",
    "To: <sip:ue@home1.net>",
    "Call-ID: torture@192.0.2.10",
    "Max-Forwards: 70",
]

VALID = {
    # 3.1.1.1-like: short, odd but legal spacing, compact forms, unknown headers
    "wide-spacing": msg(
        "REGISTER sip:home1.net SIP/2.0",
        "Via  :   SIP / 2.0 / UDP 192.0.2.10 ; branch = z9hG4bKws",
        "f    :<sip:ue@home1.net>  ;  tag = 99",
        "t:<sip:ue@home1.net>",
        "i:spaced@x",
        "CSeq :  8  REGISTER",
        "Max-Forwards:70",
        "l:0",
    ),
    # folded headers with tabs and multiple continuation lines
    "folding": msg(
        "OPTIONS sip:bob@example.net SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;",
        "\tbranch=z9hG4bKfold",
        "From: <sip:ue@home1.net>",
        " ;tag=f1",
        "To: <sip:bob@example.net>",
        "Call-ID: fold@x",
        "CSeq: 1",
        "   OPTIONS",
        "Subject:",
        "  ",
        "  folded empty",
        "Content-Length: 0",
    ),
    # escaped characters and odd but legal URIs
    "escapes": msg(
        "INVITE sip:%61lice;user-param=%20x@example.net;tr%61nsport=udp?Subject=a%20b SIP/2.0",
        *BASE,
        "CSeq: 2 INVITE",
        'Contact: "Quoted \\"name\\"" <sip:%61@[2001:db8::10]:5060;transport=udp>;q=0.5',
        "Content-Type: application/sdp",
        "Content-Length: 5",
        body=b"v=0\r\n",
    ),
    # unknown method and unknown headers with odd values kept byte for byte
    "unknown-method": msg(
        "NEWMETHOD sip:x@example.net SIP/2.0",
        *BASE,
        "CSeq: 3 NEWMETHOD",
        'X-Weird-Header:  ;;,,"quoted, comma" <>  ',
        "P-Unknown: \u20ac utf8",
        "Content-Length: 0",
    ),
    # many Via values on one line and split over lines
    "via-list": msg(
        "MESSAGE sip:x@example.net SIP/2.0",
        "Via: SIP/2.0/UDP a;branch=z9hG4bK1,SIP/2.0/TCP b:1;branch=z9hG4bK2 ,  SIP/2.0/UDP [::1];branch=z9hG4bK3",
        "v: SIP/2.0/UDP c;branch=z9hG4bK4",
        "From: <sip:ue@home1.net>;tag=t1",
        "To: <sip:x@example.net>",
        "Call-ID: vl",
        "CSeq: 4 MESSAGE",
        "Content-Length: 3",
        body=b"hi!",
    ),
    # a body containing what looks like headers and an empty line
    "body-with-crlfcrlf": msg(
        "MESSAGE sip:x@example.net SIP/2.0",
        *BASE,
        "CSeq: 5 MESSAGE",
        "Content-Length: 24",
        body=b"Via: fake\r\n\r\nMESSAGE x\r\n",
    ),
    # no Content-Length in a datagram: the rest is the body
    "no-content-length": msg(
        "MESSAGE sip:x@example.net SIP/2.0", *BASE, "CSeq: 6 MESSAGE", body=b"rest"
    ),
    # response with an empty reason phrase and unknown status
    "odd-response": msg(
        "SIP/2.0 499 ",
        *BASE[:4],
        "CSeq: 9 INVITE",
        "Content-Length: 0",
    ),
    # tel URI Request-URI and sips
    "tel-ruri": msg(
        "INVITE tel:+1-201-555-0123;phone-context=x SIP/2.0", *BASE, "CSeq: 7 INVITE", "l: 0"
    ),
    # long values
    "long-values": msg(
        "REGISTER sip:home1.net SIP/2.0",
        *BASE,
        "CSeq: 10 REGISTER",
        "X-Long: " + "a" * 4000,
        "Contact: " + ", ".join(f"<sip:c{i}@h>;expires={i}" for i in range(60)),
        "Content-Length: 0",
    ),
}

INVALID = {
    "missing-call-id": (
        msg("OPTIONS sip:x SIP/2.0", *[h for h in BASE if "Call" not in h], "CSeq: 1 OPTIONS"),
        400,
    ),
    "missing-via": (msg("OPTIONS sip:x SIP/2.0", *BASE[1:], "CSeq: 1 OPTIONS"), 400),
    "missing-cseq": (msg("OPTIONS sip:x SIP/2.0", *BASE), 400),
    "cseq-method-mismatch": (msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: 1 INVITE"), 400),
    "cseq-not-number": (msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: one OPTIONS"), 400),
    "cseq-huge": (msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: 99999999999999999999 OPTIONS"), 400),
    "negative-content-length": (
        msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "Content-Length: -1"),
        400,
    ),
    "huge-content-length": (
        msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "Content-Length: 9999999999999"),
        400,
    ),
    "content-length-too-big": (
        msg("MESSAGE sip:x SIP/2.0", *BASE, "CSeq: 1 MESSAGE", "Content-Length: 50", body=b"short"),
        400,
    ),
    "conflicting-content-length": (
        msg(
            "MESSAGE sip:x SIP/2.0",
            *BASE,
            "CSeq: 1 MESSAGE",
            "Content-Length: 1",
            "l: 2",
            body=b"ab",
        ),
        400,
    ),
    "space-in-ruri": (msg("OPTIONS sip:x y SIP/2.0", *BASE, "CSeq: 1 OPTIONS"), 400),
    "no-scheme-ruri": (msg("OPTIONS example.net SIP/2.0", *BASE, "CSeq: 1 OPTIONS"), 400),
    "version-7": (msg("OPTIONS sip:x SIP/7.0", *BASE, "CSeq: 1 OPTIONS"), 505),
    "garbage-version": (msg("OPTIONS sip:x HTTP/1.1", *BASE, "CSeq: 1 OPTIONS"), 400),
    "bad-method": (msg("OP(TIONS sip:x SIP/2.0", *BASE, "CSeq: 1 OP(TIONS"), 400),
    "bad-status": (msg("SIP/2.0 2000 OK", *BASE, "CSeq: 1 OPTIONS"), 400),
    "status-700": (msg("SIP/2.0 700 Out", *BASE, "CSeq: 1 OPTIONS"), 400),
    "response-version": (msg("SIP/3.0 200 OK", *BASE, "CSeq: 1 OPTIONS"), 400),
    "header-without-colon": (
        msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "NoColonHere"),
        400,
    ),
    "header-name-space": (
        msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "Bad Name: x"),
        400,
    ),
    "empty-header-name": (msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: 1 OPTIONS", ": x"), 400),
    "bare-lf": (
        b"OPTIONS sip:x SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>\r\n"
        b"To: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
        400,
    ),
    "bare-cr": (msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "X: a\rb"), 400),
    "nul-in-header": (msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "X: a\x00b"), 400),
    "continuation-first": (
        msg("OPTIONS sip:x SIP/2.0", " leading: fold", *BASE, "CSeq: 1 OPTIONS"),
        400,
    ),
    "no-empty-line": (b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n", 400),
    "empty": (b"", 400),
    "only-crlf": (b"\r\n\r\n\r\n\r\n", 400),
    "request-line-extra-token": (msg("OPTIONS sip:x SIP/2.0 extra", *BASE, "CSeq: 1 OPTIONS"), 400),
    "control-in-reason": (msg("SIP/2.0 200 O\x01K", *BASE, "CSeq: 1 OPTIONS"), 400),
}

# messages that parse (framing is fine) but whose typed views are malformed
BAD_VIEWS = {
    "bad-via": (
        msg("OPTIONS sip:x SIP/2.0", "Via: SIP/2.0 nohost", *BASE[1:], "CSeq: 1 OPTIONS"),
        "via",
    ),
    "bad-from": (
        msg("OPTIONS sip:x SIP/2.0", BASE[0], "From: <sip:a@b", *BASE[2:], "CSeq: 1 OPTIONS"),
        "from_",
    ),
    "bad-to-uri": (
        msg("OPTIONS sip:x SIP/2.0", *BASE[:2], "To: <sip:a@[zz]>", *BASE[3:], "CSeq: 1 OPTIONS"),
        "to",
    ),
    "bad-max-forwards": (
        msg("OPTIONS sip:x SIP/2.0", *BASE[:4], "Max-Forwards: many", "CSeq: 1 OPTIONS"),
        "max_forwards",
    ),
    "max-forwards-256": (
        msg("OPTIONS sip:x SIP/2.0", *BASE[:4], "Max-Forwards: 256", "CSeq: 1 OPTIONS"),
        "max_forwards",
    ),
    "bad-contact": (
        msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "Contact: <sip:a@b>;expires"),
        None,
    ),
    "bad-expires": (
        msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "Expires: -5"),
        "expires",
    ),
    "unterminated-auth": (
        msg("OPTIONS sip:x SIP/2.0", *BASE, "CSeq: 1 OPTIONS", 'Authorization: Digest nonce="abc'),
        "authorization",
    ),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_torture_parses_and_round_trips(name):
    data = VALID[name]
    m = parse_message(data)
    assert m.to_bytes() == data or name == "no-content-length"
    again = parse_message(m.to_bytes())
    assert again.header_items() == m.header_items() or name == "no-content-length"
    assert again.body == m.body
    # typed views of everything present parse
    for v in m.via:
        assert v.branch
    _ = (m.from_, m.to, m.cseq, m.contacts)
    # trailing bytes after the announced body are ignored
    if m.has("content-length"):
        assert parse_message(data + b"\r\nTRAILING").body == m.body


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_torture_byte_by_byte_on_a_stream(name):
    if name == "no-content-length":
        return  # a stream requires Content-Length (tested below)
    data = VALID[name]
    framer = StreamFramer()
    got = []
    for i in range(len(data)):
        framer.feed(data[i : i + 1])
        m = framer.next_message()
        if m is not None:
            got.append(m)
    assert got == [data]


def test_torture_specifics():
    m = parse_message(VALID["folding"])
    assert m.top_via.branch == "z9hG4bKfold"
    assert m.from_.tag == "f1"
    assert m.cseq.method == "OPTIONS"
    assert m.get("subject") == "folded empty"
    m = parse_message(VALID["escapes"])
    assert isinstance(m, Request) and m.uri.startswith("sip:%61lice")
    c = m.contacts[0]
    assert c.display_name == 'Quoted "name"' and c.parsed_uri.host_ip == "2001:db8::10"
    assert c.parsed_uri.user_unescaped == "a"
    m = parse_message(VALID["via-list"])
    assert [v.branch for v in m.via] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3", "z9hG4bK4"]
    assert m.via[2].host == "[::1]"
    m = parse_message(VALID["body-with-crlfcrlf"])
    assert m.body == b"Via: fake\r\n\r\nMESSAGE x\r\n"
    m = parse_message(VALID["unknown-method"])
    assert m.get("x-weird-header") == ';;,,"quoted, comma" <>'
    assert m.get("p-unknown") == "\u20ac utf8"
    m = parse_message(VALID["odd-response"])
    assert isinstance(m, Response) and m.status == 499 and m.reason == ""
    m = parse_message(VALID["long-values"])
    assert len(m.contacts) == 60 and m.contacts[59].expires == 59
    m = parse_message(VALID["wide-spacing"])
    assert (m.top_via.host, m.top_via.branch, m.from_.tag, m.cseq.seq) == (
        "192.0.2.10",
        "z9hG4bKws",
        "99",
        8,
    )


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_torture_raises(name):
    data, status = INVALID[name]
    with pytest.raises(SipParseError) as e:
        parse_message(data)
    assert e.value.status == status
    assert e.value.reason  # a reason naming the fault


@pytest.mark.parametrize("name", sorted(BAD_VIEWS))
def test_bad_typed_views_raise_parse_error(name):
    data, attr = BAD_VIEWS[name]
    m = parse_message(data)  # framing is fine
    with pytest.raises(SipParseError):
        _ = [c.expires for c in m.contacts] if attr is None else getattr(m, attr)


def test_answerable_vs_unanswerable():
    data, _ = INVALID["cseq-method-mismatch"]
    ans = error_response_bytes(data, 400, "CSeq method does not match")
    r = parse_message(ans)
    assert r.status == 400 and "CSeq method does not match" in r.reason
    assert r.call_id == "torture@192.0.2.10" and r.top_via.branch == "z9hG4bKt1"
    # no Call-ID: cannot be answered
    assert error_response_bytes(INVALID["missing-call-id"][0], 400, "x") is None
    # responses are never answered
    assert error_response_bytes(INVALID["bad-status"][0], 400, "x") is None
    # ACK is never answered
    ack = msg("ACK sip:x SIP/2.0", *BASE, "CSeq: 1 INVITE", "Content-Length: 9")
    assert error_response_bytes(ack, 400, "x") is None
    # an unusable Via cannot be answered
    assert (
        error_response_bytes(
            msg("OPTIONS sip:x SIP/2.0", "Via: junk", *BASE[1:], "CSeq: 1 OPTIONS"), 400, "x"
        )
        is None
    )


def test_stream_requires_content_length():
    framer = StreamFramer()
    framer.feed(VALID["no-content-length"])
    with pytest.raises(SipParseError):
        framer.next_message()


def test_version_is_case_insensitive():
    req = VALID["tel-ruri"].replace(b"SIP/2.0\r\n", b"sip/2.0\r\n", 1)
    m = parse_message(req)
    assert m.version == "sip/2.0" and m.to_bytes() == req
    resp = VALID["odd-response"].replace(b"SIP/2.0 499", b"Sip/2.0 499")
    r = parse_message(resp)
    assert isinstance(r, Response) and r.status == 499 and r.to_bytes() == resp
    assert parse_message(VALID["escapes"]).request_uri.user_unescaped == "alice;user-param= x"
