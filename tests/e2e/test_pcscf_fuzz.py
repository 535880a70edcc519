"""Hostile input at the P-CSCF core: mangled REGISTERs and responses never raise; each is
forwarded, answered or dropped with a named reason."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.cscf.pcscf import Arrival, DropInput, Forward, Reply
from imsaka.sip import SipParseError, make_response, parse_message

from .test_pcscf_core import ICSCF, PACKET1, UE, core

LINES = PACKET1.split("\r\n")[1:-2]
JUNK = [
    "Via: SIP/2.0/UDP",
    "Authorization: Digest",
    'Authorization: Digest username="a@b", integrity-protected="yes", response="x"',
    "Security-Client: ipsec-3gpp; spi-c=99999999999",
    "Security-Client: ipsec-3gpp; alg=hmac-sha-1-96; spi-c=0; spi-s=0; port-c=1; port-s=2",
    "Security-Verify: ipsec-3gpp; alg=null",
    "Max-Forwards: 0",
    "Max-Forwards: abc",
    "Contact: *",
    "Contact: <sip:x>;expires=abc",
    "Require: sec-agree, path, foo",
    "P-Preferred-Identity: <sip:evil@example.com>",
    "To: garbage",
    "CSeq: 2 INVITE",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(range(len(LINES))), min_size=1, max_size=len(LINES) + 3),
    st.lists(st.sampled_from(JUNK), max_size=3),
    st.sampled_from(
        [
            "REGISTER sip:registrar.home1.net SIP/2.0",
            "REGISTER sip:elsewhere.example SIP/2.0",
            "MESSAGE sip:user2@home1.net SIP/2.0",
            "ACK sip:x SIP/2.0",
        ]
    ),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_mangled_requests_never_raise(order, junk, start, protected, spi):
    p = core()
    lines = [start] + [LINES[i] for i in order] + junk
    data = ("\r\n".join(lines) + "\r\n\r\n").encode()
    try:
        msg = parse_message(data)
    except SipParseError:
        return
    if not hasattr(msg, "method"):
        return
    arrival = Arrival(UE, spi=spi if protected else None)
    actions = p.receive_request(msg, arrival, 0.0)
    for a in actions:
        assert isinstance(a, Forward | Reply | DropInput)
        if isinstance(a, Reply):
            assert a.message.status >= 300
    # whatever came back upstream, answering it must not raise either
    for a in actions:
        if isinstance(a, Forward) and hasattr(a.message, "method"):
            for status in (100, 401, 403, 200, 500):
                try:
                    resp = make_response(a.message, status, to_tag="t")
                except Exception:
                    continue
                if status == 401 and random.random() < 0.5:
                    resp.add("WWW-Authenticate", 'Digest realm="r", nonce="n", ck="zz", ik="00"')
                p.receive_response(parse_message(resp.to_bytes()), ICSCF, 1.0)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_as_upstream_response(data):
    p = core()
    head = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP pcscf1.visited1.net;branch=z9hG4bKx\r\n"
    try:
        msg = parse_message(head + data)
    except SipParseError:
        return
    if hasattr(msg, "status"):
        for a in p.receive_response(msg, ICSCF, 0.0):
            assert isinstance(a, DropInput)
