"""Message API: header access, compact forms, serialization, make_response, limits."""

from __future__ import annotations

import pytest

from imsaka.sip import (
    LocalProtocolError,
    Request,
    Response,
    SipParseError,
    make_response,
    parse_message,
)

from .conftest import SEED

BASIC = (
    b"OPTIONS sip:bob@example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa1, SIP/2.0/TCP h2;branch=z9hG4bKb2\r\n"
    b"Via: SIP/2.0/UDP h3;branch=z9hG4bKc3\r\n"
    b"f: <sip:alice@example.com>;tag=1\r\n"
    b"t: Bob <sip:bob@example.com>\r\n"
    b"i: abc@192.0.2.1\r\n"
    b"CSeq: 7 OPTIONS\r\n"
    b"k: path, sec-agree\r\n"
    b"Supported: gruu\r\n"
    b"X-Unknown:   spaced , values,kept  \r\n"
    b"Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
    b"l: 4\r\n"
    b"\r\n"
    b"body"
)


def test_compact_and_case_insensitive_access():
    m = parse_message(BASIC)
    assert m.get("VIA") == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa1"
    assert m.get_all("v") == [
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa1",
        "SIP/2.0/TCP h2;branch=z9hG4bKb2",
        "SIP/2.0/UDP h3;branch=z9hG4bKc3",
    ]
    assert m.get("from") == m.get("F") == "<sip:alice@example.com>;tag=1"
    assert m.call_id == "abc@192.0.2.1"
    assert m.get_all("supported") == ["path", "sec-agree", "gruu"]
    # unknown and non-list headers are never split at commas
    assert m.get_all("x-unknown") == ["spaced , values,kept"]
    assert m.get("date") == "Sat, 13 Nov 2010 23:29:00 GMT"
    assert m.body == b"body"
    assert m.to_bytes() == BASIC
    assert m.has("CONTENT-LENGTH") and not m.has("route")
    assert m.get("route") is None and m.get_all("route") == []


def test_set_add_remove():
    m = parse_message(BASIC)
    m.add("Via", "SIP/2.0/UDP top;branch=z9hG4bKtop", first=True)
    assert m.top_via.host == "top"
    assert m.header_keys()[0] == "via"
    m.add("Route", "<sip:r1;lr>")
    m.add("Route", "<sip:r2;lr>")
    m.add("Route", "<sip:r0;lr>", first=True)
    assert [r.uri for r in m.route] == ["sip:r0;lr", "sip:r1;lr", "sip:r2;lr"]
    assert m.pop_first("route") == "<sip:r0;lr>"
    assert m.pop_first("v") == "SIP/2.0/UDP top;branch=z9hG4bKtop"
    # popping the first value of a line holding two rewrites that line
    assert m.pop_first("via") == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa1"
    assert [v.host for v in m.via] == ["h2", "h3"]
    m.set("Max-Forwards", "10")
    assert m.max_forwards == 10
    m.set("max-forwards", "9")
    assert m.get_all("Max-Forwards") == ["9"]
    assert m.remove("supported") == 2
    assert m.get_all("k") == []
    m.set("i", "new-call-id")  # compact form: written as Call-ID
    again = parse_message(m.to_bytes())
    assert again.call_id == "new-call-id"
    assert b"\r\nCall-ID: new-call-id\r\n" in m.to_bytes()
    assert b"\r\nMax-Forwards: 9\r\n" in m.to_bytes()
    assert again.max_forwards == 9
    assert [v.host for v in again.via] == ["h2", "h3"]


def test_added_header_is_named_in_long_form():
    r = Request("MESSAGE", "sip:a@b")
    r.add("i", "x")
    r.add("cseq", "1 MESSAGE")
    assert r.header_items() == [("Call-ID", "x"), ("CSeq", "1 MESSAGE")]
    r.add("X-MiXed", "1")
    assert r.header_items()[-1] == ("X-MiXed", "1")


def test_views_follow_mutation():
    m = parse_message(SEED[1])
    assert m.cseq.seq == 1
    m.set("CSeq", "5 REGISTER")
    assert m.cseq.seq == 5
    assert m.to.tag is None
    m.set("To", "<sip:user1_public1@home1.net>;tag=zz")
    assert m.to.tag == "zz"


def test_header_injection_refused():
    r = Request("OPTIONS", "sip:a@b")
    for bad in ("x\r\nVia: evil", "x\ny", "a\x00b"):
        with pytest.raises(LocalProtocolError):
            r.add("Subject", bad)
        with pytest.raises(LocalProtocolError):
            r.set("Subject", bad)


def test_content_length_kept_right():
    m = parse_message(SEED[8])
    m.body = b"hello"
    data = m.to_bytes()
    assert b"Content-Length: 5\r\n" in data and data.endswith(b"\r\n\r\nhello")
    r = Request("MESSAGE", "sip:a@b", [("Via", "SIP/2.0/UDP h;branch=z9hG4bKx")], body=b"abc")
    assert r.to_bytes().endswith(b"Content-Length: 3\r\n\r\nabc")


def test_construct_and_parse_request():
    r = Request(
        "REGISTER",
        "sip:home1.net",
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1"),
            ("From", "<sip:a@home1.net>;tag=1"),
            ("To", "<sip:a@home1.net>"),
            ("Call-ID", "c"),
            ("CSeq", "1 REGISTER"),
        ],
    )
    m = parse_message(r.to_bytes())
    assert isinstance(m, Request) and m.header_items() == [
        *r.header_items(),
        ("Content-Length", "0"),
    ]
    with pytest.raises(LocalProtocolError):
        Request("BAD METHOD", "sip:a")
    with pytest.raises(LocalProtocolError):
        Request("INVITE", "not a uri")
    with pytest.raises(LocalProtocolError):
        Response(99)


def test_make_response_copies_and_tags():
    req = parse_message(SEED[3])
    resp = make_response(
        req, 401, to_tag="5ef4", headers=[("WWW-Authenticate", 'Digest realm="r"')]
    )
    assert (resp.status, resp.reason) == (401, "Unauthorized")
    assert resp.get_all("via") == req.get_all("via")
    assert resp.from_ == req.from_ and resp.call_id == req.call_id and resp.cseq == req.cseq
    assert resp.to.tag == "5ef4" and resp.to.uri == req.to.uri
    assert resp.www_authenticate.realm == "r"
    again = parse_message(resp.to_bytes())
    assert again.to.tag == "5ef4" and again.get_all("via") == req.get_all("via")
    # an existing To tag is never replaced
    tagged = parse_message(SEED[4])
    tagged_req = make_response(tagged, 200, to_tag="other")  # a response used as a template
    assert tagged_req.to.tag == "5ef4"
    assert make_response(req, 500, "Oops").reason == "Oops"


def test_make_response_record_route():
    req = parse_message(SEED[1])
    req.add("Record-Route", "<sip:p1;lr>")
    assert make_response(req, 200, copy_record_route=True).get_all("record-route") == [
        "<sip:p1;lr>"
    ]
    assert make_response(req, 200).get_all("record-route") == []


def test_copy_is_independent():
    req = parse_message(SEED[1])
    fwd = req.copy()
    fwd.add("Via", "SIP/2.0/UDP p;branch=z9hG4bKp", first=True)
    fwd.uri = "sip:elsewhere"
    assert len(req.via) == 1 and len(fwd.via) == 2 and req.uri == "sip:registrar.home1.net"


def test_response_parse():
    m = parse_message(
        b"SIP/2.0 180 \r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
        b"To: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"
    )
    assert (m.status, m.reason) == (180, "")
    m = parse_message(
        b"SIP/2.0 404 Not  Found here\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"
    )
    assert m.reason == "Not  Found here"


def test_size_and_flood_limits():
    big = SEED[1].replace(b"Content-Length: 0", b"Content-Length: 70000") + b"x" * 70000
    with pytest.raises(SipParseError) as e:
        parse_message(big)
    assert e.value.status == 513
    assert parse_message(big, max_size=100_000).body == b"x" * 70000
    flood = SEED[1].replace(b"Supported: path\r\n", b"X-F: 1\r\n" * 300)
    with pytest.raises(SipParseError) as e:
        parse_message(flood)
    assert e.value.status == 400 and "header lines" in e.value.reason
    assert parse_message(flood, max_headers=400).get_all("x-f") == ["1"] * 300


def test_leading_crlf_ignored():
    assert parse_message(b"\r\n\r\n" + SEED[1]).to_bytes() == SEED[1]


def test_memoryview_and_bytearray_accepted():
    assert parse_message(bytearray(SEED[2])).to_bytes() == SEED[2]
    assert parse_message(memoryview(SEED[2])).to_bytes() == SEED[2]
    with pytest.raises(LocalProtocolError):
        parse_message("text")  # type: ignore[arg-type]


def test_non_utf8_octets_round_trip():
    data = SEED[1].replace(b"Supported: path", b"X-Raw: \xff\xfe\x80")
    m = parse_message(data)
    assert m.to_bytes() == data


def test_get_skips_empty_list_lines():
    m = parse_message(SEED[1].replace(b"Supported: path", b"Supported:\r\nSupported: , path"))
    assert m.get("supported") == "path" and m.get_all("supported") == ["path"]
    m = parse_message(SEED[1].replace(b"Supported: path", b"Supported:"))
    assert m.get("supported") == "" and m.get_all("supported") == []


def test_make_response_to_a_request_with_an_unparsable_to_copies_it():
    """Found by the P-CSCF fuzz test: a 400 to a request whose To is garbage must not
    fail while deciding whether to add a To tag."""
    raw = (
        b"REGISTER sip:registrar.home1.net SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n"
        b"From: <sip:a@home1.net>;tag=1\r\nTo: garbage\r\nCall-ID: c\r\n"
        b"CSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    )
    resp = make_response(parse_message(raw), 400, "Bad Request", to_tag="t1")
    assert resp.get("To") == "garbage"
    assert resp.status == 400


def test_constructor_is_add_of_each_item_in_turn():
    """Built in one pass, a message equals one built with `add` line by line: a repeated
    header joins its last line, also when other headers came in between."""
    items = [
        ("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"),
        ("Route", "<sip:r1;lr>"),
        ("v", "SIP/2.0/UDP b;branch=z9hG4bK2"),
        ("Route", "<sip:r2;lr>"),
        ("Route", "<sip:r3;lr>"),
        ("max-forwards", 70),
        ("Call-ID", "  c1  "),
    ]
    built = Request("OPTIONS", "sip:x", items)
    one_by_one = Request("OPTIONS", "sip:x")
    for name, value in items:
        one_by_one.add(name, value)
    assert built._headers == one_by_one._headers
    assert built.to_bytes() == one_by_one.to_bytes()
    assert built.header_keys() == [
        "via",
        "via",
        "route",
        "route",
        "route",
        "max-forwards",
        "call-id",
    ]
    with pytest.raises(LocalProtocolError):
        Request("OPTIONS", "sip:x", [("Call-ID", "a\r\nX: b")])


def test_move_after_keeps_lines_and_views():
    m = parse_message(SEED[1])
    m.top_via  # noqa: B018 - a parsed view that must survive the move
    vias = m.via
    m.add("Path", "<sip:term@pcscf1.visited1.net;lr>")
    assert m.header_keys()[-1] == "path"
    wire = m.to_bytes()
    assert m.move_after({"path", "require"}, {"via", "max-forwards", "p-access-network-info"})
    keys = m.header_keys()
    assert keys[:5] == ["via", "max-forwards", "p-access-network-info", "require", "path"]
    assert m.via is vias
    assert m.to_bytes() != wire
    assert sorted(m.to_bytes().split(b"\r\n")) == sorted(wire.split(b"\r\n"))
    # the Authorization line keeps its folding (no rebuild)
    assert b'Digest username="user1_private@home1.net",\r\n    realm=' in m.to_bytes()
    # already in place, or nothing to move: no change
    assert not m.move_after({"path", "require"}, {"via", "max-forwards", "p-access-network-info"})
    assert not m.move_after({"route"}, {"via"})


def test_remove_several_headers_in_one_pass():
    m = parse_message(SEED[1])
    m.security("Security-Client")
    assert m.remove("Security-Client", "require", "Proxy-Require", "Route") == 3
    assert not m.has("security-client") and not m.has("require") and m.has("supported")
    assert m.security("Security-Client") == []
    assert m.remove("Route", "Path") == 0
    assert m.remove("Route") == 0


REG = (
    b"REGISTER sip:registrar.home1.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pcscf1.home1.net:5060;branch=z9hG4bKp1\r\n"
    b"Max-Forwards: 69\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:37245;branch=z9hG4bKu1\r\n"
    b"From: <sip:user1_public1@home1.net>;tag=f3\r\n"
    b"To: <sip:user1_public1@home1.net>\r\n"
    b"Call-ID: c1@127.0.0.1\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_start_lines_remembered_only_when_valid():
    from imsaka.sip import message

    for _ in range(2):
        assert parse_message(REG).uri == "sip:registrar.home1.net"
    for bad in (b"REGISTER sip:x SIP/3.0\r\n", b"REG@STER sip:x SIP/2.0\r\n", b"SIP/2.0 20 OK\r\n"):
        for _ in range(2):  # refused again: a refused line is never remembered
            with pytest.raises(SipParseError):
                parse_message(bad + REG.partition(b"\r\n")[2])
    # bounded: a flood of distinct Request-URIs does not grow it past its size
    for i in range(message._START_LINES_MAX + 10):
        parse_message(REG.replace(b"sip:registrar", f"sip:r{i}".encode(), 1))
    assert len(message._START_LINES) <= message._START_LINES_MAX
    resp = parse_message(b"SIP/2.0 200 OK\r\n" + REG.partition(b"\r\n")[2])
    assert (resp.status, resp.reason, resp.version) == (200, "OK", "SIP/2.0")


def test_request_cseq_checked_against_the_method_also_when_remembered():
    invite = REG.replace(b"REGISTER sip:", b"INVITE sip:").replace(b"1 REGISTER", b"1 INVITE")
    assert parse_message(invite).cseq.method == "INVITE"  # "1 INVITE" now remembered
    with pytest.raises(SipParseError, match="CSeq method"):
        parse_message(REG.replace(b"1 REGISTER", b"1 INVITE"))
    # LWS between number and method may be a tab (RFC 3261 §20.16, §25.1)
    tabbed = parse_message(REG.replace(b"1 REGISTER", b"1\tREGISTER"))
    assert (tabbed.cseq.seq, tabbed.cseq.method) == (1, "REGISTER")
    with pytest.raises(SipParseError, match="CSeq"):
        parse_message(REG.replace(b"1 REGISTER", b"x REGISTER"))


def test_replace_top_via_rewrites_the_top_line_in_place():
    from imsaka.sip.proxy import stamp_received

    msg = parse_message(REG)
    below = msg.via[1]
    stamp_received(msg, "192.0.2.7", 5060)
    assert msg.top_via.received == "192.0.2.7" and msg.via[1] is below
    wire = msg.to_bytes()
    assert wire.startswith(
        b"REGISTER sip:registrar.home1.net SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP pcscf1.home1.net:5060;branch=z9hG4bKp1;received=192.0.2.7\r\n"
        b"Max-Forwards: 69\r\n"
    )
    assert parse_message(wire).via == msg.via
    # a top line of two values: the first value goes, a line of its own on top
    two = parse_message(
        REG.replace(
            b"branch=z9hG4bKp1\r\n", b"branch=z9hG4bKp1, SIP/2.0/UDP h2;branch=z9hG4bKh2\r\n"
        )
    )
    stamp_received(two, "192.0.2.7", 5060)
    assert [v.host for v in two.via] == ["pcscf1.home1.net", "h2", "127.0.0.1"]
    assert parse_message(two.to_bytes()).via == two.via


def test_line_values_reads_each_line_of_the_headers_asked_for():
    msg = parse_message(
        b"REGISTER sip:r.example SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP h.example;branch=z9hG4bKlv\r\n"
        b"From: <sip:a@r.example>;tag=1\r\nTo: <sip:a@r.example>\r\n"
        b"m: <sip:1.2.3.4>, <sip:5.6.7.8>\r\nContact: <sip:9.9.9.9>\r\n"
        b"Call-ID: lv\r\nCSeq: 1 REGISTER\r\n\r\n"
    )
    got = msg.line_values({"contact", "to", "authorization"})
    assert got == {
        "to": ["<sip:a@r.example>"],
        "contact": ["<sip:1.2.3.4>, <sip:5.6.7.8>", "<sip:9.9.9.9>"],
    }
    assert got["to"][0] == msg.get("to")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5", 5),
        (" 120 (back after the upgrade);duration=60", 120),
        ("18000;duration=3600", 18000),
        ("soon", None),
        ("-1", None),
        ("1" * 11, None),
        ("", None),
    ],
)
def test_retry_after_reads_delta_seconds_and_never_raises(value, seconds):
    common = (
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\nCSeq: 1 OPTIONS\r\n"
        "Call-ID: c\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\n"
    )
    text = f"SIP/2.0 503 Service Unavailable\r\n{common}Retry-After: {value}\r\n\r\n"
    assert parse_message(text.encode()).retry_after == seconds
    plain = parse_message(f"SIP/2.0 503 Service Unavailable\r\n{common}\r\n".encode())
    assert plain.retry_after is None
