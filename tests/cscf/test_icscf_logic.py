"""I-CSCF pure parts: UAR fields from a REGISTER, S-CSCF selection, UAA → SIP answer."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.config import parse_config
from imsaka.cscf.icscf import (
    reply_for_uaa,
    select_scscf,
    uar_for,
)
from imsaka.cscf.registrar import PLAIN_NAME_ADDR_RE, plain_name_addr
from imsaka.diameter import cx
from imsaka.sip import SipParseError, parse_message
from imsaka.sip.headers import Contact, NameAddr

from .conftest import network_dict


def config(scscfs):
    doc = network_dict(3868, 5070, 5080)
    doc["icscf"]["scscfs"] = scscfs
    doc["network"]["hosts"]["scscf9.home1.net"] = "127.0.0.9"
    cfg = parse_config(doc)
    return cfg.icscf, cfg.network


def uaa(**kw):
    return cx.UserAuthorizationAnswer(
        session_id="s", origin_host="hss", origin_realm="home1.net", **kw
    )


SCSCFS = [
    {"name": "sip:a.home1.net:5080", "address": "127.0.0.1", "capabilities": [1]},
    {"name": "sip:b.home1.net:5081", "address": "127.0.0.2", "capabilities": [1, 2, 3]},
    {"name": "sip:c.home1.net:5082", "address": "127.0.0.3", "capabilities": [2]},
]


def test_server_name_wins():
    icscf, net = config(SCSCFS)
    entry = select_scscf(
        uaa(experimental_result_code=2002, server_name="sip:c.home1.net:5082"), icscf, net
    )
    assert entry.address == "127.0.0.3" and entry.port == 5082


def test_unconfigured_server_name_is_reached_through_the_host_table():
    icscf, net = config(SCSCFS)
    entry = select_scscf(
        uaa(experimental_result_code=2002, server_name="sip:scscf9.home1.net:6000"), icscf, net
    )
    assert (entry.address, entry.port) == ("127.0.0.9", 6000)


def test_unresolvable_server_name_falls_back_to_capabilities():
    icscf, net = config(SCSCFS)
    entry = select_scscf(
        uaa(
            experimental_result_code=2002,
            server_name="sip:unknown.example:5080",
            server_capabilities=cx.ServerCapabilities(mandatory_capabilities=(2,)),
        ),
        icscf,
        net,
    )
    assert entry.name == "sip:b.home1.net:5081"


def test_capabilities_mandatory_then_most_optional():
    icscf, net = config(SCSCFS)
    caps = cx.ServerCapabilities(mandatory_capabilities=(1,), optional_capabilities=(3,))
    entry = select_scscf(uaa(experimental_result_code=2001, server_capabilities=caps), icscf, net)
    assert entry.name == "sip:b.home1.net:5081"
    caps = cx.ServerCapabilities(mandatory_capabilities=(2,))
    assert (
        select_scscf(uaa(experimental_result_code=2001, server_capabilities=caps), icscf, net).name
        == "sip:b.home1.net:5081"
    )
    caps = cx.ServerCapabilities(mandatory_capabilities=(9,))
    assert (
        select_scscf(uaa(experimental_result_code=2001, server_capabilities=caps), icscf, net)
        is None
    )


def test_listed_server_names_are_preferred_in_the_hss_order():
    icscf, net = config(SCSCFS)
    caps = cx.ServerCapabilities(server_names=("sip:c.home1.net:5082", "sip:a.home1.net:5080"))
    assert (
        select_scscf(uaa(experimental_result_code=2001, server_capabilities=caps), icscf, net).name
        == "sip:c.home1.net:5082"
    )
    excluded = select_scscf(
        uaa(experimental_result_code=2001, server_capabilities=caps),
        icscf,
        net,
        exclude=frozenset({"sip:c.home1.net:5082"}),
    )
    assert excluded.name == "sip:a.home1.net:5080"


def test_no_capabilities_picks_the_first_configured():
    icscf, net = config(SCSCFS)
    assert (
        select_scscf(uaa(experimental_result_code=2001), icscf, net).name == "sip:a.home1.net:5080"
    )


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (None, 480),
        (uaa(experimental_result_code=cx.DIAMETER_FIRST_REGISTRATION), None),
        (uaa(experimental_result_code=cx.DIAMETER_SUBSEQUENT_REGISTRATION), None),
        (uaa(result_code=cx.DIAMETER_SUCCESS), None),
        (uaa(experimental_result_code=cx.DIAMETER_ERROR_USER_UNKNOWN), 404),
        (uaa(experimental_result_code=cx.DIAMETER_ERROR_IDENTITIES_DONT_MATCH), 403),
        (uaa(experimental_result_code=cx.DIAMETER_ERROR_ROAMING_NOT_ALLOWED), 403),
        (uaa(experimental_result_code=cx.DIAMETER_ERROR_IDENTITY_NOT_REGISTERED), 403),
        (uaa(result_code=cx.DIAMETER_AUTHORIZATION_REJECTED), 403),
        (uaa(result_code=cx.DIAMETER_TOO_BUSY), 480),
        (uaa(result_code=cx.DIAMETER_UNABLE_TO_COMPLY), 500),
        (uaa(result_code=cx.DIAMETER_MISSING_AVP), 500),
        (uaa(result_code=cx.DIAMETER_UNABLE_TO_DELIVER), 480),
        (uaa(), 480),
    ],
)
def test_uaa_to_sip(answer, status):
    out = reply_for_uaa(answer)
    assert (out[0] if out else None) == status
    if status in (480, 500):
        assert dict(out[2])["Retry-After"] == "30"
        assert dict(reply_for_uaa(answer, 2)[2])["Retry-After"] == "2"


def request(contact: str, extra: str = "", auth: bool = True, pvni: bool = True) -> object:
    lines = [
        "REGISTER sip:home1.net SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1",
        "From: <sip:u@home1.net>;tag=1",
        "To: <sip:u@home1.net>",
        "Call-ID: c",
        "CSeq: 1 REGISTER",
        f"Contact: {contact}",
    ]
    if auth:
        lines.append(
            'Authorization: Digest username="u_priv@home1.net", realm="home1.net", nonce="", uri="sip:home1.net", response=""'
        )
    if pvni:
        lines.append('P-Visited-Network-ID: "Visited Network Number 1"')
    if extra:
        lines.append(extra)
    return parse_message(("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode())


def test_uar_fields():
    _, net = config(SCSCFS)
    u = uar_for(request("<sip:1.2.3.4>;expires=3600"), net)
    assert (u.impi, u.impu, u.visited_network) == (
        "u_priv@home1.net",
        "sip:u@home1.net",
        "Visited Network Number 1",
    )
    assert u.authorization_type is cx.UserAuthorizationType.REGISTRATION
    assert (
        uar_for(request("<sip:1.2.3.4>;expires=0"), net).authorization_type
        is cx.UserAuthorizationType.DE_REGISTRATION
    )
    assert (
        uar_for(request("*", "Expires: 0"), net).authorization_type
        is cx.UserAuthorizationType.DE_REGISTRATION
    )
    assert (
        uar_for(request("<sip:1.2.3.4>", "Expires: 0"), net).authorization_type
        is cx.UserAuthorizationType.DE_REGISTRATION
    )
    assert (
        uar_for(request("<sip:1.2.3.4>"), net, capabilities=True).authorization_type
        is cx.UserAuthorizationType.REGISTRATION_AND_CAPABILITIES
    )


@pytest.mark.parametrize(
    ("contact", "extra", "dereg"),
    [
        ("<sip:1.2.3.4>;expires=0, <sip:5.6.7.8>;expires=0", "", True),
        ("<sip:1.2.3.4>;expires=0, <sip:5.6.7.8>", "Expires: 0", True),
        ("<sip:1.2.3.4>;expires=0, <sip:5.6.7.8>", "Expires: 600", False),
        ("<sip:1.2.3.4>;expires=0, <sip:5.6.7.8>", "", False),  # no Expires: not 0
        ("<sip:1.2.3.4>;expires=600", "Expires: 0", False),  # the param wins
        ("<sip:1.2.3.4>;expires=00", "", True),
        ("<sip:1.2.3.4>;expires=600, *", "", True),
    ],
)
def test_deregistration_needs_every_binding_at_expiry_zero(contact, extra, dereg):
    _, net = config(SCSCFS)
    kind = uar_for(request(contact, extra), net).authorization_type
    assert (kind is cx.UserAuthorizationType.DE_REGISTRATION) is dereg


def test_uar_without_authorization_or_visited_network():
    _, net = config(SCSCFS)
    u = uar_for(request("<sip:1.2.3.4>", auth=False, pvni=False), net)
    assert u.impi == "u@home1.net" and u.visited_network == "home1.net"


def test_route_to_the_icscf_itself_is_removed():
    from imsaka.cscf.icscf import Icscf

    icscf_cfg, net = config(SCSCFS)
    icscf = Icscf(icscf_cfg, net, endpoint=None, cx_send=None)
    from imsaka.sip.proxy import preprocess_route

    req = request("<sip:1.2.3.4>", "Route: <sip:icscf1_p.home1.net:5070;lr>")
    preprocess_route(req, icscf._is_mine)
    assert req.get("route") is None
    req = request("<sip:1.2.3.4>", "Route: <sip:elsewhere.example;lr>")
    preprocess_route(req, icscf._is_mine)
    assert req.get("route") == "<sip:elsewhere.example;lr>"


class FakeEndpoint:
    """Answers every forwarded REGISTER with what `answer(entry_port)` says."""

    def __init__(self, answer):
        self.answer = answer
        self.sent = []
        self.transports = [self]
        self.name = "udp"

    def transport(self, name):
        return self

    async def send_request(self, request, addr, transport=None):
        from imsaka.sip import make_response

        self.sent.append((request.uri, addr))
        status, tag = self.answer(addr[1])
        return make_response(request, status, to_tag=tag)


class FakeTx:
    def __init__(self, request):
        self.request = request
        self.responses = []

    def reply(self, status, reason=None, *, headers=None, to_tag=None):
        from imsaka.sip import make_response

        self.responses.append(make_response(self.request, status, reason, headers=headers))

    def respond(self, response):
        self.responses.append(response)


def capabilities_uaa(names):
    async def send(uar):
        return uaa(
            experimental_result_code=cx.DIAMETER_FIRST_REGISTRATION,
            server_capabilities=cx.ServerCapabilities(server_names=tuple(names)),
        )

    return send


async def run_icscf(answer):
    from imsaka.cscf.icscf import Icscf

    icscf_cfg, net = config(SCSCFS)
    endpoint = FakeEndpoint(answer)
    icscf = Icscf(
        icscf_cfg, net, endpoint=endpoint, cx_send=capabilities_uaa([e["name"] for e in SCSCFS])
    )
    req = request("<sip:1.2.3.4>;expires=600")
    tx = FakeTx(req)
    await icscf.handle_request(req, tx)
    return endpoint, tx, icscf


async def test_all_scscfs_unreachable_is_600():
    endpoint, tx, icscf = await run_icscf(lambda port: (503, None))
    assert [r.status for r in tx.responses] == [600]
    assert len(endpoint.sent) == 3 and icscf.counters["scscf_retry"] == 2


async def test_scscf_480_moves_on_to_the_next():
    endpoint, tx, _ = await run_icscf(lambda port: (480, "x") if port == 5080 else (401, "y"))
    assert [r.status for r in tx.responses] == [401]
    assert [a[1][1] for a in endpoint.sent] == [5080, 5081]
    assert endpoint.sent[0][0] == "sip:a.home1.net:5080"  # Request-URI = the Server-Name


async def test_final_answer_of_the_scscf_is_relayed_with_our_via_popped():
    endpoint, tx, _ = await run_icscf(lambda port: (403, "x"))
    (resp,) = tx.responses
    assert resp.status == 403 and len(resp.get_all("via")) == 1
    assert len(endpoint.sent) == 1


async def test_last_scscf_480_is_relayed():
    _endpoint, tx, _ = await run_icscf(lambda port: (480, "x"))
    assert [r.status for r in tx.responses] == [480]


@settings(max_examples=300, deadline=None)
@given(st.from_regex(PLAIN_NAME_ADDR_RE, fullmatch=True))
def test_plain_name_addr_reads_what_the_parse_reads(text):
    # the I-CSCF's reading of To and Contact without a view: whatever it takes, the
    # parse takes too, with the same URI and expires
    m = plain_name_addr(text)
    if m is None:  # a port above 65535: the parse decides
        assert int(PLAIN_NAME_ADDR_RE.fullmatch(text).group(2)) > 65535
        return
    contact = Contact.parse(text)
    assert contact.uri == NameAddr.parse(text).uri == m.group(1)
    contact.parsed_uri  # noqa: B018 - a URI the parse accepts when it is read
    expires = m.group(3)
    if expires is not None and int(expires) <= 0xFFFFFFFF:
        assert contact.expires == int(expires)


@pytest.mark.parametrize(
    "contact",
    [
        "<sip:1.2.3.4:5060>;expires=600000",
        "<sip:1.2.3.4:70000>;expires=600",  # no port above 65535: the parse refuses it
        "<sip:1.2.3.4>;expires=4294967296",  # above 2**32-1: the parse refuses it
        "<sip:1.2.3.4> ;expires=600",
        "<sip:1.2.3.4>;expires=600;q=0.5",
    ],
)
def test_deregistration_reading_matches_the_parse(contact):
    # with and without the plain reading, the same kind or the same SipParseError
    _, net = config(SCSCFS)
    req = request(contact)
    try:
        expected = not all(c.expires != 0 for c in req.contacts)
    except SipParseError as exc:
        with pytest.raises(SipParseError, match=re.escape(exc.reason)):
            uar_for(request(contact), net)
        return
    kind = uar_for(request(contact), net).authorization_type
    assert (kind is cx.UserAuthorizationType.DE_REGISTRATION) is expected
