"""Parsed views kept across copy / push / pop, the serialisation cache, and the fast
paths of the header parsers agreeing with the exact ones."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imsaka.sip import SipParseError, parse_message
from imsaka.sip.headers import DigestCredentials, Via, _digest_params_fast, digest_param
from imsaka.sip.proxy import pop_via, push_via, stamp_received
from imsaka.sip.uri import Params

REGISTER = (
    b"REGISTER sip:home1.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pcscf1.home1.net:5070;branch=z9hG4bKp1;received=127.0.0.1\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:44960;branch=z9hG4bKu1\r\n"
    b"Max-Forwards: 69\r\n"
    b"From: <sip:alice@home1.net>;tag=e0b1\r\n"
    b"To: <sip:alice@home1.net>\r\n"
    b"Call-ID: c1@127.0.0.1\r\n"
    b'Authorization: Digest username="alice@home1.net", realm="home1.net", nonce="",'
    b' uri="sip:home1.net", response="", integrity-protected="no"\r\n'
    b"CSeq: 1 REGISTER\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def rng(n: int) -> bytes:
    return b"\x07" * n


def test_copy_keeps_views_and_push_pop_keep_them_right():
    req = parse_message(REGISTER)
    vias = req.via
    fwd = req.copy()
    assert fwd.via == vias
    ours = push_via(fwd, "UDP", "icscf1.home1.net", 5060, rng=rng)
    assert fwd.via == [ours, *vias]
    assert fwd.via == parse_message(fwd.to_bytes()).via
    assert req.via == vias  # the original is untouched
    popped = pop_via(fwd)
    assert popped == ours and fwd.via == vias
    assert parse_message(fwd.to_bytes()).via == vias


def test_serialisation_follows_every_change():
    req = parse_message(REGISTER)
    first = req.to_bytes()
    assert req.to_bytes() is first  # kept
    req.uri = "sip:scscf1.home1.net"
    assert req.to_bytes().startswith(b"REGISTER sip:scscf1.home1.net SIP/2.0\r\n")
    req.set("Max-Forwards", "68")
    assert b"Max-Forwards: 68\r\n" in req.to_bytes()
    req.add("Path", "<sip:term@pcscf1.home1.net;lr>", first=True)
    assert b"Path: <sip:term@pcscf1.home1.net;lr>\r\n" in req.to_bytes()
    req.body = b"abc"
    assert req.to_bytes().endswith(b"Content-Length: 3\r\n\r\nabc")
    req.remove("Path")
    assert b"Path:" not in req.to_bytes()
    req.pop_first("via")
    assert req.to_bytes().count(b"Via:") == 1
    stamp_received(req, "192.0.2.9", 44960)
    assert b"received=192.0.2.9" in req.to_bytes()
    again = parse_message(req.to_bytes())
    assert again.to_bytes() == req.to_bytes()


def test_copy_serialises_its_own_changes():
    req = parse_message(REGISTER)
    wire = req.to_bytes()
    fwd = req.copy()
    fwd.uri = "sip:scscf1.home1.net"
    assert fwd.to_bytes() != wire and req.to_bytes() == wire


def test_pop_top_via_of_an_empty_line_still_fails():
    req = parse_message(REGISTER)
    req.add("Via", "", first=True)
    with pytest.raises(SipParseError):
        pop_via(req)


def test_a_bad_lower_via_is_left_as_it_is_when_the_top_is_stamped():
    # RFC 3261 §16.3 step 1: what a proxy does not use, well-formed or not, stays as
    # it came; the top Via (matching, received, where the answer goes) must parse
    data = REGISTER.replace(b"127.0.0.1:44960;branch", b"[zz]:44960;branch")
    req = parse_message(data)
    stamp_received(req, "192.0.2.9", 5060)
    assert req.top_via.received == "192.0.2.9"
    assert b"Via: SIP/2.0/UDP [zz]:44960;branch=z9hG4bKu1\r\n" in req.to_bytes()
    with pytest.raises(SipParseError):
        req.via  # noqa: B018 - asking for every Via still finds the bad one
    bad_top = parse_message(REGISTER.replace(b"pcscf1.home1.net:5070", b"[zz]:5070"))
    with pytest.raises(SipParseError):
        stamp_received(bad_top, "192.0.2.9", 5060)


def test_top_via_alone_and_the_whole_list_agree_through_changes():
    req = parse_message(REGISTER)
    top = req.top_via
    assert top.host == "pcscf1.home1.net" and "via" not in (req._cache or {})
    fwd = req.copy()
    ours = push_via(fwd, "UDP", "icscf1.home1.net", 5060, rng=rng)
    assert fwd.top_via is ours and req.top_via is top
    assert fwd.via == [ours, *parse_message(REGISTER).via]
    assert pop_via(fwd) is ours and fwd.top_via == top
    stamp_received(fwd, "192.0.2.9", 5060)
    assert fwd.top_via.received == "192.0.2.9" and fwd.via[0] is fwd.top_via
    assert parse_message(fwd.to_bytes()).via == fwd.via
    fwd.pop_first("via")
    assert fwd.top_via.host == "127.0.0.1" and fwd.top_via == fwd.via[0]
    fwd.set("Via", "SIP/2.0/TCP h.example.com;branch=z9hG4bKnew")
    assert fwd.top_via.transport == "TCP" and len(fwd.via) == 1
    fwd.remove("via")
    with pytest.raises(SipParseError):
        fwd.top_via  # noqa: B018
    two = parse_message(REGISTER.replace(b"\r\nVia: SIP/2.0/UDP 127", b", SIP/2.0/UDP 127"))
    assert two.top_via.host == "pcscf1.home1.net"
    stamp_received(two, "192.0.2.9", 5060)
    assert [v.host for v in two.via] == ["pcscf1.home1.net", "127.0.0.1"]
    assert two.top_via.received == "192.0.2.9"


NAME = st.text(alphabet="abcXYZ019-_.!~*'()[]/:&+$%", min_size=1, max_size=6)
VALUE = st.one_of(
    st.none(),
    st.text(alphabet="abc019-_.!~*'()[]/:&+$%=\" \t;", min_size=0, max_size=8),
)


@given(st.lists(st.tuples(NAME, VALUE), min_size=1, max_size=5), st.sampled_from([";", " ; "]))
def test_params_fast_path_agrees_with_the_exact_parser(items, sep):
    text = sep.join(n if v is None else f"{n}={v}" for n, v in items)
    try:
        fast = Params.parse(text)
    except SipParseError:
        fast = None
    try:
        exact = Params._parse_exact(text, ";")
    except SipParseError:
        exact = None
    assert fast == exact


DIGEST_VALUE = st.one_of(
    st.text(alphabet="abc019-./=+", min_size=1, max_size=6),
    st.text(alphabet='ab ,=\\"', min_size=0, max_size=6).map(lambda v: f'"{v}"'),
    st.text(alphabet='ab ,="\\', min_size=0, max_size=6),
)


@given(
    st.lists(
        st.tuples(st.sampled_from(["nonce", "realm", "qop", "x-y"]), DIGEST_VALUE), max_size=4
    ),
    st.sampled_from([", ", ",", " , "]),
)
def test_digest_fast_path_agrees_with_the_exact_parser(items, sep):
    rest = sep.join(f"{n}={v}" for n, v in items).strip()
    if not rest or rest[-1] == ",":
        return  # DigestCredentials.parse never takes the fast path for these
    fast = _digest_params_fast(rest)
    try:
        exact = DigestCredentials.parse("Digest " + rest)
    except SipParseError:
        exact = None
    if fast is not None:
        # whenever the fast path accepts, the exact parser gives the same params
        assert exact is not None and tuple(fast) == exact.params


@given(
    st.lists(
        st.tuples(st.sampled_from(["username", "UserName", "realm", "nonce", "x-y"]), DIGEST_VALUE),
        max_size=4,
    ),
    st.sampled_from([", ", ",", " , "]),
    st.sampled_from(["Digest ", "Digest", "", "Di/gest "]),
    st.sampled_from(["username", "REALM", "opaque"]),
)
def test_digest_param_reads_what_the_whole_parse_gives(items, sep, scheme, name):
    text = scheme + sep.join(f"{n}={v}" for n, v in items)
    try:
        whole = DigestCredentials.parse(text).get(name)
    except SipParseError as exc:
        with pytest.raises(SipParseError, match=re.escape(exc.reason)):
            digest_param(text, name)
    else:
        assert digest_param(text, name) == whole


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1;rport=5060;received=127.0.0.1",
        "SIP/2.0/TCP [2001:db8::1]:5061;branch=z9hG4bK2",
        "SIP / 2.0 / UDP host.example.com ; branch=z9hG4bK3",
        "SIP/2.0/UDP host:5060 ;branch=z9hG4bK4",
        "SIP/2.0/UDP h;rport",
    ],
)
def test_via_forms(text):
    via = Via.parse(text)
    assert Via.parse(str(via)) == via


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP h;rport=x",
        "SIP/2.0/UDP h;ttl=99999",
        "SIP/2.0/UDP h;",
        "SIP/2.0/UDP -bad-;branch=1",
        "SIP/2.0/UDP h:0",
    ],
)
def test_bad_vias(text):
    with pytest.raises(SipParseError):
        Via.parse(text)


URI_TEXT = st.text(alphabet="sipSIP:@.;=-_%?/[]1290abz,&+$!~*'()<> \t", min_size=1, max_size=24)


@given(
    st.one_of(URI_TEXT, URI_TEXT.map(lambda t: "sip:" + t), URI_TEXT.map(lambda t: "sips:u@" + t))
)
def test_name_addr_defers_only_uris_that_parse(text):
    from imsaka.sip.headers import NameAddr
    from imsaka.sip.uri import parse_uri

    try:
        expected = parse_uri(text.strip())
    except SipParseError:
        expected = None
    try:
        got = NameAddr.parse(f"<{text}>").parsed_uri
    except SipParseError:
        got = None
    if expected is None:
        assert got is None
    else:
        assert got == expected or "<" in text or ">" in text


def test_a_via_we_sent_comes_back_as_the_same_view():
    req = parse_message(REGISTER)
    fwd = req.copy()
    ours = push_via(fwd, "UDP", "icscf1.home1.net", 5060, rng=rng)
    response = parse_message(
        fwd.to_bytes()
        .replace(b"REGISTER sip:home1.net", b"X sip:y", 1)
        .replace(b"X sip:y SIP/2.0", b"SIP/2.0 200 OK", 1)
        .replace(b"CSeq: 1 REGISTER", b"CSeq: 1 REGISTER")
    )
    assert response.top_via is ours  # no second parse of our own Via


def test_digest_param_lookup_is_case_insensitive_and_first_wins():
    cred = DigestCredentials.parse('Digest Username="a", username="b", NONCE=x')
    assert cred.get("username") == "a" and cred["nonce"] == "x" and "Nonce" in cred
    assert cred.get("cnonce") is None


@pytest.mark.parametrize(
    "extra",
    [
        "received=127.0.0.1",
        "received=[2001:db8::1]",
        "branch=z9hG4bKother",  # a repeated name is kept twice, as parsed
        "maddr",
        "rport=5060",
        "ttl=300",
        "rport=x",
        "ttl=999999",
        'x="quoted"',
        "",
        "a=b;c=d",
        "=v",
    ],
)
@pytest.mark.parametrize(
    "base",
    [
        "SIP/2.0/UDP icscf1_p.home1.net:5070;branch=z9hG4bKs1",
        "SIP / 2.0 / UDP host.example.com ; branch=z9hG4bKs2",
        "SIP/2.0/TCP [2001:db8::1]:5061;rport;branch=z9hG4bKs3",
    ],
)
def test_a_known_via_with_a_param_added_parses_as_the_whole_text(base, extra):
    Via.parse(base)  # known (ours, or seen in the request)
    text = f"{base};{extra}"
    try:
        exact = Via._parse(text)
    except SipParseError:
        with pytest.raises(SipParseError):
            Via.parse(text)
        return
    got = Via.parse(text)
    assert got == exact and str(got) == str(exact) and got.protocol == exact.protocol
    assert Via.parse(text) is got  # remembered


@pytest.mark.parametrize(
    ("wire", "vias_off"),
    [
        (REGISTER, False),  # before the first Via, which is the first header
        (
            # before a first Via further down, compact, after a line of its octets but
            # for the name
            b"REGISTER sip:home1.net SIP/2.0\r\n"
            + REGISTER.split(b"\r\n", 3)[3].replace(
                b"Call-ID: c1@127.0.0.1\r\n",
                b"Call-ID: c1@127.0.0.1\r\nX-V: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKu1\r\n"
                b"v: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKu1\r\n",
            ),
            False,
        ),
        (REGISTER, True),  # no Via: first of all (a UAC's request)
        (REGISTER.replace(b"Content-Length: 0\r\n", b""), True),
        (REGISTER.replace(b"Content-Length: 0", b"Content-Length: 3") + b"abc", True),
        (REGISTER.replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\n" * 2), True),
        (REGISTER.replace(b"alice", "alicé".encode()), True),  # not ASCII
    ],
)
def test_a_via_put_on_a_serialised_message_gives_what_serialising_again_gives(wire, vias_off):
    import random

    for edited in (False, True):  # a line changed after the size check: serialised anew
        sized, fresh = parse_message(wire), parse_message(wire)
        for msg in (sized, fresh):
            if vias_off:
                msg.remove("Via")
        sized.to_bytes()  # the size check of RFC 3261 §18.1.1 before the Via
        for msg in (sized, fresh):
            if edited:
                msg.pop_first("Max-Forwards")
            push_via(msg, "UDP", "scscf1.home1.net", 6060, rng=random.Random(3).randbytes)
        assert sized.to_bytes() == fresh.to_bytes()
        fresh._cache.pop(":wire", None)
        assert sized.to_bytes() == fresh.to_bytes()
        assert sized.to_bytes().count(b"Via: SIP/2.0/UDP scscf1.home1.net:6060;branch=") == 1
