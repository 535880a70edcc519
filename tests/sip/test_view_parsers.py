"""Every typed-view parser fed whole, every prefix, with trailing junk, and random
text: it returns a view that serializes back to an equal view, or raises
SipParseError – nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.sip import (
    AccessNetworkInfo,
    ChargingFunctionAddresses,
    ChargingVector,
    Contact,
    ContentType,
    CSeq,
    DigestCredentials,
    NameAddr,
    SecurityMechanism,
    SipParseError,
    Via,
    VisitedNetworkId,
    parse_message,
    parse_uri,
)
from imsaka.sip.headers import parse_date

from .conftest import SEED

# (parser, header whose seed values feed it)
PARSERS = [
    (Via.parse, "via"),
    (NameAddr.parse, "from"),
    (NameAddr.parse, "to"),
    (NameAddr.parse, "path"),
    (NameAddr.parse, "service-route"),
    (NameAddr.parse, "p-associated-uri"),
    (Contact.parse, "contact"),
    (CSeq.parse, "cseq"),
    (DigestCredentials.parse, "authorization"),
    (DigestCredentials.parse, "www-authenticate"),
    (SecurityMechanism.parse, "security-client"),
    (SecurityMechanism.parse, "security-server"),
    (SecurityMechanism.parse, "security-verify"),
    (ChargingVector.parse, "p-charging-vector"),
    (AccessNetworkInfo.parse, "p-access-network-info"),
    (VisitedNetworkId.parse, "p-visited-network-id"),
    (parse_date, "date"),
]
OTHER = [
    (ContentType.parse, "application/sdp; charset=utf-8"),
    (ChargingFunctionAddresses.parse, 'ccf=192.1.1.1; ecf="aaa://h.net"'),
    (parse_uri, "sips:alice:pw@[2001:db8::1]:5061;transport=TCP;lr?h=1"),
    (parse_uri, "tel:+1-201-555-0123;phone-context=example.com"),
]


def _cases():
    out = []
    for parser, header in PARSERS:
        values = set()
        for data in SEED.values():
            values.update(parse_message(data).get_all(header))
        assert values, header
        out += [(parser, v) for v in sorted(values)]
    return out + OTHER


CASES = _cases()


def _check(parser, text: str) -> None:
    try:
        view = parser(text)
    except SipParseError:
        return
    if parser is not parse_date:
        assert parser(str(view)) == view


@pytest.mark.parametrize(
    ("parser", "text"), CASES, ids=[f"{p.__qualname__}:{t[:25]}" for p, t in CASES]
)
def test_whole_prefixes_and_trailing(parser, text):
    view = parser(text)  # the whole value parses
    if parser is not parse_date:
        assert parser(str(view)) == view
    for i in range(len(text)):
        _check(parser, text[:i])
    for junk in (" ", ";", ",", "\x00", '"', "<", ">", "junk", ";a=", "\\", "[", "]:"):
        _check(parser, text + junk)


ALL_PARSERS = sorted({p for p, _ in PARSERS} | {p for p, _ in OTHER}, key=lambda p: p.__qualname__)
ALPHABET = st.sampled_from(
    [
        *list("abcz09:;,=<>\"\\[]@/.%- \t+*?&_~!'"),
        "sip:",
        "tel:",
        "SIP/2.0/UDP ",
        "Digest ",
        "ipsec-3gpp",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(ALL_PARSERS), st.lists(ALPHABET, max_size=40).map("".join))
def test_random_text(parser, text):
    _check(parser, text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CASES), st.integers(0, 200), st.text(max_size=4))
def test_seed_values_with_insertions(case, pos, insert):
    parser, text = case
    pos = min(pos, len(text))
    _check(parser, text[:pos] + insert + text[pos:])
