"""Per-message work the I-CSCF's SIP path no longer does, and the behaviour that must
stay: bare CR/LF/NUL still refused, repeated digest params read as before, the
P-Visited-Network-ID view shared, no Request-URI parse without a Route, one client
transaction key per request."""

from __future__ import annotations

import asyncio

import pytest

from imsaka.sip import LocalProtocolError, Request, SipParseError, parse_message
from imsaka.sip.endpoint import SipEndpoint
from imsaka.sip.headers import DigestCredentials, VisitedNetworkId
from imsaka.sip.proxy import preprocess_route

HEAD = (
    "REGISTER sip:registrar.home1.net SIP/2.0\r\n"
    "Via: SIP/2.0/UDP pcscf1.home1.net:5060;branch=z9hG4bKp1\r\n"
    "From: <sip:u@home1.net>;tag=1\r\n"
    "To: <sip:u@home1.net>\r\n"
    "Call-ID: c1\r\n"
    "CSeq: 1 REGISTER\r\n"
)


@pytest.mark.parametrize(
    "bad",
    [
        "X-A: a\rb\r\n",  # bare CR inside a value
        "X-A: a\nb\r\n",  # bare LF inside a value
        "X-A: a\r\r\n",  # CR just before the CRLF
        "X-A: a\n\r\n",  # LF just before the CRLF
        "X-A: a\r\n\nX-B: b\r\n",  # LF just after the CRLF
        "X-A: a\x00b\r\n",  # NUL
    ],
)
def test_bare_cr_lf_and_nul_are_refused_wherever_they_are(bad):
    data = (HEAD + bad + "Content-Length: 0\r\n\r\n").encode()
    with pytest.raises(SipParseError, match=r"bare CR or LF|NUL"):
        parse_message(data)
    parse_message((HEAD + "Content-Length: 0\r\n\r\n").encode())  # the rest is fine


def test_the_first_of_a_repeated_digest_param_is_the_one_read():
    cred = DigestCredentials.parse('Digest username="a", Username="b", realm="r", REALM="s"')
    assert cred.get("username") == "a" and cred["USERNAME"] == "a"
    assert cred.realm == "r" and "nonce" not in cred
    assert cred.param("Realm") == cred.params[2]


def test_visited_network_view_shared_by_text_and_bad_ones_refused_each_time():
    one = VisitedNetworkId.parse('"home1.net"')
    assert VisitedNetworkId.parse('"home1.net"') is one and one.value == "home1.net"
    for _ in range(2):
        with pytest.raises(SipParseError):
            VisitedNetworkId.parse('"home1.net')


def test_preprocess_route_without_route_leaves_the_request_uri_alone():
    req = parse_message((HEAD + "Content-Length: 0\r\n\r\n").encode())
    req.uri = "sip:%zz@registrar.home1.net"  # a Request-URI parse_uri refuses
    preprocess_route(req, lambda uri: True)
    assert req.uri == "sip:%zz@registrar.home1.net"
    routed = parse_message((HEAD + "Route: <sip:icscf.home1.net;lr>\r\n\r\n").encode())
    routed.uri = "sip:%zz@registrar.home1.net"
    with pytest.raises(SipParseError):
        preprocess_route(routed, lambda uri: True)  # a Route: the Request-URI is read


class _Memory:
    name = "udp"
    reliable = False
    local_address = ("127.0.0.1", 5070)

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def set_receiver(self, receiver) -> None:
        self.receiver = receiver

    def set_error_handler(self, handler) -> None:
        pass

    def send(self, data: bytes, addr) -> None:
        self.sent.append(data)

    async def close(self) -> None:
        pass


def _request(branch: str) -> Request:
    return Request(
        "OPTIONS",
        "sip:peer.home1.net",
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5070;branch={branch}"),
            ("From", "<sip:a@home1.net>;tag=1"),
            ("To", "<sip:b@home1.net>"),
            ("Call-ID", "k1"),
            ("CSeq", "1 OPTIONS"),
        ],
    )


async def test_a_send_refused_for_a_branch_in_use_leaves_the_first_waiting():
    ep = SipEndpoint()
    t = _Memory()
    ep.add_transport(t)
    first = asyncio.ensure_future(ep.send_request(_request("z9hG4bKk1"), ("127.0.0.1", 5080)))
    await asyncio.sleep(0)
    assert ep.pending_count() == 1 and len(t.sent) == 1
    with pytest.raises(LocalProtocolError, match="already exists"):
        await ep.send_request(_request("z9hG4bKk1"), ("127.0.0.1", 5080))
    assert ep.pending_count() == 1  # the first transaction still waits for its answer
    answer = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKk1\r\n"
        b"From: <sip:a@home1.net>;tag=1\r\nTo: <sip:b@home1.net>;tag=2\r\n"
        b"Call-ID: k1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    t.receiver(answer, ("127.0.0.1", 5080), t)
    assert (await asyncio.wait_for(first, 1)).status == 200
    await ep.close()
