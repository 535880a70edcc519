"""P-CSCF core text fast paths against the parse they stand for: the To URI read off
the text (`_to_uri`) is what `resp.to.uri` gives for every form it accepts, and the
parse (and its SipParseError) for any other; the forwarded REGISTER is the same
octets whether the removal of the UE's sec-agree headers is skipped (none there) or
run; a 401's challenge cut at its keys in the S-CSCF's form is what the cut param by
param gives; the icid keeps its spelling (base64 of 20 random octets, nine digits)."""

from __future__ import annotations

import base64
import random
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from imsaka.cscf.pcscf import (
    _KEYS_AT_END,
    Arrival,
    Forward,
    PcscfCore,
    _to_uri,
    _without_keys,
    _without_keys_by_items,
)
from imsaka.sip import Response, SipParseError, parse_message
from imsaka.sip.headers import DigestCredentials
from tests.e2e.test_pcscf_core import core as make_core

_TOKEN = "abcXYZ019-.!%*_+`'~"
_UNRESERVED = "abcXYZ019-_.!~*'()&=+$,/"


def _response(to: str) -> Response:
    text = (
        "SIP/2.0 200 OK\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
        "From: <sip:a@home1.net>;tag=1\r\n"
        f"To: {to}\r\n"
        "Call-ID: c1\r\n"
        "CSeq: 1 REGISTER\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return parse_message(text.encode())


def _parsed(resp: Response) -> str | type[SipParseError]:
    try:
        return resp.to.uri
    except SipParseError:
        return SipParseError


def _fast(resp: Response) -> str | type[SipParseError]:
    try:
        return _to_uri(resp)
    except SipParseError:
        return SipParseError


_host = st.from_regex(
    r"[A-Za-z0-9]([A-Za-z0-9\-_]{0,6}[A-Za-z0-9_])?(\.[a-z]{1,4}){0,2}", fullmatch=True
)
_uri = st.builds(
    lambda scheme, user, host, port: f"{scheme}:{user + '@' if user else ''}{host}{port}",
    st.sampled_from(["sip", "sips", "SIP", "tel", "http"]),
    st.text(_UNRESERVED + "@;?% <>", max_size=10),
    _host,
    st.sampled_from(["", ":5060", ":0", ":65535", ":65536", ":99999", ":x"]),
)
_tail = st.one_of(
    st.just(""),
    st.text(_TOKEN, min_size=0, max_size=8).map(lambda t: f";tag={t}"),
    st.text(_TOKEN + ';="<> ,', max_size=12),
    st.sampled_from([";tag=1;x=2", ";expires=5;tag=a", ";tag=a b", ';tag="q"', " ;tag=a"]),
)


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        lambda d, u, t: f"{d}<{u}>{t}",
        st.sampled_from(["", '"A" ', "Bob ", " "]),
        _uri,
        _tail,
    )
    | st.builds(lambda u, t: f"{u}{t}", _uri, _tail)
)
@example("<sip:user@home1.net>;tag=s2")
@example("<sip:user@home1.net>")
@example("<sip:user@home1.net:70000>;tag=a")
@example("<sip:a@h>;tag=")
def test_to_uri_reads_what_the_parse_reads(to: str) -> None:
    try:
        resp = _response(to)
    except SipParseError:
        return  # not a message: nothing to read
    assert _fast(resp) == _parsed(resp)


def test_to_uri_takes_a_text_already_read() -> None:
    resp = _response("<sip:user@home1.net>;tag=s2")
    assert _to_uri(resp, resp.get("To")) == "sip:user@home1.net"


def _register(extra: str = "") -> bytes:
    return (
        "REGISTER sip:home1.net SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.9:5061;rport;branch=z9hG4bK-77\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:u1@home1.net>;tag=1\r\n"
        "To: <sip:u1@home1.net>\r\n"
        "Call-ID: 77@10.0.0.9\r\n"
        "CSeq: 1 REGISTER\r\n"
        "Contact: <sip:u1@10.0.0.9:5061>;expires=600000\r\n"
        'Authorization: Digest username="u1_private@home1.net", realm="home1.net", '
        'uri="sip:home1.net", nonce="", response=""\r\n'
        f"{extra}"
        "Supported: path\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    "extra",
    [
        "",
        "Require: sec-agree\r\nProxy-Require: sec-agree, foo\r\n",
        "P-Charging-Vector: icid-value=abc\r\n",
        "P-Visited-Network-ID: other\r\nSecurity-Verify: ipsec-3gpp; q=0.1\r\n",
    ],
)
def test_forwarded_register_same_with_or_without_known_keys(extra: str) -> None:
    """`present` given (the clear REGISTER's path) or not (the protected one's): one
    request upstream, the same octets."""
    out = []
    for present in (True, False):
        c: PcscfCore = make_core()
        c._rng = random.Random(3)
        req = parse_message(_register(extra))
        keys = frozenset(req.header_keys()) if present else None
        fwd = c._prepare_upstream(
            req,
            "z9hG4bKabc",
            Arrival(("10.0.0.9", 5061)),
            False,
            70,
            req.authorization,
            present=keys,
        )
        assert fwd is not None
        out.append(fwd.to_bytes())
    assert out[0] == out[1]
    assert b"sec-agree" not in out[0] and b"Security-Verify" not in out[0]
    assert out[0].count(b"P-Charging-Vector") == 1


def test_icid_spelling() -> None:
    c: PcscfCore = make_core()
    c._rng = random.Random(11)
    icid = c._icid()
    ref = random.Random(11)
    raw = ref.getrandbits(160).to_bytes(20, "big")
    assert icid == base64.b64encode(raw).decode() + str(ref.randrange(10**9)).zfill(9)
    assert re.fullmatch(r"[A-Za-z0-9+/]{27}=[0-9]{9}", icid)


def test_clear_register_forwarded_once() -> None:
    c: PcscfCore = make_core(sec_agree="optional")
    actions = c.receive_request(parse_message(_register()), Arrival(("10.0.0.9", 5061)), 0.0)
    assert len(actions) == 1 and isinstance(actions[0], Forward)


_PARAM = st.builds(
    lambda name, value: f"{name}={value}",
    st.sampled_from(["realm", "nonce", "algorithm", "qop", "ck", "IK", "opaque", "a b"]),
    st.sampled_from(['"home1.net"', '"x, ck=1"', "AKAv1-MD5", '"a\\"b"', '""', "tok/=", '"ik="']),
)
_KEYS_S = ', ik="0011", ck="ffee"'
_KEYS = st.sampled_from(
    [
        ', ik="0011", ck="ffee"',
        ', ck="ffee", ik="0011"',
        ', ik="0011",ck="ffee"',
        ', ik=0011, ck="ffee"',
        ', IK="0011", ck="ffee"',
        ', ik="00\\"11", ck="ffee"',
        ', ik="0011", ck="ffee" ',
        ', ck="ffee"',
        "",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["Digest", "digest", "Digest ", "Di gest"]),
    st.lists(_PARAM, max_size=4),
    st.sampled_from([", ", ",", ",  "]),
    _KEYS,
)
@example("Digest", ['realm="r"', 'nonce="AAAA"', "algorithm=AKAv1-MD5"], ", ", _KEYS_S)
def test_challenge_cut_at_the_keys_as_item_by_item(scheme, params, sep, keys) -> None:
    """The S-CSCF's form cut in one search gives what the cut param by param gives (and
    that one is the parser's: tests/e2e/test_pcscf_rereg.py), for every text."""
    text = f"{scheme} {sep.join(params)}{keys}" if params else f"{scheme}{keys.lstrip(',')}"
    assert _without_keys(text) == _without_keys_by_items(text)
    fast = _without_keys(text)
    if fast is not None:
        ch = DigestCredentials.parse(text)
        assert fast == (str(ch.without("ck", "ik")), ch.ck, ch.ik)


def test_challenge_as_the_s_cscf_writes_it_takes_the_search() -> None:
    text = 'Digest realm="r", nonce="AAAA", algorithm=AKAv1-MD5' + _KEYS_S
    assert _KEYS_AT_END.search(text) is not None
    assert _without_keys(text) == (
        'Digest realm="r", nonce="AAAA", algorithm=AKAv1-MD5',
        "ffee",
        "0011",
    )


def test_forwarded_register_added_lines_after_access_info() -> None:
    """TS 24.228 packet 2's order: the P-CSCF's lines after the last of Via /
    Max-Forwards / P-Access-Network-Info, its Path after the UE's own (RFC 3327 §5.1:
    a proxy adds its Path below those already there), Require and Proxy-Require
    rewritten without sec-agree, the lines in between kept as they came."""
    c: PcscfCore = make_core()
    c._rng = random.Random(3)
    extra = (
        "Path: <sip:ue-side;lr>\r\n"
        "P-Access-Network-Info: 3GPP-UTRAN-TDD; utran-cell-id-3gpp=1\r\n"
        "Proxy-Require: sec-agree, foo\r\n"
    )
    req = parse_message(_register(extra))
    fwd = c._prepare_upstream(
        req, "z9hG4bKabc", Arrival(("10.0.0.9", 5061)), False, 70, req.authorization
    )
    assert fwd is not None
    assert fwd.header_keys() == [
        "via",
        "via",
        "max-forwards",
        "from",
        "to",
        "call-id",
        "cseq",
        "contact",
        "authorization",
        "p-access-network-info",
        "path",
        "path",
        "require",
        "proxy-require",
        "p-visited-network-id",
        "p-charging-vector",
        "supported",
        "content-length",
    ]
    assert fwd.get_all("Path") == ["<sip:ue-side;lr>", c._path_text]
    assert fwd.get_all("Require") == ["path"]
    assert fwd.get_all("Proxy-Require") == ["foo"]
