"""I-CSCF routing of requests other than REGISTER (TS 24.229 §5.3.2.1, TS 29.228 §6.3):
the LIR's Public-Identity from the Request-URI, LIA → SIP answer, and on a real
SipEndpoint: the S-CSCF as the top Route with the Request-URI kept, selection by
capabilities for a user with unregistered services, the S-CSCF's 480 relayed (the
user's, not the S-CSCF's), a silent S-CSCF replaced after an LIR with capabilities."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imsaka.cscf.icscf import lir_identity, reply_for_lia
from imsaka.diameter import cx
from imsaka.diameter.errors import DiameterTimeoutError
from imsaka.sip import SipParseError, make_response, parse_message
from tests.cscf.test_icscf_callbacks import PCSCF, final, receive, setup
from tests.cscf.test_icscf_logic import SCSCFS

IMPU = "sip:alice@home1.net"


def lia(**kw):
    return cx.LocationInfoAnswer(session_id="s", origin_host="hss", origin_realm="home1.net", **kw)


def subscribe(uri: str = IMPU, extra: str = "", method: str = "SUBSCRIBE") -> bytes:
    return (
        f"{method} {uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsub1\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:pcscf.visited1.net>;tag=w1\r\n"
        f"To: <{IMPU}>\r\n"
        "Call-ID: sub-1@pcscf\r\n"
        f"CSeq: 1 {method}\r\n"
        "Event: reg\r\n"
        "Expires: 600\r\n"
        "Contact: <sip:pcscf.visited1.net:5060>\r\n"
        "P-Asserted-Identity: <sip:pcscf.visited1.net>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("uri", "identity"),
    [
        ("sip:alice@home1.net", "sip:alice@home1.net"),
        ("sip:Alice@home1.net:5060;transport=udp?Subject=x", "sip:Alice@home1.net"),
        ("sips:alice@home1.net", "sips:alice@home1.net"),
        ("tel:+15551234567;phone-context=home1.net", "tel:+15551234567"),
        ("sip:+15551234567@home1.net;user=phone", "tel:+15551234567"),
    ],
)
def test_lir_identity_is_the_user_the_request_uri_names(uri, identity):
    req = parse_message(subscribe(uri))
    assert lir_identity(req) == identity


def test_a_request_uri_without_a_user_names_nobody():
    with pytest.raises(SipParseError):
        lir_identity(parse_message(subscribe("sip:home1.net")))


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (lia(result_code=cx.DIAMETER_SUCCESS, server_name="sip:a.home1.net:5080"), None),
        (lia(experimental_result_code=cx.DIAMETER_UNREGISTERED_SERVICE), None),
        (lia(experimental_result_code=cx.DIAMETER_ERROR_USER_UNKNOWN), 404),
        (lia(experimental_result_code=cx.DIAMETER_ERROR_IDENTITY_NOT_REGISTERED), 480),
        (lia(result_code=3004), 480),  # DIAMETER_TOO_BUSY: try again later
        (lia(result_code=5012), 500),
        (None, 480),  # HSS unreachable
    ],
)
def test_lia_to_sip(answer, status):
    reply = reply_for_lia(answer, 30)
    assert (reply[0] if reply else None) == status
    if status == 480 and answer is None:
        assert ("Retry-After", "30") in reply[2]


def forwarded(out, method="SUBSCRIBE"):
    ((msg, addr),) = [(m, a) for m, a in out if getattr(m, "method", "") == method]
    return msg, addr


async def test_subscribe_goes_to_the_serving_scscf_as_the_top_route():
    _, ep, t, asks, _ = setup([(lia(result_code=2001, server_name=SCSCFS[1]["name"]), None)])
    out = receive(ep, t, subscribe(), PCSCF)
    (lir,) = asks
    assert isinstance(lir, cx.LocationInfoRequest)
    assert lir.public_identity == IMPU and lir.user_authorization_type is None
    fwd, addr = forwarded(out)
    assert addr == ("127.0.0.2", 5081)
    assert fwd.uri == IMPU  # the Request-URI names the user still
    assert fwd.get_all("route") == ["<sip:b.home1.net:5081;lr>"]
    assert fwd.get("max-forwards") == "69" and len(fwd.get_all("via")) == 2
    assert fwd.get("p-asserted-identity") == "<sip:pcscf.visited1.net>"
    resp = final(receive(ep, t, make_response(fwd, 200, to_tag="s").to_bytes(), addr))
    assert resp.status == 200 and len(resp.get_all("via")) == 1
    assert ep.pending_count() == 0
    await ep.close()


async def test_unregistered_services_pick_an_scscf_by_capabilities():
    caps = cx.ServerCapabilities(mandatory_capabilities=(3,))
    answer = lia(
        experimental_result_code=cx.DIAMETER_UNREGISTERED_SERVICE, server_capabilities=caps
    )
    _, ep, t, _, _ = setup([(answer, None)])
    _, addr = forwarded(receive(ep, t, subscribe(), PCSCF))
    assert addr == ("127.0.0.2", 5081)  # the only one with capability 3
    await ep.close()


@pytest.mark.parametrize(
    ("code", "status"),
    [(cx.DIAMETER_ERROR_USER_UNKNOWN, 404), (cx.DIAMETER_ERROR_IDENTITY_NOT_REGISTERED, 480)],
)
async def test_lia_refusals_are_answered_here(code, status):
    icscf, ep, t, _, _ = setup([(lia(experimental_result_code=code), None)])
    resp = final(receive(ep, t, subscribe(), PCSCF))
    assert resp.status == status and icscf.counters[f"lia_refused_{status}"] == 1
    await ep.close()


async def test_hss_unreachable_is_480_with_retry_after():
    icscf, ep, t, _, _ = setup([(None, DiameterTimeoutError("no answer", reason="timeout"))])
    resp = final(receive(ep, t, subscribe(), PCSCF))
    assert resp.status == 480 and resp.get("retry-after") == "30"
    assert icscf.counters["lir_failed"] == 1
    await ep.close()


async def test_the_scscfs_480_is_the_users_and_is_relayed():
    icscf, ep, t, asks, _ = setup([(lia(result_code=2001, server_name=SCSCFS[0]["name"]), None)])
    fwd, addr = forwarded(receive(ep, t, subscribe(), PCSCF))
    resp = final(receive(ep, t, make_response(fwd, 480, to_tag="s").to_bytes(), addr))
    assert resp.status == 480 and len(asks) == 1 and icscf.counters["scscf_retry"] == 0
    await ep.close()


async def test_a_silent_scscf_is_replaced_after_an_lir_with_capabilities():
    caps = cx.ServerCapabilities(server_names=tuple(e["name"] for e in SCSCFS))
    named = lia(result_code=2001, server_name=SCSCFS[0]["name"])
    icscf, ep, t, asks, _ = setup(
        [(named, None), (lia(result_code=2001, server_capabilities=caps), None)]
    )
    _, addr = forwarded(receive(ep, t, subscribe(), PCSCF))
    # what our endpoint makes of a next hop that does not answer (Timer F): 408, no To tag
    t.sent.clear()
    ep._resolve(next(iter(ep._pending)), lambda r: make_response(r, 408), "timeout")
    out = [(parse_message(d), a) for d, a in t.sent]
    fwd2, addr2 = forwarded(out)
    assert addr2 != addr and fwd2.get_all("route") == ["<sip:b.home1.net:5081;lr>"]
    assert [a.user_authorization_type for a in asks] == [
        None,
        cx.UserAuthorizationType.REGISTRATION_AND_CAPABILITIES,
    ]
    assert icscf.counters["scscf_retry"] == 1
    await ep.close()


async def test_invite_is_refused_with_501():
    _, ep, t, asks, _ = setup([])
    resp = final(receive(ep, t, subscribe(method="INVITE"), PCSCF))
    assert resp.status == 501 and not asks
    await ep.close()


async def test_a_route_past_the_icscf_is_refused():
    _, ep, t, asks, _ = setup([])
    resp = final(receive(ep, t, subscribe(extra="Route: <sip:elsewhere.example;lr>\r\n"), PCSCF))
    assert resp.status == 403 and not asks
    await ep.close()


async def test_a_route_to_the_icscf_itself_is_taken_off_first():
    _, ep, t, asks, _ = setup([(lia(result_code=2001, server_name=SCSCFS[0]["name"]), None)])
    out = receive(ep, t, subscribe(extra="Route: <sip:icscf1_p.home1.net:5070;lr>\r\n"), PCSCF)
    fwd, _ = forwarded(out)
    assert fwd.get_all("route") == ["<sip:a.home1.net:5080;lr>"] and len(asks) == 1
    await ep.close()


@settings(max_examples=300, deadline=None)
@given(
    uri=st.one_of(
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=60),
        st.from_regex(r"(sips?|tel|urn|mailto):[!-~]{0,40}", fullmatch=True),
    )
)
async def test_any_request_uri_gets_a_routing_or_a_clear_answer(uri):
    """Whatever the Request-URI of a SUBSCRIBE: an LIR (then forwarded) or a 4xx naming
    the problem, never a failed handler (500) and nothing left open."""
    _, ep, t, asks, _ = setup([(lia(result_code=2001, server_name=SCSCFS[0]["name"]), None)])
    data = subscribe().replace(f"SUBSCRIBE {IMPU} ".encode(), f"SUBSCRIBE {uri} ".encode(), 1)
    out = receive(ep, t, data, PCSCF)
    answers = [m for m, _ in out if getattr(m, "status", 0) >= 200]
    forwards = [m for m, _ in out if getattr(m, "method", "") == "SUBSCRIBE"]
    assert ep.counters["handler_errors"] == 0
    if forwards:
        assert len(asks) == 1 and not answers
    else:
        # the transport layer's 400 for a request line it cannot read, or ours
        assert all(400 <= a.status < 500 for a in answers), [a.status for a in answers]
    await ep.close()
